//! virtio-net against mock queues and a datagram socket pair standing in
//! for the tap: frames both ways, mergeable RX buffers, RX back-off, and
//! hostile TX chains dropped and counted.

use super::socket_backend::{recv, send, socket_pair};
use super::*;
use std::os::fd::OwnedFd;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEM_SIZE: usize = 0x40_0000;
const RX_RING: u64 = 0x1_0000;
const TX_RING: u64 = 0x2_0000;
const BUFFERS: u64 = 0x10_0000;
/// Entries of each mock queue.
const MOCK_QUEUE_LEN: u16 = 64;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;

struct Fixture {
    mem: GuestMemoryMmap,
    peer: OwnedFd,
    net: Net,
    interrupt: Arc<Interrupt>,
    /// The irqfd behind `interrupt`: its counter is the interrupts raised.
    irq: EventFd,
}

fn fixture(mergeable: bool) -> Fixture {
    let unlimited = || crate::rate_limiter::RateLimiter::unlimited().unwrap();
    limited_fixture(mergeable, unlimited(), unlimited())
}

/// A fixture whose device has rate limiters `rx` and `tx`.
fn limited_fixture(
    mergeable: bool,
    rx: crate::rate_limiter::RateLimiter,
    tx: crate::rate_limiter::RateLimiter,
) -> Fixture {
    let (backend, peer) = socket_pair().unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let mut net =
        Net::with_rate_limiters(Box::new(backend), Some([6, 0, 0, 0, 0, 1]), rx, tx).unwrap();
    let mut features = super::super::VIRTIO_F_VERSION_1;
    if mergeable {
        features |= 1 << VIRTIO_NET_F_MRG_RXBUF;
    }
    net.set_acked_features(features);
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let interrupt = Interrupt::new(crate::EventFdTrigger::new(irq.try_clone().unwrap()));
    Fixture {
        mem,
        peer,
        net,
        interrupt,
        irq,
    }
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

impl Fixture {
    /// Activates with RX chains `rx` and TX chains `tx` (descriptor lists);
    /// the mock queues live on `mem`, a handle on the fixture's memory.
    fn activate<'m>(
        &mut self,
        mem: &'m GuestMemoryMmap,
        rx: &[RawDescriptor],
        tx: &[RawDescriptor],
    ) -> (
        MockSplitQueue<'m, GuestMemoryMmap>,
        MockSplitQueue<'m, GuestMemoryMmap>,
    ) {
        let (queues, rxq, txq) = mock_queues(mem, rx, tx, fresh_notifiers());
        self.net
            .activate(self.mem.clone(), queues, self.interrupt.clone())
            .unwrap();
        (rxq, txq)
    }
}

/// RX and TX mock queues on `mem` holding the chains `rx` and `tx`, and
/// the queues a device is activated with (notified by `notifiers`).
fn mock_queues<'m>(
    mem: &'m GuestMemoryMmap,
    rx: &[RawDescriptor],
    tx: &[RawDescriptor],
    notifiers: [EventFd; 2],
) -> (
    Vec<ActiveQueue>,
    MockSplitQueue<'m, GuestMemoryMmap>,
    MockSplitQueue<'m, GuestMemoryMmap>,
) {
    let rxq = MockSplitQueue::create(mem, GuestAddress(RX_RING), MOCK_QUEUE_LEN);
    let txq = MockSplitQueue::create(mem, GuestAddress(TX_RING), MOCK_QUEUE_LEN);
    for (mock, chains) in [(&rxq, rx), (&txq, tx)] {
        if !chains.is_empty() {
            mock.add_desc_chains(chains, 0).unwrap();
        }
    }
    let [rx_notify, tx_notify] = notifiers;
    let queues = vec![
        ActiveQueue {
            queue: rxq.create_queue().unwrap(),
            notify: rx_notify,
        },
        ActiveQueue {
            queue: txq.create_queue().unwrap(),
            notify: tx_notify,
        },
    ];
    (queues, rxq, txq)
}

