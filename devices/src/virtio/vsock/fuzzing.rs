//! A harness that feeds arbitrary bytes to virtio-vsock as a guest's TX
//! and RX descriptor tables, buffers and packets (raw, and well-formed
//! headers with arbitrary fields), with a host socket listening on port
//! 1024 and optionally a host process connecting. It checks that the
//! device neither panics nor spins, returns every TX chain it takes, gives
//! the guest only well-formed packets, and stays within its connection
//! limit. Used by the cargo-fuzz target (fuzz/) and by a randomized unit
//! test.

use super::device::{Vsock, VsockConfig, VsockState};
use super::muxer::Limits;
use super::packet::{Header, HEADER_LEN, HOST_CID, MAX_PAYLOAD, TYPE_STREAM};
use super::unix;
use crate::virtio::fuzzing::{self, DESCRIPTOR_BYTES, RINGS_ADDR};
use crate::virtio::{ActiveQueue, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::GuestMemoryMmap;
use std::io::Write;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const QUEUE_SIZE: u16 = 16;
const GUEST_CID: u64 = 3;
/// The host port a listener serves (requests elsewhere are refused).
const LISTENING_PORT: u32 = 1024;
/// Where well-formed packets go (the end of the payload area).
const PACKETS_ADDR: u64 = 0x6000;
/// Bytes per well-formed packet slot.
const PACKET_SLOT: u64 = 0x100;
/// Input bytes per well-formed packet.
const PACKET_BYTES: usize = 12;
const LIMITS: Limits = Limits {
    max_connections: 4,
    max_pending_host_connects: 2,
    max_queued_rsts: 8,
};

/// A directory of its own for each run's sockets.
fn socket_dir() -> PathBuf {
    static RUNS: AtomicU64 = AtomicU64::new(0);
    let run = RUNS.fetch_add(1, Ordering::Relaxed);
    std::env::temp_dir().join(format!("brique-vsock-fuzz-{}-{run}", std::process::id()))
}

/// A well-formed header with fields from 12 input bytes: op (low 3 bits;
/// bit 6 another CID, bit 7 another socket type), source port, destination
/// port (even: the listening port), payload length (capped to the slot),
/// flags, buf_alloc, fwd_cnt.
fn packet_header(bytes: &[u8]) -> Header {
    let u16_at = |at: usize| u16::from_le_bytes([bytes[at], bytes[at + 1]]);
    let raw_dst = u32::from(u16_at(3));
    Header {
        src_cid: GUEST_CID,
        dst_cid: if bytes[0] & 0x40 != 0 { 9 } else { HOST_CID },
        src_port: u32::from(u16_at(1)),
        dst_port: if raw_dst & 1 == 0 {
            LISTENING_PORT
        } else {
            raw_dst
        },
        len: u32::from(u16_at(5)) % (PACKET_SLOT as u32 - HEADER_LEN as u32),
        socket_type: if bytes[0] & 0x80 != 0 { 2 } else { TYPE_STREAM },
        op: u16::from(bytes[0] & 7),
        flags: u32::from(bytes[7] & 3),
        buf_alloc: u32::from(u16_at(8)) << 4,
        fwd_cnt: u32::from(u16_at(10)),
    }
}

/// Whether any of `descriptors` covers part of the queues' rings.
fn overlaps_rings(descriptors: &[RawDescriptor]) -> bool {
    descriptors.iter().any(|raw| {
        let descriptor = SplitDescriptor::from(*raw);
        let start = descriptor.addr().0;
        let end = start.saturating_add(u64::from(descriptor.len()));
        end > RINGS_ADDR && start < fuzzing::MEM_SIZE as u64
    })
}

/// Runs one fuzz input: byte 0 gives the raw TX (low nibble) and RX (high
/// nibble) descriptor counts, byte 1 the flags (bit 0 event index, bit 1 a
/// restored device, bits 2-4 the number of well-formed packets, bit 5 a
/// host process connecting), then 16 bytes per raw TX and RX descriptor, 12
/// per well-formed packet, then bytes copied into guest memory.
pub fn run(input: &[u8]) {
    let [control, flags, rest @ ..] = input else {
        return;
    };
    let tx_count = usize::from(control & 0x0f);
    let rx_count = usize::from(control >> 4);
    let event_idx = flags & 1 != 0;
    let restored = flags & 2 != 0;
    let packet_count = usize::from((flags >> 2) & 7);
    let host_connects = flags & 0x20 != 0;

    let raw_tx = fuzzing::descriptors(rest, tx_count);
    let rest = rest
        .get(raw_tx.len() * DESCRIPTOR_BYTES..)
        .unwrap_or_default();
    let rx = fuzzing::descriptors(rest, rx_count);
    let rest = rest.get(rx.len() * DESCRIPTOR_BYTES..).unwrap_or_default();
    let headers: Vec<Header> = rest
        .chunks_exact(PACKET_BYTES)
        .take(packet_count)
        .map(packet_header)
        .collect();
    let payload = rest.get(headers.len() * PACKET_BYTES..).unwrap_or_default();
    let Some(mem) = fuzzing::guest_memory(payload) else {
        return;
    };
    let mut tx = raw_tx;
    for (slot, header) in headers.iter().enumerate() {
        let addr = PACKETS_ADDR + slot as u64 * PACKET_SLOT;
        if mem
            .write_slice(&header.to_bytes(), GuestAddress(addr))
            .is_err()
        {
            return;
        }
        let len = HEADER_LEN as u32 + header.len;
        tx.push(RawDescriptor::from(SplitDescriptor::new(addr, len, 0, 0)));
    }
    if tx.is_empty() {
        return;
    }

    let dir = socket_dir();
    if std::fs::create_dir_all(&dir).is_err() {
        return;
    }
    run_device(&dir, &mem, &tx, &rx, event_idx, restored, host_connects);
    let _ = std::fs::remove_dir_all(&dir);
}

fn run_device(
    dir: &std::path::Path,
    mem: &GuestMemoryMmap,
    tx: &[RawDescriptor],
    rx: &[RawDescriptor],
    event_idx: bool,
    restored: bool,
    host_connects: bool,
) {
    let uds = dir.join("v.sock");
    let Ok(_listener) = UnixListener::bind(unix::port_path(&uds, LISTENING_PORT)) else {
        return;
    };
    let mut vsock = if restored {
        match Vsock::restore(
            &uds,
            &VsockState {
                guest_cid: GUEST_CID,
            },
        ) {
            Ok(vsock) => vsock,
            Err(_) => return,
        }
    } else {
        let config = VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: uds.clone(),
        };
        match Vsock::with_limits(&config, LIMITS) {
            Ok(vsock) => vsock,
            Err(_) => return,
        }
    };
    let rx_mock = MockSplitQueue::create(mem, GuestAddress(RINGS_ADDR), QUEUE_SIZE);
    let tx_mock = MockSplitQueue::create(mem, GuestAddress(RINGS_ADDR + 0x2000), QUEUE_SIZE);
    let event_mock = MockSplitQueue::create(mem, GuestAddress(RINGS_ADDR + 0x4000), QUEUE_SIZE);
    if tx_mock.add_desc_chains(tx, 0).is_err()
        || (!rx.is_empty() && rx_mock.add_desc_chains(rx, 0).is_err())
    {
        return;
    }
    // One event buffer, in the payload area like everything else.
    let event_buffer = RawDescriptor::from(SplitDescriptor::new(
        0x5000,
        8,
        VRING_DESC_F_WRITE as u16,
        0,
    ));
    if event_mock.add_desc_chains(&[event_buffer], 0).is_err() {
        return;
    }
    let mut queues = Vec::new();
    for mock in [&rx_mock, &tx_mock, &event_mock] {
        let (Ok(mut queue), Ok(notify)) =
            (mock.create_queue::<Queue>(), EventFd::new(EFD_NONBLOCK))
        else {
            return;
        };
        queue.set_event_idx(event_idx);
        queues.push(ActiveQueue { queue, notify });
    }
    let Ok(irq) = EventFd::new(EFD_NONBLOCK) else {
        return;
    };
    let interrupt = Interrupt::new(crate::EventFdTrigger::new(irq));
    vsock.set_acked_features(VIRTIO_F_VERSION_1);
    if vsock
        .activate(mem.clone(), queues, interrupt.clone())
        .is_err()
    {
        return;
    }
    let _client = host_connects
        .then(|| UnixStream::connect(&uds).ok())
        .flatten()
        .map(|mut client| {
            let _ = client.write_all(b"CONNECT 1024\n");
            client
        });

    vsock.start();
    vsock.process_backend();
    vsock.process_backend();
    vsock.process_event_queue();
    vsock.process_tx();

    let counters = vsock.counters();
    if !interrupt.needs_reset() {
        assert_eq!(
            u64::from(u16::from_le(tx_mock.used().idx().load())),
            counters.tx_packets + counters.tx_dropped,
            "every TX chain returned and counted once"
        );
    }
    // A restored device has the default limits (Vsock::restore takes none).
    let limits = if restored { Limits::default() } else { LIMITS };
    assert!(vsock.connection_count() <= limits.max_connections);
    // Whatever reached the guest is a well-formed packet for it, unless
    // the used ring was written by others too: by the guest's RX buffers
    // laid over the rings, or by the mock's own avail ring, which overlaps
    // its used ring past QUEUE_SIZE / 2 entries (virtio-queue's mock ends
    // the avail ring after `len` bytes, not `len` entries).
    let used = u16::from_le(rx_mock.used().idx().load());
    let clean = !overlaps_rings(rx) && rx.len() <= usize::from(QUEUE_SIZE / 2);
    let checked = if clean { used.min(QUEUE_SIZE) } else { 0 };
    for index in 0..checked {
        let Ok(entry) = rx_mock.used().ring().ref_at(usize::from(index)) else {
            continue;
        };
        let len = entry.load().len() as usize;
        if len == 0 {
            continue;
        }
        assert!((HEADER_LEN..=HEADER_LEN + MAX_PAYLOAD).contains(&len));
    }
    if interrupt.needs_reset() {
        // A device that asked for a reset moves nothing more.
        vsock.process_tx();
        vsock.process_rx();
        assert_eq!(vsock.counters(), counters, "a broken device stays quiet");
    }
}
