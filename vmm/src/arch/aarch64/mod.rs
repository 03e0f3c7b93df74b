//! aarch64: memory layout, GICv3, vCPU init through PSCI, the kernel Image
//! and initrd, the device tree, the UART and clock, and saved state.

pub mod devices;
pub mod fdt;
pub mod gic;
pub mod layout;
pub mod regs;
pub mod seccomp;
pub mod vcpu_state;
pub mod vm_state;

pub use devices::{attach as attach_legacy_devices, LegacyDevices, LegacyState};
pub use gic::Gic as InterruptController;
pub use layout::{ram_ranges, BOOT_TIMER_START, DRAM_START, MAX_GUEST_MEM_MIB, MMIO_DEVICES_START};
pub use vcpu_state::{restore_vcpu, save_vcpu, vcpu_paused, VcpuState};
pub use vm_state::{restore_vm, save_vm, VmState};

use brique_devices::GuestMemoryMmap;
use kvm_bindings::{kvm_vcpu_init, KVM_ARM_VCPU_POWER_OFF, KVM_ARM_VCPU_PSCI_0_2};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use linux_loader::loader::KernelLoader;
use std::fs::File;
use vm_memory::{Bytes, GuestAddress};

/// GIC shared lines (INTIDs) for virtio devices: SPIs 8 to 63.
pub const VIRTIO_IRQS: std::ops::RangeInclusive<u32> = 40..=95;
/// Kernel command line when the configuration gives none.
pub const DEFAULT_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1";
/// Room for the kernel command line (the arm64 COMMAND_LINE_SIZE).
pub const CMDLINE_CAPACITY: usize = 2048;
/// virtio-mmio devices are in the device tree, not on the command line.
pub const VIRTIO_ON_CMDLINE: bool = false;
/// The architecture snapshots are taken on (a snapshot loads only here).
pub const ARCH_NAME: &str = "aarch64";

/// Errors from aarch64 VM and vCPU setup.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// A KVM ioctl failed.
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// KVM cannot create a GICv3 (a host with only a GICv2).
    #[error("this host's KVM cannot create a GICv3 interrupt controller, which brique needs")]
    NoGicV3,
    /// The kernel Image could not be loaded.
    #[error("kernel Image: {0}")]
    Kernel(linux_loader::loader::Error),
    /// The initrd does not fit or cannot be read.
    #[error("initrd: {0}")]
    Initrd(String),
    /// The device tree could not be built or written.
    #[error("device tree: {0}")]
    Fdt(String),
    /// The guest is too small for the kernel, initrd and device tree.
    #[error("guest memory of {0} MiB is too small for the kernel, initrd and device tree")]
    MemoryTooSmall(u64),
    /// Building a KVM FAM structure failed.
    #[error("cannot build a KVM list: {0:?}")]
    Fam(vmm_sys_util::fam::Error),
    /// A saved vCPU or VM state does not fit this host or is invalid.
    #[error("saved state: {0}")]
    SavedState(String),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> ArchError {
    move |source| ArchError::Kvm { what, source }
}

/// VM-wide setup before vCPUs exist: nothing on aarch64 (the GIC comes
/// once every vCPU exists).
pub fn setup_vm(_vm: &VmFd) -> Result<(), ArchError> {
    Ok(())
}

/// Creates the GICv3 once every vCPU exists.
pub fn create_interrupt_controller(
    vm: &VmFd,
    vcpu_count: u8,
) -> Result<InterruptController, ArchError> {
    gic::Gic::create(vm, vcpu_count)
}

/// The KVM irqfd GSI of guest interrupt `irq` (a shared line's INTID):
/// KVM numbers the shared lines from 0.
pub fn irqfd_gsi(irq: u32) -> u32 {
    irq - gic::SPI_BASE
}

/// A virtio-mmio device's window and interrupt line, for the device tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioSlot {
    /// MMIO window base.
    pub base: u64,
    /// Guest interrupt (INTID).
    pub irq: u32,
}

/// Where vCPU 0 starts.
#[derive(Debug, Clone, Copy)]
pub struct BootEntry {
    /// Guest address of the kernel Image's entry.
    pub entry: u64,
    /// Guest address of the device tree (X0).
    pub fdt: u64,
}

/// Host facts every vCPU's setup uses: KVM's preferred target.
#[derive(Debug)]
pub struct VcpuTemplate {
    init: kvm_vcpu_init,
}

impl VcpuTemplate {
    /// Reads KVM's preferred vCPU target and asks for PSCI 0.2.
    pub fn new(_kvm: &Kvm, vm: &VmFd, _vcpu_count: u8, _smt: bool) -> Result<Self, ArchError> {
        let mut init = kvm_vcpu_init::default();
        vm.get_preferred_target(&mut init)
            .map_err(kvm_err("KVM_ARM_PREFERRED_TARGET"))?;
        init.features[0] |= 1 << KVM_ARM_VCPU_PSCI_0_2;
        Ok(Self { init })
    }
}

/// Initialises vCPU `id` (KVM_ARM_VCPU_INIT with PSCI 0.2); every vCPU but
/// the first starts powered off, for the guest to start through PSCI.
pub fn init_vcpu(vcpu: &VcpuFd, id: u8, template: &VcpuTemplate) -> Result<(), ArchError> {
    let mut init = template.init;
    if id > 0 {
        init.features[0] |= 1 << KVM_ARM_VCPU_POWER_OFF;
    }
    vcpu.vcpu_init(&init).map_err(kvm_err("KVM_ARM_VCPU_INIT"))
}

