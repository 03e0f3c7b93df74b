//! Saved virtio state shared by every device and the transport: queues and
//! the interrupt line.

use crate::state::StateError;
use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState};

/// One virtqueue: the driver's setup and the device's progress through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedQueue {
    /// Largest size the device offers.
    pub max_size: u16,
    /// Size the driver chose.
    pub size: u16,
    /// Whether the driver finished setting it up.
    pub ready: bool,
    /// Guest address of the descriptor table.
    pub desc_table: u64,
    /// Guest address of the available ring.
    pub avail_ring: u64,
    /// Guest address of the used ring.
    pub used_ring: u64,
    /// Next available-ring entry the device reads.
    pub next_avail: u16,
    /// Next used-ring entry the device writes.
    pub next_used: u16,
    /// Whether VIRTIO_RING_F_EVENT_IDX is in use.
    pub event_idx: bool,
}

impl SavedQueue {
    /// The state of `queue`.
    pub fn of(queue: &Queue) -> Self {
        let state = queue.state();
        Self {
            max_size: state.max_size,
            size: state.size,
            ready: state.ready,
            desc_table: state.desc_table,
            avail_ring: state.avail_ring,
            used_ring: state.used_ring,
            next_avail: state.next_avail,
            next_used: state.next_used,
            event_idx: state.event_idx_enabled,
        }
    }

    /// A queue in this state, for a device whose queue holds at most
    /// `max_size` entries. Sizes and ring alignments are checked here;
    /// whether the rings lie in guest memory is the transport's check.
    pub fn to_queue(&self, device: &'static str, max_size: u16) -> Result<Queue, StateError> {
        if self.max_size != max_size {
            return Err(StateError::mismatch(
                device,
                format!(
                    "queue of {} entries, this device has {max_size}",
                    self.max_size
                ),
            ));
        }
        let state = QueueState {
            max_size: self.max_size,
            next_avail: self.next_avail,
            next_used: self.next_used,
            event_idx_enabled: self.event_idx,
            size: self.size,
            ready: self.ready,
            desc_table: self.desc_table,
            avail_ring: self.avail_ring,
            used_ring: self.used_ring,
        };
        Queue::try_from(state).map_err(|err| StateError::invalid(device, format!("queue: {err:?}")))
    }
}

/// The interrupt status a device has raised and the driver not yet
/// acknowledged, and whether the device waits for a reset.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterruptState {
    /// The InterruptStatus register.
    pub status: u32,
    /// DEVICE_NEEDS_RESET.
    pub needs_reset: bool,
}
