//! Guest RAM: anonymous mappings that start on a 2 MiB boundary and ask for
//! transparent huge pages, as QEMU and Cloud Hypervisor lay out theirs.
//!
//! KVM maps guest memory with 2 MiB nested page-table entries only where the
//! guest physical and the host virtual address agree modulo 2 MiB and the
//! host backs the range with a huge page. A plain `mmap` gives a 4 KiB
//! aligned address, so every guest page would be mapped on its own, and the
//! small pages at the edges of each huge page would later be collapsed by
//! khugepaged, remapping a running guest's memory under KVM.

use std::ptr::null_mut;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

/// The alignment of guest RAM in brique's address space.
pub const HUGE_PAGE_SIZE: usize = 2 << 20;

/// Errors mapping guest RAM.
#[derive(Debug, thiserror::Error)]
pub enum GuestRamError {
    /// The kernel refused the mapping.
    #[error("mmap of {len} bytes: {source}")]
    Mmap { len: usize, source: std::io::Error },
    /// A range's size does not fit this host's address space.
    #[error("a guest RAM range of {0} bytes does not fit in memory")]
    TooLarge(u64),
    /// vm-memory refused the regions.
    #[error("guest memory layout: {0}")]
    Layout(String),
}

/// One anonymous mapping of guest RAM (`addr`, `len`) inside the address
/// range reserved for it (`reserved`, `reserved_len`), unmapped whole when
/// dropped.
#[derive(Debug)]
struct Mapping {
    addr: usize,
    len: usize,
    reserved: usize,
    reserved_len: usize,
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `reserved..reserved + reserved_len` is a mapping this
        // struct created and owns; its owner (`GuestRam`, held by the VM) is
        // dropped after every user of the guest memory views built on it
        // (see `Vm`).
        unsafe { libc::munmap(self.reserved as *mut libc::c_void, self.reserved_len) };
    }
}

/// The mappings behind a [`GuestMemoryMmap`] built by [`map_guest_ram`].
/// Guest memory views must not outlive it.
#[derive(Debug, Default)]
pub struct GuestRam {
    mappings: Vec<Mapping>,
}

/// Maps `ranges` (guest physical start, length) as 2 MiB-aligned anonymous
/// memory with transparent huge pages requested, and builds guest memory
/// on them. The returned [`GuestRam`] owns the mappings.
pub fn map_guest_ram(ranges: &[(u64, u64)]) -> Result<(GuestMemoryMmap, GuestRam), GuestRamError> {
    let mut ram = GuestRam::default();
    let mut regions = Vec::with_capacity(ranges.len());
    for &(start, len) in ranges {
        let len_bytes = usize::try_from(len).map_err(|_| GuestRamError::TooLarge(len))?;
        let mapping = map_aligned(len_bytes)?;
        advise_huge_pages(mapping.addr, mapping.len);
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: `mapping` is a live anonymous mapping of exactly
        // `len_bytes` bytes, kept in `ram` for as long as the guest memory
        // built here may be used.
        let region = unsafe {
            MmapRegionBuilder::new(len_bytes)
                .with_mmap_prot(prot)
                .with_mmap_flags(flags)
                .with_raw_mmap_pointer(mapping.addr as *mut u8)
        }
        .build()
        .map_err(|err| GuestRamError::Layout(err.to_string()))?;
        ram.mappings.push(mapping);
        let region = GuestRegionMmap::new(region, GuestAddress(start))
            .ok_or(GuestRamError::TooLarge(len))?;
        regions.push(region);
    }
    let memory = GuestMemoryMmap::from_regions(regions)
        .map_err(|err| GuestRamError::Layout(err.to_string()))?;
    Ok((memory, ram))
}