/// The boot vCPU enters the kernel: PC at its entry, X0 at the device
/// tree, EL1h with interrupts masked.
pub fn set_boot_registers(vcpu: &VcpuFd, id: u8, boot: BootEntry) -> Result<(), ArchError> {
    if id == 0 {
        regs::set(vcpu, regs::PSTATE, regs::BOOT_PSTATE)?;
        regs::set(vcpu, regs::PC, boot.entry)?;
        regs::set(vcpu, regs::x(0), boot.fdt)?;
    }
    Ok(())
}

/// MPIDR_EL1 of vCPU `id` as KVM sets it: Aff0 the low four bits of the
/// index, Aff1 the rest, bit 31 set.
pub fn mpidr(id: u8) -> u64 {
    (1 << 31) | u64::from(id & 0xf) | (u64::from(id >> 4) << 8)
}

/// Loads the kernel Image at the start of RAM (2 MiB aligned, its text
/// offset honoured), the initrd and then the device tree at the top of RAM.
pub fn load_guest(
    mem: &GuestMemoryMmap,
    kernel: &mut File,
    initrd: Option<&mut File>,
    cmdline: &linux_loader::cmdline::Cmdline,
    vcpu_count: u8,
    virtio: &[VirtioSlot],
) -> Result<BootEntry, ArchError> {
    let loaded =
        linux_loader::loader::pe::PE::load(mem, Some(GuestAddress(DRAM_START)), kernel, None)
            .map_err(ArchError::Kernel)?;
    let mem_bytes = vm_memory::GuestMemoryBackend::last_addr(mem).0 + 1 - DRAM_START;
    let ram_end = DRAM_START + mem_bytes;
    let fdt_addr = ram_end
        .checked_sub(layout::FDT_MAX_SIZE)
        .filter(|&addr| addr >= loaded.kernel_end)
        .ok_or(ArchError::MemoryTooSmall(mem_bytes >> 20))?;
    let initrd_range = match initrd {
        Some(file) => {
            let size = file
                .metadata()
                .map_err(|err| ArchError::Initrd(err.to_string()))?
                .len();
            let start = fdt_addr
                .checked_sub(size)
                .map(|start| start & !0xfff)
                .filter(|&start| start >= loaded.kernel_end)
                .ok_or(ArchError::MemoryTooSmall(mem_bytes >> 20))?;
            mem.read_exact_volatile_from(GuestAddress(start), file, size as usize)
                .map_err(|err| ArchError::Initrd(err.to_string()))?;
            Some((start, start + size))
        }
        None => None,
    };
    let cmdline = cmdline
        .as_cstring()
        .map_err(|err| ArchError::Fdt(err.to_string()))?;
    let mpidrs: Vec<u64> = (0..vcpu_count).map(mpidr).collect();
    let blob = fdt::build(&fdt::FdtParams {
        mpidrs: &mpidrs,
        mem_bytes,
        cmdline: &cmdline.to_string_lossy(),
        initrd: initrd_range,
        virtio,
    })
    .map_err(|err| ArchError::Fdt(err.to_string()))?;
    if blob.len() as u64 > layout::FDT_MAX_SIZE {
        return Err(ArchError::Fdt(format!("{} bytes", blob.len())));
    }
    mem.write_slice(&blob, GuestAddress(fdt_addr))
        .map_err(|err| ArchError::Fdt(err.to_string()))?;
    Ok(BootEntry {
        entry: loaded.kernel_load.0,
        fdt: fdt_addr,
    })
}

/// A stopped vCPU's registers, for an operator's error message.
pub fn vcpu_state_report(vcpu: &VcpuFd) -> String {
    let read =
        |id| regs::get(vcpu, id).map_or_else(|err| format!("({err})"), |v| format!("{v:#x}"));
    format!(
        "PC {}  PSTATE {}  X0 {}",
        read(regs::PC),
        read(regs::PSTATE),
        read(regs::x(0))
    )
}

/// Plausible saved VM, vCPU and fixed-device states, for tests of what
/// contains them.
#[cfg(test)]
pub fn sample_states() -> (VmState, VcpuState, LegacyState) {
    let legacy = LegacyState {
        rtc: brique_devices::rtc::Pl031::new().save(),
    };
    (
        vm_state::tests::sample(),
        vcpu_state::tests::sample(),
        legacy,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_starts_at_dram_base() {
        assert_eq!(ram_ranges(128 << 20), vec![(DRAM_START, 128 << 20)]);
    }

    #[test]
    fn irqfd_lines_count_from_the_first_shared_interrupt() {
        assert_eq!(irqfd_gsi(*VIRTIO_IRQS.start()), 8);
        assert_eq!(irqfd_gsi(devices::SERIAL_IRQ), 1);
        assert!(*VIRTIO_IRQS.end() < gic::GIC_NR_IRQS);
    }

    #[test]
    fn mpidrs_follow_kvms_numbering() {
        assert_eq!(mpidr(0), 0x8000_0000);
        assert_eq!(mpidr(1), 0x8000_0001);
        assert_eq!(mpidr(17), 0x8000_0101);
    }
}
