//! virtio-net over a host tap: one RX and one TX queue, MAC and link status
//! in config space, checksum/TSO offloads negotiated with the guest and set
//! on the tap, mergeable RX buffers. Event-driven: the tap is watched only
//! while the guest has RX buffers; without them RX pauses (one frame held)
//! and resumes on the guest's RX notification, so memory stays bounded.
//!
//! Each direction has a rate limiter (ops: frames; bandwidth: frame bytes,
//! virtio-net header included). A TX frame the limiter refuses stays in
//! the queue; a refused RX frame is held as when the guest has no buffers,
//! and the backend is not watched meanwhile. Either resumes when its
//! limiter's timer fires.

#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
#[cfg(any(test, feature = "fuzzing"))]
pub mod socket_backend;
pub mod tap;

use super::{
    pop_or_rearm, read_config_bytes, ActivateError, ActiveQueue, Interrupt, VirtioDevice,
    VirtioEvent, VirtioEvents,
};
use crate::rate_limiter::{
    LimiterError, RateLimiter, RateLimiterConfig, RateLimiterState, RateLimiterUpdate,
};
use crate::GuestMemoryMmap;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::io;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use tap::{Tap, VNET_HDR_LEN};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::*;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::epoll::EventSet;

/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 2] = [QUEUE_SIZE, QUEUE_SIZE];
/// Queue 0 receives (host to guest), queue 1 transmits.
const RX_QUEUE: usize = 0;
/// Largest frame with its header: 64 KiB (GSO) plus Ethernet and VLAN headers.
pub const MAX_FRAME_LEN: usize = VNET_HDR_LEN + 65536 + 14 + 4;
/// Offset of num_buffers in the virtio-net header.
const NUM_BUFFERS_OFFSET: usize = 10;

/// Where a virtio-net device's frames go: a tap in production, a socket
/// pair in tests. Frames carry the 12-byte virtio-net header.
pub trait FrameBackend: AsRawFd + Send {
    /// Reads one frame; `WouldBlock` when none is queued.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;
    /// Writes one frame.
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize>;
    /// Applies the offloads (TUN_F_*) the guest accepted.
    fn set_offload(&self, flags: libc::c_uint) -> io::Result<()>;
}

impl FrameBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Tap::read_frame(self, buf)
    }

    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        Tap::write_frame(self, frame)
    }

    fn set_offload(&self, flags: libc::c_uint) -> io::Result<()> {
        Tap::set_offload(self, flags).map_err(io::Error::other)
    }
}

/// What RX processing ended on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RxState {
    /// The backend has no more frames: keep watching it.
    Drained,
    /// The guest has no RX buffers: stop watching the backend until it
    /// adds some (one frame is held meanwhile).
    OutOfBuffers,
    /// The RX rate limiter refused the next frame: stop watching the
    /// backend until its timer fires (the frame is held meanwhile).
    Throttled,
}

/// Counters of one interface (written as they are in metrics lines).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct NetCounters {
    /// Frames delivered to the guest.
    pub rx_packets: u64,
    /// Bytes delivered to the guest (headers included).
    pub rx_bytes: u64,
    /// Frames from the tap the guest had no room for, or bad RX buffers.
    pub rx_dropped: u64,
    /// Frames sent to the tap.
    pub tx_packets: u64,
    /// Bytes sent to the tap (headers included).
    pub tx_bytes: u64,
    /// Guest frames dropped: too large, too short, bad addresses, wrong direction.
    pub tx_dropped: u64,
    /// RX frames held back by the RX rate limiter's bandwidth bucket.
    pub rx_rate_limiter_throttled_bandwidth: u64,
    /// RX frames held back by the RX rate limiter's ops bucket.
    pub rx_rate_limiter_throttled_ops: u64,
    /// Times RX resumed when the RX rate limiter's timer fired.
    pub rx_rate_limiter_resumed: u64,
    /// TX frames held back by the TX rate limiter's bandwidth bucket.
    pub tx_rate_limiter_throttled_bandwidth: u64,
    /// TX frames held back by the TX rate limiter's ops bucket.
    pub tx_rate_limiter_throttled_ops: u64,
    /// Times TX resumed when the TX rate limiter's timer fired.
    pub tx_rate_limiter_resumed: u64,
}

