//! Virtio devices and their transport: the device-side contract
//! ([`VirtioDevice`]), the interrupt a device raises, and the virtio-mmio
//! transport ([`mmio::MmioTransport`]) that exposes a device to the guest.

pub mod block;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod state;
pub mod vsock;

use crate::EventFdTrigger;
use crate::GuestMemoryMmap;
use event_manager::{EventOps, Events};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// VIRTIO_F_VERSION_1: a modern (virtio 1.x) device. Every brique device
/// offers it and requires the driver to accept it.
pub const VIRTIO_F_VERSION_1: u64 = 1 << virtio_bindings::virtio_config::VIRTIO_F_VERSION_1;
/// VIRTIO_RING_F_EVENT_IDX: the driver and the device tell each other up
/// to which ring index they may go before the other must be notified
/// (`used_event`, `avail_event`), which saves most notifications and
/// interrupts under load. Offered by block and net.
pub const VIRTIO_RING_F_EVENT_IDX: u64 = 1 << virtio_bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;

/// Interrupt status bit: a used buffer was returned.
pub const INT_USED_RING: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_VRING;
/// Interrupt status bit: the configuration changed.
pub const INT_CONFIG: u32 = virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;

/// A device's line to the driver, shared with its transport: the
/// InterruptStatus register, the irqfd that raises the guest interrupt, and
/// whether the device needs a reset (DEVICE_NEEDS_RESET in the status
/// register, announced by a configuration change interrupt).
#[derive(Debug)]
pub struct Interrupt {
    status: AtomicU32,
    needs_reset: AtomicBool,
    irq: EventFdTrigger,
}

impl Interrupt {
    /// An interrupt raised through `irq`.
    pub fn new(irq: EventFdTrigger) -> Arc<Self> {
        Arc::new(Self {
            status: AtomicU32::new(0),
            needs_reset: AtomicBool::new(false),
            irq,
        })
    }

    fn raise(&self, bit: u32) {
        self.status.fetch_or(bit, Ordering::AcqRel);
        if let Err(err) = vm_superio::Trigger::trigger(&self.irq) {
            log::error!("virtio: cannot raise interrupt: {err}");
        }
    }

    /// Signals used buffers.
    pub fn signal_used_queue(&self) {
        self.raise(INT_USED_RING);
    }

    /// Signals a configuration change.
    pub fn signal_config_change(&self) {
        self.raise(INT_CONFIG);
    }

    /// The InterruptStatus register.
    pub fn status(&self) -> u32 {
        self.status.load(Ordering::Acquire)
    }

    /// InterruptACK: clears the acknowledged bits.
    pub fn ack(&self, bits: u32) {
        self.status.fetch_and(!bits, Ordering::AcqRel);
    }

    /// The device hit an error it cannot recover from (virtio 1.x, 2.1.2):
    /// the transport reports DEVICE_NEEDS_RESET and the driver is told with
    /// a configuration change interrupt, once.
    pub fn signal_needs_reset(&self) {
        if !self.needs_reset.swap(true, Ordering::AcqRel) {
            self.raise(INT_CONFIG);
        }
    }

    /// Whether the device waits for the driver to reset it.
    pub fn needs_reset(&self) -> bool {
        self.needs_reset.load(Ordering::Acquire)
    }

    /// The interrupt status and reset flag.
    pub fn save(&self) -> state::InterruptState {
        state::InterruptState {
            status: self.status(),
            needs_reset: self.needs_reset(),
        }
    }

    /// Takes a saved status. The machine raises a status with bits the
    /// driver has not acknowledged once more when the restored vCPUs can
    /// take it ([`Interrupt::raise_if_pending`]).
    pub fn restore(&self, state: &state::InterruptState) -> Result<(), crate::state::StateError> {
        if state.status & !(INT_USED_RING | INT_CONFIG) != 0 {
            return Err(crate::state::StateError::invalid(
                "virtio interrupt",
                format!("status {:#x}", state.status),
            ));
        }
        self.status.store(state.status, Ordering::Release);
        self.needs_reset.store(state.needs_reset, Ordering::Release);
        Ok(())
    }

