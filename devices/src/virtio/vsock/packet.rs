//! The virtio-vsock packet: its 44-byte header (`struct virtio_vsock_hdr`,
//! little endian, packed) and the guest buffers a packet is read from (a TX
//! chain) or written into (an RX chain).
//!
//! A descriptor chain is validated whole before a byte moves: every buffer
//! must have the right direction and lie inside guest memory, and a TX
//! header must announce no more payload than the chain carries nor more
//! than [`MAX_PAYLOAD`]. A chain that fails is returned to the guest unused;
//! no guest input can make this module panic.

use crate::GuestMemoryMmap;
use virtio_queue::DescriptorChain;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

/// Size of the packet header.
pub const HEADER_LEN: usize = 44;
/// Largest payload of one packet (Linux's VIRTIO_VSOCK_MAX_PKT_BUF_SIZE).
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The host's context id: the only destination a guest packet may have.
pub const HOST_CID: u64 = 2;
/// Socket type of a stream connection (the only type brique offers).
pub const TYPE_STREAM: u16 = 1;
/// SHUTDOWN flag: the sender will receive no more data.
pub const SHUTDOWN_RCV: u32 = 1;
/// SHUTDOWN flag: the sender will send no more data.
pub const SHUTDOWN_SEND: u32 = 2;

/// A packet's operation (`VIRTIO_VSOCK_OP_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Connection request.
    Request,
    /// Connection accepted.
    Response,
    /// Connection reset (refused or torn down).
    Rst,
    /// Half or full close, with SHUTDOWN_* flags.
    Shutdown,
    /// Stream data.
    Rw,
    /// The sender's buf_alloc / fwd_cnt, unprompted or as an answer.
    CreditUpdate,
    /// Asks the receiver for a credit update.
    CreditRequest,
}

impl Op {
    /// The wire value.
    pub fn code(self) -> u16 {
        match self {
            Op::Request => 1,
            Op::Response => 2,
            Op::Rst => 3,
            Op::Shutdown => 4,
            Op::Rw => 5,
            Op::CreditUpdate => 6,
            Op::CreditRequest => 7,
        }
    }

    /// The operation with wire value `code`, if there is one.
    pub fn from_code(code: u16) -> Option<Self> {
        Some(match code {
            1 => Op::Request,
            2 => Op::Response,
            3 => Op::Rst,
            4 => Op::Shutdown,
            5 => Op::Rw,
            6 => Op::CreditUpdate,
            7 => Op::CreditRequest,
            _ => return None,
        })
    }
}

/// A packet header, fields as on the wire (`op` raw: a guest may send any).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Header {
    /// Source context id.
    pub src_cid: u64,
    /// Destination context id.
    pub dst_cid: u64,
    /// Source port.
    pub src_port: u32,
    /// Destination port.
    pub dst_port: u32,
    /// Payload length.
    pub len: u32,
    /// Socket type ([`TYPE_STREAM`]).
    pub socket_type: u16,
    /// Operation ([`Op::code`]).
    pub op: u16,
    /// Operation flags (SHUTDOWN_*).
    pub flags: u32,
    /// Receive buffer space the sender has for this connection.
    pub buf_alloc: u32,
    /// Bytes the sender has consumed from this connection so far.
    pub fwd_cnt: u32,
}

impl Header {
    /// Parses the wire bytes.
    pub fn from_bytes(bytes: &[u8; HEADER_LEN]) -> Self {
        let u64_at = |at: usize| {
            let mut le = [0u8; 8];
            le.copy_from_slice(&bytes[at..at + 8]);
            u64::from_le_bytes(le)
        };
        let u32_at = |at: usize| {
            u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
        };
        let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
        Self {
            src_cid: u64_at(0),
            dst_cid: u64_at(8),
            src_port: u32_at(16),
            dst_port: u32_at(20),
            len: u32_at(24),
            socket_type: u16_at(28),
            op: u16_at(30),
            flags: u32_at(32),
            buf_alloc: u32_at(36),
            fwd_cnt: u32_at(40),
        }
    }

