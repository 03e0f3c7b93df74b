//! A rate limiter: a bandwidth bucket and an ops bucket (each optional),
//! and the refill timer that tells a throttled device when to resume.
//!
//! The rules, as in Firecracker:
//! - a request is refused when its bucket lacks tokens; the timer is then
//!   armed for the time the missing tokens take to refill (at least
//!   [`SHORTEST_REFUSED_WAIT`]), and **every** request is refused until it
//!   fires and the device calls [`RateLimiter::on_timer_event`];
//! - a request larger than its whole bucket is granted on credit (the
//!   bucket is emptied and the excess borrowed), and the timer holds
//!   further requests back for the time the excess takes to refill;
//! - a disabled bucket (absent, or size / refill_time 0) grants everything.
//!
//! Unlike Firecracker, which re-checks every 100 ms, the timer is armed
//! for the exact time enough tokens take to refill (at least 1 ms).

use super::bucket::{BucketError, Reduction, TokenBucket};
use super::clock::{Clock, MonotonicClock};
use super::config::{BucketUpdate, RateLimiterConfig, RateLimiterUpdate, TokenBucketConfig};
use super::counters::ThrottleCounters;
use super::timer::{RefillTimer, TimerError};
use super::TokenKind;
use event_manager::{EventOps, Events};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::EventSet;

/// The shortest wait after a refusal: bounds a throttled device to 1000
/// timer events a second, whatever the refill rate.
pub const SHORTEST_REFUSED_WAIT: Duration = Duration::from_millis(1);

/// A rate limiter that cannot be built or updated.
#[derive(Debug, thiserror::Error)]
pub enum LimiterError {
    /// A bucket's parameters are unusable.
    #[error("{kind} bucket: {source}")]
    Bucket {
        /// Which bucket.
        kind: TokenKind,
        /// Why.
        source: BucketError,
    },
    /// The refill timer cannot be created.
    #[error(transparent)]
    Timer(#[from] TimerError),
}

/// Rate limiting for one queue (a drive's, or one direction of an
/// interface).
#[derive(Debug)]
pub struct RateLimiter {
    bandwidth: Option<TokenBucket>,
    ops: Option<TokenBucket>,
    timer: RefillTimer,
    /// While the timer runs: the bucket whose shortage armed it, and when
    /// it fires.
    blocked: Option<(TokenKind, Instant)>,
    clock: Arc<dyn Clock>,
    counters: ThrottleCounters,
}

impl RateLimiter {
    /// A limiter for `config`, on the monotonic clock. Its timer exists
    /// even when nothing is limited, so that a runtime update can start
    /// limiting without creating a file descriptor then.
    pub fn new(config: &RateLimiterConfig) -> Result<Self, LimiterError> {
        Self::with_clock(config, Arc::new(MonotonicClock))
    }

    /// A limiter that limits nothing (until updated).
    pub fn unlimited() -> Result<Self, LimiterError> {
        Self::new(&RateLimiterConfig::UNLIMITED)
    }

