//! The architecture boundary. Each architecture module provides the same
//! items, which the rest of the VMM uses without `cfg`:
//!
//! - `ram_ranges(bytes)`, `MAX_GUEST_MEM_MIB`, `MMIO_DEVICES_START`: memory layout
//! - `DEFAULT_BOOT_ARGS`, `CMDLINE_CAPACITY`: kernel command line
//! - `setup_vm(&VmFd)`: VM-wide KVM setup (interrupt controller, timers)
//! - `load_guest(..) -> BootEntry`: kernel, initrd and boot tables into memory
//! - `VcpuTemplate::new(&Kvm, &VmFd, count, smt)`, `configure_vcpu(..)`: vCPU state
//! - `vcpu_state_report(&VcpuFd)`: a stopped vCPU's registers, for error messages
//! - snapshots: `ARCH_NAME`; `VcpuState` with `save_vcpu`, `restore_vcpu` and
//!   `vcpu_paused` (told to the guest's clock); `VmState` with `save_vm`,
//!   `restore_vm` (interrupt controllers, timers, clock)
//! - `attach_legacy_devices(..)`, `LegacyDevices`, `LegacyState`: the
//!   architecture's fixed devices (x86_64: COM1 and the i8042) and their state
//! - `ArchError`: what can fail in the above

#[cfg(target_arch = "x86_64")]
pub mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use self::aarch64::*;
