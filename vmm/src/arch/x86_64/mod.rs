//! x86_64: memory layout, boot protocol, vCPU state and legacy devices.

pub mod cpuid;
pub mod devices;
pub mod fault_report;
pub mod gdt;
pub mod interrupts;
pub mod layout;
pub mod linux_boot;
pub mod mptable;
pub mod msr;
pub mod regs;
pub mod seccomp;
pub mod vcpu_state;
pub mod vm_state;

use brique_devices::GuestMemoryMmap;
use kvm_bindings::{kvm_pit_config, CpuId, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use std::fs::File;

pub use devices::{attach as attach_legacy_devices, LegacyDevices, LegacyState};
pub use fault_report::vcpu_state_report;
pub use layout::{ram_ranges, BOOT_TIMER_START, MAX_GUEST_MEM_MIB, MMIO_DEVICES_START};
pub use vcpu_state::{restore_vcpu, save_vcpu, vcpu_paused, VcpuState};
pub use vm_state::{restore_vm, save_vm, VmState};

/// Plausible saved VM, vCPU and fixed-device states, for tests of what
/// contains them.
#[cfg(test)]
pub fn sample_states() -> (VmState, VcpuState, LegacyState) {
    let legacy = LegacyState {
        i8042: brique_devices::i8042::I8042State {
            ctr: 0x47,
            status: 0x14,
            output: vec![0xfa],
            pending: brique_devices::i8042::PendingWrite::None,
            keyboard_bytes: 0,
        },
    };
    (
        vm_state::tests::sample(),
        vcpu_state::tests::sample(),
        legacy,
    )
}

/// The architecture snapshots are taken on (a snapshot loads only here).
pub const ARCH_NAME: &str = "x86_64";

/// IOAPIC lines for virtio devices: above the legacy ISA ones in use
/// (timer 0, keyboard 1, cascade 2, COM1 4), up to the last IOAPIC pin.
pub const VIRTIO_IRQS: std::ops::RangeInclusive<u32> = 5..=23;

/// Kernel command line when the configuration gives none.
pub const DEFAULT_BOOT_ARGS: &str =
    "console=ttyS0 reboot=k panic=1 pci=off i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd";
/// Room for the kernel command line, NUL included.
pub const CMDLINE_CAPACITY: usize = layout::CMDLINE_MAX_SIZE;

/// Errors from x86_64 VM and vCPU setup.
#[derive(Debug, thiserror::Error)]
pub enum ArchError {
    /// A KVM ioctl failed.
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// Loading the kernel or initrd, or writing boot_params, failed.
    #[error(transparent)]
    Boot(#[from] linux_boot::BootError),
    /// Writing the boot page tables or GDT failed.
    #[error(transparent)]
    Regs(#[from] regs::RegsError),
    /// The MP table could not be built.
    #[error(transparent)]
    MpTable(#[from] mptable::MpTableError),
    /// KVM accepted fewer boot MSRs than given.
    #[error("KVM set only {set} of {wanted} boot MSRs")]
    Msrs { set: usize, wanted: usize },
    /// Bare test code larger than its window.
    #[error("bare code of {0} bytes does not fit below the zero page")]
    BareCodeTooLarge(usize),
    /// Building a KVM FAM structure failed.
    #[error("cannot build a KVM list (MSRs, CPUID, XSAVE): {0:?}")]
    Fam(vmm_sys_util::fam::Error),
    /// A saved vCPU or VM state does not fit this host or is invalid.
    #[error("saved state: {0}")]
    SavedState(String),
}

fn kvm_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> ArchError {
    move |source| ArchError::Kvm { what, source }
}

/// VM-wide KVM setup before vCPUs exist: TSS, in-kernel PIC/IOAPIC, PIT.
pub fn setup_vm(vm: &VmFd) -> Result<(), ArchError> {
    vm.set_tss_address(layout::KVM_TSS_ADDRESS as usize)
        .map_err(kvm_err("KVM_SET_TSS_ADDR"))?;
    vm.create_irq_chip()
        .map_err(kvm_err("KVM_CREATE_IRQCHIP"))?;
    let pit = kvm_pit_config {
        flags: KVM_PIT_SPEAKER_DUMMY,
        ..Default::default()
    };
    vm.create_pit2(pit).map_err(kvm_err("KVM_CREATE_PIT2"))?;
    Ok(())
}

/// What vCPU setup needs to know about the loaded kernel.
#[derive(Debug, Clone, Copy)]
pub struct BootEntry {
    /// Guest address of the kernel's 64-bit entry point.
    pub entry: u64,
}

/// Loads kernel and initrd, writes the command line, boot_params, MP table,
/// GDT and page tables into guest memory. (The virtio devices are on the
/// command line already.)
pub fn load_guest(
    mem: &GuestMemoryMmap,
    kernel: &mut File,
    initrd: Option<&mut File>,
    cmdline: &linux_loader::cmdline::Cmdline,
    vcpu_count: u8,
    _virtio: &[VirtioSlot],
) -> Result<BootEntry, ArchError> {
    let loaded = linux_boot::load_kernel(mem, kernel)?;
    let initrd = initrd
        .map(|file| linux_boot::load_initrd(mem, file, loaded.end))
        .transpose()?;
    linux_boot::write_cmdline(mem, cmdline)?;
    let cmdline_len = cmdline
        .as_cstring()
        .map(|c| c.as_bytes().len())
        .unwrap_or_default();
    linux_boot::write_boot_params(mem, &loaded, cmdline_len, initrd)?;
    mptable::write(mem, vcpu_count)?;
    regs::write_boot_tables(mem)?;
    Ok(BootEntry {
        entry: loaded.entry,
    })
}

/// A virtio-mmio device's window and interrupt line, for the boot tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VirtioSlot {
    /// MMIO window base.
    pub base: u64,
    /// Guest interrupt line.
    pub irq: u32,
}

/// Where [`load_bare_code`] puts its code.
pub const BARE_CODE_ADDR: u64 = 0x1000;

/// Loads raw 64-bit code at [`BARE_CODE_ADDR`] with the boot page tables and
/// GDT, for VMM tests with hand-assembled guests.
pub fn load_bare_code(mem: &GuestMemoryMmap, code: &[u8]) -> Result<BootEntry, ArchError> {
    let fits = BARE_CODE_ADDR + code.len() as u64 <= layout::ZERO_PAGE_START;
    if !fits {
        return Err(ArchError::BareCodeTooLarge(code.len()));
    }
    vm_memory::Bytes::write_slice(mem, code, vm_memory::GuestAddress(BARE_CODE_ADDR)).map_err(
        |source| regs::RegsError::Write {
            what: "bare code",
            source,
        },
    )?;
    regs::write_boot_tables(mem)?;
    Ok(BootEntry {
        entry: BARE_CODE_ADDR,
    })
}

/// Host facts every vCPU's setup, save and restore use, read once per VM.
#[derive(Debug)]
pub struct VcpuTemplate {
    supported_cpuid: CpuId,
    msr_indices: Vec<u32>,
    /// Bytes of KVM_GET_XSAVE2's area on this VM; 0 without XSAVE2.
    xsave2_size: usize,
    vcpu_count: u8,
    threads_per_core: u8,
}

impl VcpuTemplate {
    /// Reads KVM's supported CPUID, its MSR list and XSAVE size.
    pub fn new(kvm: &Kvm, vm: &VmFd, vcpu_count: u8, smt: bool) -> Result<Self, ArchError> {
        let supported_cpuid = kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .map_err(kvm_err("KVM_GET_SUPPORTED_CPUID"))?;
        let msr_indices = kvm
            .get_msr_index_list()
            .map_err(kvm_err("KVM_GET_MSR_INDEX_LIST"))?
            .as_slice()
            .to_vec();
        let xsave2_size =
            usize::try_from(vm.check_extension_int(kvm_ioctls::Cap::Xsave2)).unwrap_or_default();
        Ok(Self {
            supported_cpuid,
            msr_indices,
            xsave2_size,
            vcpu_count,
            threads_per_core: if smt && vcpu_count > 1 { 2 } else { 1 },
        })
    }

    #[cfg(test)]
    fn for_tests(xsave2_size: usize) -> Self {
        Self {
            supported_cpuid: CpuId::new(0).expect("empty CPUID"),
            msr_indices: Vec::new(),
            xsave2_size,
            vcpu_count: 1,
            threads_per_core: 1,
        }
    }
}

/// Sets up a new vCPU `id`: CPUID, MSRs, LAPIC LINTs (before the devices
/// are attached; a restore then overwrites it all with the saved state).
pub fn init_vcpu(vcpu: &VcpuFd, id: u8, template: &VcpuTemplate) -> Result<(), ArchError> {
    let mut cpuid = template.supported_cpuid.clone();
    cpuid::normalize(
        cpuid.as_mut_slice(),
        cpuid::Topology {
            vcpu_id: id,
            vcpu_count: template.vcpu_count,
            threads_per_core: template.threads_per_core,
        },
    );
    vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;

    let entries = msr::boot_msrs(&template.msr_indices);
    let msrs = msr::to_kvm_msrs(&entries).map_err(ArchError::Fam)?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
    if set != entries.len() {
        return Err(ArchError::Msrs {
            set,
            wanted: entries.len(),
        });
    }

    let mut lapic = vcpu.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
    interrupts::set_lint(&mut lapic);
    vcpu.set_lapic(&lapic).map_err(kvm_err("KVM_SET_LAPIC"))?;
    Ok(())
}

/// Gives the boot vCPU (0) the 64-bit entry state; the others wait for
/// the guest's INIT/SIPI.
pub fn set_boot_registers(vcpu: &VcpuFd, id: u8, boot: BootEntry) -> Result<(), ArchError> {
    if id == 0 {
        let sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
        vcpu.set_sregs(&regs::long_mode_sregs(sregs))
            .map_err(kvm_err("KVM_SET_SREGS"))?;
        vcpu.set_regs(&regs::boot_regs(boot.entry))
            .map_err(kvm_err("KVM_SET_REGS"))?;
        vcpu.set_fpu(&regs::boot_fpu())
            .map_err(kvm_err("KVM_SET_FPU"))?;
    }
    Ok(())
}

/// The in-kernel interrupt controllers: on x86_64 created with the VM
/// (`setup_vm`), so nothing is left to hold here.
#[derive(Debug)]
pub struct InterruptController;

/// Creates the interrupt controller once the vCPUs exist (nothing to do on
/// x86_64: the PIC and IOAPIC come with the VM, the LAPICs with the vCPUs).
pub fn create_interrupt_controller(
    _vm: &VmFd,
    _vcpu_count: u8,
) -> Result<InterruptController, ArchError> {
    Ok(InterruptController)
}

/// The KVM irqfd GSI of guest interrupt line `irq`: the IOAPIC pin itself.
pub fn irqfd_gsi(irq: u32) -> u32 {
    irq
}

/// Whether virtio-mmio devices are announced on the kernel command line
/// (x86_64 has no device tree).
pub const VIRTIO_ON_CMDLINE: bool = true;

/// Legacy devices of a PC: their port I/O windows and interrupt lines.
pub mod legacy {
    pub use brique_devices::i8042::{I8042_KBD_IRQ, I8042_PORT_BASE, I8042_PORT_LEN};
    pub use brique_devices::serial::{COM1_IRQ, COM1_PORT_BASE, COM1_PORT_LEN};
}