/// Maps `len` bytes of anonymous memory starting on a 2 MiB boundary:
/// reserves 2 MiB more than needed without access, then opens the aligned
/// part. The slack before and after stays reserved (inaccessible, never
/// resident): unmapped, it would leave 2 MiB-aligned holes where the next
/// thread stack lands and, under THP, becomes a whole resident huge page.
fn map_aligned(len: usize) -> Result<Mapping, GuestRamError> {
    let total = len
        .checked_add(HUGE_PAGE_SIZE)
        .ok_or(GuestRamError::TooLarge(len as u64))?;
    // SAFETY: a fresh anonymous mapping at an address the kernel chooses
    // (no MAP_FIXED): nothing existing is touched.
    let reserved = unsafe {
        libc::mmap(
            null_mut(),
            total,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if reserved == libc::MAP_FAILED {
        return Err(GuestRamError::Mmap {
            len: total,
            source: std::io::Error::last_os_error(),
        });
    }
    let start = reserved as usize;
    let aligned = aligned_within(start);
    let mapping = Mapping {
        addr: aligned,
        len,
        reserved: start,
        reserved_len: total,
    };
    // SAFETY: `aligned..aligned + len` lies inside the reservation just
    // made, which `mapping` owns; only its protection changes.
    let opened = unsafe {
        libc::mprotect(
            aligned as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    if opened != 0 {
        return Err(GuestRamError::Mmap {
            len,
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(mapping)
}

/// The first 2 MiB boundary at or after `start`: with 2 MiB of slack
/// reserved, `len` bytes from there stay inside the reservation.
fn aligned_within(start: usize) -> usize {
    start.next_multiple_of(HUGE_PAGE_SIZE)
}

/// Asks for transparent huge pages on a mapping. Where THP is off, guest
/// memory stays in small pages; that is only a warning.
fn advise_huge_pages(addr: usize, len: usize) {
    // SAFETY: `addr..addr + len` is one whole mapping owned by guest RAM;
    // MADV_HUGEPAGE only changes how the kernel backs it, never its contents.
    let advised = unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_HUGEPAGE) };
    if advised != 0 {
        log::warn!(
            "guest memory stays in small pages (madvise MADV_HUGEPAGE: {})",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestMemoryBackend, GuestMemoryRegion};

    /// The VmFlags line of the /proc/self/smaps entry that starts at `addr`.
    fn vm_flags_of_mapping_at(addr: usize) -> Option<String> {
        let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
        let start = format!("{addr:x}-");
        let mut in_mapping = false;
        for line in smaps.lines() {
            let first = line.split_whitespace().next().unwrap_or_default();
            let is_header = first
                .split_once('-')
                .is_some_and(|(from, _)| u64::from_str_radix(from, 16).is_ok());
            if is_header {
                in_mapping = line.starts_with(&start);
            } else if in_mapping {
                if let Some(flags) = line.strip_prefix("VmFlags:") {
                    return Some(flags.trim().to_owned());
                }
            }
        }
        None
    }

    #[test]
    fn the_aligned_part_stays_inside_the_reservation() {
        for start in [0x20_0000, 0x20_1000, 0x3f_f000] {
            let len = 8 << 20;
            let total = len + HUGE_PAGE_SIZE;
            let aligned = aligned_within(start);
            assert_eq!(aligned % HUGE_PAGE_SIZE, 0);
            assert!(aligned >= start && aligned - start < HUGE_PAGE_SIZE);
            assert!(aligned + len <= start + total, "start {start:#x}");
        }
    }

    #[test]
    fn guest_ram_is_huge_page_aligned_advised_and_usable() {
        let (memory, ram) =
            map_guest_ram(&[(0, 6 << 20), (0x1_0000_0000, 4 << 20)]).expect("guest RAM");
        assert_eq!(ram.mappings.len(), 2);
        for region in memory.iter() {
            let addr = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .expect("host address") as usize;
            assert_eq!(addr % HUGE_PAGE_SIZE, 0, "region at {addr:#x}");
            let flags = vm_flags_of_mapping_at(addr).expect("mapping in /proc/self/smaps");
            // "hg": MADV_HUGEPAGE applies to the mapping.
            assert!(
                flags.split_whitespace().any(|flag| flag == "hg"),
                "VmFlags {flags}"
            );
        }
        memory
            .write_obj(0x1234_5678u32, GuestAddress(0x1_0000_0000 + 0x1000))
            .unwrap();
        let read: u32 = memory
            .read_obj(GuestAddress(0x1_0000_0000 + 0x1000))
            .unwrap();
        assert_eq!(read, 0x1234_5678);
        assert!(memory.read_obj::<u32>(GuestAddress(6 << 20)).is_err());
    }
}
