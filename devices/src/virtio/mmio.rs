//! The virtio-mmio transport (virtio 1.x, register layout version 2): the
//! guest-facing registers of one device. Feature negotiation, queue setup,
//! the status state machine, config space, reset and interrupt status.
//!
//! Queue notifications arrive through one eventfd per queue: with KVM they
//! are ioeventfds on the QueueNotify register (the guest write never leaves
//! the kernel); a write that does reach the transport is forwarded to the
//! same eventfd, so the device sees one notification path.

use super::state::{InterruptState, SavedQueue};
use super::{ActivateError, ActiveQueue, Interrupt, VirtioDevice, VIRTIO_F_VERSION_1};
use crate::bus::BusDevice;
use crate::state::StateError;
use crate::GuestMemoryMmap;
use serde::{Deserialize, Serialize};
use std::sync::{Arc, Mutex};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueT};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Size of one device's MMIO window.
pub const MMIO_WINDOW_SIZE: u64 = 0x1000;
/// Offset of the QueueNotify register (where ioeventfds go).
pub const QUEUE_NOTIFY_OFFSET: u64 = VIRTIO_MMIO_QUEUE_NOTIFY as u64;

const MAGIC: u32 = 0x7472_6976; // "virt"
const VERSION: u32 = 2;
const VENDOR_ID: u32 = 0x4252_5131; // "BRQ1"
const CONFIG_SPACE_OFFSET: u64 = VIRTIO_MMIO_CONFIG as u64;

/// A device shared between its transport and its event loop subscriber.
pub type SharedDevice = Arc<Mutex<dyn VirtioDevice>>;

/// Errors creating a transport.
#[derive(Debug, thiserror::Error)]
pub enum MmioError {
    /// Creating a queue or its eventfd failed.
    #[error("cannot create queue {index}: {detail}")]
    Queue { index: usize, detail: String },
}

/// The transport's registers and the device's queues, as saved in a
/// snapshot. The queues are the driver's setup before activation and the
/// device's (with its progress) after.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmioTransportState {
    /// The virtio device id.
    pub device_type: u32,
    /// The device status register, as the driver set it.
    pub status: u32,
    /// Whether the device was activated (DRIVER_OK reached and accepted).
    pub activated: bool,
    /// QueueSel.
    pub queue_select: u32,
    /// DeviceFeaturesSel.
    pub device_features_select: u32,
    /// DriverFeaturesSel.
    pub driver_features_select: u32,
    /// The features the driver accepted.
    pub driver_features: u64,
    /// Config space writes seen (ConfigGeneration, less the device's part).
    pub config_generation: u32,
    /// Interrupt status.
    pub interrupt: InterruptState,
    /// Every queue of the device.
    pub queues: Vec<SavedQueue>,
}

/// The virtio-mmio registers of one device.
pub struct MmioTransport {
    device: SharedDevice,
    device_type: u32,
    offered_features: u64,
    mem: GuestMemoryMmap,
    /// The driver's queue setup; handed to the device at activation (and
    /// set back to defaults here), given back by a reset.
    queues: Vec<Queue>,
    activated: bool,
    queue_evts: Vec<EventFd>,
    interrupt: Arc<Interrupt>,
    status: u32,
    queue_select: u32,
    device_features_select: u32,
    driver_features_select: u32,
    driver_features: u64,
    config_generation: u32,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device_type)
            .field("status", &self.status)
            .field("driver_features", &self.driver_features)
            .finish_non_exhaustive()
    }
}

