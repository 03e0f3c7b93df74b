//! The snapshot memory file: guest RAM as one flat file, its ranges laid
//! end to end in guest address order. A full snapshot writes every page
//! (pages of zeros stay holes, so the file is sparse); a diff snapshot
//! writes only the pages dirtied since the last snapshot, at the same
//! offsets, into the file it is given without truncating it, so that a
//! diff written over a copy of the full file it follows is a full file.

use super::SnapshotError;
use crate::vm::PAGE_SIZE;
use brique_devices::GuestMemoryMmap;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;
use vm_memory::{GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};

/// Which pages a snapshot writes.
#[derive(Debug)]
pub enum Pages {
    /// Every page (zero pages as holes in a fresh file).
    All,
    /// The pages set in one bitmap per region (bit N of word W: page
    /// 64 W + N of the region).
    Dirty(Vec<Vec<u64>>),
}

/// Guest RAM's size in bytes: what the memory file must hold.
pub fn total_size(memory: &GuestMemoryMmap) -> u64 {
    memory.iter().map(|region| region.len()).sum()
}

/// Writes `pages` of `memory` into the memory file at `path`. For
/// [`Pages::All`] the file is made anew; for dirty pages it is opened as
/// it is (created if missing) and only grown to the guest's size.
/// `anonymous` says guest RAM is anonymous memory (not a restored memory
/// file): then pages the guest never touched are known from the page map
/// and not even read.
pub fn write(
    memory: &GuestMemoryMmap,
    path: &Path,
    pages: &Pages,
    anonymous: bool,
) -> Result<(), SnapshotError> {
    let io_error = |source| SnapshotError::Io {
        what: "write the memory file",
        path: path.to_owned(),
        source,
    };
    let full = matches!(pages, Pages::All);
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(full)
        .open(path)
        .map_err(io_error)?;
    let total = total_size(memory);
    if file.metadata().map_err(io_error)?.len() < total {
        file.set_len(total).map_err(io_error)?;
    }
    let mut file_offset = 0u64;
    for (index, region) in memory.iter().enumerate() {
        let pages_in_region = region.len() as usize / PAGE_SIZE;
        let touched = match (pages, anonymous) {
            (Pages::All, true) => Some(touched_pages(region).map_err(io_error)?),
            _ => None,
        };
        let wanted = |page: usize| match pages {
            Pages::All => touched
                .as_ref()
                .is_none_or(|touched| touched.get(page).copied().unwrap_or(true)),
            Pages::Dirty(bitmaps) => bitmaps
                .get(index)
                .and_then(|bitmap| bitmap.get(page / 64))
                .is_some_and(|word| word & (1 << (page % 64)) != 0),
        };
        write_region_pages(region, &file, file_offset, pages_in_region, wanted, full)
            .map_err(io_error)?;
        file_offset += region.len();
    }
    file.sync_all().map_err(io_error)
}

/// Writes the wanted pages of one region, runs of adjacent pages in one
/// write. In a fresh file (`skip_zero_pages`) pages of zeros are skipped.
fn write_region_pages(
    region: &brique_devices::GuestRegionMmap,
    file: &File,
    file_offset: u64,
    pages: usize,
    wanted: impl Fn(usize) -> bool,
    skip_zero_pages: bool,
) -> std::io::Result<()> {
    let host = region
        .get_host_address(MemoryRegionAddress(0))
        .map_err(|err| std::io::Error::other(err.to_string()))?;
    // SAFETY: the region is a live mapping of `region.len()` bytes that
    // outlives this call; the vCPUs are paused and the device threads hold
    // off (the snapshot holds their locks), so nothing writes it meanwhile.
    let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, region.len() as usize) };
    let mut page = 0;
    while page < pages {
        let keep = |page: usize| {
            let contents = &bytes[page * PAGE_SIZE..(page + 1) * PAGE_SIZE];
            wanted(page) && !(skip_zero_pages && is_zero(contents))
        };
        if !keep(page) {
            page += 1;
            continue;
        }
        let start = page;
        while page < pages && keep(page) {
            page += 1;
        }
        let run = &bytes[start * PAGE_SIZE..page * PAGE_SIZE];
        file.write_all_at(run, file_offset + (start * PAGE_SIZE) as u64)?;
    }
    Ok(())
}

/// Whether a page holds only zeros (compared 16 bytes at a time).
fn is_zero(page: &[u8]) -> bool {
    page.chunks_exact(16)
        .all(|chunk| u128::from_ne_bytes(chunk.try_into().unwrap_or([1; 16])) == 0)
}

