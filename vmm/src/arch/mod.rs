//! The architecture boundary. Each architecture module provides the same
//! items, which the rest of the VMM uses without `cfg`:
//!
//! - `ram_ranges(bytes)`, `MAX_GUEST_MEM_MIB`, `MMIO_DEVICES_START`: memory layout
//! - `DEFAULT_BOOT_ARGS`, `CMDLINE_CAPACITY`: kernel command line
//! - `setup_vm(&VmFd)`: VM-wide KVM setup (interrupt controller, timers)
//! - `load_guest(..) -> BootEntry`: kernel, initrd and boot tables into memory
//! - `VcpuTemplate::new(&Kvm, count, smt)`, `configure_vcpu(..)`: vCPU state
//! - `vcpu_state_report(&VcpuFd)`: a stopped vCPU's registers, for error messages
//! - `ArchError`: what can fail in the above

#[cfg(target_arch = "x86_64")]
pub mod x86_64;
#[cfg(target_arch = "x86_64")]
pub use self::x86_64::*;

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(target_arch = "aarch64")]
pub use self::aarch64::*;
