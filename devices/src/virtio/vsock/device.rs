//! The virtio-vsock device: RX, TX and event queues, the guest's context
//! id in configuration space, the [`Muxer`] behind it, and the transport
//! reset a restored device owes its guest.
//!
//! All socket work happens on the device's event loop: `activate` and
//! `reset` (called on a vCPU thread) only hand over queues or mark the
//! backend for a reset, which the loop carries out.

use super::muxer::{Limits, Muxer, MuxerError};
use super::packet::{
    read_tx_packet, write_rx_packet, Direction, GuestBuffers, HEADER_LEN, MAX_PAYLOAD,
};
use crate::virtio::state::SavedQueue;
use crate::virtio::{
    pop_or_rearm, read_config_bytes, ActivateError, ActiveQueue, Interrupt, VirtioDevice,
    VirtioEvent, VirtioEvents, VIRTIO_F_VERSION_1, VIRTIO_RING_F_EVENT_IDX,
};
use crate::GuestMemoryMmap;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use virtio_bindings::virtio_ids::VIRTIO_ID_VSOCK;
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::epoll::EventSet;

/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 3] = [QUEUE_SIZE; 3];
/// Queue 0: packets to the guest.
pub const RX_QUEUE: usize = 0;
/// Queue 1: packets from the guest.
pub const TX_QUEUE: usize = 1;
/// Queue 2: events to the guest (transport reset).
pub const EVENT_QUEUE: usize = 2;
/// `VIRTIO_VSOCK_EVENT_TRANSPORT_RESET`: the guest drops its connections
/// and reads the context id again.
pub const EVENT_TRANSPORT_RESET: u32 = 0;
/// Smallest context id a guest may have (0-2 are reserved).
pub const MIN_GUEST_CID: u64 = 3;
/// Largest: context ids are 32-bit in Linux and in Firecracker's API.
pub const MAX_GUEST_CID: u64 = u32::MAX as u64;

/// What `PUT /vsock` configures.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VsockConfig {
    /// The guest's context id (3 or more).
    pub guest_cid: u64,
    /// The Unix socket host processes connect to; a guest connection to
    /// host port P goes to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

/// What a vsock device keeps across a snapshot besides its transport and
/// queues: the guest's context id. Connections are not kept; the restored
/// guest is told with a transport reset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockState {
    /// The guest's context id.
    pub guest_cid: u64,
}

/// Errors building a vsock device.
#[derive(Debug, thiserror::Error)]
pub enum VsockError {
    /// The context id is reserved or too large.
    #[error("guest_cid {0} is not in 3..=4294967295")]
    InvalidCid(u64),
    /// The Unix-socket backend cannot be set up.
    #[error(transparent)]
    Backend(#[from] MuxerError),
    /// An eventfd cannot be created.
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
}

/// Packet counters (written as they are in metrics lines).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct VsockCounters {
    /// Guest packets handed to the backend.
    pub tx_packets: u64,
    /// TX chains that carried no valid packet.
    pub tx_dropped: u64,
    /// Packets delivered to the guest.
    pub rx_packets: u64,
    /// RX chains unusable for a packet (returned empty).
    pub rx_dropped: u64,
    /// Transport resets delivered on the event queue.
    pub transport_resets: u64,
}

/// Where the transport reset owed to a restored guest stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TransportReset {
    /// None owed.
    None,
    /// To be put on the event queue (once the guest has a buffer there).
    Owed,
    /// Delivered; RX waits until the guest notifies the event queue (it
    /// does once it has handled the event), so that no new connection
    /// reaches it before it has dropped the old ones.
    AwaitingAck,
}

struct Active {
    mem: GuestMemoryMmap,
    rx: Queue,
    tx: Queue,
    event: Queue,
    interrupt: Arc<Interrupt>,
}

/// A virtio-vsock device with Firecracker's Unix-socket backend.
pub struct Vsock {
    guest_cid: u64,
    muxer: Muxer,
    acked_features: u64,
    active: Option<Active>,
    events: VirtioEvents,
    backend_watched: bool,
    backend_reset_due: bool,
    transport_reset: TransportReset,
    tx_payload: Vec<u8>,
    rx_payload: Vec<u8>,
    counters: VsockCounters,
}

impl std::fmt::Debug for Vsock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vsock")
            .field("guest_cid", &self.guest_cid)
            .field("uds_path", &self.muxer.uds_path())
            .field("active", &self.active.is_some())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

fn check_cid(cid: u64) -> Result<(), VsockError> {
    if (MIN_GUEST_CID..=MAX_GUEST_CID).contains(&cid) {
        Ok(())
    } else {
        Err(VsockError::InvalidCid(cid))
    }
}

impl Vsock {
    /// A device for `config`; its socket is bound at once (the path must
    /// not exist).
    pub fn new(config: &VsockConfig) -> Result<Self, VsockError> {
        Self::with_limits(config, Limits::default())
    }

