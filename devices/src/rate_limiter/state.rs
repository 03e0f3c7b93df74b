//! A rate limiter in a snapshot: each bucket's parameters and the tokens
//! it held when saved (refill up to that instant included). On restore
//! the refill clock starts again from the restore, and the limiter is not
//! blocked: a device that was throttled retries when it is reactivated.

use super::bucket::TokenBucket;
use super::clock::{Clock, MonotonicClock};
use super::limiter::RateLimiter;
use super::TokenKind;
use crate::state::StateError;
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Instant;

/// One saved bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBucketState {
    /// Capacity in tokens.
    pub size: u64,
    /// Milliseconds to refill `size` tokens.
    pub refill_time: u64,
    /// The configured one-time burst.
    pub initial_one_time_burst: u64,
    /// What was left of it.
    pub one_time_burst: u64,
    /// Tokens in the bucket.
    pub budget: u64,
}

/// A saved rate limiter; the default (no buckets) limits nothing, which is
/// what state files from before rate limiting restore to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterState {
    /// The bandwidth bucket, if limiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketState>,
    /// The ops bucket, if limiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketState>,
}

impl TokenBucketState {
    fn of(bucket: &TokenBucket, now: Instant) -> Self {
        Self {
            size: bucket.size(),
            refill_time: bucket.refill_time_ms(),
            initial_one_time_burst: bucket.initial_one_time_burst(),
            one_time_burst: bucket.one_time_burst(),
            budget: bucket.budget_at(now),
        }
    }

    fn to_bucket(
        self,
        kind: TokenKind,
        device: &'static str,
        now: Instant,
    ) -> Result<TokenBucket, StateError> {
        TokenBucket::with_levels(
            self.size,
            self.initial_one_time_burst,
            self.refill_time,
            self.one_time_burst,
            self.budget,
            now,
        )
        .map_err(|err| StateError::invalid(device, format!("{kind} rate limiter bucket: {err}")))
    }
}

impl RateLimiter {
    /// The limiter's buckets as of now.
    pub fn save(&self) -> RateLimiterState {
        let now = self.now();
        RateLimiterState {
            bandwidth: self.bandwidth().map(|b| TokenBucketState::of(b, now)),
            ops: self.ops().map(|b| TokenBucketState::of(b, now)),
        }
    }

    /// A limiter in `state` on the monotonic clock; `device` names the
    /// owner in errors.
    pub fn restore(state: &RateLimiterState, device: &'static str) -> Result<Self, StateError> {
        Self::restore_with_clock(state, device, Arc::new(MonotonicClock))
    }

    /// A limiter in `state` reading the time from `clock`.
    pub fn restore_with_clock(
        state: &RateLimiterState,
        device: &'static str,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, StateError> {
        let now = clock.now();
        let bandwidth = state
            .bandwidth
            .map(|b| b.to_bucket(TokenKind::Bytes, device, now))
            .transpose()?;
        let ops = state
            .ops
            .map(|b| b.to_bucket(TokenKind::Ops, device, now))
            .transpose()?;
        Self::from_buckets(bandwidth, ops, clock)
            .map_err(|err| StateError::invalid(device, err.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::super::clock::ManualClock;
    use super::super::config::{RateLimiterConfig, TokenBucketConfig};
    use super::*;
    use std::time::Duration;

    fn limiter(clock: &Arc<ManualClock>) -> RateLimiter {
        let config = RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 1000,
                one_time_burst: Some(500),
                refill_time: 1000,
            }),
            ops: Some(TokenBucketConfig {
                size: 10,
                one_time_burst: None,
                refill_time: 100,
            }),
        };
        RateLimiter::with_clock(&config, clock.clone()).unwrap()
    }

    #[test]
    fn budgets_and_the_burst_left_survive_a_save_and_restore() {
        let clock = Arc::new(ManualClock::new());
        let mut rl = limiter(&clock);
        assert!(rl.consume_op(1200)); // 500 burst + 700 budget
        clock.advance(Duration::from_millis(100)); // +100 bytes
        let saved = rl.save();
        assert_eq!(
            saved.bandwidth,
            Some(TokenBucketState {
                size: 1000,
                refill_time: 1000,
                initial_one_time_burst: 500,
                one_time_burst: 0,
                budget: 400,
            })
        );
        assert_eq!(saved.ops.map(|ops| ops.budget), Some(10));

        let restored_clock = Arc::new(ManualClock::new());
        let mut restored =
            RateLimiter::restore_with_clock(&saved, "test", restored_clock.clone()).unwrap();
        assert_eq!(restored.save(), saved);
        assert_eq!(restored.config(), rl.config());
        assert!(!restored.is_blocked());
        assert!(restored.consume_op(400));
        assert!(!restored.consume_op(1));
        // The refill clock runs from the restore.
        restored_clock.advance(Duration::from_millis(10));
        assert_eq!(
            restored
                .bandwidth()
                .unwrap()
                .budget_at(restored_clock.now()),
            10
        );
    }

    #[test]
    fn state_json_round_trips_and_old_files_mean_no_limit() {
        let clock = Arc::new(ManualClock::new());
        let saved = limiter(&clock).save();
        let json = serde_json::to_string(&saved).unwrap();
        assert_eq!(
            serde_json::from_str::<RateLimiterState>(&json).unwrap(),
            saved
        );
        let none: RateLimiterState = serde_json::from_str("{}").unwrap();
        assert_eq!(none, RateLimiterState::default());
        let restored = RateLimiter::restore(&none, "test").unwrap();
        assert!(!restored.is_limiting());
    }

    #[test]
    fn impossible_saved_buckets_are_refused() {
        let good = TokenBucketState {
            size: 10,
            refill_time: 100,
            initial_one_time_burst: 5,
            one_time_burst: 5,
            budget: 10,
        };
        for bad in [
            TokenBucketState {
                size: 0,
                budget: 0,
                ..good
            },
            TokenBucketState {
                refill_time: 0,
                ..good
            },
            TokenBucketState {
                refill_time: u64::MAX,
                ..good
            },
            TokenBucketState { budget: 11, ..good },
            TokenBucketState {
                one_time_burst: 6,
                ..good
            },
        ] {
            let state = RateLimiterState {
                bandwidth: None,
                ops: Some(bad),
            };
            let err = RateLimiter::restore(&state, "virtio-blk").unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("virtio-blk: invalid saved state: ops rate limiter bucket"),
                "{err}"
            );
        }
    }
}