/// Notifiers for an RX and a TX queue that nobody writes.
fn fresh_notifiers() -> [EventFd; 2] {
    [(); 2].map(|_| EventFd::new(EFD_NONBLOCK).unwrap())
}

/// `count` RX chains of one writable `len`-byte buffer each, 4 KiB apart.
fn rx_buffers(count: u16, len: u32) -> Vec<RawDescriptor> {
    (0..count)
        .map(|i| desc(BUFFERS + u64::from(i) * 0x1000, len, WRITE, 0))
        .collect()
}

fn frame(len: usize, fill: u8) -> Vec<u8> {
    let mut frame = vec![fill; len];
    frame[..VNET_HDR_LEN].fill(0);
    frame
}

#[test]
fn guest_frames_reach_the_backend_and_bad_ones_are_dropped() {
    let mut f = fixture(false);
    let mem = f.mem.clone();
    let payload = frame(200, 0x42);
    f.mem.write_slice(&payload, GuestAddress(BUFFERS)).unwrap();
    let tx = [
        // 0: a good frame in two pieces.
        desc(BUFFERS, 12, NEXT, 1),
        desc(BUFFERS + 12, 188, 0, 0),
        // 2: larger than any frame.
        desc(BUFFERS, MAX_FRAME_LEN as u32 + 1, 0, 0),
        // 3: only a header.
        desc(BUFFERS, 12, 0, 0),
        // 4: outside guest memory.
        desc(MEM_SIZE as u64 - 64, 200, 0, 0),
        // 5: a device-writable buffer on TX.
        desc(BUFFERS, 200, WRITE, 0),
    ];
    let (_rxq, txq) = f.activate(&mem, &[], &tx);
    f.net.process_tx();
    let mut got = vec![0u8; MAX_FRAME_LEN + 10];
    let n = recv(f.peer.as_raw_fd(), &mut got).unwrap();
    assert_eq!(&got[..n], &payload[..]);
    assert!(
        recv(f.peer.as_raw_fd(), &mut got).is_err(),
        "nothing else sent"
    );
    let c = f.net.counters();
    assert_eq!((c.tx_packets, c.tx_bytes, c.tx_dropped), (1, 200, 4));
    assert_eq!(txq.used().idx().load(), 5, "every chain returned");
}

#[test]
fn host_frames_reach_the_guest_with_num_buffers() {
    let mut f = fixture(false);
    let mem = f.mem.clone();
    let rx = [
        desc(BUFFERS, 12, WRITE | NEXT, 1),
        desc(BUFFERS + 0x1000, 1514, WRITE, 0),
    ];
    let (rxq, _txq) = f.activate(&mem, &rx, &[]);
    let sent = frame(300, 0x17);
    send(f.peer.as_raw_fd(), &sent).unwrap();
    assert_eq!(f.net.process_rx(), RxState::Drained);
    let mut header = [0u8; 12];
    f.mem
        .read_slice(&mut header, GuestAddress(BUFFERS))
        .unwrap();
    assert_eq!(
        u16::from_le_bytes([header[10], header[11]]),
        1,
        "num_buffers"
    );
    let mut body = vec![0u8; 288];
    f.mem
        .read_slice(&mut body, GuestAddress(BUFFERS + 0x1000))
        .unwrap();
    assert!(body.iter().all(|b| *b == 0x17));
    assert_eq!(rxq.used().ring().ref_at(0).unwrap().load().len(), 300);
    assert_eq!(f.net.counters().rx_packets, 1);
    assert_eq!(f.interrupt.status() & crate::virtio::INT_USED_RING, 1);
}

