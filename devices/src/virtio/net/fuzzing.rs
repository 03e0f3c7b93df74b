//! A harness that feeds arbitrary bytes to virtio-net as a guest's TX and
//! RX descriptor tables and buffers, and as frames from the host, and
//! checks that the device neither panics nor spins, sends only frames of a
//! legal size, and accounts for every TX chain it takes. Used by the
//! cargo-fuzz target (fuzz/) and by a randomized unit test.

use super::socket_backend::{recv, send, socket_pair};
use super::tap::VNET_HDR_LEN;
use super::{Net, MAX_FRAME_LEN, VIRTIO_NET_F_MRG_RXBUF};
use crate::virtio::fuzzing::{self, DESCRIPTOR_BYTES, RINGS_ADDR};
use crate::virtio::{ActiveQueue, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use std::os::fd::AsRawFd;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const QUEUE_SIZE: u16 = 16;
/// The TX rings follow the RX rings (a 16-entry split queue needs < 2 KiB).
const TX_RINGS_ADDR: u64 = RINGS_ADDR + 0x2000;

/// Runs one fuzz input: byte 0 gives the TX (low nibble + 1) and RX (high
/// nibble) descriptor counts, byte 1 the flags (bit 0 mergeable RX
/// buffers, bit 1 event index, bits 2-3 the number of host frames), then
/// 16 bytes per TX and RX descriptor, 2 bytes per host frame length, then
/// bytes copied into guest memory as payload.
pub fn run(input: &[u8]) {
    let [control, flags, rest @ ..] = input else {
        return;
    };
    let tx_count = usize::from(control & 0x0f) + 1;
    let rx_count = usize::from(control >> 4);
    let mergeable = flags & 1 != 0;
    let event_idx = flags & 2 != 0;
    let host_frames = usize::from((flags >> 2) & 3);

    let tx = fuzzing::descriptors(rest, tx_count);
    let rest = rest.get(tx.len() * DESCRIPTOR_BYTES..).unwrap_or_default();
    let rx = fuzzing::descriptors(rest, rx_count);
    let rest = rest.get(rx.len() * DESCRIPTOR_BYTES..).unwrap_or_default();
    let frame_lens: Vec<usize> = rest
        .chunks_exact(2)
        .take(host_frames)
        .map(|len| usize::from(u16::from_le_bytes([len[0], len[1]])).min(MAX_FRAME_LEN))
        .collect();
    let payload = rest.get(frame_lens.len() * 2..).unwrap_or_default();
    if tx.is_empty() {
        return;
    }
    let Some(mem) = fuzzing::guest_memory(payload) else {
        return;
    };
    let rx_mock = MockSplitQueue::create(&mem, GuestAddress(RINGS_ADDR), QUEUE_SIZE);
    let tx_mock = MockSplitQueue::create(&mem, GuestAddress(TX_RINGS_ADDR), QUEUE_SIZE);
    if tx_mock.add_desc_chains(&tx, 0).is_err()
        || (!rx.is_empty() && rx_mock.add_desc_chains(&rx, 0).is_err())
    {
        return;
    }
    let (Ok(mut rx_queue), Ok(mut tx_queue)) = (
        rx_mock.create_queue::<Queue>(),
        tx_mock.create_queue::<Queue>(),
    ) else {
        return;
    };
    rx_queue.set_event_idx(event_idx);
    tx_queue.set_event_idx(event_idx);
    let Ok((backend, peer)) = socket_pair() else {
        return;
    };
    let Ok(mut net) = Net::new(Box::new(backend), Some([6, 0, 0, 0, 0, 1])) else {
        return;
    };
    let mut features = VIRTIO_F_VERSION_1;
    if mergeable {
        features |= 1 << VIRTIO_NET_F_MRG_RXBUF;
    }
    net.set_acked_features(features);
    let evt = || EventFd::new(EFD_NONBLOCK);
    let (Ok(irq), Ok(rx_notify), Ok(tx_notify)) = (evt(), evt(), evt()) else {
        return;
    };
    let interrupt = Interrupt::new(crate::EventFdTrigger::new(irq));
    let queues = vec![
        ActiveQueue {
            queue: rx_queue,
            notify: rx_notify,
        },
        ActiveQueue {
            queue: tx_queue,
            notify: tx_notify,
        },
    ];
    if net
        .activate(mem.clone(), queues, interrupt.clone())
        .is_err()
    {
        return;
    }

    // TX: what reaches the host is a legal frame, one per counted packet,
    // and every chain taken is returned and counted once.
    net.process_tx();
    let counters = net.counters();
    let mut frame = vec![0u8; MAX_FRAME_LEN + 1];
    let mut sent = 0u64;
    while let Ok(len) = recv(peer.as_raw_fd(), &mut frame) {
        assert!(
            len > VNET_HDR_LEN && len <= MAX_FRAME_LEN,
            "frame of {len} bytes"
        );
        sent += 1;
    }
    assert_eq!(sent, counters.tx_packets);
    assert_eq!(
        u64::from(u16::from_le(tx_mock.used().idx().load())),
        counters.tx_packets + counters.tx_dropped,
        "every TX chain returned and counted once"
    );

    // RX: host frames go into whatever buffers the guest gave.
    let mut offered = 0u64;
    for (n, len) in frame_lens.iter().enumerate() {
        let mut host_frame = vec![n as u8; (*len).max(VNET_HDR_LEN + 1)];
        host_frame[..VNET_HDR_LEN].fill(0);
        if send(peer.as_raw_fd(), &host_frame).is_ok() {
            offered += host_frame.len() as u64;
        }
    }
    net.process_rx();
    net.process_rx();
    let counters = net.counters();
    assert!(counters.rx_packets <= frame_lens.len() as u64);
    assert!(counters.rx_bytes <= offered);
    if interrupt.needs_reset() {
        // A device that asked for a reset delivers nothing more.
        let _ = send(peer.as_raw_fd(), &[0u8; 100]);
        net.process_rx();
        net.process_tx();
        assert_eq!(net.counters(), counters, "a broken device stays quiet");
    }
}
