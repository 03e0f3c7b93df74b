//! virtio-blk: a guest disk backed by a host file.

pub mod disk;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod request;

pub use disk::{CacheMode, Disk};
use request::RequestType;

use super::{
    pop_or_rearm, read_config_bytes, ActivateError, ActiveQueue, Interrupt, SingleQueue,
    VirtioDevice, VirtioEvent, VirtioEvents,
};
use crate::rate_limiter::{
    LimiterError, RateLimiter, RateLimiterConfig, RateLimiterState, RateLimiterUpdate,
};
use crate::GuestMemoryMmap;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::sync::Arc;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_F_SEG_MAX,
    VIRTIO_BLK_F_WRITE_ZEROES, VIRTIO_BLK_S_IOERR,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{QueueOwnedT, QueueT};
use vm_memory::Bytes;

/// Descriptors per queue.
pub const QUEUE_SIZE: u16 = 256;
const QUEUE_SIZES: [u16; 1] = [QUEUE_SIZE];
/// Data segments per request: the queue minus header and status.
const SEG_MAX: u32 = QUEUE_SIZE as u32 - 2;
/// Largest discard / write-zeroes range, in sectors.
const MAX_DEALLOCATE_SECTORS: u32 = u32::MAX / 512;
/// Configuration space length (through write_zeroes_may_unmap).
const CONFIG_LEN: usize = 60;

/// Counters of one block device (written as they are in metrics lines).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct BlockCounters {
    /// Requests completed OK.
    pub completed: u64,
    /// Requests completed with an error status.
    pub failed: u64,
    /// Chains that could not even be answered (no status byte).
    pub dropped: u64,
    /// Bytes read from the disk into the guest by successful reads.
    pub read_bytes: u64,
    /// Bytes written to the disk by successful writes.
    pub write_bytes: u64,
    /// Flush requests completed.
    pub flushes: u64,
    /// Requests held back by the rate limiter's bandwidth bucket.
    pub rate_limiter_throttled_bandwidth: u64,
    /// Requests held back by the rate limiter's ops bucket.
    pub rate_limiter_throttled_ops: u64,
    /// Times the queue resumed when the rate limiter's timer fired.
    pub rate_limiter_resumed: u64,
}

/// What a block device keeps across a snapshot besides its transport and
/// queues (the backing file is reopened by path).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockState {
    /// Capacity the guest was told, in sectors: the reopened file must match.
    pub capacity_sectors: u64,
    /// Configuration changes made by the device (backing file swaps).
    pub config_generation: u32,
    /// The rate limiter's buckets (none in states saved before rate
    /// limiting, which is what they had).
    #[serde(default)]
    pub rate_limiter: RateLimiterState,
}

/// Why a drive's backing file cannot be swapped.
#[derive(Debug, thiserror::Error)]
pub enum ReplaceDiskError {
    /// The new disk differs in read-only or cache mode, which the guest
    /// negotiated features for.
    #[error("the new disk must keep the drive's read-only and cache modes")]
    ModeChanged,
}

/// A virtio-blk device.
pub struct Block {
    disk: Disk,
    acked_features: u64,
    config: [u8; CONFIG_LEN],
    active: Option<SingleQueue>,
    events: VirtioEvents,
    counters: BlockCounters,
    config_generation: u32,
    rate_limiter: RateLimiter,
}

impl std::fmt::Debug for Block {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Block")
            .field("disk", &self.disk)
            .field("active", &self.active.is_some())
            .field("counters", &self.counters)
            .field("rate_limiter", &self.rate_limiter)
            .finish_non_exhaustive()
    }
}

impl Block {
    /// A device over `disk`, without rate limits (they can be set later
    /// with [`Block::update_rate_limiter`]).
    pub fn new(disk: Disk) -> std::io::Result<Self> {
        let limiter = RateLimiter::unlimited().map_err(std::io::Error::other)?;
        Self::with_rate_limiter(disk, limiter)
    }

