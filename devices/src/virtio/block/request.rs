//! Parsing and validating one virtio-blk request from its descriptor chain,
//! before any byte of guest memory or of the disk is touched.
//!
//! A request is a header (16 bytes, device-readable), data buffers, and a
//! one-byte status (device-writable) last. Anything a hostile guest can get
//! wrong (addresses outside guest memory, lengths that overflow, buffers in
//! the wrong direction, sectors past the end of the disk, chains that are
//! too long or loop) is an error here, reported to the guest as IOERR.

use crate::GuestMemoryMmap;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_DISCARD, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT, VIRTIO_BLK_T_WRITE_ZEROES,
};
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

/// Bytes per sector.
pub const SECTOR_SIZE: u64 = 512;
/// Size of the request header.
pub const HEADER_SIZE: u32 = 16;
/// Length of the GET_ID answer.
pub const ID_BYTES: u32 = 20;
/// Size of one discard / write-zeroes segment.
pub const SEGMENT_SIZE: u32 = 16;

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequestType {
    /// Read sectors into guest buffers.
    In,
    /// Write guest buffers to sectors.
    Out,
    /// Make written data durable.
    Flush,
    /// Return the device id string.
    GetId,
    /// Deallocate ranges.
    Discard,
    /// Zero ranges.
    WriteZeroes,
    /// Anything else (answered UNSUPP).
    Unsupported(u32),
}

impl From<u32> for RequestType {
    fn from(value: u32) -> Self {
        match value {
            VIRTIO_BLK_T_IN => Self::In,
            VIRTIO_BLK_T_OUT => Self::Out,
            VIRTIO_BLK_T_FLUSH => Self::Flush,
            VIRTIO_BLK_T_GET_ID => Self::GetId,
            VIRTIO_BLK_T_DISCARD => Self::Discard,
            VIRTIO_BLK_T_WRITE_ZEROES => Self::WriteZeroes,
            other => Self::Unsupported(other),
        }
    }
}

/// One guest buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Buffer {
    /// Guest address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// A validated request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// What to do.
    pub kind: RequestType,
    /// First sector (In/Out).
    pub sector: u64,
    /// Data buffers, in chain order, all inside guest memory.
    pub data: Vec<Buffer>,
    /// Total data length.
    pub data_len: u64,
    /// Where the status byte goes.
    pub status: GuestAddress,
}

impl Request {
    /// The bytes a rate limiter counts for this request: the data of reads
    /// and writes (other requests count as operations only).
    pub fn rate_limited_bytes(&self) -> u64 {
        match self.kind {
            RequestType::In | RequestType::Out => self.data_len,
            _ => 0,
        }
    }
}

/// Why a request cannot be executed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// The chain has no usable status descriptor: nothing can be reported.
    #[error("no writable status byte at the end of the chain")]
    NoStatus,
    /// The header is missing, too short, writable, or unreadable.
    #[error("bad request header")]
    BadHeader,
    /// A buffer lies (partly) outside guest memory.
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfRange { addr: u64, len: u32 },
    /// A data buffer has the wrong direction for the request.
    #[error("data buffer has the wrong direction")]
    WrongDirection,
    /// Data lengths overflow or are not whole sectors.
    #[error("data length is not a whole number of sectors")]
    BadLength,
    /// The request reaches past the end of the disk.
    #[error("sectors {sector}+{sectors} are past the end of the disk ({capacity} sectors)")]
    PastEnd {
        sector: u64,
        sectors: u64,
        capacity: u64,
    },
}

/// Parses the chain. On `Err(NoStatus)` the request cannot be answered; on
/// any other error the status byte at `status` can still carry IOERR, so it
/// is returned with the error.
pub fn parse(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    capacity_sectors: u64,
    max_descriptors: usize,
) -> Result<Request, (RequestError, Option<GuestAddress>)> {
    // The iterator stops at the queue size (so a loop ends) and on bad
    // indices; copying the descriptors out bounds the work per request.
    let descriptors: Vec<_> = chain.take(max_descriptors + 1).collect();
    if descriptors.len() > max_descriptors {
        return Err((RequestError::BadLength, None));
    }
    let (Some(head), Some(last)) = (descriptors.first(), descriptors.last()) else {
        return Err((RequestError::NoStatus, None));
    };
    let status_usable = descriptors.len() >= 2
        && last.is_write_only()
        && last.len() >= 1
        && mem.check_range(last.addr(), 1);
    if !status_usable {
        return Err((RequestError::NoStatus, None));
    }
    let status = last.addr();
    let fail = |err| Err((err, Some(status)));

    if head.is_write_only() || head.len() < HEADER_SIZE {
        return fail(RequestError::BadHeader);
    }
    let Ok(kind) = mem.read_obj::<u32>(head.addr()) else {
        return fail(RequestError::BadHeader);
    };
    let Some(sector_addr) = head.addr().checked_add(8) else {
        return fail(RequestError::BadHeader);
    };
    let Ok(sector) = mem.read_obj::<u64>(sector_addr) else {
        return fail(RequestError::BadHeader);
    };
    let kind = RequestType::from(u32::from_le(kind));
    let sector = u64::from_le(sector);

    let device_writes = matches!(kind, RequestType::In | RequestType::GetId);
    let mut data = Vec::with_capacity(descriptors.len() - 2);
    let mut data_len: u64 = 0;
    for desc in &descriptors[1..descriptors.len() - 1] {
        if desc.is_write_only() != device_writes {
            return fail(RequestError::WrongDirection);
        }
        let len = desc.len();
        let usize_len = usize::try_from(len).unwrap_or(usize::MAX);
        if !mem.check_range(desc.addr(), usize_len) {
            return fail(RequestError::OutOfRange {
                addr: desc.addr().raw_value(),
                len,
            });
        }
        data_len = match data_len.checked_add(u64::from(len)) {
            Some(total) => total,
            None => return fail(RequestError::BadLength),
        };
        data.push(Buffer {
            addr: desc.addr(),
            len,
        });
    }

    match kind {
        RequestType::In | RequestType::Out => {
            if data_len % SECTOR_SIZE != 0 {
                return fail(RequestError::BadLength);
            }
            let sectors = data_len / SECTOR_SIZE;
            let in_range = sector
                .checked_add(sectors)
                .is_some_and(|end| end <= capacity_sectors);
            if !in_range {
                return fail(RequestError::PastEnd {
                    sector,
                    sectors,
                    capacity: capacity_sectors,
                });
            }
        }
        RequestType::Discard | RequestType::WriteZeroes => {
            if data_len == 0 || data_len % u64::from(SEGMENT_SIZE) != 0 {
                return fail(RequestError::BadLength);
            }
        }
        RequestType::GetId | RequestType::Flush | RequestType::Unsupported(_) => {}
    }
    Ok(Request {
        kind,
        sector,
        data,
        data_len,
        status,
    })
}
