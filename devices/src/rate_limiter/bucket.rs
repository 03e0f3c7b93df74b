//! One token bucket: `size` tokens that refill at `size` per `refill_time`
//! milliseconds, never above `size`, plus a `one_time_burst` spent before
//! them that never refills. Time is passed in by the caller (an
//! [`Instant`]), so the arithmetic here is pure and tested against a clock
//! the test controls.
//!
//! Refill is computed lazily, at each consumption, in whole tokens; the
//! fraction of a token produced meanwhile is carried (exactly, as token
//! nanoseconds) to the next refill, so no token is lost to rounding.

use std::time::{Duration, Instant};

const NANOS_PER_MILLI: u64 = 1_000_000;
const NANOS_PER_SEC: u128 = 1_000_000_000;

/// Longest supported `refill_time`, in ms (about 584 years): the refill
/// period in nanoseconds must fit in 64 bits for exact arithmetic.
pub const MAX_REFILL_TIME_MS: u64 = u64::MAX / NANOS_PER_MILLI;

/// Longest a bucket will make a request wait (a sanity cap for absurd
/// oversized requests on tiny buckets): 100 years.
const MAX_WAIT: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Why a bucket cannot be built with these parameters.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BucketError {
    /// A bucket of 0 tokens limits nothing (the configuration disables it
    /// instead of building it).
    #[error("size must be above 0")]
    ZeroSize,
    /// A bucket that refills in no time limits nothing.
    #[error("refill_time must be above 0")]
    ZeroRefillTime,
    /// The refill period does not fit the arithmetic.
    #[error("refill_time {0} ms is above the longest supported, {MAX_REFILL_TIME_MS} ms")]
    RefillTimeTooLong(u64),
    /// Saved levels above what the bucket can hold.
    #[error("budget {budget} is above the size {size}")]
    BudgetAboveSize { budget: u64, size: u64 },
    /// A saved one-time burst larger than the configured one.
    #[error("one_time_burst left {left} is above the configured {initial}")]
    BurstAboveInitial { left: u64, initial: u64 },
}

/// What a consumption did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// The tokens were taken.
    Granted,
    /// Not enough tokens: nothing was taken. Enough will have refilled
    /// `wait` from now.
    Refused {
        /// Time until the request can be granted.
        wait: Duration,
    },
    /// The request was larger than the whole bucket: it was granted by
    /// emptying the bucket and borrowing the rest, which refills first:
    /// the bucket stays empty for `wait` (the rate is kept on average).
    Overdrawn {
        /// Time the borrowed tokens take to refill.
        wait: Duration,
    },
}

/// A token bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenBucket {
    size: u64,
    refill_time_ms: u64,
    initial_one_time_burst: u64,
    one_time_burst: u64,
    budget: u64,
    /// The instant up to which refill has been counted. In the future
    /// after an overdraft: nothing refills until the debt is paid.
    last_refill: Instant,
    /// The part of a token refilled by `last_refill`, in token
    /// nanoseconds (a token is `period` of them).
    carry: u128,
}

impl TokenBucket {
    /// A full bucket of `size` tokens refilling every `refill_time_ms`,
    /// with `one_time_burst` extra tokens, as of `now`.
    pub fn new(
        size: u64,
        one_time_burst: u64,
        refill_time_ms: u64,
        now: Instant,
    ) -> Result<Self, BucketError> {
        Self::with_levels(
            size,
            one_time_burst,
            refill_time_ms,
            one_time_burst,
            size,
            now,
        )
    }

    /// A bucket holding `budget` tokens and `one_time_burst_left` of its
    /// `initial_one_time_burst` (a restored bucket), refilling from `now`.
    pub fn with_levels(
        size: u64,
        initial_one_time_burst: u64,
        refill_time_ms: u64,
        one_time_burst_left: u64,
        budget: u64,
        now: Instant,
    ) -> Result<Self, BucketError> {
        check_parameters(size, refill_time_ms)?;
        if budget > size {
            return Err(BucketError::BudgetAboveSize { budget, size });
        }
        if one_time_burst_left > initial_one_time_burst {
            return Err(BucketError::BurstAboveInitial {
                left: one_time_burst_left,
                initial: initial_one_time_burst,
            });
        }
        Ok(Self {
            size,
            refill_time_ms,
            initial_one_time_burst,
            one_time_burst: one_time_burst_left,
            budget,
            last_refill: now,
            carry: 0,
        })
    }