    /// A device over `disk` whose requests go through `rate_limiter`
    /// (bandwidth: bytes read or written; ops: requests of every type).
    pub fn with_rate_limiter(disk: Disk, rate_limiter: RateLimiter) -> std::io::Result<Self> {
        let mut config = [0u8; CONFIG_LEN];
        config[0..8].copy_from_slice(&disk.capacity_sectors().to_le_bytes());
        config[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        config[20..24].copy_from_slice(&512u32.to_le_bytes()); // blk_size
        config[32] = u8::from(disk.cache() == CacheMode::Writeback);
        config[36..40].copy_from_slice(&MAX_DEALLOCATE_SECTORS.to_le_bytes());
        config[40..44].copy_from_slice(&1u32.to_le_bytes()); // max_discard_seg
        config[44..48].copy_from_slice(&8u32.to_le_bytes()); // discard alignment: 4 KiB
        config[48..52].copy_from_slice(&MAX_DEALLOCATE_SECTORS.to_le_bytes());
        config[52..56].copy_from_slice(&1u32.to_le_bytes()); // max_write_zeroes_seg
        config[56] = 1; // write_zeroes_may_unmap
        Ok(Self {
            disk,
            acked_features: 0,
            config,
            active: None,
            events: VirtioEvents::new()?,
            counters: BlockCounters::default(),
            config_generation: 0,
            rate_limiter,
        })
    }

    /// Changes the rate limits at runtime (a PATCH); a queue held back
    /// resumes under the new limits.
    pub fn update_rate_limiter(&mut self, update: &RateLimiterUpdate) -> Result<(), LimiterError> {
        self.rate_limiter.update(update)
    }

    /// The rate limits in force.
    pub fn rate_limiter_config(&self) -> RateLimiterConfig {
        self.rate_limiter.config()
    }

    /// Swaps the backing file at runtime (same read-only and cache modes,
    /// which the offered features depend on). The guest sees the new
    /// capacity through a configuration-change interrupt.
    pub fn replace_disk(&mut self, disk: Disk) -> Result<(), ReplaceDiskError> {
        if disk.read_only() != self.disk.read_only() || disk.cache() != self.disk.cache() {
            return Err(ReplaceDiskError::ModeChanged);
        }
        self.config[0..8].copy_from_slice(&disk.capacity_sectors().to_le_bytes());
        self.disk = disk;
        self.config_generation = self.config_generation.wrapping_add(1);
        if let Some(active) = &self.active {
            active.interrupt.signal_config_change();
        }
        Ok(())
    }

    /// The device's own state (its queues are saved by the transport).
    pub fn save(&self) -> BlockState {
        BlockState {
            capacity_sectors: self.disk.capacity_sectors(),
            config_generation: self.config_generation,
            rate_limiter: self.rate_limiter.save(),
        }
    }

    /// A device over `disk` in a saved state; the disk must have the size
    /// the guest knows.
    pub fn restore(disk: Disk, state: &BlockState) -> Result<Self, crate::state::StateError> {
        if disk.capacity_sectors() != state.capacity_sectors {
            return Err(crate::state::StateError::mismatch(
                "virtio-blk",
                format!(
                    "the guest knows {} sectors, the file has {}",
                    state.capacity_sectors,
                    disk.capacity_sectors()
                ),
            ));
        }
        let limiter = RateLimiter::restore(&state.rate_limiter, "virtio-blk")?;
        let mut block = Self::with_rate_limiter(disk, limiter)
            .map_err(|err| crate::state::StateError::invalid("virtio-blk", err.to_string()))?;
        block.config_generation = state.config_generation;
        Ok(block)
    }

    /// Capacity the guest sees, in 512-byte sectors.
    pub fn capacity_sectors(&self) -> u64 {
        self.disk.capacity_sectors()
    }

    /// Request counters.
    pub fn counters(&self) -> BlockCounters {
        let throttling = self.rate_limiter.counters();
        BlockCounters {
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

    /// Serves the available requests, then interrupts the guest if it
    /// asked to be told. A request the rate limiter refuses stays in the
    /// queue, with every one after it, until the limiter's timer fires.
    pub fn process_queue(&mut self) {
        let Some(active) = self.active.as_mut() else {
            return;
        };
        let capacity = self.disk.capacity_sectors();
        let max_descriptors = usize::from(active.queue.size());
        let mut served = false;
        while let Some(chain) = pop_or_rearm(&mut active.queue, &active.mem, &active.interrupt) {
            let head = chain.head_index();
            let used_len = match request::parse(chain, &active.mem, capacity, max_descriptors) {
                Ok(req) => {
                    if !self.rate_limiter.consume_op(req.rate_limited_bytes()) {
                        active.queue.go_to_previous_position();
                        break;
                    }
                    let done = self.disk.execute(&req, &active.mem);
                    let reported = active.mem.write_obj(done.status, req.status).is_ok();
                    if done.status == 0 && reported {
                        self.counters.completed += 1;
                        match req.kind {
                            RequestType::In => self.counters.read_bytes += req.data_len,
                            RequestType::Out => self.counters.write_bytes += req.data_len,
                            RequestType::Flush => self.counters.flushes += 1,
                            _ => {}
                        }
                    } else {
                        self.counters.failed += 1;
                    }
                    done.written.saturating_add(1)
                }
                Err((err, Some(status))) => {
                    log::debug!("virtio-blk: bad request: {err}");
                    self.counters.failed += 1;
                    match active.mem.write_obj(VIRTIO_BLK_S_IOERR as u8, status) {
                        Ok(()) => 1,
                        Err(_) => 0,
                    }
                }
                Err((err, None)) => {
                    log::debug!("virtio-blk: unanswerable request: {err}");
                    self.counters.dropped += 1;
                    0
                }
            };
            if let Err(err) = active.queue.add_used(&active.mem, head, used_len) {
                log::warn!("virtio-blk: cannot return a used buffer: {err:?}");
            }
            served = true;
        }
        if served && active.queue.needs_notification(&active.mem).unwrap_or(true) {
            active.interrupt.signal_used_queue();
        }
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &QUEUE_SIZES
    }

    fn offered_features(&self) -> u64 {
        let mut features = 1 << VIRTIO_BLK_F_SEG_MAX;
        if self.disk.read_only() {
            features |= 1 << VIRTIO_BLK_F_RO;
        } else {
            features |= (1 << VIRTIO_BLK_F_DISCARD) | (1 << VIRTIO_BLK_F_WRITE_ZEROES);
        }
        if self.disk.cache() == CacheMode::Writeback {
            features |= 1 << VIRTIO_BLK_F_FLUSH;
        }
        features | super::VIRTIO_F_VERSION_1 | super::VIRTIO_RING_F_EVENT_IDX
    }

    fn set_acked_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data);
    }

    fn config_generation(&self) -> u32 {
        self.config_generation
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

impl MutEventSubscriber for Block {
    fn init(&mut self, ops: &mut EventOps) {
        self.events.watch(ops, "virtio-blk");
        self.rate_limiter.watch(ops, "virtio-blk");
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        match self.events.classify(&events, ops) {
            // On activation: requests the driver queued before we watched.
            VirtioEvent::Activated | VirtioEvent::Notified(_) => self.process_queue(),
            VirtioEvent::Other if self.rate_limiter.released_by(&events) => self.process_queue(),
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
    fn random_chains_never_panic() {
        for mut input in crate::virtio::fuzzing::pseudo_random_inputs(3000, 400) {
            // Steer some inputs to well-formed request types and directions.
            if let Some(byte) = input.get_mut(20) {
                *byte &= 0x03;
            }
            super::fuzzing::run(&input);
        }
    }

    /// Inputs cargo-fuzz found that once hung or crashed the device.
    const FOUND_BY_CARGO_FUZZ: &[&[u8]] = &[
        // CI, 2026-11-23: a read request whose data lands on the avail
        // ring, putting its index far ahead; the queue loop spun forever.
        &[
            10, 3, 129, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 139, 0, 0, 0, 0, 0, 0, 59, 0, 0, 0, 0, 0, 93,
            0, 3, 178, 178, 178, 178, 178, 178, 178, 178, 178, 178, 0, 0, 0, 59, 0, 0, 0, 0, 0,
            162, 255, 255, 0, 0, 32, 0, 0, 0,
        ],
    ];

    /// Each input found by cargo-fuzz finishes (on a thread, so that a
    /// regression fails the test instead of hanging it).
    #[test]
    fn inputs_found_by_cargo_fuzz_finish() {
        for input in FOUND_BY_CARGO_FUZZ {
            let (done, finished) = std::sync::mpsc::channel();
            let worker = std::thread::spawn(move || {
                super::fuzzing::run(input);
                let _ = done.send(());
            });
            finished
                .recv_timeout(std::time::Duration::from_secs(20))
                .expect("the fuzz input finishes within 20 s");
            worker.join().expect("no panic");
        }
    }
}
