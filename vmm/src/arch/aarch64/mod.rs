//! aarch64: memory layout and the arch boundary. Booting (GICv3, FDT, PSCI,
//! Image loading) is the aarch64 issue; until it lands, building a VM on
//! aarch64 fails with [`ArchError::BootNotSupported`] before touching KVM.

pub mod devices;

use brique_devices::GuestMemoryMmap;
pub use devices::{attach as attach_legacy_devices, LegacyDevices, LegacyState};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use std::fs::File;

/// Guest RAM starts at 2 GiB; devices live below it.
pub const DRAM_START: u64 = 0x8000_0000;
/// Where virtio-mmio device windows are placed.
pub const MMIO_DEVICES_START: u64 = 0x4000_0000;
/// GIC SPI lines for virtio devices.
pub const VIRTIO_IRQS: std::ops::RangeInclusive<u32> = 32..=95;
/// Largest guest memory: up to a 1 TiB guest physical space.
pub const MAX_GUEST_MEM_MIB: usize = (1 << 20) - (DRAM_START >> 20) as usize;
/// Kernel command line when the configuration gives none.
pub const DEFAULT_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1";
/// Room for the kernel command line (the arm64 COMMAND_LINE_SIZE).
pub const CMDLINE_CAPACITY: usize = 2048;

/// Guest RAM ranges for `mem_bytes` of memory.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    vec![(DRAM_START, mem_bytes)]
}

/// Errors from aarch64 VM and vCPU setup.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// Booting aarch64 guests is not implemented yet.
    #[error("booting aarch64 guests is not supported yet (GICv3/FDT boot is a pending issue)")]
    BootNotSupported,
}

/// VM-wide setup.
pub fn setup_vm(_vm: &VmFd) -> Result<(), ArchError> {
    Err(ArchError::BootNotSupported)
}

/// Where vCPU 0 starts.
#[derive(Debug, Clone, Copy)]
pub struct BootEntry {
    /// Guest address of the kernel Image's entry.
    pub entry: u64,
}

/// Loads the guest into memory.
pub fn load_guest(
    _mem: &GuestMemoryMmap,
    _kernel: &mut File,
    _initrd: Option<&mut File>,
    _cmdline: &linux_loader::cmdline::Cmdline,
    _vcpu_count: u8,
) -> Result<BootEntry, ArchError> {
    Err(ArchError::BootNotSupported)
}

/// Host facts every vCPU's setup uses.
#[derive(Debug)]
pub struct VcpuTemplate;

impl VcpuTemplate {
    /// Reads what vCPU setup needs from KVM.
    pub fn new(_kvm: &Kvm, _vm: &VmFd, _vcpu_count: u8, _smt: bool) -> Result<Self, ArchError> {
        Err(ArchError::BootNotSupported)
    }
}

/// A stopped vCPU's registers, for an operator's error message.
pub fn vcpu_state_report(_vcpu: &VcpuFd) -> String {
    "(no register report on aarch64 yet)".to_owned()
}

/// Sets up one vCPU.
pub fn configure_vcpu(
    _vcpu: &VcpuFd,
    _id: u8,
    _template: &VcpuTemplate,
    _boot: BootEntry,
) -> Result<(), ArchError> {
    Err(ArchError::BootNotSupported)
}

/// The architecture snapshots are taken on (a snapshot loads only here).
pub const ARCH_NAME: &str = "aarch64";

/// A vCPU's saved state (registers, MP state: with aarch64 boot).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VcpuState {}

/// The VM's saved state (GIC, timer: with aarch64 boot).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmState {}

/// Plausible saved VM and vCPU states, for tests of what contains them.
#[cfg(test)]
pub fn sample_states() -> (VmState, VcpuState) {
    (VmState {}, VcpuState {})
}

/// Reads a vCPU's state.
pub fn save_vcpu(_vcpu: &VcpuFd, _template: &VcpuTemplate) -> Result<VcpuState, ArchError> {
    Err(ArchError::BootNotSupported)
}

/// Puts a saved state into a vCPU.
pub fn restore_vcpu(
    _vcpu: &VcpuFd,
    _state: &VcpuState,
    _template: &VcpuTemplate,
) -> Result<(), ArchError> {
    Err(ArchError::BootNotSupported)
}

/// Called when a vCPU parks in a pause.
pub fn vcpu_paused(_vcpu: &VcpuFd) {}

/// Reads the VM's state.
pub fn save_vm(_vm: &VmFd) -> Result<VmState, ArchError> {
    Err(ArchError::BootNotSupported)
}

/// Puts a saved state into the VM.
pub fn restore_vm(_vm: &VmFd, _state: &VmState, _clock_realtime: bool) -> Result<(), ArchError> {
    Err(ArchError::BootNotSupported)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_starts_at_dram_base() {
        assert_eq!(ram_ranges(128 << 20), vec![(DRAM_START, 128 << 20)]);
    }
}