/// Each delivered frame is signalled as it lands (when the driver wants
/// interrupts), not once the backend is drained, so that the guest starts
/// on the first frames while later ones are still being delivered.
#[test]
fn every_delivered_frame_is_signalled() {
    let mut f = fixture(false);
    let mem = f.mem.clone();
    let rx = rx_buffers(3, 1600);
    let (_rxq, _txq) = f.activate(&mem, &rx, &[]);
    for fill in 1..=3 {
        send(f.peer.as_raw_fd(), &frame(500, fill)).unwrap();
    }
    assert_eq!(f.net.process_rx(), RxState::Drained);
    assert_eq!(f.net.counters().rx_packets, 3);
    assert_eq!(f.irq.read().unwrap(), 3, "one interrupt per frame");
}

#[test]
fn mergeable_buffers_carry_a_large_frame_in_several_chains() {
    let mut f = fixture(true);
    let mem = f.mem.clone();
    let rx = rx_buffers(4, 1500);
    let (rxq, _txq) = f.activate(&mem, &rx, &[]);
    let sent = frame(4000, 0x99);
    send(f.peer.as_raw_fd(), &sent).unwrap();
    assert_eq!(f.net.process_rx(), RxState::Drained);
    let mut header = [0u8; 12];
    f.mem
        .read_slice(&mut header, GuestAddress(BUFFERS))
        .unwrap();
    assert_eq!(u16::from_le_bytes([header[10], header[11]]), 3);
    let lens: Vec<u32> = (0..3)
        .map(|i| rxq.used().ring().ref_at(i).unwrap().load().len())
        .collect();
    assert_eq!(lens, vec![1500, 1500, 1000]);
    assert_eq!(
        rxq.used().idx().load(),
        3,
        "the fourth chain stays available"
    );
}

#[test]
fn rx_pauses_without_guest_buffers_and_holds_one_frame_only() {
    let mut f = fixture(false);
    let mem = f.mem.clone();
    let (_rxq, _txq) = f.activate(&mem, &[], &[]);
    for _ in 0..50 {
        send(f.peer.as_raw_fd(), &frame(1000, 1)).unwrap();
    }
    assert_eq!(f.net.process_rx(), RxState::OutOfBuffers);
    assert_eq!(f.net.rx_pending, 1000, "one frame held");
    assert_eq!(f.net.counters().rx_packets, 0);
    // 49 frames still wait in the backend: the device did not buffer them.
    let mut buf = vec![0u8; 2000];
    let mut left = 0;
    while recv(f.net.tap.as_raw_fd(), &mut buf).is_ok() {
        left += 1;
    }
    assert_eq!(left, 49);
}

#[test]
fn frame_too_large_for_a_non_mergeable_chain_is_dropped() {
    let mut f = fixture(false);
    let mem = f.mem.clone();
    let rx = [
        desc(BUFFERS, 100, WRITE, 0),
        desc(BUFFERS + 0x1000, 2000, WRITE, 0),
    ];
    let (rxq, _txq) = f.activate(&mem, &rx, &[]);
    send(f.peer.as_raw_fd(), &frame(500, 3)).unwrap();
    send(f.peer.as_raw_fd(), &frame(500, 4)).unwrap();
    assert_eq!(f.net.process_rx(), RxState::Drained);
    let c = f.net.counters();
    assert_eq!((c.rx_dropped, c.rx_packets), (1, 1));
    assert_eq!(rxq.used().ring().ref_at(0).unwrap().load().len(), 0);
    assert_eq!(rxq.used().ring().ref_at(1).unwrap().load().len(), 500);
}

#[test]
fn config_space_has_mac_and_link_up() {
    let f = fixture(false);
    let mut config = [0u8; 10];
    f.net.read_config(0, &mut config);
    assert_eq!(&config[..6], &[6, 0, 0, 0, 0, 1]);
    assert_eq!(
        u16::from_le_bytes([config[6], config[7]]),
        VIRTIO_NET_S_LINK_UP as u16
    );
    assert_ne!(f.net.offered_features() & (1 << VIRTIO_NET_F_MAC), 0);
    assert_ne!(f.net.offered_features() & (1 << VIRTIO_NET_F_MRG_RXBUF), 0);
    assert_eq!(
        f.net.offered_features() & (1 << VIRTIO_NET_F_MTU),
        0,
        "no MTU offered unless configured"
    );
}