fn lock(device: &SharedDevice) -> std::sync::MutexGuard<'_, dyn VirtioDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl MmioTransport {
    /// A transport for `device` over guest memory `mem`, raising `interrupt`.
    pub fn new(
        device: SharedDevice,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
    ) -> Result<Self, MmioError> {
        let (device_type, offered_features, max_sizes) = {
            let dev = lock(&device);
            (
                dev.device_type(),
                dev.offered_features() | VIRTIO_F_VERSION_1,
                dev.queue_max_sizes().to_vec(),
            )
        };
        let mut queues = Vec::with_capacity(max_sizes.len());
        let mut queue_evts = Vec::with_capacity(max_sizes.len());
        for (index, max) in max_sizes.into_iter().enumerate() {
            let err = |detail: String| MmioError::Queue { index, detail };
            queues.push(Queue::new(max).map_err(|e| err(format!("{e:?}")))?);
            queue_evts.push(EventFd::new(EFD_NONBLOCK).map_err(|e| err(e.to_string()))?);
        }
        Ok(Self {
            device,
            device_type,
            offered_features,
            mem,
            queues,
            activated: false,
            queue_evts,
            interrupt,
            status: 0,
            queue_select: 0,
            device_features_select: 0,
            driver_features_select: 0,
            driver_features: 0,
            config_generation: 0,
        })
    }

    /// The per-queue notification eventfds, to register as ioeventfds.
    pub fn queue_evts(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The device status register: what the driver set, plus
    /// DEVICE_NEEDS_RESET once the device has hit an unrecoverable error.
    pub fn status(&self) -> u32 {
        if self.interrupt.needs_reset() {
            self.status | VIRTIO_CONFIG_S_NEEDS_RESET
        } else {
            self.status
        }
    }

    fn has_status(&self, bits: u32) -> bool {
        self.status & bits == bits
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    /// Queue registers may change only between FEATURES_OK and DRIVER_OK.
    fn queue_setup_allowed(&self) -> bool {
        self.has_status(VIRTIO_CONFIG_S_FEATURES_OK) && !self.has_status(VIRTIO_CONFIG_S_DRIVER_OK)
    }

    fn read_register(&self, offset: u32) -> u32 {
        match offset {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device_type,
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_select {
                0 => self.offered_features as u32,
                1 => (self.offered_features >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => self
                .queues
                .get(self.queue_select as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_READY => self
                .queues
                .get(self.queue_select as usize)
                .map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status(),
            VIRTIO_MMIO_CONFIG_GENERATION => self
                .config_generation
                .wrapping_add(lock(&self.device).config_generation()),
            _ => 0,
        }
    }

    fn write_register(&mut self, offset: u32, value: u32) {
        match offset {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_select = value,
            VIRTIO_MMIO_DRIVER_FEATURES => {
                let negotiating = self.has_status(VIRTIO_CONFIG_S_DRIVER)
                    && !self.has_status(VIRTIO_CONFIG_S_FEATURES_OK);
                if !negotiating {
                    return;
                }
                let value = u64::from(value);
                match self.driver_features_select {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | value,
                    1 => {
                        self.driver_features = (self.driver_features & 0xffff_ffff) | (value << 32)
                    }
                    _ => {}
                }
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_select = value,
            VIRTIO_MMIO_QUEUE_NOTIFY => {
                if let Some(evt) = self.queue_evts.get(value as usize) {
                    if let Err(err) = evt.write(1) {
                        log::warn!("virtio-mmio: cannot forward queue notification: {err}");
                    }
                }
            }
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(value),
            VIRTIO_MMIO_STATUS => self.write_status(value),
            _ if self.queue_setup_allowed() => self.write_queue_register(offset, value),
            _ => log::debug!("virtio-mmio: ignored write of {value:#x} at {offset:#x}"),
        }
    }

    fn write_queue_register(&mut self, offset: u32, value: u32) {
        let Some(queue) = self.selected_queue() else {
            return;
        };
        match offset {
            VIRTIO_MMIO_QUEUE_NUM => queue.set_size(value as u16),
            VIRTIO_MMIO_QUEUE_READY => queue.set_ready(value == 1),
            VIRTIO_MMIO_QUEUE_DESC_LOW => queue.set_desc_table_address(Some(value), None),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => queue.set_desc_table_address(None, Some(value)),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => queue.set_avail_ring_address(Some(value), None),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => queue.set_avail_ring_address(None, Some(value)),
            VIRTIO_MMIO_QUEUE_USED_LOW => queue.set_used_ring_address(Some(value), None),
            VIRTIO_MMIO_QUEUE_USED_HIGH => queue.set_used_ring_address(None, Some(value)),
            _ => {}
        }
    }

    /// The status state machine (virtio 1.x, 3.1.1): each step adds one
    /// bit; 0 resets; FAILED may be set at any time.
    fn write_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // DEVICE_NEEDS_RESET is the device's to set; a driver that writes
        // back the status it read carries it along, which changes nothing.
        let value = value & !VIRTIO_CONFIG_S_NEEDS_RESET;
        if value & VIRTIO_CONFIG_S_FAILED != 0 {
            self.status |= VIRTIO_CONFIG_S_FAILED;
            return;
        }
        let added = value & !self.status;
        let kept = value & self.status == self.status;
        if !kept || added.count_ones() != 1 {
            log::warn!(
                "virtio-mmio: invalid status transition {:#x} -> {value:#x}",
                self.status
            );
            return;
        }
        match added {
            VIRTIO_CONFIG_S_ACKNOWLEDGE if self.status == 0 => self.status = value,
            VIRTIO_CONFIG_S_DRIVER if self.status == VIRTIO_CONFIG_S_ACKNOWLEDGE => {
                self.status = value
            }
            VIRTIO_CONFIG_S_FEATURES_OK
                if self.has_status(VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER) =>
            {
                // Accepted only for a subset of the offered features that
                // includes VERSION_1; otherwise the driver reads it back unset.
                let subset = self.driver_features & !self.offered_features == 0;
                if subset && self.driver_features & VIRTIO_F_VERSION_1 != 0 {
                    lock(&self.device).set_acked_features(self.driver_features);
                    self.status = value;
                }
            }
            VIRTIO_CONFIG_S_DRIVER_OK if self.has_status(VIRTIO_CONFIG_S_FEATURES_OK) => {
                self.status = value;
                self.activate();
            }
            _ => log::warn!(
                "virtio-mmio: invalid status transition {:#x} -> {value:#x}",
                self.status
            ),
        }
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & super::VIRTIO_RING_F_EVENT_IDX != 0;
        let all_valid = self
            .queues
            .iter()
            .all(|q| q.ready() && q.is_valid(&self.mem));
        let result = if all_valid {
            self.queues
                .iter_mut()
                .map(|queue| {
                    // The device becomes the queue's one home.
                    let mut active = Queue::try_from(queue.state())
                        .map_err(|err| ActivateError::InvalidQueue(format!("{err:?}")))?;
                    queue.reset();
                    active.set_event_idx(event_idx);
                    Ok(active)
                })
                .collect::<Result<Vec<_>, ActivateError>>()
                .and_then(|queues| self.activate_with(queues))
        } else {
            Err(ActivateError::QueueCount {
                expected: self.queues.len(),
                got: self.queues.iter().filter(|q| q.ready()).count(),
            })
        };
        if let Err(err) = result {
            log::error!(
                "virtio-mmio: device type {} not activated: {err}",
                self.device_type
            );
            self.interrupt.signal_needs_reset();
        }
    }

    /// Hands `queues` to the device with their notification eventfds.
    fn activate_with(&mut self, queues: Vec<Queue>) -> Result<(), ActivateError> {
        let queues = queues
            .into_iter()
            .zip(&self.queue_evts)
            .map(|(queue, evt)| {
                Ok(ActiveQueue {
                    queue,
                    notify: evt.try_clone().map_err(ActivateError::EventFd)?,
                })
            })
            .collect::<Result<Vec<_>, ActivateError>>()?;
        lock(&self.device).activate(self.mem.clone(), queues, self.interrupt.clone())?;
        self.activated = true;
        Ok(())
    }

    /// Raises the interrupt again if its status has bits the driver has not
    /// acknowledged (a spurious interrupt is harmless to a virtio driver).
    pub fn raise_pending_interrupt(&self) {
        self.interrupt.raise_if_pending();
    }

    /// The transport's state, with the device's queues once it is active.
    /// The device must not run meanwhile (its lock is taken).
    pub fn save(&self) -> MmioTransportState {
        let device_queues = if self.activated {
            lock(&self.device).active_queues()
        } else {
            None
        };
        MmioTransportState {
            device_type: self.device_type,
            status: self.status,
            activated: self.activated,
            queue_select: self.queue_select,
            device_features_select: self.device_features_select,
            driver_features_select: self.driver_features_select,
            driver_features: self.driver_features,
            config_generation: self.config_generation,
            interrupt: self.interrupt.save(),
            queues: device_queues
                .unwrap_or_else(|| self.queues.iter().map(SavedQueue::of).collect()),
        }
    }

    /// A transport for `device` in a saved state: registers, features
    /// (given to the device again), interrupt status and, for an active
    /// device, its queues, with which it is activated again. Everything is
    /// checked first: on error the device has not been touched.
    pub fn restore(
        device: SharedDevice,
        mem: GuestMemoryMmap,
        interrupt: Arc<Interrupt>,
        state: &MmioTransportState,
    ) -> Result<Self, StateError> {
        const NAME: &str = "virtio-mmio";
        let mut transport = Self::new(device, mem, interrupt)
            .map_err(|err| StateError::invalid(NAME, err.to_string()))?;
        if state.device_type != transport.device_type {
            return Err(StateError::mismatch(
                NAME,
                format!(
                    "saved device type {}, configured {}",
                    state.device_type, transport.device_type
                ),
            ));
        }
        if state.queues.len() != transport.queues.len() {
            return Err(StateError::mismatch(
                NAME,
                format!(
                    "{} saved queues, the device has {}",
                    state.queues.len(),
                    transport.queues.len()
                ),
            ));
        }
        if state.driver_features & !transport.offered_features != 0 {
            return Err(StateError::mismatch(
                NAME,
                format!(
                    "driver features {:#x} were never offered ({:#x})",
                    state.driver_features, transport.offered_features
                ),
            ));
        }
        let driver_ok = state.status & VIRTIO_CONFIG_S_DRIVER_OK != 0;
        if state.activated && !driver_ok {
            return Err(StateError::invalid(NAME, "activated before DRIVER_OK"));
        }
        let queues = state
            .queues
            .iter()
            .zip(&transport.queues)
            .map(|(saved, own)| saved.to_queue(NAME, own.max_size()))
            .collect::<Result<Vec<_>, _>>()?;
        if state.activated
            && !queues
                .iter()
                .all(|q| q.ready() && q.is_valid(&transport.mem))
        {
            return Err(StateError::invalid(
                NAME,
                "an active queue is not ready or lies outside guest memory",
            ));
        }
        transport.interrupt.restore(&state.interrupt)?;
        transport.status = state.status;
        transport.queue_select = state.queue_select;
        transport.device_features_select = state.device_features_select;
        transport.driver_features_select = state.driver_features_select;
        transport.driver_features = state.driver_features;
        transport.config_generation = state.config_generation;
        if state.status & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            lock(&transport.device).set_acked_features(state.driver_features);
        }
        if state.activated {
            transport
                .activate_with(queues)
                .map_err(|err| StateError::invalid(NAME, err.to_string()))?;
        } else {
            transport.queues = queues;
        }
        Ok(transport)
    }

    fn reset(&mut self) {
        lock(&self.device).reset();
        for queue in &mut self.queues {
            queue.reset();
        }
        self.interrupt.clear();
        self.activated = false;
        self.status = 0;
        self.queue_select = 0;
        self.device_features_select = 0;
        self.driver_features_select = 0;
        self.driver_features = 0;
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        // Registers are 32-bit, read whole and aligned.
        let value = match (data.len(), u32::try_from(offset)) {
            (4, Ok(offset)) if offset % 4 == 0 => self.read_register(offset),
            _ => 0,
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
        data[n..].fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            self.config_generation = self.config_generation.wrapping_add(1);
            return;
        }
        match (<[u8; 4]>::try_from(data), u32::try_from(offset)) {
            (Ok(bytes), Ok(offset)) if offset % 4 == 0 => {
                self.write_register(offset, u32::from_le_bytes(bytes))
            }
            _ => log::debug!(
                "virtio-mmio: ignored {}-byte write at {offset:#x}",
                data.len()
            ),
        }
    }
}
