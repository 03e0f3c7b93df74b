//! Guest RAM: anonymous mappings that start on a 2 MiB boundary and ask for
//! transparent huge pages, as QEMU and Cloud Hypervisor lay out theirs.
//!
//! KVM maps guest memory with 2 MiB nested page-table entries only where the
//! guest physical and the host virtual address agree modulo 2 MiB and the
//! host backs the range with a huge page. A plain `mmap` gives a 4 KiB
//! aligned address, so every guest page would be mapped on its own, and the
//! small pages at the edges of each huge page would later be collapsed by
//! khugepaged, remapping a running guest's memory under KVM.
//!
//! A VM restored from a snapshot maps its memory file instead, privately:
//! pages are read from the file only when first touched and copied only
//! when written, so restoring costs the same whatever the guest's size.

use brique_devices::{GuestMemoryMmap, GuestRegionMmap};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::ptr::null_mut;
use vm_memory::bitmap::{AtomicBitmap, NewBitmap};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::GuestAddress;

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
    /// The memory file cannot be mapped.
    #[error("cannot map the memory file at offset {offset}: {source}")]
    MapFile { offset: u64, source: std::io::Error },
    /// The host's hugetlbfs pool cannot give the guest its 2 MiB pages.
    #[error(
        "huge_pages 2M: the host cannot reserve {needed} 2 MiB huge pages for guest memory \
         ({free} free in its pool; raise /proc/sys/vm/nr_hugepages): {source}"
    )]
    HugePages {
        needed: usize,
        free: String,
        source: std::io::Error,
    },
}

