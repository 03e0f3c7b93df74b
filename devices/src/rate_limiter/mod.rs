//! Firecracker-style I/O rate limiters: two token buckets per limiter,
//! `bandwidth` (bytes) and `ops` (operations), each refilling `size` tokens
//! every `refill_time` milliseconds, with an optional `one_time_burst` of
//! extra tokens spent first that never refills.
//!
//! A device asks its [`RateLimiter`] before each request or frame. When a
//! bucket runs short the limiter refuses, arms its refill timer for the
//! time the missing tokens take to refill, and refuses everything until the
//! timer fires; the device stops taking work from its queue, watches the
//! limiter's fd ([`RateLimiter::timer_fd`]) in its event loop and, when it
//! is readable, calls [`RateLimiter::on_timer_event`] and resumes. Nothing
//! busy-waits.
//!
//! - [`config`]: the JSON shapes of the API (PUT and PATCH bodies).
//! - [`bucket`]: one token bucket, as arithmetic over instants.
//! - [`clock`]: where the limiter reads the time (injectable for tests).
//! - [`timer`]: the non-blocking refill timer.
//! - [`limiter`]: the two buckets, the timer, and the throttling rules.
//! - [`counters`]: throttling counters for metrics.
//! - [`state`]: saved budgets for snapshots.

pub mod bucket;
pub mod clock;
pub mod config;
pub mod counters;
pub mod limiter;
pub mod state;
pub mod timer;

pub use bucket::TokenBucket;
pub use clock::{Clock, ManualClock, MonotonicClock};
pub use config::{BucketUpdate, RateLimiterConfig, RateLimiterUpdate, TokenBucketConfig};
pub use counters::ThrottleCounters;
pub use limiter::{LimiterError, RateLimiter};
pub use state::{RateLimiterState, TokenBucketState};

/// Which bucket a request draws on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// Bytes moved: the `bandwidth` bucket.
    Bytes,
    /// Requests or frames: the `ops` bucket.
    Ops,
}

impl std::fmt::Display for TokenKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            TokenKind::Bytes => "bandwidth",
            TokenKind::Ops => "ops",
        })
    }
}