    /// The wire bytes.
    pub fn to_bytes(&self) -> [u8; HEADER_LEN] {
        let mut bytes = [0u8; HEADER_LEN];
        bytes[0..8].copy_from_slice(&self.src_cid.to_le_bytes());
        bytes[8..16].copy_from_slice(&self.dst_cid.to_le_bytes());
        bytes[16..20].copy_from_slice(&self.src_port.to_le_bytes());
        bytes[20..24].copy_from_slice(&self.dst_port.to_le_bytes());
        bytes[24..28].copy_from_slice(&self.len.to_le_bytes());
        bytes[28..30].copy_from_slice(&self.socket_type.to_le_bytes());
        bytes[30..32].copy_from_slice(&self.op.to_le_bytes());
        bytes[32..36].copy_from_slice(&self.flags.to_le_bytes());
        bytes[36..40].copy_from_slice(&self.buf_alloc.to_le_bytes());
        bytes[40..44].copy_from_slice(&self.fwd_cnt.to_le_bytes());
        bytes
    }

    /// The operation, `None` for a value no spec defines.
    pub fn op(&self) -> Option<Op> {
        Op::from_code(self.op)
    }
}

/// Why a descriptor chain cannot carry a packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    /// A TX chain has a buffer the device should write, or an RX chain one
    /// it should only read.
    #[error("a buffer has the wrong direction for this queue")]
    WrongDirection,
    /// A buffer lies (partly) outside guest memory.
    #[error("buffer {addr:#x}+{len:#x} is outside guest memory")]
    OutOfRange { addr: u64, len: u32 },
    /// The chain cannot hold a header.
    #[error("a chain of {0} bytes cannot hold a 44-byte header")]
    TooShortForHeader(usize),
    /// The header announces more payload than the chain carries.
    #[error("the header announces {announced} payload bytes, the chain has {available}")]
    PayloadBeyondChain { announced: u32, available: usize },
    /// The header announces more than [`MAX_PAYLOAD`].
    #[error("a payload of {0} bytes is larger than 64 KiB")]
    PayloadTooLarge(u32),
    /// Guest memory could not be read or written (checked ranges make this
    /// unexpected).
    #[error("guest memory access failed at {0:#x}")]
    Memory(u64),
}

/// Which way a chain's buffers go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// The device reads them (TX).
    DeviceReads,
    /// The device writes them (RX).
    DeviceWrites,
}

/// A chain's buffers, all of one direction and inside guest memory, seen
/// as one byte range.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GuestBuffers {
    regions: Vec<(GuestAddress, usize)>,
    len: usize,
}

impl GuestBuffers {
    /// Validates every buffer of `chain` (at most the queue size of them:
    /// the chain iterator stops loops and overlong chains).
    pub fn from_chain(
        chain: DescriptorChain<&GuestMemoryMmap>,
        mem: &GuestMemoryMmap,
        direction: Direction,
    ) -> Result<Self, PacketError> {
        let mut buffers = Self::default();
        for desc in chain {
            let wanted_writable = direction == Direction::DeviceWrites;
            if desc.is_write_only() != wanted_writable {
                return Err(PacketError::WrongDirection);
            }
            let len = desc.len() as usize;
            if len == 0 {
                continue;
            }
            if !mem.check_range(desc.addr(), len) {
                return Err(PacketError::OutOfRange {
                    addr: desc.addr().raw_value(),
                    len: desc.len(),
                });
            }
            buffers.len = buffers.len.saturating_add(len);
            buffers.regions.push((desc.addr(), len));
        }
        Ok(buffers)
    }

    /// Total bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether there are no bytes at all.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The guest ranges covering `len` bytes from `offset`, or `None` past
    /// the end.
    fn ranges(
        &self,
        offset: usize,
        len: usize,
    ) -> Option<impl Iterator<Item = (GuestAddress, std::ops::Range<usize>)> + '_> {
        if offset.checked_add(len)? > self.len {
            return None;
        }
        let mut skip = offset;
        let mut done = 0usize;
        Some(self.regions.iter().filter_map(move |(addr, region_len)| {
            if skip >= *region_len {
                skip -= region_len;
                return None;
            }
            if done == len {
                return None;
            }
            let start = skip;
            skip = 0;
            let n = (region_len - start).min(len - done);
            let range = done..done + n;
            done += n;
            Some((addr.unchecked_add(start as u64), range))
        }))
    }

    /// Reads `buf.len()` bytes from `offset`.
    pub fn read_at(
        &self,
        mem: &GuestMemoryMmap,
        offset: usize,
        buf: &mut [u8],
    ) -> Result<(), PacketError> {
        let len = buf.len();
        let ranges = self.ranges(offset, len).ok_or(PacketError::Memory(0))?;
        for (addr, range) in ranges {
            mem.read_slice(&mut buf[range], addr)
                .map_err(|_| PacketError::Memory(addr.raw_value()))?;
        }
        Ok(())
    }

    /// Writes `data` at `offset`.
    pub fn write_at(
        &self,
        mem: &GuestMemoryMmap,
        offset: usize,
        data: &[u8],
    ) -> Result<(), PacketError> {
        let ranges = self
            .ranges(offset, data.len())
            .ok_or(PacketError::Memory(0))?;
        for (addr, range) in ranges {
            mem.write_slice(&data[range], addr)
                .map_err(|_| PacketError::Memory(addr.raw_value()))?;
        }
        Ok(())
    }
}

