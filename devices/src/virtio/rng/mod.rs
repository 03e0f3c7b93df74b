//! virtio-rng (the entropy device, Firecracker's `PUT /entropy`): every
//! device-writable buffer the driver offers is filled with bytes from the
//! host's `getrandom`, as fast as its optional rate limiter allows (bytes
//! given count against `bandwidth`, each request against `ops`).

use super::{
    pop_or_rearm, ActivateError, ActiveQueue, Interrupt, SingleQueue, VirtioDevice, VirtioEvent,
    VirtioEvents,
};
use crate::rate_limiter::{RateLimiter, RateLimiterState};
use crate::GuestMemoryMmap;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::sync::Arc;
use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
use virtio_queue::{DescriptorChain, QueueOwnedT, QueueT};
use vm_memory::Bytes;

/// Descriptors in the queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];
/// Most bytes given for one request: a driver offering more gets this
/// much (Linux asks for at most a page or two).
pub const MAX_BYTES_PER_REQUEST: u32 = 64 * 1024;

/// Counters of the entropy device (written as they are in metrics lines).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct EntropyCounters {
    /// Requests answered with random bytes.
    pub requests: u64,
    /// Random bytes given to the guest.
    pub bytes: u64,
    /// Requests answered with nothing (no writable buffer, or the host's
    /// getrandom failed).
    pub failed: u64,
    /// Requests held back by the rate limiter's bandwidth bucket.
    pub rate_limiter_throttled_bandwidth: u64,
    /// Requests held back by the rate limiter's ops bucket.
    pub rate_limiter_throttled_ops: u64,
    /// Times the queue resumed when the rate limiter's timer fired.
    pub rate_limiter_resumed: u64,
}

/// What the entropy device keeps across a snapshot besides its transport
/// and queue: its rate limiter's budgets.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyState {
    /// The rate limiter's buckets (none in states saved before the entropy
    /// device had one, which is what it had).
    #[serde(default)]
    pub rate_limiter: RateLimiterState,
}

/// A virtio-rng device.
pub struct Entropy {
    acked_features: u64,
    active: Option<SingleQueue>,
    events: VirtioEvents,
    counters: EntropyCounters,
    rate_limiter: RateLimiter,
}

impl std::fmt::Debug for Entropy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Entropy")
            .field("active", &self.active.is_some())
            .field("counters", &self.counters)
            .finish_non_exhaustive()
    }
}

impl Entropy {
    /// A new device, unlimited.
    pub fn new() -> std::io::Result<Self> {
        let limiter = RateLimiter::unlimited().map_err(std::io::Error::other)?;
        Self::with_rate_limiter(limiter)
    }

    /// A new device whose requests go through `rate_limiter`.
    pub fn with_rate_limiter(rate_limiter: RateLimiter) -> std::io::Result<Self> {
        Ok(Self {
            acked_features: 0,
            active: None,
            events: VirtioEvents::new()?,
            counters: EntropyCounters::default(),
            rate_limiter,
        })
    }

    /// The device's own state (its queue is saved by the transport).
    pub fn save(&self) -> EntropyState {
        EntropyState {
            rate_limiter: self.rate_limiter.save(),
        }
    }

    /// A device in a saved state.
    pub fn restore(state: &EntropyState) -> Result<Self, crate::state::StateError> {
        let limiter = RateLimiter::restore(&state.rate_limiter, "virtio-rng")?;
        Self::with_rate_limiter(limiter)
            .map_err(|err| crate::state::StateError::invalid("virtio-rng", err.to_string()))
    }

    /// Request counters.
    pub fn counters(&self) -> EntropyCounters {
        let throttling = self.rate_limiter.counters();
        EntropyCounters {
            rate_limiter_throttled_bandwidth: throttling.bandwidth_throttled,
            rate_limiter_throttled_ops: throttling.ops_throttled,
            rate_limiter_resumed: throttling.resumed,
            ..self.counters
        }
    }

    /// Whether the rate limiter holds the queue back until its timer fires.
    pub fn is_throttled(&self) -> bool {
        self.rate_limiter.is_blocked()
    }