/// What a network device keeps across a snapshot besides its transport and
/// queues (the tap is opened again by name).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetState {
    /// A frame read from the tap and held while the guest had no RX buffer
    /// (header included); delivered first after the restore.
    pub rx_held_frame: Vec<u8>,
    /// The RX rate limiter's buckets (none in states saved before rate
    /// limiting, which is what they had).
    #[serde(default)]
    pub rx_rate_limiter: RateLimiterState,
    /// The TX rate limiter's buckets.
    #[serde(default)]
    pub tx_rate_limiter: RateLimiterState,
}

struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    interrupt: Arc<Interrupt>,
}

/// A virtio-net device.
pub struct Net {
    tap: Box<dyn FrameBackend>,
    mac: Option<[u8; 6]>,
    acked_features: u64,
    /// MAC (0..6), status (6..8), max queue pairs (8..10), MTU (10..12).
    config: [u8; 12],
    mtu: Option<u16>,
    active: Option<Active>,
    events: VirtioEvents,
    tap_watched: bool,
    rx_frame: Vec<u8>,
    rx_pending: usize,
    tx_frame: Vec<u8>,
    counters: NetCounters,
    rx_limiter: RateLimiter,
    tx_limiter: RateLimiter,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("backend_fd", &self.tap.as_raw_fd())
            .field("active", &self.active.is_some())
            .field("counters", &self.counters)
            .field("rx_limiter", &self.rx_limiter)
            .field("tx_limiter", &self.tx_limiter)
            .finish_non_exhaustive()
    }
}

impl Net {
    /// A device over `tap` (any frame backend), with `mac` (the guest picks
    /// one when `None`), without rate limits (they can be set later with
    /// [`Net::update_rate_limiters`]).
    pub fn new(tap: Box<dyn FrameBackend>, mac: Option<[u8; 6]>) -> io::Result<Self> {
        let unlimited = || RateLimiter::unlimited().map_err(io::Error::other);
        Self::with_rate_limiters(tap, mac, unlimited()?, unlimited()?)
    }

    /// A device over `tap` with `mac` whose frames to the guest go through
    /// `rx_limiter` and frames from the guest through `tx_limiter`.
    pub fn with_rate_limiters(
        tap: Box<dyn FrameBackend>,
        mac: Option<[u8; 6]>,
        rx_limiter: RateLimiter,
        tx_limiter: RateLimiter,
    ) -> io::Result<Self> {
        let mut config = [0u8; 12];
        config[..6].copy_from_slice(&mac.unwrap_or_default());
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        Ok(Self {
            tap,
            mac,
            acked_features: 0,
            config,
            mtu: None,
            active: None,
            events: VirtioEvents::new()?,
            tap_watched: false,
            rx_frame: vec![0; MAX_FRAME_LEN],
            rx_pending: 0,
            tx_frame: Vec::with_capacity(MAX_FRAME_LEN),
            counters: NetCounters::default(),
            rx_limiter,
            tx_limiter,
        })
    }

    /// Offers `mtu` to the guest (`VIRTIO_NET_F_MTU`; its driver then sets
    /// the interface's MTU), or nothing when `None`, the guest's default.
    pub fn with_mtu(mut self, mtu: Option<u16>) -> Self {
        self.mtu = mtu;
        self.config[10..12].copy_from_slice(&mtu.unwrap_or(0).to_le_bytes());
        self
    }

    /// Changes the rate limits of both directions at runtime (a PATCH),
    /// both or neither; a direction held back resumes under the new
    /// limits.
    pub fn update_rate_limiters(
        &mut self,
        rx: &RateLimiterUpdate,
        tx: &RateLimiterUpdate,
    ) -> Result<(), LimiterError> {
        self.rx_limiter.check_update(rx)?;
        self.tx_limiter.check_update(tx)?;
        self.rx_limiter.update(rx)?;
        self.tx_limiter.update(tx)
    }

    /// The RX rate limits in force.
    pub fn rx_rate_limiter_config(&self) -> RateLimiterConfig {
        self.rx_limiter.config()
    }

    /// The TX rate limits in force.
    pub fn tx_rate_limiter_config(&self) -> RateLimiterConfig {
        self.tx_limiter.config()
    }

    /// The device's own state (its queues are saved by the transport).
    pub fn save(&self) -> NetState {
        NetState {
            rx_held_frame: self.rx_frame[..self.rx_pending].to_vec(),
            rx_rate_limiter: self.rx_limiter.save(),
            tx_rate_limiter: self.tx_limiter.save(),
        }
    }

