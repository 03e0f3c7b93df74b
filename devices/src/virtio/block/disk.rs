//! Executing validated virtio-blk requests against the backing file.
//! Synchronous I/O on the device event loop: `pread`/`pwrite`-style
//! positioned access, `fdatasync` for flushes in writeback mode, hole
//! punching for discard and write-zeroes.

use super::request::{Request, RequestType, ID_BYTES, SECTOR_SIZE, SEGMENT_SIZE};
use crate::GuestMemoryMmap;
use std::fs::File;
use std::io::{Seek, SeekFrom};
use virtio_bindings::virtio_blk::{VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK, VIRTIO_BLK_S_UNSUPP};
use vm_memory::{Address, Bytes};
use vmm_sys_util::fallocate::{fallocate, FallocateMode};

/// Write-zeroes segment flag: the range may be deallocated.
const WRITE_ZEROES_FLAG_UNMAP: u32 = 1;

/// How flush requests are honoured (Firecracker's `cache_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CacheMode {
    /// Flushes are acknowledged without syncing (FLUSH not offered).
    Unsafe,
    /// Flushes `fdatasync` the file before completing.
    Writeback,
}

/// The backing file of a block device.
#[derive(Debug)]
pub struct Disk {
    file: File,
    capacity_sectors: u64,
    read_only: bool,
    cache: CacheMode,
    id: [u8; ID_BYTES as usize],
}

/// A finished request: the status byte and the bytes written into guest
/// buffers (for the used ring).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Completion {
    /// VIRTIO_BLK_S_*.
    pub status: u8,
    /// Bytes the device wrote into the chain's data buffers.
    pub written: u32,
}

impl Completion {
    fn ok(written: u32) -> Self {
        Self {
            status: VIRTIO_BLK_S_OK as u8,
            written,
        }
    }

    /// An I/O error.
    pub fn ioerr() -> Self {
        Self {
            status: VIRTIO_BLK_S_IOERR as u8,
            written: 0,
        }
    }
}

impl Disk {
    /// A disk over `file` (opened read-only when `read_only`), whose id
    /// string (GET_ID) is `id`, truncated to 20 bytes.
    pub fn new(
        mut file: File,
        read_only: bool,
        cache: CacheMode,
        id: &str,
    ) -> std::io::Result<Self> {
        let size = file.seek(SeekFrom::End(0))?;
        let mut id_bytes = [0u8; ID_BYTES as usize];
        let n = id.len().min(id_bytes.len());
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self {
            file,
            capacity_sectors: size / SECTOR_SIZE,
            read_only,
            cache,
            id: id_bytes,
        })
    }

    /// A second handle on the backing file, for checks from tests.
    #[cfg(any(test, feature = "fuzzing"))]
    pub fn file_for_checks(&self) -> File {
        self.file
            .try_clone()
            .unwrap_or_else(|_| File::open("/dev/null").expect("/dev/null"))
    }

    /// Size in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.capacity_sectors
    }

    /// Whether writes are refused.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// Flush semantics.
    pub fn cache(&self) -> CacheMode {
        self.cache
    }

    /// Executes `req`, whose buffers were checked against `mem`.
    pub fn execute(&mut self, req: &Request, mem: &GuestMemoryMmap) -> Completion {
        let writes = matches!(
            req.kind,
            RequestType::Out | RequestType::Discard | RequestType::WriteZeroes
        );
        if writes && self.read_only {
            return Completion::ioerr();
        }
        let result = match req.kind {
            RequestType::In => self.read(req, mem),
            RequestType::Out => self.write(req, mem),
            RequestType::Flush => self.flush(),
            RequestType::GetId => self.get_id(req, mem),
            RequestType::Discard => self.deallocate(req, mem, false),
            RequestType::WriteZeroes => self.deallocate(req, mem, true),
            RequestType::Unsupported(kind) => {
                log::debug!("virtio-blk: unsupported request type {kind}");
                return Completion {
                    status: VIRTIO_BLK_S_UNSUPP as u8,
                    written: 0,
                };
            }
        };
        result.unwrap_or_else(|err| {
            log::warn!(
                "virtio-blk: {:?} at sector {} failed: {err}",
                req.kind,
                req.sector
            );
            Completion::ioerr()
        })
    }

    fn read(&mut self, req: &Request, mem: &GuestMemoryMmap) -> std::io::Result<Completion> {
        self.file.seek(SeekFrom::Start(req.sector * SECTOR_SIZE))?;
        for buf in &req.data {
            mem.read_exact_volatile_from(buf.addr, &mut self.file, buf.len as usize)
                .map_err(std::io::Error::other)?;
        }
        Ok(Completion::ok(req.data_len as u32))
    }

    fn write(&mut self, req: &Request, mem: &GuestMemoryMmap) -> std::io::Result<Completion> {
        self.file.seek(SeekFrom::Start(req.sector * SECTOR_SIZE))?;
        for buf in &req.data {
            mem.write_all_volatile_to(buf.addr, &mut self.file, buf.len as usize)
                .map_err(std::io::Error::other)?;
        }
        Ok(Completion::ok(0))
    }

    fn flush(&mut self) -> std::io::Result<Completion> {
        if self.cache == CacheMode::Writeback {
            self.file.sync_data()?;
        }
        Ok(Completion::ok(0))
    }

    fn get_id(&mut self, req: &Request, mem: &GuestMemoryMmap) -> std::io::Result<Completion> {
        let mut left: &[u8] = &self.id;
        let mut written = 0u32;
        for buf in &req.data {
            let n = left.len().min(buf.len as usize);
            mem.write_slice(&left[..n], buf.addr)
                .map_err(std::io::Error::other)?;
            written += n as u32;
            left = &left[n..];
        }
        Ok(Completion::ok(written))
    }

    /// Discard (punch holes) or write zeroes, segment by segment; every
    /// segment is checked before any is applied.
    fn deallocate(
        &mut self,
        req: &Request,
        mem: &GuestMemoryMmap,
        zeroes: bool,
    ) -> std::io::Result<Completion> {
        let mut segments = Vec::new();
        for buf in &req.data {
            for i in 0..buf.len / SEGMENT_SIZE {
                let addr = buf.addr.unchecked_add(u64::from(i * SEGMENT_SIZE));
                let sector =
                    u64::from_le(mem.read_obj::<u64>(addr).map_err(std::io::Error::other)?);
                let count = u32::from_le(
                    mem.read_obj::<u32>(addr.unchecked_add(8))
                        .map_err(std::io::Error::other)?,
                );
                let flags = u32::from_le(
                    mem.read_obj::<u32>(addr.unchecked_add(12))
                        .map_err(std::io::Error::other)?,
                );
                let end = sector.checked_add(u64::from(count));
                if end.is_none_or(|end| end > self.capacity_sectors) {
                    return Ok(Completion::ioerr());
                }
                segments.push((sector, count, flags));
            }
        }
        for (sector, count, flags) in segments {
            let mode = if zeroes && flags & WRITE_ZEROES_FLAG_UNMAP == 0 {
                FallocateMode::ZeroRange
            } else {
                FallocateMode::PunchHole
            };
            fallocate(
                &self.file,
                mode,
                true,
                sector * SECTOR_SIZE,
                u64::from(count) * SECTOR_SIZE,
            )
            .map_err(|err| std::io::Error::from_raw_os_error(err.errno()))?;
        }
        Ok(Completion::ok(0))
    }
}