    /// Capacity in tokens.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Milliseconds to refill `size` tokens.
    pub fn refill_time_ms(&self) -> u64 {
        self.refill_time_ms
    }

    /// The configured one-time burst.
    pub fn initial_one_time_burst(&self) -> u64 {
        self.initial_one_time_burst
    }

    /// What is left of the one-time burst.
    pub fn one_time_burst(&self) -> u64 {
        self.one_time_burst
    }

    /// Tokens in the bucket as of the last consumption (refill since then
    /// not counted; see [`TokenBucket::budget_at`]).
    pub fn budget(&self) -> u64 {
        self.budget
    }

    /// Tokens in the bucket at `now`, refill included.
    pub fn budget_at(&self, now: Instant) -> u64 {
        let mut bucket = self.clone();
        bucket.refill(now);
        bucket.budget
    }

    /// Takes `tokens` at `now`: from the one-time burst first, then from
    /// the refilled budget. A refused request takes nothing.
    pub fn consume(&mut self, tokens: u64, now: Instant) -> Reduction {
        let from_burst = self.one_time_burst.min(tokens);
        let rest = tokens - from_burst;
        if rest == 0 {
            self.one_time_burst -= from_burst;
            return Reduction::Granted;
        }
        self.refill(now);
        if rest <= self.budget {
            self.one_time_burst -= from_burst;
            self.budget -= rest;
            return Reduction::Granted;
        }
        if rest > self.size {
            // Never satisfiable by waiting: granted on credit, paid back by
            // the refill time of what was borrowed.
            self.one_time_burst -= from_burst;
            let borrowed = rest - self.budget;
            self.budget = 0;
            let (debt, surplus) = self.refill_time_of(borrowed);
            self.last_refill = later(self.last_refill, debt);
            self.carry = surplus;
            return Reduction::Overdrawn {
                wait: self.last_refill.saturating_duration_since(now),
            };
        }
        Reduction::Refused {
            wait: self.wait_for(rest - self.budget, now),
        }
    }

    /// Time from `now` until `tokens` can be granted (zero when they can
    /// be now, or when the request is larger than the bucket and would be
    /// granted on credit).
    pub fn time_until_available(&self, tokens: u64, now: Instant) -> Duration {
        let rest = tokens.saturating_sub(self.one_time_burst);
        let mut bucket = self.clone();
        bucket.refill(now);
        if rest <= bucket.budget || rest > bucket.size {
            return Duration::ZERO;
        }
        bucket.wait_for(rest - bucket.budget, now)
    }

    /// Gives back `tokens` taken by a request that was then not served:
    /// to the one-time burst while some of it is left (up to its initial
    /// size), else to the budget (up to the size).
    pub fn replenish(&mut self, tokens: u64) {
        if self.one_time_burst > 0 {
            self.one_time_burst = self
                .one_time_burst
                .saturating_add(tokens)
                .min(self.initial_one_time_burst);
        } else {
            self.budget = self.budget.saturating_add(tokens).min(self.size);
        }
    }

    /// The refill period in nanoseconds (fits in 64 bits, checked at
    /// construction).
    fn period_nanos(&self) -> u128 {
        u128::from(self.refill_time_ms) * u128::from(NANOS_PER_MILLI)
    }

    /// Counts the tokens refilled since `last_refill`.
    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.last_refill).as_nanos();
        if elapsed == 0 {
            return;
        }
        let period = self.period_nanos();
        self.last_refill = now;
        if self.budget == self.size || elapsed >= period {
            // A full bucket does not bank time.
            self.budget = self.size;
            self.carry = 0;
            return;
        }
        // elapsed < period < 2^64 and size < 2^64: no overflow.
        let produced = (elapsed * u128::from(self.size)).saturating_add(self.carry);
        let tokens = u64::try_from(produced / period).unwrap_or(u64::MAX);
        self.carry = produced % period;
        self.budget = self.budget.saturating_add(tokens).min(self.size);
        if self.budget == self.size {
            self.carry = 0;
        }
    }

    /// Time from `last_refill` until `tokens` more have refilled, and the
    /// token nanoseconds that time produces beyond them (rounding up to
    /// whole nanoseconds).
    fn refill_time_of(&self, tokens: u64) -> (Duration, u128) {
        let size = u128::from(self.size);
        // tokens, period < 2^64: the product fits in 128 bits.
        let needed = (u128::from(tokens) * self.period_nanos()).saturating_sub(self.carry);
        let nanos = needed.div_ceil(size);
        (nanos_to_duration(nanos), nanos * size - needed)
    }

    /// Time from `now` until `deficit` more tokens have refilled.
    fn wait_for(&self, deficit: u64, now: Instant) -> Duration {
        let (time, _) = self.refill_time_of(deficit);
        later(self.last_refill, time).saturating_duration_since(now)
    }
}