/// Reads a guest TX packet: its header, and its payload into `payload`
/// (cleared first; left empty when the header announces none).
pub fn read_tx_packet(
    chain: DescriptorChain<&GuestMemoryMmap>,
    mem: &GuestMemoryMmap,
    payload: &mut Vec<u8>,
) -> Result<Header, PacketError> {
    payload.clear();
    let buffers = GuestBuffers::from_chain(chain, mem, Direction::DeviceReads)?;
    if buffers.len() < HEADER_LEN {
        return Err(PacketError::TooShortForHeader(buffers.len()));
    }
    let mut raw = [0u8; HEADER_LEN];
    buffers.read_at(mem, 0, &mut raw)?;
    let header = Header::from_bytes(&raw);
    let announced = header.len as usize;
    if announced > MAX_PAYLOAD {
        return Err(PacketError::PayloadTooLarge(header.len));
    }
    let available = buffers.len() - HEADER_LEN;
    if announced > available {
        return Err(PacketError::PayloadBeyondChain {
            announced: header.len,
            available,
        });
    }
    payload.resize(announced, 0);
    buffers.read_at(mem, HEADER_LEN, payload)?;
    Ok(header)
}

/// Writes a packet for the guest into RX `buffers` (which the caller made
/// sure hold `HEADER_LEN + payload.len()` bytes); returns the bytes written.
pub fn write_rx_packet(
    buffers: &GuestBuffers,
    mem: &GuestMemoryMmap,
    header: &Header,
    payload: &[u8],
) -> Result<u32, PacketError> {
    buffers.write_at(mem, 0, &header.to_bytes())?;
    buffers.write_at(mem, HEADER_LEN, payload)?;
    // At most HEADER_LEN + MAX_PAYLOAD: the muxer never yields more.
    Ok(u32::try_from(HEADER_LEN + payload.len()).unwrap_or(u32::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueOwnedT};

    const MEM_SIZE: usize = 0x10_0000;
    const NEXT: u16 = VRING_DESC_F_NEXT as u16;
    const WRITE: u16 = VRING_DESC_F_WRITE as u16;
    const BUF: u64 = 0x2_0000;

    fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
    }

    fn sample_header() -> Header {
        Header {
            src_cid: 3,
            dst_cid: 2,
            src_port: 0x1234_5678,
            dst_port: 52,
            len: 5,
            socket_type: TYPE_STREAM,
            op: Op::Rw.code(),
            flags: 0,
            buf_alloc: 0x4_0000,
            fwd_cnt: 0xdead_beef,
        }
    }

    /// Runs `read_tx_packet` on one chain made of `descs`.
    fn read_chain(mem: &GuestMemoryMmap, descs: &[RawDescriptor]) -> Result<Header, PacketError> {
        let mock = MockSplitQueue::create(mem, GuestAddress(0x8_0000), 16);
        mock.add_desc_chains(descs, 0).unwrap();
        let mut queue: Queue = mock.create_queue().unwrap();
        let chain = queue.iter(mem).unwrap().next().unwrap();
        let mut payload = Vec::new();
        let header = read_tx_packet(chain, mem, &mut payload)?;
        assert_eq!(payload.len(), header.len as usize);
        Ok(header)
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
    }

    #[test]
    fn header_fields_sit_at_the_linux_offsets() {
        let bytes = sample_header().to_bytes();
        assert_eq!(&bytes[0..8], &3u64.to_le_bytes());
        assert_eq!(&bytes[8..16], &2u64.to_le_bytes());
        assert_eq!(&bytes[16..20], &0x1234_5678u32.to_le_bytes());
        assert_eq!(&bytes[20..24], &52u32.to_le_bytes());
        assert_eq!(&bytes[24..28], &5u32.to_le_bytes());
        assert_eq!(&bytes[28..30], &1u16.to_le_bytes());
        assert_eq!(&bytes[30..32], &5u16.to_le_bytes());
        assert_eq!(&bytes[36..40], &0x4_0000u32.to_le_bytes());
        assert_eq!(&bytes[40..44], &0xdead_beefu32.to_le_bytes());
        assert_eq!(Header::from_bytes(&bytes), sample_header());
    }

    #[test]
    fn op_codes_round_trip_and_unknown_ones_are_none() {
        for code in 1..=7 {
            assert_eq!(Op::from_code(code).unwrap().code(), code);
        }
        for code in [0, 8, 0xffff] {
            assert_eq!(Op::from_code(code), None);
        }
    }

    #[test]
    fn a_header_split_across_descriptors_is_reassembled() {
        let mem = memory();
        let mut bytes = sample_header().to_bytes().to_vec();
        bytes.extend_from_slice(b"hello");
        // 10 bytes here, the other 39 far away.
        mem.write_slice(&bytes[..10], GuestAddress(BUF)).unwrap();
        mem.write_slice(&bytes[10..], GuestAddress(BUF + 0x1000))
            .unwrap();
        let header = read_chain(
            &mem,
            &[desc(BUF, 10, NEXT, 1), desc(BUF + 0x1000, 39, 0, 0)],
        )
        .unwrap();
        assert_eq!(header, sample_header());
    }

    #[test]
    fn hostile_tx_chains_are_refused() {
        let mem = memory();
        let mut header = sample_header();
        mem.write_slice(&header.to_bytes(), GuestAddress(BUF))
            .unwrap();
        assert_eq!(
            read_chain(&mem, &[desc(BUF, 43, 0, 0)]),
            Err(PacketError::TooShortForHeader(43))
        );
        assert_eq!(
            read_chain(&mem, &[desc(BUF, 49, WRITE, 0)]),
            Err(PacketError::WrongDirection)
        );
        assert!(matches!(
            read_chain(&mem, &[desc(MEM_SIZE as u64 - 20, 49, 0, 0)]),
            Err(PacketError::OutOfRange { .. })
        ));
        // 5 payload bytes announced, 4 present.
        assert_eq!(
            read_chain(&mem, &[desc(BUF, 48, 0, 0)]),
            Err(PacketError::PayloadBeyondChain {
                announced: 5,
                available: 4
            })
        );
        header.len = u32::MAX;
        mem.write_slice(&header.to_bytes(), GuestAddress(BUF))
            .unwrap();
        assert_eq!(
            read_chain(&mem, &[desc(BUF, 0x1_0000, 0, 0)]),
            Err(PacketError::PayloadTooLarge(u32::MAX))
        );
    }

    #[test]
    fn a_looping_chain_ends() {
        let mem = memory();
        mem.write_slice(&sample_header().to_bytes(), GuestAddress(BUF))
            .unwrap();
        // Descriptor 0 points to itself: the iterator stops after as many
        // descriptors as the queue has entries, and the header is read.
        let result = read_chain(&mem, &[desc(BUF, 49, NEXT, 0)]);
        assert_eq!(result, Ok(sample_header()));
    }

    #[test]
    fn rx_packets_are_written_across_buffers() {
        let mem = memory();
        let buffers = GuestBuffers {
            regions: vec![(GuestAddress(BUF), 30), (GuestAddress(BUF + 0x1000), 100)],
            len: 130,
        };
        let header = sample_header();
        assert_eq!(
            write_rx_packet(&buffers, &mem, &header, b"hello").unwrap(),
            49
        );
        let mut first = [0u8; 30];
        mem.read_slice(&mut first, GuestAddress(BUF)).unwrap();
        let mut rest = [0u8; 19];
        mem.read_slice(&mut rest, GuestAddress(BUF + 0x1000))
            .unwrap();
        let mut all = first.to_vec();
        all.extend_from_slice(&rest);
        assert_eq!(&all[..HEADER_LEN], &header.to_bytes());
        assert_eq!(&all[HEADER_LEN..], b"hello");
        assert!(
            buffers.write_at(&mem, 126, b"12345").is_err(),
            "past the end"
        );
    }
}