    /// A limiter for `config` reading the time from `clock`.
    pub fn with_clock(
        config: &RateLimiterConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, LimiterError> {
        let now = clock.now();
        let bandwidth = bucket_for(config.bandwidth, TokenKind::Bytes, now)?;
        let ops = bucket_for(config.ops, TokenKind::Ops, now)?;
        Self::from_buckets(bandwidth, ops, clock)
    }

    /// A limiter over buckets built already (a restore).
    pub(super) fn from_buckets(
        bandwidth: Option<TokenBucket>,
        ops: Option<TokenBucket>,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, LimiterError> {
        Ok(Self {
            bandwidth,
            ops,
            timer: RefillTimer::new()?,
            blocked: None,
            clock,
            counters: ThrottleCounters::default(),
        })
    }

    /// Takes `tokens` of `kind`; false when the request must wait (then
    /// nothing was taken, and the device should stop and resume when the
    /// timer fires).
    pub fn consume(&mut self, tokens: u64, kind: TokenKind) -> bool {
        if let Some((blocker, _)) = self.blocked {
            self.counters.count_throttled(blocker);
            return false;
        }
        let now = self.clock.now();
        let Some(bucket) = self.bucket_mut(kind) else {
            return true;
        };
        match bucket.consume(tokens, now) {
            Reduction::Granted => true,
            Reduction::Refused { wait } => {
                if self.block(kind, wait.max(SHORTEST_REFUSED_WAIT), now) {
                    self.counters.count_throttled(kind);
                    false
                } else {
                    // Without a timer nothing would resume the device:
                    // let the request through rather than stall it.
                    true
                }
            }
            Reduction::Overdrawn { wait } => {
                if !wait.is_zero() {
                    self.block(kind, wait, now);
                }
                true
            }
        }
    }

    /// One operation moving `bytes` (a block request, a frame): takes an
    /// op and the bytes, or nothing.
    pub fn consume_op(&mut self, bytes: u64) -> bool {
        if !self.consume(1, TokenKind::Ops) {
            return false;
        }
        if !self.consume(bytes, TokenKind::Bytes) {
            self.manual_replenish(1, TokenKind::Ops);
            return false;
        }
        true
    }

    /// Gives back what [`RateLimiter::consume_op`] took for an operation
    /// that was not carried out after all.
    pub fn refund_op(&mut self, bytes: u64) {
        self.manual_replenish(1, TokenKind::Ops);
        self.manual_replenish(bytes, TokenKind::Bytes);
    }

    /// Gives `tokens` back to `kind`'s bucket (up to its capacity).
    pub fn manual_replenish(&mut self, tokens: u64, kind: TokenKind) {
        if let Some(bucket) = self.bucket_mut(kind) {
            bucket.replenish(tokens);
        }
    }

    /// Whether every request is refused until the timer fires.
    pub fn is_blocked(&self) -> bool {
        self.blocked.is_some()
    }

    /// Whether either bucket limits anything.
    pub fn is_limiting(&self) -> bool {
        self.bandwidth.is_some() || self.ops.is_some()
    }

    /// Time until `tokens` of `kind` could be taken: the timer's remaining
    /// time if it runs, or the refill time of the missing tokens.
    pub fn time_until_available(&self, tokens: u64, kind: TokenKind) -> Duration {
        let now = self.clock.now();
        let timer = self.blocked.map_or(Duration::ZERO, |(_, until)| {
            until.saturating_duration_since(now)
        });
        let bucket = self.bucket(kind).map_or(Duration::ZERO, |bucket| {
            bucket.time_until_available(tokens, now)
        });
        timer.max(bucket)
    }

    /// The fd to watch for readability: the refill timer.
    pub fn timer_fd(&self) -> RawFd {
        self.timer.as_raw_fd()
    }

    /// Has the device's event loop watch the refill timer (from the
    /// device's `init`; `device` names it in the error).
    pub fn watch(&self, ops: &mut EventOps, device: &str) {
        if let Err(err) = ops.add(Events::new_raw(self.timer_fd(), EventSet::IN)) {
            log::error!("{device}: cannot watch a rate limiter: {err:?}");
        }
    }

    /// Whether `events` is this limiter's timer releasing the device, which
    /// should then resume (see [`RateLimiter::on_timer_event`]).
    pub fn released_by(&mut self, events: &Events) -> bool {
        events.fd() == self.timer_fd() && self.on_timer_event()
    }

    /// To call when [`RateLimiter::timer_fd`] is readable. Returns whether
    /// the limiter was released (the device should resume); false for a
    /// spurious event (the timer was re-armed by an update meanwhile).
    pub fn on_timer_event(&mut self) -> bool {
        match self.timer.take_expiration() {
            Ok(true) => {}
            Ok(false) => return false,
            Err(err) => log::error!("rate limiter: {err}"),
        }
        self.blocked = None;
        self.counters.count_resumed();
        true
    }

    /// Applies a runtime update (a PATCH): kept buckets keep their tokens,
    /// new ones start full. A limiter that was holding its device back
    /// releases it at once through its timer, so that the device retries
    /// under the new limits from its own event loop. On error nothing
    /// changes.
    pub fn update(&mut self, update: &RateLimiterUpdate) -> Result<(), LimiterError> {
        let now = self.clock.now();
        let (bandwidth, ops) = self.updated_buckets(update, now)?;
        self.bandwidth = bandwidth;
        self.ops = ops;
        if let Some((blocker, _)) = self.blocked {
            if let Err(err) = self.timer.arm(Duration::ZERO) {
                log::error!("rate limiter: {err}");
                self.blocked = None;
            } else {
                self.blocked = Some((blocker, now));
            }
        }
        Ok(())
    }

    /// Whether [`RateLimiter::update`] would accept `update` (to change
    /// several limiters all or none).
    pub fn check_update(&self, update: &RateLimiterUpdate) -> Result<(), LimiterError> {
        self.updated_buckets(update, self.clock.now()).map(drop)
    }

    /// The buckets after `update`.
    fn updated_buckets(
        &self,
        update: &RateLimiterUpdate,
        now: Instant,
    ) -> Result<(Option<TokenBucket>, Option<TokenBucket>), LimiterError> {
        Ok((
            updated(&self.bandwidth, update.bandwidth, TokenKind::Bytes, now)?,
            updated(&self.ops, update.ops, TokenKind::Ops, now)?,
        ))
    }

    /// The limits in force, as the API shows them.
    pub fn config(&self) -> RateLimiterConfig {
        RateLimiterConfig {
            bandwidth: self.bandwidth.as_ref().map(bucket_config),
            ops: self.ops.as_ref().map(bucket_config),
        }
    }

    /// Throttling counters.
    pub fn counters(&self) -> ThrottleCounters {
        self.counters
    }

    /// The bandwidth bucket, if limiting.
    pub fn bandwidth(&self) -> Option<&TokenBucket> {
        self.bandwidth.as_ref()
    }

    /// The ops bucket, if limiting.
    pub fn ops(&self) -> Option<&TokenBucket> {
        self.ops.as_ref()
    }

    /// The limiter's current time.
    pub(super) fn now(&self) -> Instant {
        self.clock.now()
    }

    fn bucket(&self, kind: TokenKind) -> Option<&TokenBucket> {
        match kind {
            TokenKind::Bytes => self.bandwidth.as_ref(),
            TokenKind::Ops => self.ops.as_ref(),
        }
    }

    fn bucket_mut(&mut self, kind: TokenKind) -> Option<&mut TokenBucket> {
        match kind {
            TokenKind::Bytes => self.bandwidth.as_mut(),
            TokenKind::Ops => self.ops.as_mut(),
        }
    }

    /// Arms the timer; whether it is armed.
    fn block(&mut self, kind: TokenKind, wait: Duration, now: Instant) -> bool {
        match self.timer.arm(wait) {
            Ok(()) => {
                let until = now.checked_add(wait).unwrap_or(now);
                self.blocked = Some((kind, until));
                true
            }
            Err(err) => {
                log::error!("rate limiter: not throttling: {err}");
                false
            }
        }
    }
}

impl AsRawFd for RateLimiter {
    fn as_raw_fd(&self) -> RawFd {
        self.timer_fd()
    }
}

/// The bucket `config` asks for: `None` when it limits nothing.
fn bucket_for(
    config: Option<TokenBucketConfig>,
    kind: TokenKind,
    now: Instant,
) -> Result<Option<TokenBucket>, LimiterError> {
    let Some(config) = config.filter(TokenBucketConfig::is_limiting) else {
        return Ok(None);
    };
    TokenBucket::new(
        config.size,
        config.one_time_burst.unwrap_or(0),
        config.refill_time,
        now,
    )
    .map(Some)
    .map_err(|source| LimiterError::Bucket { kind, source })
}

fn updated(
    current: &Option<TokenBucket>,
    change: BucketUpdate,
    kind: TokenKind,
    now: Instant,
) -> Result<Option<TokenBucket>, LimiterError> {
    match change {
        BucketUpdate::Keep => Ok(current.clone()),
        BucketUpdate::Disable => Ok(None),
        BucketUpdate::Replace(config) => bucket_for(Some(config), kind, now),
    }
}

fn bucket_config(bucket: &TokenBucket) -> TokenBucketConfig {
    let burst = bucket.initial_one_time_burst();
    TokenBucketConfig {
        size: bucket.size(),
        one_time_burst: (burst > 0).then_some(burst),
        refill_time: bucket.refill_time_ms(),
    }
}

#[cfg(test)]
mod tests {
    use super::super::clock::ManualClock;
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn config(bandwidth: Option<(u64, u64)>, ops: Option<(u64, u64)>) -> RateLimiterConfig {
        let bucket = |(size, refill_time)| TokenBucketConfig {
            size,
            one_time_burst: None,
            refill_time,
        };
        RateLimiterConfig {
            bandwidth: bandwidth.map(bucket),
            ops: ops.map(bucket),
        }
    }

    fn limiter(config: &RateLimiterConfig) -> (RateLimiter, Arc<ManualClock>) {
        let clock = Arc::new(ManualClock::new());
        (
            RateLimiter::with_clock(config, clock.clone()).unwrap(),
            clock,
        )
    }

    /// Waits (up to 3 s) for the timer fd to be readable.
    fn timer_fires(limiter: &RateLimiter) -> bool {
        let mut pollfd = libc::pollfd {
            fd: limiter.timer_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes one pollfd we own.
        unsafe { libc::poll(&mut pollfd, 1, 3000) == 1 }
    }

    #[test]
    fn an_unlimited_limiter_grants_everything() {
        let (mut rl, _) = limiter(&RateLimiterConfig::UNLIMITED);
        assert!(!rl.is_limiting());
        for _ in 0..1000 {
            assert!(rl.consume_op(u64::MAX));
        }
        assert!(!rl.is_blocked());
        // Disabled buckets too.
        let (mut rl, _) = limiter(&config(Some((0, 100)), Some((100, 0))));
        assert!(!rl.is_limiting());
        assert!(rl.consume(u64::MAX, TokenKind::Bytes));
        assert_eq!(rl.config(), RateLimiterConfig::UNLIMITED);
    }

    #[test]
    fn a_refusal_blocks_every_request_until_the_timer_fires() {
        // 2 ops per second, bandwidth unlimited (one op takes 500 ms,
        // long enough that the timer does not fire early on a loaded
        // machine).
        let (mut rl, clock) = limiter(&config(None, Some((2, 1000))));
        assert!(rl.consume_op(4096));
        assert!(rl.consume_op(4096));
        assert!(!rl.consume_op(4096));
        assert!(rl.is_blocked());
        assert_eq!(rl.time_until_available(1, TokenKind::Ops), 500 * MS);
        // Blocked: even an unlimited kind is refused.
        assert!(!rl.consume(1, TokenKind::Bytes));
        assert_eq!(rl.counters().ops_throttled, 2);
        assert_eq!(rl.counters().bandwidth_throttled, 0);
        assert!(!rl.on_timer_event(), "not fired yet: spurious");
        clock.advance(500 * MS);
        assert!(timer_fires(&rl), "armed for the 500 ms one op takes");
        assert!(rl.on_timer_event());
        assert!(!rl.is_blocked());
        assert!(rl.consume_op(4096));
        assert!(!rl.consume_op(4096));
        assert_eq!(rl.counters().resumed, 1);
    }

    #[test]
    fn a_bandwidth_refusal_gives_the_op_back() {
        let (mut rl, _) = limiter(&config(Some((1000, 1000)), Some((10, 1000))));
        assert!(rl.consume_op(800));
        assert!(!rl.consume_op(800));
        assert_eq!(rl.ops().unwrap().budget(), 9, "the refused op was refunded");
        assert_eq!(rl.bandwidth().unwrap().budget(), 200);
        assert_eq!(rl.counters().bandwidth_throttled, 1);
        // 600 missing bytes at 1 byte per ms.
        assert_eq!(rl.time_until_available(800, TokenKind::Bytes), 600 * MS);
    }

    #[test]
    fn an_oversized_request_passes_and_holds_the_next_ones_back() {
        // 1000 bytes per 100 ms; a 3000-byte request borrows 2000 bytes,
        // which take 200 ms to refill.
        let (mut rl, clock) = limiter(&config(Some((1000, 100)), None));
        assert!(rl.consume_op(3000));
        assert!(rl.is_blocked());
        assert!(!rl.consume_op(1));
        assert_eq!(
            rl.time_until_available(1, TokenKind::Bytes),
            200 * MS + MS / 10
        );
        clock.advance(200 * MS);
        assert!(timer_fires(&rl));
        assert!(rl.on_timer_event());
        assert!(!rl.consume_op(1), "the debt is paid, the bucket is empty");
        clock.advance(MS);
        assert!(timer_fires(&rl));
        assert!(rl.on_timer_event());
        assert!(rl.consume_op(10));
    }

    #[test]
    fn the_one_time_burst_comes_on_top_of_the_bucket() {
        let mut cfg = config(Some((1000, 1000)), None);
        if let Some(bw) = cfg.bandwidth.as_mut() {
            bw.one_time_burst = Some(5000);
        }
        let (mut rl, _) = limiter(&cfg);
        for _ in 0..6 {
            assert!(rl.consume_op(1000));
        }
        assert!(!rl.consume_op(1));
        assert_eq!(rl.config(), cfg, "the configured burst is reported");
    }

    #[test]
    fn updates_keep_replace_or_disable_each_bucket() {
        let (mut rl, _) = limiter(&config(Some((1000, 1000)), Some((10, 1000))));
        assert!(rl.consume_op(600));
        let replace_ops = RateLimiterUpdate {
            bandwidth: BucketUpdate::Keep,
            ops: BucketUpdate::Replace(TokenBucketConfig {
                size: 50,
                one_time_burst: None,
                refill_time: 500,
            }),
        };
        rl.update(&replace_ops).unwrap();
        assert_eq!(
            rl.bandwidth().unwrap().budget(),
            400,
            "kept with its tokens"
        );
        assert_eq!(rl.ops().unwrap().budget(), 50, "a new bucket starts full");
        assert_eq!(rl.config(), config(Some((1000, 1000)), Some((50, 500))));
        rl.update(&RateLimiterUpdate {
            bandwidth: BucketUpdate::Disable,
            ops: BucketUpdate::Keep,
        })
        .unwrap();
        assert!(rl.bandwidth().is_none());
        assert!(rl.consume(u64::MAX, TokenKind::Bytes));
    }

    #[test]
    fn an_update_releases_a_blocked_limiter_through_its_timer() {
        let (mut rl, _) = limiter(&config(None, Some((1, 1_000_000))));
        assert!(rl.consume_op(0));
        assert!(!rl.consume_op(0));
        rl.update(&RateLimiterUpdate {
            bandwidth: BucketUpdate::Keep,
            ops: BucketUpdate::Disable,
        })
        .unwrap();
        assert!(rl.is_blocked(), "released by the event loop, not here");
        assert!(timer_fires(&rl), "at once");
        assert!(rl.on_timer_event());
        assert!(rl.consume_op(0));
    }

    #[test]
    fn a_failed_update_changes_nothing() {
        let (mut rl, _) = limiter(&config(Some((1000, 1000)), None));
        let bad = TokenBucketConfig {
            size: 1,
            one_time_burst: None,
            refill_time: u64::MAX,
        };
        let update = RateLimiterUpdate {
            bandwidth: BucketUpdate::Disable,
            ops: BucketUpdate::Replace(bad),
        };
        assert!(rl.check_update(&update).is_err());
        assert!(rl.check_update(&RateLimiterUpdate::KEEP).is_ok());
        let err = rl.update(&update).unwrap_err();
        assert!(
            err.to_string().starts_with("ops bucket: refill_time"),
            "{err}"
        );
        assert!(rl.bandwidth().is_some());
        assert!(rl.ops().is_none());
        assert!(RateLimiter::new(&RateLimiterConfig {
            bandwidth: Some(bad),
            ops: None
        })
        .is_err());
    }
}