    /// A device over `tap` with `mac`, in a saved state.
    pub fn restore(
        tap: Box<dyn FrameBackend>,
        mac: Option<[u8; 6]>,
        state: &NetState,
    ) -> Result<Self, crate::state::StateError> {
        let held = state.rx_held_frame.len();
        if held > MAX_FRAME_LEN || (held != 0 && held <= VNET_HDR_LEN) {
            return Err(crate::state::StateError::invalid(
                "virtio-net",
                format!("a held frame of {held} bytes"),
            ));
        }
        let rx_limiter = RateLimiter::restore(&state.rx_rate_limiter, "virtio-net")?;
        let tx_limiter = RateLimiter::restore(&state.tx_rate_limiter, "virtio-net")?;
        let mut net = Self::with_rate_limiters(tap, mac, rx_limiter, tx_limiter)
            .map_err(|err| crate::state::StateError::invalid("virtio-net", err.to_string()))?;
        net.rx_frame[..held].copy_from_slice(&state.rx_held_frame);
        net.rx_pending = held;
        Ok(net)
    }

    /// Traffic counters.
    pub fn counters(&self) -> NetCounters {
        let rx = self.rx_limiter.counters();
        let tx = self.tx_limiter.counters();
        NetCounters {
            rx_rate_limiter_throttled_bandwidth: rx.bandwidth_throttled,
            rx_rate_limiter_throttled_ops: rx.ops_throttled,
            rx_rate_limiter_resumed: rx.resumed,
            tx_rate_limiter_throttled_bandwidth: tx.bandwidth_throttled,
            tx_rate_limiter_throttled_ops: tx.ops_throttled,
            tx_rate_limiter_resumed: tx.resumed,
            ..self.counters
        }
    }

    fn acked(&self, feature: u32) -> bool {
        self.acked_features & (1 << feature) != 0
    }

    /// Sends the frames the guest queued on TX to the tap; a frame the TX
    /// rate limiter refuses stays in the queue, with every one after it,
    /// until the limiter's timer fires.
    pub fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut sent_any = false;
        while let Some(chain) = pop_or_rearm(&mut active.tx, &active.mem, &active.interrupt) {
            let head = chain.head_index();
            self.tx_frame.clear();
            let mut valid = true;
            for desc in chain {
                let len = desc.len() as usize;
                let fits = self.tx_frame.len() + len <= MAX_FRAME_LEN;
                if desc.is_write_only() || !fits || !active.mem.check_range(desc.addr(), len) {
                    valid = false;
                    break;
                }
                let start = self.tx_frame.len();
                self.tx_frame.resize(start + len, 0);
                if active
                    .mem
                    .read_slice(&mut self.tx_frame[start..], desc.addr())
                    .is_err()
                {
                    valid = false;
                    break;
                }
            }
            if valid && self.tx_frame.len() > VNET_HDR_LEN {
                if !self.tx_limiter.consume_op(self.tx_frame.len() as u64) {
                    active.tx.go_to_previous_position();
                    break;
                }
                match self.tap.write_frame(&self.tx_frame) {
                    Ok(_) => {
                        self.counters.tx_packets += 1;
                        self.counters.tx_bytes += self.tx_frame.len() as u64;
                    }
                    Err(err) => {
                        log::debug!("virtio-net: tap write failed: {err}");
                        self.counters.tx_dropped += 1;
                    }
                }
            } else {
                self.counters.tx_dropped += 1;
            }
            if let Err(err) = active.tx.add_used(&active.mem, head, 0) {
                log::warn!("virtio-net: cannot return a TX buffer: {err:?}");
            }
            sent_any = true;
        }
        if sent_any && active.tx.needs_notification(&active.mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
    }

    /// Moves frames from the backend to the guest until the backend is
    /// empty, the guest has no more RX buffers, or the RX rate limiter
    /// refuses a frame.
    pub fn process_rx(&mut self) -> RxState {
        let mut state = RxState::Drained;
        loop {
            if self.rx_pending == 0 {
                match self.tap.read_frame(&mut self.rx_frame) {
                    Ok(n) if n > VNET_HDR_LEN => self.rx_pending = n,
                    Ok(_) => continue,
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => break,
                    Err(err) => {
                        log::warn!("virtio-net: backend read failed: {err}");
                        break;
                    }
                }
            }
            let frame_len = self.rx_pending as u64;
            if !self.rx_limiter.consume_op(frame_len) {
                state = RxState::Throttled;
                break;
            }
            match self.deliver_pending() {
                Delivery::Done => {
                    self.rx_pending = 0;
                    self.signal_rx_used();
                }
                Delivery::Dropped => self.rx_pending = 0,
                Delivery::NoBuffers => {
                    // The frame stays held: it is charged when it goes.
                    self.rx_limiter.refund_op(frame_len);
                    state = RxState::OutOfBuffers;
                    break;
                }
            }
        }
        state
    }