/// Checks what every limiting bucket needs.
pub fn check_parameters(size: u64, refill_time_ms: u64) -> Result<(), BucketError> {
    if size == 0 {
        return Err(BucketError::ZeroSize);
    }
    if refill_time_ms == 0 {
        return Err(BucketError::ZeroRefillTime);
    }
    if refill_time_ms > MAX_REFILL_TIME_MS {
        return Err(BucketError::RefillTimeTooLong(refill_time_ms));
    }
    Ok(())
}

fn nanos_to_duration(nanos: u128) -> Duration {
    let secs = u64::try_from(nanos / NANOS_PER_SEC).unwrap_or(u64::MAX);
    let subsec = u32::try_from(nanos % NANOS_PER_SEC).unwrap_or(0);
    Duration::new(secs, subsec).min(MAX_WAIT)
}

/// `at + by`, with `by` capped at [`MAX_WAIT`] (so it cannot overflow).
fn later(at: Instant, by: Duration) -> Instant {
    at.checked_add(by.min(MAX_WAIT)).unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn bucket(size: u64, burst: u64, refill_ms: u64) -> (TokenBucket, Instant) {
        let t0 = Instant::now();
        (TokenBucket::new(size, burst, refill_ms, t0).unwrap(), t0)
    }

    #[test]
    fn a_new_bucket_is_full_and_refuses_once_empty() {
        let (mut b, t0) = bucket(1000, 0, 1000);
        assert_eq!(b.consume(600, t0), Reduction::Granted);
        assert_eq!(b.consume(400, t0), Reduction::Granted);
        assert_eq!(b.budget(), 0);
        // 1 token per ms: 1 token takes 1 ms.
        assert_eq!(b.consume(1, t0), Reduction::Refused { wait: MS });
        assert_eq!(b.budget(), 0, "a refused request takes nothing");
    }

    #[test]
    fn tokens_refill_at_size_per_refill_time_and_never_above_size() {
        let (mut b, t0) = bucket(1000, 0, 1000);
        assert_eq!(b.consume(1000, t0), Reduction::Granted);
        assert_eq!(b.budget_at(t0 + 250 * MS), 250);
        assert_eq!(b.consume(250, t0 + 250 * MS), Reduction::Granted);
        assert_eq!(b.budget_at(t0 + 500 * MS), 250);
        assert_eq!(b.budget_at(t0 + 10_000 * MS), 1000, "capped at size");
        // A full bucket banks no time: emptied at 10 s, 100 ms later it
        // holds 100 tokens, not more.
        assert_eq!(b.consume(1000, t0 + 10_000 * MS), Reduction::Granted);
        assert_eq!(b.budget_at(t0 + 10_100 * MS), 100);
    }

    #[test]
    fn fractions_of_a_token_are_carried_not_lost() {
        // 3 tokens per 10 ms: one token per 3.33 ms.
        let (mut b, t0) = bucket(3, 0, 10);
        assert_eq!(b.consume(3, t0), Reduction::Granted);
        let mut granted = 0;
        let mut now = t0;
        // Polled every 1 ms for 1 s: exactly 300 tokens refill.
        for _ in 0..1000 {
            now += MS;
            if b.consume(1, now) == Reduction::Granted {
                granted += 1;
            }
        }
        assert_eq!(granted, 300);
    }

    #[test]
    fn refused_requests_report_the_time_until_enough_tokens() {
        let (mut b, t0) = bucket(100, 0, 100); // 1 token per ms
        assert_eq!(b.consume(100, t0), Reduction::Granted);
        assert_eq!(
            b.consume(40, t0 + 10 * MS),
            Reduction::Refused { wait: 30 * MS }
        );
        assert_eq!(b.time_until_available(40, t0 + 10 * MS), 30 * MS);
        assert_eq!(b.time_until_available(40, t0 + 40 * MS), Duration::ZERO);
        assert_eq!(b.consume(40, t0 + 40 * MS), Reduction::Granted);
        assert_eq!(b.budget(), 0);
    }

    #[test]
    fn the_one_time_burst_is_spent_first_and_never_refills() {
        let (mut b, t0) = bucket(100, 50, 1000);
        assert_eq!(b.consume(30, t0), Reduction::Granted);
        assert_eq!((b.one_time_burst(), b.budget()), (20, 100));
        // 20 from the burst, 80 from the budget.
        assert_eq!(b.consume(100, t0), Reduction::Granted);
        assert_eq!((b.one_time_burst(), b.budget()), (0, 20));
        assert_eq!(b.budget_at(t0 + 10_000 * MS), 100);
        assert_eq!(b.one_time_burst(), 0);
        assert_eq!(b.initial_one_time_burst(), 50);
    }

    #[test]
    fn a_refused_request_keeps_the_burst_it_would_have_used() {
        let t0 = Instant::now();
        // 5 burst tokens left, 2 in the budget: 8 tokens are 3 too many.
        let mut b = TokenBucket::with_levels(10, 5, 1000, 5, 2, t0).unwrap();
        assert!(matches!(b.consume(8, t0), Reduction::Refused { .. }));
        assert_eq!((b.one_time_burst(), b.budget()), (5, 2));
        assert_eq!(b.consume(7, t0), Reduction::Granted);
        assert_eq!((b.one_time_burst(), b.budget()), (0, 0));
    }

    #[test]
    fn a_request_larger_than_the_bucket_is_granted_on_credit() {
        let (mut b, t0) = bucket(100, 0, 100); // 1 token per ms
                                               // 250 tokens: the 100 in the bucket and 150 borrowed, which take
                                               // 150 ms to refill.
        assert_eq!(b.consume(250, t0), Reduction::Overdrawn { wait: 150 * MS });
        assert_eq!(b.budget(), 0);
        assert_eq!(b.budget_at(t0 + 150 * MS), 0, "the debt is paid first");
        assert_eq!(b.budget_at(t0 + 160 * MS), 10);
        assert_eq!(
            b.consume(5, t0 + 100 * MS),
            Reduction::Refused { wait: 55 * MS }
        );
        assert_eq!(b.time_until_available(500, t0), Duration::ZERO);
    }

    #[test]
    fn replenish_refunds_the_burst_first_then_the_budget() {
        let (mut b, t0) = bucket(10, 4, 1000);
        assert_eq!(b.consume(3, t0), Reduction::Granted);
        b.replenish(100);
        assert_eq!((b.one_time_burst(), b.budget()), (4, 10));
        assert_eq!(b.consume(12, t0), Reduction::Granted);
        assert_eq!((b.one_time_burst(), b.budget()), (0, 2));
        b.replenish(5);
        assert_eq!(b.budget(), 7);
        b.replenish(u64::MAX);
        assert_eq!(b.budget(), 10);
    }

    #[test]
    fn impossible_parameters_are_refused() {
        let t0 = Instant::now();
        assert_eq!(
            TokenBucket::new(0, 0, 1000, t0).unwrap_err(),
            BucketError::ZeroSize
        );
        assert_eq!(
            TokenBucket::new(10, 0, 0, t0).unwrap_err(),
            BucketError::ZeroRefillTime
        );
        assert_eq!(
            TokenBucket::new(10, 0, MAX_REFILL_TIME_MS + 1, t0).unwrap_err(),
            BucketError::RefillTimeTooLong(MAX_REFILL_TIME_MS + 1)
        );
        assert!(TokenBucket::with_levels(10, 0, 10, 0, 11, t0).is_err());
        assert!(TokenBucket::with_levels(10, 5, 10, 6, 10, t0).is_err());
    }

    #[test]
    fn extreme_values_neither_overflow_nor_panic() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(1, 0, MAX_REFILL_TIME_MS, t0).unwrap();
        assert!(matches!(
            b.consume(u64::MAX, t0),
            Reduction::Overdrawn { wait } if wait == MAX_WAIT
        ));
        assert!(matches!(b.consume(1, t0), Reduction::Refused { .. }));
        let mut b = TokenBucket::new(u64::MAX, u64::MAX, 1, t0).unwrap();
        assert_eq!(b.consume(u64::MAX, t0), Reduction::Granted);
        assert_eq!(b.consume(u64::MAX, t0), Reduction::Granted);
        assert_eq!(
            b.budget_at(t0 + Duration::from_nanos(500_000)),
            u64::MAX / 2
        );
        assert_eq!(
            b.budget_at(t0 + Duration::from_secs(365 * 24 * 3600)),
            u64::MAX
        );
    }
}