#[test]
fn a_configured_mtu_is_offered_in_config_space() {
    let (backend, _peer) = socket_pair().unwrap();
    let net = Net::new(Box::new(backend), None)
        .unwrap()
        .with_mtu(Some(9000));
    assert_ne!(net.offered_features() & (1 << VIRTIO_NET_F_MTU), 0);
    let mut mtu = [0u8; 2];
    net.read_config(10, &mut mtu);
    assert_eq!(u16::from_le_bytes(mtu), 9000);
}

/// With EVENT_IDX and mergeable buffers: a frame larger than all the RX
/// buffers available waits, the device asks to be notified when the driver
/// adds the next buffer (avail_event = the driver's avail index, not the
/// first unused buffer, which the driver has already passed), and the frame
/// goes out once enough buffers are there.
#[test]
fn event_idx_rx_waits_for_more_buffers_without_missing_the_kick() {
    const USED_RING: u64 = 0x3_0000;
    let mut f = fixture(true);
    f.net.set_acked_features(
        super::super::VIRTIO_F_VERSION_1
            | (1 << VIRTIO_NET_F_MRG_RXBUF)
            | super::super::VIRTIO_RING_F_EVENT_IDX,
    );
    let mem = f.mem.clone();
    let (mut queues, rxq, _txq) = mock_queues(
        &mem,
        &[desc(BUFFERS, 1500, WRITE, 0)],
        &[],
        fresh_notifiers(),
    );
    // The mock lays its used ring over used_event: use a ring of our own.
    queues[0]
        .queue
        .set_used_ring_address(Some(USED_RING as u32), Some(0));
    for active in &mut queues {
        active.queue.set_event_idx(true);
    }
    f.net
        .activate(f.mem.clone(), queues, f.interrupt.clone())
        .unwrap();

    send(f.peer.as_raw_fd(), &frame(4000, 0x42)).unwrap();
    assert_eq!(f.net.process_rx(), RxState::OutOfBuffers);
    let avail_event_addr = GuestAddress(USED_RING + 4 + 8 * u64::from(MOCK_QUEUE_LEN));
    let avail_event = u16::from_le(f.mem.read_obj(avail_event_addr).unwrap());
    assert_eq!(
        avail_event, 1,
        "notify when a buffer past the one seen arrives"
    );
    let used_idx =
        |mem: &GuestMemoryMmap| u16::from_le(mem.read_obj(GuestAddress(USED_RING + 2)).unwrap());
    assert_eq!(used_idx(&f.mem), 0, "nothing delivered yet");

    // The driver adds two more buffers (avail idx 1 -> 3, crossing
    // avail_event: it kicks); the frame now fits three chains.
    rxq.add_desc_chains(
        &[
            desc(BUFFERS + 0x1000, 1500, WRITE, 0),
            desc(BUFFERS + 0x2000, 1500, WRITE, 0),
        ],
        1,
    )
    .unwrap();
    assert_eq!(f.net.process_rx(), RxState::Drained);
    assert_eq!(used_idx(&f.mem), 3);
    assert_eq!(f.net.counters().rx_packets, 1);
}