    /// Interrupts the guest for a delivered frame if it asked to be told
    /// (with EVENT_IDX: the used index passed its used_event). Done per frame,
    /// not once the backend is drained, so that the guest starts on the
    /// first frames while later ones are still being delivered.
    fn signal_rx_used(&mut self) {
        if let Some(active) = self.active.as_mut() {
            if active.rx.needs_notification(&active.mem).unwrap_or(true) {
                active.interrupt.signal_used_queue();
            }
        }
    }

    /// Runs RX and watches the backend only while the guest has buffers
    /// and the rate limiter lets frames through.
    fn rx_and_watch(&mut self, ops: &mut EventOps) {
        let want_watch = self.process_rx() == RxState::Drained;
        let events = Events::new_raw(self.tap.as_raw_fd(), EventSet::IN);
        if want_watch && !self.tap_watched {
            match ops.add(events) {
                Ok(()) => self.tap_watched = true,
                Err(err) => log::error!("virtio-net: cannot watch the backend: {err:?}"),
            }
        } else if !want_watch && self.tap_watched {
            let _ = ops.remove(events);
            self.tap_watched = false;
        }
    }

    /// Writes the pending frame into one chain (or several with mergeable
    /// RX buffers).
    fn deliver_pending(&mut self) -> Delivery {
        let mergeable = self.acked(VIRTIO_NET_F_MRG_RXBUF);
        let Some(active) = self.active.as_mut() else {
            return Delivery::NoBuffers;
        };
        let len = self.rx_pending;
        // Phase 1: reserve chains whose writable buffers hold the frame.
        let mut chains: Vec<(u16, Vec<(GuestAddress, usize)>)> = Vec::new();
        let mut broken: Vec<u16> = Vec::new();
        let mut room = 0usize;
        let first_avail = active.rx.next_avail();
        while room < len {
            // Out of buffers, the driver is asked to notify when it adds
            // buffers past the ones seen (with EVENT_IDX: avail_event = this
            // index, not `first_avail`, which it has already passed).
            let Some(chain) = pop_or_rearm(&mut active.rx, &active.mem, &active.interrupt) else {
                // Give every popped chain back; the frame waits for more.
                active.rx.set_next_avail(first_avail);
                return Delivery::NoBuffers;
            };
            let head = chain.head_index();
            let mut buffers = Vec::new();
            let mut bad = false;
            for desc in chain {
                let dlen = desc.len() as usize;
                if !desc.is_write_only() || !active.mem.check_range(desc.addr(), dlen) {
                    bad = true;
                    break;
                }
                buffers.push((desc.addr(), dlen));
            }
            if bad || buffers.is_empty() {
                // A broken buffer is returned unused (once the frame is placed).
                broken.push(head);
                continue;
            }
            room += buffers.iter().map(|(_, l)| l).sum::<usize>();
            chains.push((head, buffers));
            if !mergeable && room < len {
                // Without mergeable buffers a frame must fit one chain.
                self.counters.rx_dropped += 1 + broken.len() as u64;
                for head in chains.iter().map(|(head, _)| *head).chain(broken) {
                    let _ = active.rx.add_used(&active.mem, head, 0);
                }
                return Delivery::Dropped;
            }
        }
        self.counters.rx_dropped += broken.len() as u64;
        for head in broken {
            let _ = active.rx.add_used(&active.mem, head, 0);
        }
        // Phase 2: num_buffers, then copy.
        let num_buffers = chains.len() as u16;
        self.rx_frame[NUM_BUFFERS_OFFSET..NUM_BUFFERS_OFFSET + 2]
            .copy_from_slice(&num_buffers.to_le_bytes());
        let mut offset = 0usize;
        for (head, buffers) in &chains {
            let mut chain_len = 0usize;
            for (addr, blen) in buffers {
                if offset >= len {
                    break;
                }
                let n = (*blen).min(len - offset);
                if active
                    .mem
                    .write_slice(&self.rx_frame[offset..offset + n], *addr)
                    .is_err()
                {
                    break;
                }
                offset += n;
                chain_len += n;
            }
            let _ = active.rx.add_used(&active.mem, *head, chain_len as u32);
        }
        self.counters.rx_packets += 1;
        self.counters.rx_bytes += len as u64;
        Delivery::Done
    }