    /// Raises the interrupt line again if the status is not empty.
    pub fn raise_if_pending(&self) {
        if self.status() != 0 {
            if let Err(err) = vm_superio::Trigger::trigger(&self.irq) {
                log::error!("virtio: cannot raise interrupt: {err}");
            }
        }
    }

    /// Clears everything (device reset).
    pub fn clear(&self) {
        self.status.store(0, Ordering::Release);
        self.needs_reset.store(false, Ordering::Release);
    }
}

/// A queue handed to a device at activation, with the eventfd the guest's
/// notifications for it arrive on (the same eventfd at every activation).
#[derive(Debug)]
pub struct ActiveQueue {
    /// The queue, configured by the driver.
    pub queue: Queue,
    /// Written when the driver notifies the queue.
    pub notify: EventFd,
}

/// The queue of a one-queue device (block, entropy) once the driver
/// activated it, with the guest memory it lives in and the interrupt that
/// tells the driver about used buffers.
#[derive(Debug)]
pub struct SingleQueue {
    /// Guest memory.
    pub mem: GuestMemoryMmap,
    /// The queue, configured by the driver.
    pub queue: Queue,
    /// The device's interrupt.
    pub interrupt: Arc<Interrupt>,
}

impl SingleQueue {
    /// From `activate`: takes the driver's one queue (keeping its notifier
    /// in `events`).
    pub fn adopt(
        events: &mut VirtioEvents,
        mem: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, ActivateError> {
        let [queue] = events.adopt(queues)?;
        Ok(Self {
            mem,
            queue,
            interrupt,
        })
    }

    /// The queue, for a snapshot.
    pub fn saved(&self) -> Vec<state::SavedQueue> {
        vec![state::SavedQueue::of(&self.queue)]
    }
}

/// Errors activating a device.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The driver set up a different number of queues than the device has.
    #[error("expected {expected} queues, got {got}")]
    QueueCount { expected: usize, got: usize },
    /// A queue's setup is not usable.
    #[error("invalid queue: {0}")]
    InvalidQueue(String),
    /// An eventfd operation failed.
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
}

/// Pops the next chain the driver made available. When there is none, it
/// re-arms the driver's notifications (with EVENT_IDX: `avail_event` = the
/// next index) and pops once more in case the driver added chains meanwhile;
/// `None` means the driver will notify when it adds more.
///
/// A driver that puts the avail index more than a queue's length ahead of
/// the device (or the ring out of memory) has broken the queue: the device
/// is marked as needing a reset (`interrupt`) and pops nothing until the
/// driver resets it, so a hostile guest cannot keep the event loop busy.
pub fn pop_or_rearm<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
    interrupt: &Interrupt,
) -> Option<DescriptorChain<&'m GuestMemoryMmap>> {
    if interrupt.needs_reset() {
        return None;
    }
    let pop = |queue: &mut Queue| match queue.iter(mem) {
        Ok(mut available) => available.next(),
        Err(err) => {
            log::warn!("virtio: the driver broke a queue ({err}); the device needs a reset");
            interrupt.signal_needs_reset();
            None
        }
    };
    if let Some(chain) = pop(queue) {
        return Some(chain);
    }
    if interrupt.needs_reset() {
        return None;
    }
    match queue.enable_notification(mem) {
        Ok(true) => pop(queue),
        _ => None,
    }
}

/// The eventfds a device's event-loop side watches: the activation, which
/// `activate` (on a vCPU thread) signals, and the queues' notifications.
///
/// The notification eventfds are kept from the first activation for the
/// device's whole life (the transport hands the same ones at every
/// activation) and each notification is consumed even while the device is
/// reset. Closing a watched eventfd would not do: its epoll entry lives as
/// long as the transport and KVM hold the eventfd, so a driver that resets
/// the device and then notifies would keep the event loop spinning.
#[derive(Debug)]
pub struct VirtioEvents {
    activation: EventFd,
    notifiers: Vec<EventFd>,
    notifiers_watched: bool,
}

/// What an event on a device's subscriber is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtioEvent {
    /// The device was activated: its queues are watched from now on.
    Activated,
    /// The driver notified queue `n` (the notification is consumed).
    Notified(usize),
    /// Not one of these eventfds (e.g. a backend the device watches).
    Other,
}