/// What guest RAM starts out as.
#[derive(Debug, Clone, Copy)]
pub enum RamBacking<'a> {
    /// Zeroed anonymous memory (a VM that boots).
    Anonymous,
    /// Zeroed 2 MiB pages from the host's hugetlbfs pool, reserved now
    /// (a VM that boots with `huge_pages: "2M"`).
    HugePages2M,
    /// A snapshot's memory file, the ranges laid end to end in it, mapped
    /// privately (a restored VM).
    File(&'a File),
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

/// Maps `ranges` (guest physical start, length) 2 MiB-aligned, from
/// `backing`, and builds guest memory on them: anonymous memory asks for
/// transparent huge pages; a memory file is mapped privately, range after
/// range. The returned [`GuestRam`] owns the mappings.
pub fn map_guest_ram(
    ranges: &[(u64, u64)],
    backing: RamBacking<'_>,
) -> Result<(GuestMemoryMmap, GuestRam), GuestRamError> {
    let mut ram = GuestRam::default();
    let mut regions = Vec::with_capacity(ranges.len());
    let mut file_offset = 0u64;
    for &(start, len) in ranges {
        let len_bytes = usize::try_from(len).map_err(|_| GuestRamError::TooLarge(len))?;
        let mapping = map_aligned(len_bytes)?;
        let flags = match backing {
            RamBacking::Anonymous => {
                advise_huge_pages(mapping.addr, mapping.len);
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE
            }
            RamBacking::HugePages2M => {
                map_huge_pages_over(&mapping)?;
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_HUGETLB | libc::MAP_HUGE_2MB
            }
            RamBacking::File(file) => {
                map_file_over(&mapping, file, file_offset)?;
                map_saved_pages(&mapping, file, file_offset);
                libc::MAP_PRIVATE | libc::MAP_NORESERVE
            }
        };
        file_offset += len;
        let prot = libc::PROT_READ | libc::PROT_WRITE;
        // SAFETY: `mapping` is a live mapping of exactly `len_bytes` bytes,
        // kept in `ram` for as long as the guest memory built here may be used.
        let region = unsafe {
            MmapRegionBuilder::new_with_bitmap(len_bytes, AtomicBitmap::with_len(len_bytes))
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

/// Replaces the aligned part of `mapping` with a private (copy-on-write)
/// mapping of `file` from `offset`.
fn map_file_over(mapping: &Mapping, file: &File, offset: u64) -> Result<(), GuestRamError> {
    let map_error = |source| GuestRamError::MapFile { offset, source };
    let file_offset = libc::off_t::try_from(offset)
        .map_err(|_| map_error(std::io::Error::from(std::io::ErrorKind::InvalidInput)))?;
    // SAFETY: MAP_FIXED replaces only `mapping.addr..+len`, which lies inside
    // the reservation `mapping` owns; the file descriptor is valid for the call
    // (the mapping keeps its own reference to the file).
    let mapped = unsafe {
        libc::mmap(
            mapping.addr as *mut libc::c_void,
            mapping.len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_FIXED | libc::MAP_NORESERVE,
            file.as_raw_fd(),
            file_offset,
        )
    };
    if mapped == libc::MAP_FAILED {
        return Err(map_error(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Replaces the aligned part of `mapping` with private 2 MiB pages from
/// the hugetlbfs pool, reserved now (no MAP_NORESERVE), so that a short
/// pool is an error before the guest runs rather than a fault later.
fn map_huge_pages_over(mapping: &Mapping) -> Result<(), GuestRamError> {
    // SAFETY: MAP_FIXED replaces only `mapping.addr..+len`, which lies inside
    // the reservation `mapping` owns (2 MiB-aligned; `len` is a multiple of
    // 2 MiB, checked by the machine configuration).
    let mapped = unsafe {
        libc::mmap(
            mapping.addr as *mut libc::c_void,
            mapping.len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE
                | libc::MAP_ANONYMOUS
                | libc::MAP_FIXED
                | libc::MAP_HUGETLB
                | libc::MAP_HUGE_2MB,
            -1,
            0,
        )
    };
    if mapped == libc::MAP_FAILED {
        return Err(GuestRamError::HugePages {
            needed: mapping.len / HUGE_PAGE_SIZE,
            free: std::fs::read_to_string(FREE_HUGE_PAGES)
                .map_or_else(|_| "none".to_owned(), |text| text.trim().to_owned()),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// How many 2 MiB pages the host's hugetlbfs pool has free.
const FREE_HUGE_PAGES: &str = "/sys/kernel/mm/hugepages/hugepages-2048kB/free_hugepages";

/// Maps in advance the pages of a (sparse) memory file that hold data,
/// read-only from the page cache (MADV_POPULATE_READ): the guest then
/// touches its saved pages without a host page fault each, while holes,
/// which the guest never wrote, stay unmapped. This costs what the guest
/// had touched, not its size. Where the kernel lacks it, pages come on
/// first touch as before.
fn map_saved_pages(mapping: &Mapping, file: &File, offset: u64) {
    let started = std::time::Instant::now();
    let end = offset + mapping.len as u64;
    let mut at = offset;
    let mut mapped = 0u64;
    while at < end {
        let Some((data, hole)) = next_data(file, at, end) else {
            break;
        };
        let start = mapping.addr + (data - offset) as usize;
        let len = (hole - data) as usize;
        // SAFETY: `start..start + len` lies inside `mapping` (data and hole
        // are within `offset..end`); populating only maps pages in.
        let advised =
            unsafe { libc::madvise(start as *mut libc::c_void, len, libc::MADV_POPULATE_READ) };
        if advised != 0 {
            log::debug!(
                "memory file pages come on first touch (MADV_POPULATE_READ: {})",
                std::io::Error::last_os_error()
            );
            return;
        }
        mapped += hole - data;
        at = hole;
    }
    log::debug!(
        "memory file: {:.1} MiB of saved pages mapped ahead in {:.1} ms",
        mapped as f64 / f64::from(1 << 20),
        started.elapsed().as_secs_f64() * 1e3
    );
}

/// The next data range of `file` at or after `from`, before `end`.
fn next_data(file: &File, from: u64, end: u64) -> Option<(u64, u64)> {
    let seek = |offset: u64, whence| {
        // SAFETY: lseek on a descriptor this function borrows; it only
        // moves the file offset, which nothing else here relies on.
        let at = unsafe { libc::lseek(file.as_raw_fd(), offset as libc::off_t, whence) };
        u64::try_from(at).ok()
    };
    let data = seek(from, libc::SEEK_DATA)?;
    if data >= end {
        return None;
    }
    let hole = seek(data, libc::SEEK_HOLE)?.min(end);
    Some((data, hole))
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
    use std::io::Write;
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

    /// Whether a mapping advised MADV_HUGEPAGE here shows `hg` in smaps
    /// (not under qemu-user, which accepts the advice and drops it).
    fn madvise_shows_in_smaps() -> bool {
        let len = 2 * HUGE_PAGE_SIZE;
        let mapping = map_aligned(len).expect("a test mapping");
        advise_huge_pages(mapping.addr, mapping.len);
        vm_flags_of_mapping_at(mapping.addr)
            .is_some_and(|flags| flags.split_whitespace().any(|flag| flag == "hg"))
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
        let (memory, ram) = map_guest_ram(
            &[(0, 6 << 20), (0x1_0000_0000, 4 << 20)],
            RamBacking::Anonymous,
        )
        .expect("guest RAM");
        assert_eq!(ram.mappings.len(), 2);
        let kernel_shows_advice = madvise_shows_in_smaps();
        if !kernel_shows_advice {
            eprintln!(
                "\n*** SKIPPED: this kernel (or emulator, e.g. qemu-user) does not show \
                 MADV_HUGEPAGE in smaps; only the alignment is checked ***\n"
            );
        }
        for region in memory.iter() {
            let addr = region
                .get_host_address(vm_memory::MemoryRegionAddress(0))
                .expect("host address") as usize;
            assert_eq!(addr % HUGE_PAGE_SIZE, 0, "region at {addr:#x}");
            let flags = vm_flags_of_mapping_at(addr).expect("mapping in /proc/self/smaps");
            // "hg": MADV_HUGEPAGE applies to the mapping.
            assert!(
                !kernel_shows_advice || flags.split_whitespace().any(|flag| flag == "hg"),
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

    #[test]
    fn huge_pages_2m_come_from_the_pool_or_the_shortage_is_named() {
        let free: usize = std::fs::read_to_string(FREE_HUGE_PAGES)
            .ok()
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(0);
        // One page more than the pool has free can never be reserved.
        let too_many = (free + 1) * HUGE_PAGE_SIZE;
        let Err(err) = map_guest_ram(&[(0, too_many as u64)], RamBacking::HugePages2M) else {
            // Only an emulator that drops MAP_HUGETLB (qemu-user) gets here.
            eprintln!(
                "\n*** SKIPPED: MAP_HUGETLB is not honoured here (an emulator such as \
                 qemu-user); huge pages are not checked ***\n"
            );
            return;
        };
        assert!(matches!(err, GuestRamError::HugePages { .. }), "{err}");
        assert!(err.to_string().contains("nr_hugepages"), "{err}");
        if free == 0 {
            eprintln!(
                "\n*** SKIPPED (in part): the host has no free 2 MiB huge pages; only the \
                 refusal is checked ***\n"
            );
            return;
        }
        let (memory, _ram) =
            map_guest_ram(&[(0, HUGE_PAGE_SIZE as u64)], RamBacking::HugePages2M).unwrap();
        memory.write_obj(0xabcdu16, GuestAddress(0x1000)).unwrap();
        assert_eq!(
            memory.read_obj::<u16>(GuestAddress(0x1000)).unwrap(),
            0xabcd
        );
        let addr = memory
            .iter()
            .next()
            .unwrap()
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .unwrap() as usize;
        let flags = vm_flags_of_mapping_at(addr).unwrap();
        assert!(
            flags.split_whitespace().any(|flag| flag == "ht"),
            "VmFlags {flags}"
        );
    }

    #[test]
    fn a_memory_file_is_mapped_privately_range_after_range() {
        let mut file = tempfile_in_target("guest-ram-file");
        let mut contents = vec![0u8; 6 << 20];
        contents[0x1000] = 0xaa; // first range
        contents[(4 << 20) + 0x2000] = 0xbb; // second range, offset 0x2000
        file.write_all(&contents).unwrap();
        let (memory, _ram) = map_guest_ram(
            &[(0, 4 << 20), (0x1_0000_0000, 2 << 20)],
            RamBacking::File(&file),
        )
        .expect("file-backed guest RAM");
        assert_eq!(memory.read_obj::<u8>(GuestAddress(0x1000)).unwrap(), 0xaa);
        assert_eq!(
            memory
                .read_obj::<u8>(GuestAddress(0x1_0000_0000 + 0x2000))
                .unwrap(),
            0xbb
        );
        // Writes stay private: the file keeps its contents.
        memory.write_obj(0x55u8, GuestAddress(0x1000)).unwrap();
        let mut on_disk = [0u8; 1];
        std::os::unix::fs::FileExt::read_exact_at(&file, &mut on_disk, 0x1000).unwrap();
        assert_eq!(on_disk[0], 0xaa);
        // And the VMM's own write is in the dirty bitmap.
        let region = memory.find_region(GuestAddress(0x1000)).unwrap();
        let written = vm_memory::mmap::MmapRegion::bitmap(region);
        assert!(written.is_addr_set(0x1000));
        assert!(!written.is_addr_set(0x3000));
    }

    fn tempfile_in_target(name: &str) -> File {
        let path = std::env::temp_dir().join(format!("brique-{name}-{}", std::process::id()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }
}
