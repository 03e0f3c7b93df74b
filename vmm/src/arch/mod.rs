//! The architecture boundary. Each architecture module provides the same
//! items, which the rest of the VMM uses without `cfg`:
//!
//! - `ram_ranges(bytes)`, `MAX_GUEST_MEM_MIB`, `MMIO_DEVICES_START`,
//!   `BOOT_TIMER_START`: memory layout
//! - `VIRTIO_IRQS`, `irqfd_gsi(irq)`: guest interrupt lines for virtio devices
//!   and the KVM irqfd GSI of each (the same on x86_64, numbered from the
//!   first shared line on aarch64)
//! - `DEFAULT_BOOT_ARGS`, `CMDLINE_CAPACITY`, `VIRTIO_ON_CMDLINE`: kernel
//!   command line
//! - `setup_vm(&VmFd)`: VM-wide KVM setup before vCPUs exist
//! - `VcpuTemplate::new(&Kvm, &VmFd, count, smt)`, `init_vcpu(..)`: a new vCPU
//! - `create_interrupt_controller(&VmFd, count) -> InterruptController`, once
//!   every vCPU exists (the GICv3 needs them)
//! - `load_guest(.., &[VirtioSlot]) -> BootEntry`: kernel, initrd and boot
//!   tables (x86_64: boot_params, MP table; aarch64: the device tree) into
//!   memory; `set_boot_registers(..)`: the boot vCPU's entry state
//! - `attach_legacy_devices(..)`, `LegacyDevices`, `LegacyState`: the
//!   architecture's fixed devices (x86_64: COM1 and the i8042; aarch64: the
//!   UART on MMIO and the PL031 clock) and their state
//! - `vcpu_state_report(&VcpuFd)`: a stopped vCPU's registers, for error messages
//! - snapshots: `ARCH_NAME`; `VcpuState` with `save_vcpu`, `restore_vcpu` and
//!   `vcpu_paused`; `VmState` with `save_vm`, `restore_vm` (interrupt
//!   controllers, timers, clock)
//! - `seccomp`: the architecture's system calls and KVM ioctls in the
//!   per-thread filters
//! - `ArchError`: what can fail in the above

#[cfg(target_arch = "x86_64")]
pub mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use self::aarch64::*;