    /// Answers every available request the rate limiter allows, then
    /// interrupts the guest if it asked to be told. A request the limiter
    /// refuses stays in the queue, with every one after it, until the
    /// limiter's timer fires.
    pub fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let mut served = false;
        while let Some(chain) = pop_or_rearm(&mut active.queue, &active.mem, &active.interrupt) {
            if !self
                .rate_limiter
                .consume_op(u64::from(requested_bytes(chain.clone())))
            {
                active.queue.go_to_previous_position();
                break;
            }
            let head = chain.head_index();
            let given = fill_with_random(chain, &active.mem);
            if given == 0 {
                self.counters.failed += 1;
            } else {
                self.counters.requests += 1;
                self.counters.bytes += u64::from(given);
            }
            if let Err(err) = active.queue.add_used(&active.mem, head, given) {
                log::warn!("virtio-rng: cannot return a used buffer: {err:?}");
            }
            served = true;
        }
        if served && active.queue.needs_notification(&active.mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
    }
}

/// The bytes a request asks for: its device-writable buffers, up to
/// [`MAX_BYTES_PER_REQUEST`] (what the rate limiter counts).
fn requested_bytes(chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
    chain
        .take(usize::from(QUEUE_SIZE))
        .filter(|descriptor| descriptor.is_write_only())
        .fold(0u32, |total, descriptor| {
            total.saturating_add(descriptor.len())
        })
        .min(MAX_BYTES_PER_REQUEST)
}

/// Fills the chain's device-writable buffers with random bytes, up to
/// [`MAX_BYTES_PER_REQUEST`] in all; returns how many it wrote. Readable
/// buffers (a driver error) are skipped; a buffer outside guest memory
/// ends the request there.
fn fill_with_random(chain: DescriptorChain<&GuestMemoryMmap>, mem: &GuestMemoryMmap) -> u32 {
    let mut given = 0u32;
    let mut bytes = Vec::new();
    for descriptor in chain.take(usize::from(QUEUE_SIZE)) {
        if !descriptor.is_write_only() {
            continue;
        }
        let len = descriptor.len().min(MAX_BYTES_PER_REQUEST - given);
        if len == 0 {
            break;
        }
        bytes.resize(len as usize, 0);
        if getrandom(&mut bytes).is_err() {
            log::warn!("virtio-rng: the host's getrandom failed");
            break;
        }
        if mem.write_slice(&bytes, descriptor.addr()).is_err() {
            break;
        }
        given += len;
    }
    given
}

/// Fills `buf` from the host's random source (the urandom pool, which
/// never blocks once the host's pool is initialized).
fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    let mut filled = 0;
    while filled < buf.len() {
        let rest = &mut buf[filled..];
        // SAFETY: getrandom writes at most `rest.len()` bytes into `rest`.
        let got = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if got < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(err);
        }
        filled += got as usize;
    }
    Ok(())
}

impl VirtioDevice for Entropy {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_RNG
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn offered_features(&self) -> u64 {
        super::VIRTIO_F_VERSION_1 | super::VIRTIO_RING_F_EVENT_IDX
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        // virtio-rng has no configuration space.
        data.fill(0);
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        queues: Vec<ActiveQueue>,
        interrupt: Arc<Interrupt>,
    ) -> Result<(), ActivateError> {
        self.active = Some(SingleQueue::adopt(
            &mut self.events,
            mem,
            queues,
            interrupt,
        )?);
        self.events.signal_activation()
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
    }

    fn active_queues(&self) -> Option<Vec<super::state::SavedQueue>> {
        self.active.as_ref().map(SingleQueue::saved)
    }
}

impl MutEventSubscriber for Entropy {
    fn init(&mut self, ops: &mut EventOps) {
        self.events.watch(ops, "virtio-rng");
        self.rate_limiter.watch(ops, "virtio-rng");
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.events.classify(&events, ops) {
            VirtioEvent::Activated | VirtioEvent::Notified(_) => self.process_queue(),
            VirtioEvent::Other if self.rate_limiter.released_by(&events) => self.process_queue(),
            VirtioEvent::Other => {}
        }
    }
}

#[cfg(test)]
mod tests;