    /// A device with other connection limits.
    pub fn with_limits(config: &VsockConfig, limits: Limits) -> Result<Self, VsockError> {
        check_cid(config.guest_cid)?;
        Ok(Self {
            guest_cid: config.guest_cid,
            muxer: Muxer::new(config.guest_cid, &config.uds_path, limits)?,
            acked_features: 0,
            active: None,
            events: VirtioEvents::new().map_err(VsockError::EventFd)?,
            backend_watched: false,
            backend_reset_due: false,
            transport_reset: TransportReset::None,
            tx_payload: Vec::with_capacity(MAX_PAYLOAD),
            rx_payload: Vec::with_capacity(MAX_PAYLOAD),
            counters: VsockCounters::default(),
        })
    }

    /// The device's own state (its queues are saved by the transport).
    pub fn save(&self) -> VsockState {
        VsockState {
            guest_cid: self.guest_cid,
        }
    }

    /// A device in a saved state, listening at `uds_path`. Once activated
    /// (by the transport's restore), it puts a transport reset on the event
    /// queue and holds RX until the guest has handled it.
    pub fn restore(uds_path: &Path, state: &VsockState) -> Result<Self, VsockError> {
        let config = VsockConfig {
            guest_cid: state.guest_cid,
            uds_path: uds_path.to_owned(),
        };
        let mut vsock = Self::new(&config)?;
        vsock.transport_reset = TransportReset::Owed;
        Ok(vsock)
    }

    /// The guest's context id.
    pub fn guest_cid(&self) -> u64 {
        self.guest_cid
    }

    /// The socket host processes connect to.
    pub fn uds_path(&self) -> &Path {
        self.muxer.uds_path()
    }

    /// Packet counters.
    pub fn counters(&self) -> VsockCounters {
        self.counters
    }

    /// Connections open now.
    pub fn connection_count(&self) -> usize {
        self.muxer.connection_count()
    }

    /// Whether a transport reset is owed or not yet acknowledged (RX holds).
    pub fn transport_reset_pending(&self) -> bool {
        self.transport_reset != TransportReset::None
    }

    /// The muxer (tests drive its deadlines).
    #[cfg(test)]
    pub(super) fn muxer_mut(&mut self) -> &mut Muxer {
        &mut self.muxer
    }

    /// From the event loop after activation: serves the socket, delivers an
    /// owed transport reset, then the queues.
    pub fn start(&mut self) {
        self.apply_backend_reset();
        if self.active.is_none() {
            return;
        }
        if let Err(err) = self.muxer.activate() {
            log::error!(
                "virtio-vsock: cannot serve {}: {err}",
                self.uds_path().display()
            );
        }
        self.publish_transport_reset();
        self.process_tx();
        self.process_rx();
    }

    fn apply_backend_reset(&mut self) {
        if self.backend_reset_due {
            self.backend_reset_due = false;
            self.muxer.reset();
        }
    }

    /// Handles the backend's sockets, then delivers what they produced.
    pub fn process_backend(&mut self) {
        self.apply_backend_reset();
        self.muxer.process_events();
        self.process_rx();
    }