/// Page-map bits: the page is in memory, or swapped out.
const PAGEMAP_PRESENT: u64 = 1 << 63;
const PAGEMAP_SWAPPED: u64 = 1 << 62;

/// For each page of an anonymous region, whether the guest (or brique)
/// ever touched it: a page neither present nor swapped out was never
/// written and reads as zeros. From /proc/self/pagemap.
fn touched_pages(region: &brique_devices::GuestRegionMmap) -> std::io::Result<Vec<bool>> {
    let host = region
        .get_host_address(MemoryRegionAddress(0))
        .map_err(|err| std::io::Error::other(err.to_string()))? as u64;
    let pages = region.len() as usize / PAGE_SIZE;
    let pagemap = File::open("/proc/self/pagemap")?;
    let mut entries = vec![0u8; pages * 8];
    pagemap.read_exact_at(&mut entries, host / PAGE_SIZE as u64 * 8)?;
    Ok(entries
        .chunks_exact(8)
        .map(|entry| {
            let entry = u64::from_le_bytes(entry.try_into().unwrap_or([0xff; 8]));
            entry & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED) != 0
        })
        .collect())
}

/// Opens a memory file for a restore: it must hold `needed` bytes.
pub fn open_for_restore(path: &Path, needed: u64) -> Result<File, SnapshotError> {
    let file = File::open(path).map_err(|source| SnapshotError::Io {
        what: "open the memory file",
        path: path.to_owned(),
        source,
    })?;
    let len = file
        .metadata()
        .map_err(|source| SnapshotError::Io {
            what: "read the memory file's size",
            path: path.to_owned(),
            source,
        })?
        .len();
    if len < needed {
        return Err(SnapshotError::MemoryFileTooSmall {
            path: path.to_owned(),
            len,
            needed,
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[
            (GuestAddress(0), 64 * 1024),
            (GuestAddress(1 << 20), 32 * 1024),
        ])
        .unwrap()
    }

    fn scratch(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("brique-memfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir.join(name)
    }

    #[test]
    fn a_full_file_is_the_ranges_end_to_end_with_zero_pages_as_holes() {
        let memory = memory();
        memory.write_obj(0x11u8, GuestAddress(0x1000)).unwrap();
        memory
            .write_obj(0x22u8, GuestAddress((1 << 20) + 0x2005))
            .unwrap();
        let path = scratch("full.mem");
        write(&memory, &path, &Pages::All, true).unwrap();
        let contents = std::fs::read(&path).unwrap();
        assert_eq!(contents.len(), 96 * 1024);
        assert_eq!(contents[0x1000], 0x11);
        assert_eq!(contents[64 * 1024 + 0x2005], 0x22);
        assert_eq!(contents.iter().filter(|&&b| b != 0).count(), 2);
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_diff_over_a_copy_of_the_full_file_is_the_later_full_file() {
        let memory = memory();
        memory.write_obj(0x11u8, GuestAddress(0x1000)).unwrap();
        memory.write_obj(0x33u8, GuestAddress(0x3000)).unwrap();
        let full = scratch("base.mem");
        write(&memory, &full, &Pages::All, true).unwrap();
        // Later: page 1 changes, page 3 becomes zeros, page 5 of region 1 is new.
        memory.write_obj(0x44u8, GuestAddress(0x1000)).unwrap();
        memory.write_obj(0u8, GuestAddress(0x3000)).unwrap();
        memory
            .write_obj(0x55u8, GuestAddress((1 << 20) + 0x5000))
            .unwrap();
        let diff = scratch("diff.mem");
        std::fs::copy(&full, &diff).unwrap();
        let dirty = Pages::Dirty(vec![vec![(1 << 1) | (1 << 3)], vec![1 << 5]]);
        write(&memory, &diff, &dirty, true).unwrap();
        let later = scratch("later-full.mem");
        write(&memory, &later, &Pages::All, false).unwrap();
        assert_eq!(
            std::fs::read(&diff).unwrap(),
            std::fs::read(&later).unwrap()
        );
        for path in [full, diff, later] {
            std::fs::remove_file(path).unwrap();
        }
    }

    #[test]
    fn a_memory_file_smaller_than_the_guest_is_refused() {
        let path = scratch("short.mem");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        let err = open_for_restore(&path, 8192).unwrap_err();
        assert!(err.to_string().contains("4096 bytes"), "{err}");
        assert!(open_for_restore(&path, 4096).is_ok());
        std::fs::remove_file(&path).unwrap();
    }
}
