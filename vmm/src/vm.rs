//! The KVM VM: the KVM handle, the VM file descriptor and guest memory.

use crate::arch;
use crate::guest_ram::{map_guest_ram, GuestRam, RamBacking};
use brique_devices::GuestMemoryMmap;
use kvm_bindings::{kvm_userspace_memory_region, KVM_MEM_LOG_DIRTY_PAGES};
use kvm_ioctls::{Kvm, VmFd};
use std::os::unix::fs::MetadataExt;
use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion};

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
    /// KVM's dirty log could not be read.
    #[error("cannot read the dirty log of memory slot {slot}: {source}")]
    DirtyLog {
        slot: u32,
        source: kvm_ioctls::Error,
    },
}

/// Size of the pages dirty tracking counts.
pub const PAGE_SIZE: usize = 4096;

/// A KVM VM with its guest memory registered. Fields drop in order: the VM
/// file descriptor, then the guest memory views, then the RAM mappings.
/// Whoever holds a `Vm` drops it after every device and thread that uses
/// its memory (`Machine` keeps it as its last field).
#[derive(Debug)]
pub struct Vm {
    kvm: Kvm,
    fd: VmFd,
    memory: GuestMemoryMmap,
    track_dirty_pages: bool,
    anonymous: bool,
    /// The memory file RAM was mapped from (device, inode), if any.
    backing_file: Option<(u64, u64)>,
    _ram: GuestRam,
}

impl Vm {
    /// Creates a VM with `mem_mib` MiB of guest RAM laid out for this
    /// architecture (from `backing`), and its in-kernel interrupt
    /// controller. With `track_dirty_pages`, KVM logs the pages the guest
    /// writes (for diff snapshots).
    pub fn new(
        mem_mib: usize,
        backing: RamBacking<'_>,
        track_dirty_pages: bool,
    ) -> Result<Self, VmError> {
        let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        let mem_bytes = (mem_mib as u64) << 20;
        let (memory, ram) =
            map_guest_ram(&arch::ram_ranges(mem_bytes), backing).map_err(|err| {
                VmError::Memory {
                    mib: mem_mib,
                    detail: err.to_string(),
                }
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
                flags: if track_dirty_pages {
                    KVM_MEM_LOG_DIRTY_PAGES
                } else {
                    0
                },
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
            track_dirty_pages,
            anonymous: !matches!(backing, RamBacking::File(_)),
            backing_file: match backing {
                RamBacking::File(file) => file.metadata().ok().map(|m| (m.dev(), m.ino())),
                RamBacking::Anonymous | RamBacking::HugePages2M => None,
            },
            _ram: ram,
        })
    }

    /// Whether `path` is the memory file guest RAM is mapped from.
    pub fn runs_from(&self, path: &std::path::Path) -> bool {
        let file = std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()));
        file.is_some() && file == self.backing_file
    }

    /// Whether guest RAM is anonymous memory (not a mapped memory file).
    pub fn ram_is_anonymous(&self) -> bool {
        self.anonymous
    }

    /// Whether KVM logs the pages the guest writes.
    pub fn tracks_dirty_pages(&self) -> bool {
        self.track_dirty_pages
    }

    /// The pages written since the last call (or since the VM was built),
    /// one bitmap per memory region (bit N of word W: page 64 W + N of the
    /// region): what KVM logged of the guest's writes together with what
    /// the VMM's devices wrote. Both logs start over.
    pub fn take_dirty_pages(&self) -> Result<Vec<Vec<u64>>, VmError> {
        let mut bitmaps = Vec::new();
        for (slot, region) in self.memory.iter().enumerate() {
            let slot = slot as u32;
            let len = region.len() as usize;
            let mut bitmap = self
                .fd
                .get_dirty_log(slot, len)
                .map_err(|source| VmError::DirtyLog { slot, source })?;
            let written_by_vmm = dirty_bitmap(region);
            for page in 0..len / PAGE_SIZE {
                if written_by_vmm.is_bit_set(page) {
                    bitmap[page / 64] |= 1 << (page % 64);
                }
            }
            written_by_vmm.reset();
            bitmaps.push(bitmap);
        }
        Ok(bitmaps)
    }

    /// Marks pages dirty again (one bitmap per region, as
    /// [`Vm::take_dirty_pages`] gives them): a snapshot that failed after
    /// taking them leaves them for the next one.
    pub fn mark_dirty(&self, bitmaps: &[Vec<u64>]) {
        for (region, bitmap) in self.memory.iter().zip(bitmaps) {
            for (word_index, word) in bitmap.iter().enumerate() {
                for bit in 0..64 {
                    if word & (1 << bit) != 0 {
                        let page = word_index * 64 + bit;
                        dirty_bitmap(region).set_addr_range(page * PAGE_SIZE, PAGE_SIZE);
                    }
                }
            }
        }
    }

    /// Forgets what the VMM's devices wrote so far (a full snapshot covers it).
    pub fn clear_device_dirty_pages(&self) {
        for region in self.memory.iter() {
            dirty_bitmap(region).reset();
        }
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

/// What the VMM's own writes dirtied in `region` (one bit per page).
fn dirty_bitmap(region: &brique_devices::GuestRegionMmap) -> &vm_memory::bitmap::AtomicBitmap {
    vm_memory::mmap::MmapRegion::bitmap(region)
}