    /// Hands every packet the guest queued on TX to the backend, then
    /// delivers the answers.
    pub fn process_tx(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        while let Some(chain) = pop_or_rearm(&mut active.tx, &active.mem, &active.interrupt) {
            let head = chain.head_index();
            match read_tx_packet(chain, &active.mem, &mut self.tx_payload) {
                Ok(header) => {
                    self.counters.tx_packets += 1;
                    self.muxer.send_to_host(&header, &self.tx_payload);
                }
                Err(err) => {
                    log::debug!("virtio-vsock: bad TX chain: {err}");
                    self.counters.tx_dropped += 1;
                }
            }
            if let Err(err) = active.tx.add_used(&active.mem, head, 0) {
                log::warn!("virtio-vsock: cannot return a TX buffer: {err:?}");
            }
            used = true;
        }
        if used && active.tx.needs_notification(&active.mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
        self.process_rx();
    }

    /// Fills the guest's RX buffers with what the backend has for it.
    pub fn process_rx(&mut self) {
        if self.transport_reset != TransportReset::None {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        while self.muxer.has_pending_rx() {
            let Some(chain) = pop_or_rearm(&mut active.rx, &active.mem, &active.interrupt) else {
                break;
            };
            let head = chain.head_index();
            let buffers =
                match GuestBuffers::from_chain(chain, &active.mem, Direction::DeviceWrites) {
                    Ok(buffers) if buffers.len() >= HEADER_LEN => buffers,
                    result => {
                        log::debug!("virtio-vsock: unusable RX chain: {result:?}");
                        self.counters.rx_dropped += 1;
                        let _ = active.rx.add_used(&active.mem, head, 0);
                        used = true;
                        continue;
                    }
                };
            let room = (buffers.len() - HEADER_LEN).min(MAX_PAYLOAD);
            let Some(header) = self.muxer.next_rx_packet(room, &mut self.rx_payload) else {
                // Nothing after all: the buffer waits for the next packet.
                active.rx.go_to_previous_position();
                break;
            };
            let len = match write_rx_packet(&buffers, &active.mem, &header, &self.rx_payload) {
                Ok(len) => {
                    self.counters.rx_packets += 1;
                    len
                }
                Err(err) => {
                    log::warn!("virtio-vsock: a packet for the guest was lost: {err}");
                    0
                }
            };
            if let Err(err) = active.rx.add_used(&active.mem, head, len) {
                log::warn!("virtio-vsock: cannot return an RX buffer: {err:?}");
            }
            used = true;
        }
        if used && active.rx.needs_notification(&active.mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
    }

    /// The guest notified the event queue: after a transport reset, that is
    /// its acknowledgement (it refills the buffer it consumed).
    pub fn process_event_queue(&mut self) {
        match self.transport_reset {
            TransportReset::AwaitingAck => self.transport_reset = TransportReset::None,
            TransportReset::Owed => self.publish_transport_reset(),
            TransportReset::None => {}
        }
        self.process_rx();
    }

    /// Puts an owed transport reset into the guest's next event buffer.
    fn publish_transport_reset(&mut self) {
        if self.transport_reset != TransportReset::Owed {
            return;
        }
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut used = false;
        while let Some(chain) = pop_or_rearm(&mut active.event, &active.mem, &active.interrupt) {
            let head = chain.head_index();
            let event = EVENT_TRANSPORT_RESET.to_le_bytes();
            let written =
                match GuestBuffers::from_chain(chain, &active.mem, Direction::DeviceWrites) {
                    Ok(buffers) if buffers.len() >= event.len() => {
                        buffers.write_at(&active.mem, 0, &event).is_ok()
                    }
                    _ => false,
                };
            let len = if written { event.len() as u32 } else { 0 };
            if let Err(err) = active.event.add_used(&active.mem, head, len) {
                log::warn!("virtio-vsock: cannot return an event buffer: {err:?}");
            }
            used = true;
            if written {
                self.transport_reset = TransportReset::AwaitingAck;
                self.counters.transport_resets += 1;
                ask_for_next_kick(&active.event, &active.mem);
                break;
            }
        }
        if used {
            active.interrupt.signal_used_queue();
        }
    }
}

/// With EVENT_IDX, asks the driver to notify as soon as it adds a buffer to
/// `queue` (avail_event = its avail index now), as the Linux driver's
/// refill after an event is the acknowledgement. Without EVENT_IDX the
/// driver notifies every addition anyway.
fn ask_for_next_kick(queue: &Queue, mem: &GuestMemoryMmap) {
    if !queue.event_idx_enabled() {
        return;
    }
    let Ok(avail) = queue.avail_idx(mem, Ordering::Acquire) else {
        return;
    };
    // avail_event follows the used ring's flags, index and entries.
    let avail_event = queue.used_ring() + 4 + 8 * u64::from(queue.size());
    if let Err(err) = mem.write_obj(avail.0.to_le(), GuestAddress(avail_event)) {
        log::warn!("virtio-vsock: cannot set avail_event: {err}");
    }
}

impl VirtioDevice for Vsock {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_VSOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn offered_features(&self) -> u64 {
        VIRTIO_F_VERSION_1 | VIRTIO_RING_F_EVENT_IDX
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.guest_cid.to_le_bytes(), offset, data);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        let [rx, tx, event] = self.events.adopt(queues)?;
        self.active = Some(Active {
            mem,
            rx,
            tx,
            event,
            interrupt,
        });
        self.events.signal_activation()
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        // A driver starting over needs no reset event; the sockets are
        // dropped on the event loop (this runs on a vCPU thread).
        self.transport_reset = TransportReset::None;
        self.backend_reset_due = true;
    }

    fn active_queues(&self) -> Option<Vec<SavedQueue>> {
        let active = self.active.as_ref()?;
        Some(vec![
            SavedQueue::of(&active.rx),
            SavedQueue::of(&active.tx),
            SavedQueue::of(&active.event),
        ])
    }
}

impl MutEventSubscriber for Vsock {
    fn init(&mut self, ops: &mut EventOps) {
        self.events.watch(ops, "virtio-vsock");
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.events.classify(&events, ops) {
            VirtioEvent::Activated => {
                if !self.backend_watched {
                    let backend = Events::new_raw(self.muxer.as_raw_fd(), EventSet::IN);
                    match ops.add(backend) {
                        Ok(()) => self.backend_watched = true,
                        Err(err) => log::error!("virtio-vsock: cannot watch the backend: {err:?}"),
                    }
                }
                self.start();
            }
            VirtioEvent::Notified(RX_QUEUE) => self.process_rx(),
            VirtioEvent::Notified(TX_QUEUE) => self.process_tx(),
            VirtioEvent::Notified(_) => self.process_event_queue(),
            VirtioEvent::Other if events.fd() == self.muxer.as_raw_fd() => self.process_backend(),
            VirtioEvent::Other => {}
        }
    }
}