impl VirtioEvents {
    /// No activation yet, no notifiers.
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            activation: EventFd::new(EFD_NONBLOCK)?,
            notifiers: Vec::new(),
            notifiers_watched: false,
        })
    }

    /// From `activate`: checks that the driver set up the device's `N`
    /// queues, keeps their notifiers (those of the first activation) and
    /// returns the queues.
    pub fn adopt<const N: usize>(
        &mut self,
        queues: Vec<ActiveQueue>,
    ) -> Result<[Queue; N], ActivateError> {
        let got = queues.len();
        let (queues, notifiers): (Vec<Queue>, Vec<EventFd>) = queues
            .into_iter()
            .map(|active| (active.queue, active.notify))
            .unzip();
        let queues = <[Queue; N]>::try_from(queues)
            .map_err(|_| ActivateError::QueueCount { expected: N, got })?;
        if self.notifiers.is_empty() {
            self.notifiers = notifiers;
        }
        Ok(queues)
    }

    /// From `activate`: tells the event loop that the device was activated.
    pub fn signal_activation(&self) -> Result<(), ActivateError> {
        self.activation.write(1).map_err(ActivateError::EventFd)
    }

    /// Watches the activation (from the subscriber's `init`).
    pub fn watch(&self, ops: &mut EventOps, device: &str) {
        if let Err(err) = ops.add(Events::new(&self.activation, EventSet::IN)) {
            log::error!("{device}: cannot watch activation: {err:?}");
        }
    }

    /// Classifies `events`, consuming the activation or notification it
    /// carries; the first activation starts watching the notifiers.
    pub fn classify(&mut self, events: &Events, ops: &mut EventOps) -> VirtioEvent {
        let fd = events.fd();
        if fd == self.activation.as_raw_fd() {
            let _ = self.activation.read();
            if !self.notifiers_watched {
                for evt in &self.notifiers {
                    if let Err(err) = ops.add(Events::new(evt, EventSet::IN)) {
                        log::error!("virtio: cannot watch a queue notifier: {err:?}");
                    }
                }
                self.notifiers_watched = true;
            }
            return VirtioEvent::Activated;
        }
        match self.notifiers.iter().position(|evt| evt.as_raw_fd() == fd) {
            Some(queue) => {
                let _ = self.notifiers[queue].read();
                VirtioEvent::Notified(queue)
            }
            None => VirtioEvent::Other,
        }
    }
}

/// The device side of a virtio device, independent of its transport.
pub trait VirtioDevice: Send {
    /// The virtio device id (2 for block, 1 for net).
    fn device_type(&self) -> u32;
    /// Maximum size of each of the device's queues.
    fn queue_max_sizes(&self) -> &[u16];
    /// Features the device offers.
    fn offered_features(&self) -> u64;
    /// Features the driver accepted (a subset of the offered ones).
    fn set_acked_features(&mut self, features: u64);
    /// Reads the device configuration space at `offset`.
    fn read_config(&self, offset: u64, data: &mut [u8]);
    /// Changes of the configuration space the device made on its own (a
    /// resized disk); the transport adds them to its ConfigGeneration.
    fn config_generation(&self) -> u32 {
        0
    }
    /// Writes the device configuration space at `offset`. Read-only by
    /// default (block and net configs have no driver-writable fields).
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        log::debug!(
            "virtio device {}: ignored {}-byte config write at {offset}",
            self.device_type(),
            data.len()
        );
    }
    /// Starts the device with the driver's queues.
    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError>;
    /// Stops the device and forgets the queues (driver reset).
    fn reset(&mut self);
    /// The queues of an active device (their one home from activation on),
    /// for a snapshot; `None` before activation.
    fn active_queues(&self) -> Option<Vec<state::SavedQueue>>;
}

/// Copies the bytes of `config` at `offset` into `data`; bytes past the end
/// read as zero.
pub fn read_config_bytes(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Ok(start) = usize::try_from(offset) else {
        return;
    };
    if let Some(available) = config.get(start..) {
        let n = available.len().min(data.len());
        data[..n].copy_from_slice(&available[..n]);
    }
}

#[cfg(test)]
mod mmio_tests;