    /// Whether the backend is being watched (false while RX is paused).
    pub fn rx_paused(&self) -> bool {
        !self.tap_watched
    }
}

enum Delivery {
    Done,
    Dropped,
    NoBuffers,
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn offered_features(&self) -> u64 {
        let mut features: u64 = [
            VIRTIO_NET_F_CSUM,
            VIRTIO_NET_F_GUEST_CSUM,
            VIRTIO_NET_F_GUEST_TSO4,
            VIRTIO_NET_F_GUEST_TSO6,
            VIRTIO_NET_F_GUEST_ECN,
            VIRTIO_NET_F_HOST_TSO4,
            VIRTIO_NET_F_HOST_TSO6,
            VIRTIO_NET_F_HOST_ECN,
            VIRTIO_NET_F_MRG_RXBUF,
            VIRTIO_NET_F_STATUS,
        ]
        .iter()
        .fold(0, |acc, bit| acc | (1u64 << bit));
        if self.mac.is_some() {
            features |= 1 << VIRTIO_NET_F_MAC;
        }
        if self.mtu.is_some() {
            features |= 1 << VIRTIO_NET_F_MTU;
        }
        features | super::VIRTIO_F_VERSION_1 | super::VIRTIO_RING_F_EVENT_IDX
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
        let mut offload = 0;
        if self.acked(VIRTIO_NET_F_GUEST_CSUM) {
            offload |= libc::TUN_F_CSUM;
            if self.acked(VIRTIO_NET_F_GUEST_TSO4) {
                offload |= libc::TUN_F_TSO4;
            }
            if self.acked(VIRTIO_NET_F_GUEST_TSO6) {
                offload |= libc::TUN_F_TSO6;
            }
            if self.acked(VIRTIO_NET_F_GUEST_ECN) {
                offload |= libc::TUN_F_TSO_ECN;
            }
        }
        if let Err(err) = self.tap.set_offload(offload) {
            log::error!("virtio-net: cannot set offloads {offload:#x}: {err}");
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let [rx, tx] = self.events.adopt(queues)?;
        self.active = Some(Active {
            mem,
            rx,
            tx,
            interrupt,
        });
        self.events.signal_activation()
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.rx_pending = 0;
    }

    fn active_queues(&self) -> Option<Vec<super::state::SavedQueue>> {
        let active = self.active.as_ref()?;
        Some(vec![
            super::state::SavedQueue::of(&active.rx),
            super::state::SavedQueue::of(&active.tx),
        ])
    }
}

impl MutEventSubscriber for Net {
    fn init(&mut self, ops: &mut EventOps) {
        self.events.watch(ops, "virtio-net");
        self.rx_limiter.watch(ops, "virtio-net");
        self.tx_limiter.watch(ops, "virtio-net");
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.events.classify(&events, ops) {
            VirtioEvent::Activated => {
                // Frames the driver queued before we watched the queues.
                self.process_tx();
                self.rx_and_watch(ops);
            }
            // New RX buffers: deliver what waits, and listen again.
            VirtioEvent::Notified(RX_QUEUE) => self.rx_and_watch(ops),
            VirtioEvent::Notified(_) => self.process_tx(),
            VirtioEvent::Other if events.fd() == self.tap.as_raw_fd() => self.rx_and_watch(ops),
            VirtioEvent::Other if self.rx_limiter.released_by(&events) => self.rx_and_watch(ops),
            VirtioEvent::Other if self.tx_limiter.released_by(&events) => self.process_tx(),
            VirtioEvent::Other => {}
        }
    }
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz_smoke {
    /// The fuzz harness on pseudo-random inputs, on stable Rust in every
    /// test run (cargo-fuzz explores far more; see fuzz/).
    #[test]
    fn random_frames_and_chains_never_panic() {
        for input in crate::virtio::fuzzing::pseudo_random_inputs(2000, 600) {
            super::fuzzing::run(&input);
        }
    }
}