/// A driver that puts an avail index more than a queue's length ahead has
/// broken the queue: TX sends nothing, RX takes no frame, the device asks
/// for a reset, and neither call spins.
#[test]
fn avail_index_beyond_the_queue_needs_a_reset() {
    let mut f = fixture(false);
    let mem = f.mem.clone();
    f.mem
        .write_slice(&frame(200, 0x42), GuestAddress(BUFFERS))
        .unwrap();
    let tx = [desc(BUFFERS, 200, 0, 0)];
    let rx = [desc(BUFFERS + 0x1000, 1600, WRITE, 0)];
    let (rxq, txq) = f.activate(&mem, &rx, &tx);
    txq.avail().idx().store(u16::to_le(1 + MOCK_QUEUE_LEN + 1));
    f.net.process_tx();
    assert!(f.interrupt.needs_reset());
    let mut got = vec![0u8; 2000];
    assert!(recv(f.peer.as_raw_fd(), &mut got).is_err(), "nothing sent");
    assert_eq!(txq.used().idx().load(), 0);

    // RX of a device that needs a reset delivers nothing either.
    rxq.avail().idx().store(u16::to_le(1));
    send(f.peer.as_raw_fd(), &frame(1000, 1)).unwrap();
    assert_eq!(f.net.process_rx(), RxState::OutOfBuffers);
    assert_eq!(rxq.used().idx().load(), 0);
    assert_eq!(f.net.counters().rx_packets, 0);
}

/// RX and TX notifications that arrive after a reset are consumed: the
/// event loop sees each once, then nothing (no busy loop on the device
/// thread).
#[test]
fn notifications_after_a_reset_are_consumed() {
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use std::sync::Mutex;
    let f = fixture(false);
    let mem = f.mem.clone();
    let net = Arc::new(Mutex::new(f.net));
    let mut loop_ = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    loop_.add_subscriber(net.clone());
    let rx_notify = EventFd::new(EFD_NONBLOCK).unwrap();
    let tx_notify = EventFd::new(EFD_NONBLOCK).unwrap();
    let notifiers = [
        rx_notify.try_clone().unwrap(),
        tx_notify.try_clone().unwrap(),
    ];
    let (queues, _rxq, _txq) = mock_queues(&mem, &[], &[], notifiers);
    net.lock()
        .unwrap()
        .activate(mem.clone(), queues, f.interrupt.clone())
        .unwrap();
    assert!(loop_.run_with_timeout(100).unwrap() >= 1, "activation");
    while loop_.run_with_timeout(20).unwrap() > 0 {}

    net.lock().unwrap().reset();
    rx_notify.write(1).unwrap();
    tx_notify.write(1).unwrap();
    let mut seen = 0;
    for _ in 0..5 {
        seen += loop_.run_with_timeout(50).unwrap();
    }
    assert_eq!(seen, 2, "each notification once");
}

#[test]
fn a_held_rx_frame_survives_a_restore_and_impossible_ones_are_refused() {
    let (backend, _peer) = socket_pair().unwrap();
    let held = NetState {
        rx_held_frame: vec![0x42; VNET_HDR_LEN + 60],
        ..Default::default()
    };
    let net = Net::restore(Box::new(backend), None, &held).unwrap();
    assert_eq!(net.save(), held);
    for bad in [vec![0; VNET_HDR_LEN], vec![0; MAX_FRAME_LEN + 1]] {
        let (backend, _peer) = socket_pair().unwrap();
        let state = NetState {
            rx_held_frame: bad,
            ..Default::default()
        };
        assert!(Net::restore(Box::new(backend), None, &state).is_err());
    }
    let (backend, _peer) = socket_pair().unwrap();
    let idle = NetState::default();
    assert_eq!(
        Net::restore(Box::new(backend), None, &idle).unwrap().save(),
        idle
    );
}

mod rate_limited {
    //! Rate-limited directions: frames the limiter refuses wait (TX in the
    //! queue, RX in the device's one held frame, with the backend not
    //! watched) and go when the limiter's timer fires in the event loop.
    //! The limiters read a clock the test moves.

    use super::*;
    use crate::rate_limiter::{
        ManualClock, RateLimiter, RateLimiterConfig, RateLimiterUpdate, TokenBucketConfig,
    };
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use std::sync::Mutex;
    use std::time::Duration;

    type Loop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

    fn limiter(
        clock: &Arc<ManualClock>,
        bandwidth: Option<(u64, u64)>,
        ops: Option<(u64, u64)>,
    ) -> RateLimiter {
        let bucket = |(size, refill_time)| TokenBucketConfig {
            size,
            one_time_burst: None,
            refill_time,
        };
        let config = RateLimiterConfig {
            bandwidth: bandwidth.map(bucket),
            ops: ops.map(bucket),
        };
        RateLimiter::with_clock(&config, clock.clone()).unwrap()
    }

