//! The KVM VM: the KVM handle, the VM file descriptor and guest memory.

use crate::arch;
use crate::guest_ram::{map_guest_ram, GuestRam};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VmFd};
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion};

/// Errors creating the VM.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// /dev/kvm cannot be opened.
    #[error("cannot open /dev/kvm: {0}")]
    OpenKvm(kvm_ioctls::Error),
    /// KVM_CREATE_VM failed.
    #[error("cannot create the KVM VM: {0}")]
    CreateVm(kvm_ioctls::Error),
    /// Guest memory could not be allocated.
    #[error("cannot allocate {mib} MiB of guest memory: {detail}")]
    Memory { mib: usize, detail: String },
    /// KVM refused a memory slot.
    #[error("cannot register guest memory slot {slot}: {source}")]
    MemorySlot {
        slot: u32,
        source: kvm_ioctls::Error,
    },
    /// Architecture-specific VM setup failed.
    #[error(transparent)]
    Arch(#[from] arch::ArchError),
}

/// A KVM VM with its guest memory registered. Fields drop in order: the VM
/// file descriptor, then the guest memory views, then the RAM mappings.
/// Whoever holds a `Vm` drops it after every device and thread that uses
/// its memory (`Machine` keeps it as its last field).
#[derive(Debug)]
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
    memory: GuestMemoryMmap,
    _ram: GuestRam,
}

impl Vm {
    /// Creates a VM with `mem_mib` MiB of guest RAM laid out for this
    /// architecture, and its in-kernel interrupt controller.
    pub fn new(mem_mib: usize) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        let mem_bytes = (mem_mib as u64) << 20;
        let (memory, ram) =
            map_guest_ram(&arch::ram_ranges(mem_bytes)).map_err(|err| VmError::Memory {
                mib: mem_mib,
                detail: err.to_string(),
            })?;
        for (slot, region) in memory.iter().enumerate() {
            let slot = slot as u32;
            let host_addr = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .map_err(|err| VmError::Memory {
                    mib: mem_mib,
                    detail: err.to_string(),
                })?;
            let kvm_region = kvm_userspace_memory_region {
                slot,
                guest_phys_addr: region.start_addr().raw_value(),
                memory_size: region.len(),
                userspace_addr: host_addr as u64,
                flags: 0,
            };
            // SAFETY: the region is a live mapping owned by `memory`, which the
            // returned `Vm` keeps for as long as the VM file descriptor exists.
            unsafe { fd.set_user_memory_region(kvm_region) }
                .map_err(|source| VmError::MemorySlot { slot, source })?;
        }
        arch::setup_vm(&fd)?;
        Ok(Self {
            kvm,
            fd,
            memory,
            _ram: ram,
        })
    }

    /// The KVM system handle.
    pub fn kvm(&self) -> &Kvm {
        &self.kvm
    }

    /// The VM file descriptor.
    pub fn fd(&self) -> &VmFd {
        &self.fd
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }
}