    /// The fixture's device in an event loop, activated with RX chains
    /// `rx` and TX chains `tx`.
    fn started<'m>(
        f: Fixture,
        mem: &'m GuestMemoryMmap,
        rx: &[RawDescriptor],
        tx: &[RawDescriptor],
    ) -> (
        Loop,
        Arc<Mutex<Net>>,
        OwnedFd,
        MockSplitQueue<'m, GuestMemoryMmap>,
        MockSplitQueue<'m, GuestMemoryMmap>,
    ) {
        let (queues, rxq, txq) = mock_queues(mem, rx, tx, fresh_notifiers());
        let net = Arc::new(Mutex::new(f.net));
        let mut loop_ = Loop::new().unwrap();
        loop_.add_subscriber(net.clone());
        net.lock()
            .unwrap()
            .activate(mem.clone(), queues, f.interrupt.clone())
            .unwrap();
        assert_eq!(loop_.run_with_timeout(100).unwrap(), 1, "activation");
        (loop_, net, f.peer, rxq, txq)
    }

    fn next_event(loop_: &mut Loop) {
        assert_eq!(loop_.run_with_timeout(3000).unwrap(), 1, "one event");
    }

    fn frames_at(peer: &OwnedFd) -> usize {
        let mut buf = vec![0u8; MAX_FRAME_LEN];
        let mut count = 0;
        while recv(peer.as_raw_fd(), &mut buf).is_ok() {
            count += 1;
        }
        count
    }

    #[test]
    fn tx_frames_past_the_limit_wait_in_the_queue_for_the_timer() {
        let clock = Arc::new(ManualClock::new());
        // TX: 2 frames per 40 ms.
        let tx_limiter = limiter(&clock, None, Some((2, 40)));
        let f = limited_fixture(false, RateLimiter::unlimited().unwrap(), tx_limiter);
        let mem = f.mem.clone();
        mem.write_slice(&frame(200, 0x42), GuestAddress(BUFFERS))
            .unwrap();
        let tx: Vec<_> = (0..5).map(|_| desc(BUFFERS, 200, 0, 0)).collect();
        let (mut loop_, net, peer, _rxq, txq) = started(f, &mem, &[], &tx);
        assert_eq!(frames_at(&peer), 2);
        assert_eq!(txq.used().idx().load(), 2, "the others stay available");
        assert_eq!(
            net.lock().unwrap().counters().tx_rate_limiter_throttled_ops,
            1
        );

        clock.advance(Duration::from_millis(40));
        next_event(&mut loop_);
        assert_eq!(frames_at(&peer), 2);
        assert_eq!(txq.used().idx().load(), 4);
        clock.advance(Duration::from_millis(20));
        next_event(&mut loop_);
        assert_eq!(frames_at(&peer), 1);
        assert_eq!(txq.used().idx().load(), 5);
        let counters = net.lock().unwrap().counters();
        assert_eq!((counters.tx_packets, counters.tx_bytes), (5, 1000));
        assert_eq!(counters.tx_rate_limiter_resumed, 2);
        assert_eq!(counters.rx_rate_limiter_throttled_ops, 0);
    }

    #[test]
    fn rx_past_the_limit_holds_the_frame_and_stops_watching_the_backend() {
        let clock = Arc::new(ManualClock::new());
        // RX: 1000 bytes per 1000 ms: the held frame's 500 bytes refill in
        // 500 ms (long enough that the timer does not fire early on a
        // loaded machine).
        let rx_limiter = limiter(&clock, Some((1000, 1000)), None);
        let f = limited_fixture(false, rx_limiter, RateLimiter::unlimited().unwrap());
        let mem = f.mem.clone();
        let peer_fd = f.peer.as_raw_fd();
        for fill in 1..=4 {
            send(peer_fd, &frame(500, fill)).unwrap();
        }
        let (mut loop_, net, _peer, rxq, _txq) = started(f, &mem, &rx_buffers(8, 1600), &[]);
        assert_eq!(rxq.used().idx().load(), 2, "1000 bytes delivered");
        assert!(net.lock().unwrap().rx_paused(), "backend not watched");
        assert_eq!(net.lock().unwrap().rx_pending, 500, "the third frame held");
        assert_eq!(
            net.lock()
                .unwrap()
                .counters()
                .rx_rate_limiter_throttled_bandwidth,
            1
        );
        // More frames arrive: the backend is not watched, nothing runs.
        send(peer_fd, &frame(500, 5)).unwrap();
        assert_eq!(loop_.run_with_timeout(30).unwrap(), 0);

        // 500 ms later 500 bytes have refilled: the held frame goes.
        clock.advance(Duration::from_millis(500));
        next_event(&mut loop_);
        assert_eq!(rxq.used().idx().load(), 3);
        let mut third = [0u8; 1];
        mem.read_slice(&mut third, GuestAddress(BUFFERS + 2 * 0x1000 + 100))
            .unwrap();
        assert_eq!(third[0], 3, "frames in order");
        // Lifting the limit lets the rest through at once.
        net.lock()
            .unwrap()
            .update_rate_limiters(
                &serde_json::from_str::<RateLimiterUpdate>(
                    r#"{"bandwidth": {"size": 0, "refill_time": 0}}"#,
                )
                .unwrap(),
                &RateLimiterUpdate::KEEP,
            )
            .unwrap();
        next_event(&mut loop_);
        assert_eq!(rxq.used().idx().load(), 5);
        assert!(!net.lock().unwrap().rx_paused(), "watching again");
        assert_eq!(
            net.lock().unwrap().rx_rate_limiter_config(),
            RateLimiterConfig::UNLIMITED
        );
    }

    #[test]
    fn a_frame_held_for_lack_of_buffers_is_charged_once() {
        let clock = Arc::new(ManualClock::new());
        let rx_limiter = limiter(&clock, Some((10_000, 1000)), Some((10, 1000)));
        let mut f = limited_fixture(false, rx_limiter, RateLimiter::unlimited().unwrap());
        let mem = f.mem.clone();
        let (_rxq, _txq) = f.activate(&mem, &[], &[]);
        send(f.peer.as_raw_fd(), &frame(1000, 1)).unwrap();
        for _ in 0..3 {
            assert_eq!(f.net.process_rx(), RxState::OutOfBuffers);
        }
        let save = f.net.save();
        assert_eq!(save.rx_rate_limiter.ops.map(|b| b.budget), Some(10));
        assert_eq!(
            save.rx_rate_limiter.bandwidth.map(|b| b.budget),
            Some(10_000)
        );
        assert_eq!(save.tx_rate_limiter, Default::default());
    }

    #[test]
    fn both_limiters_are_saved_and_old_states_have_none() {
        let clock = Arc::new(ManualClock::new());
        let f = limited_fixture(
            false,
            limiter(&clock, Some((1 << 20, 100)), None),
            limiter(&clock, None, Some((1000, 1000))),
        );
        let saved = f.net.save();
        let json = serde_json::to_string(&saved).unwrap();
        let parsed: NetState = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed, saved);
        let (backend, _peer) = socket_pair().unwrap();
        let restored = Net::restore(Box::new(backend), None, &parsed).unwrap();
        assert_eq!(
            restored.rx_rate_limiter_config(),
            f.net.rx_rate_limiter_config()
        );
        assert_eq!(
            restored.tx_rate_limiter_config(),
            f.net.tx_rate_limiter_config()
        );
        let old: NetState = serde_json::from_str(r#"{"rx_held_frame": []}"#).unwrap();
        assert_eq!(old, NetState::default());
    }
}
