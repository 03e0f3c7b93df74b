//! The rate limiter JSON of Firecracker's API, as found in drive
//! (`rate_limiter`) and network interface (`rx_rate_limiter`,
//! `tx_rate_limiter`) bodies:
//!
//! ```json
//! {"bandwidth": {"size": 10485760, "one_time_burst": 1048576, "refill_time": 1000},
//!  "ops": {"size": 100, "refill_time": 1000}}
//! ```
//!
//! In a PUT (the limiter a device is built with), an absent or `null`
//! bucket, and `{}` for the whole limiter, mean no limit. A bucket whose
//! `size` or `refill_time` is 0 is accepted and limits nothing.
//!
//! In a PATCH (a runtime change, [`RateLimiterUpdate`]), an absent or
//! `null` bucket keeps the bucket as it is; a bucket with `size` or
//! `refill_time` 0 removes the limit; any other bucket replaces the old one
//! with a full new one.
//!
//! Both buckets need `size` and `refill_time` (`{"bandwidth": {}}` is
//! refused, as Firecracker does). Unknown fields are refused, at both
//! levels (Firecracker ignores them inside a bucket; refusing catches a
//! misspelt `one_time_burst`). A `refill_time` too long for the arithmetic
//! (over about 584 years, which Firecracker silently turns into no limit)
//! is refused with an error.

use super::bucket::MAX_REFILL_TIME_MS;
use serde::{Deserialize, Serialize};

/// A `refill_time` the limiter cannot handle.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Longer than [`MAX_REFILL_TIME_MS`].
    #[error("refill_time {0} ms is above the longest supported, {MAX_REFILL_TIME_MS} ms")]
    RefillTimeTooLong(u64),
}

/// One bucket: `size` tokens, refilled every `refill_time` ms, plus an
/// optional `one_time_burst` spent first that does not refill.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "TokenBucketFields")]
pub struct TokenBucketConfig {
    /// Capacity in tokens (bytes or operations); 0 disables the bucket.
    pub size: u64,
    /// Extra tokens available once, at start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub one_time_burst: Option<u64>,
    /// Milliseconds to refill `size` tokens; 0 disables the bucket.
    pub refill_time: u64,
}

/// The JSON fields of a bucket, checked into a [`TokenBucketConfig`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBucketFields {
    size: u64,
    #[serde(default)]
    one_time_burst: Option<u64>,
    refill_time: u64,
}

impl TryFrom<TokenBucketFields> for TokenBucketConfig {
    type Error = ConfigError;

    fn try_from(fields: TokenBucketFields) -> Result<Self, ConfigError> {
        let config = TokenBucketConfig {
            size: fields.size,
            one_time_burst: fields.one_time_burst,
            refill_time: fields.refill_time,
        };
        config.validate()?;
        Ok(config)
    }
}

impl TokenBucketConfig {
    /// Whether this bucket limits anything (`size` and `refill_time` both
    /// above 0).
    pub fn is_limiting(&self) -> bool {
        self.size > 0 && self.refill_time > 0
    }

    /// Checks a limiting bucket's `refill_time`.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.is_limiting() && self.refill_time > MAX_REFILL_TIME_MS {
            return Err(ConfigError::RefillTimeTooLong(self.refill_time));
        }
        Ok(())
    }

    /// This bucket if it limits anything, else `None`.
    fn limiting(self) -> Option<Self> {
        self.is_limiting().then_some(self)
    }
}

/// A rate limiter: a bytes bucket and an operations bucket, each optional.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimiterConfig {
    /// Bytes per `refill_time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth: Option<TokenBucketConfig>,
    /// Operations (requests, frames) per `refill_time`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ops: Option<TokenBucketConfig>,
}

impl RateLimiterConfig {
    /// No limit at all.
    pub const UNLIMITED: Self = Self {
        bandwidth: None,
        ops: None,
    };

    /// Whether either bucket limits anything.
    pub fn is_limiting(&self) -> bool {
        [self.bandwidth, self.ops]
            .iter()
            .flatten()
            .any(TokenBucketConfig::is_limiting)
    }

    /// Checks both buckets (deserialized ones are checked already).
    pub fn validate(&self) -> Result<(), ConfigError> {
        [self.bandwidth, self.ops]
            .iter()
            .flatten()
            .try_for_each(TokenBucketConfig::validate)
    }

    /// The configuration after `update` (a PATCH): disabled buckets come
    /// out as `None`, as a live limiter reports them.
    pub fn patched(&self, update: &RateLimiterUpdate) -> Self {
        let patch = |old: Option<TokenBucketConfig>, change: &BucketUpdate| match change {
            BucketUpdate::Keep => old.and_then(TokenBucketConfig::limiting),
            BucketUpdate::Disable => None,
            BucketUpdate::Replace(new) => new.limiting(),
        };
        Self {
            bandwidth: patch(self.bandwidth, &update.bandwidth),
            ops: patch(self.ops, &update.ops),
        }
    }
}

/// What a PATCH does to one bucket.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum BucketUpdate {
    /// Absent or `null`: the bucket stays as it is (tokens included).
    #[default]
    Keep,
    /// `size` or `refill_time` 0: no limit any more.
    Disable,
    /// A new, full bucket.
    Replace(TokenBucketConfig),
}

impl BucketUpdate {
    fn from_patch(bucket: Option<TokenBucketConfig>) -> Self {
        match bucket {
            None => BucketUpdate::Keep,
            Some(bucket) if bucket.is_limiting() => BucketUpdate::Replace(bucket),
            Some(_) => BucketUpdate::Disable,
        }
    }
}

/// A PATCH of a rate limiter. It reads the same JSON as
/// [`RateLimiterConfig`], with the PATCH meaning of each bucket (see the
/// module documentation); a PATCH body without the limiter field at all is
/// [`RateLimiterUpdate::KEEP`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(from = "RateLimiterConfig")]
pub struct RateLimiterUpdate {
    /// The bytes bucket.
    pub bandwidth: BucketUpdate,
    /// The operations bucket.
    pub ops: BucketUpdate,
}

impl RateLimiterUpdate {
    /// Changes nothing.
    pub const KEEP: Self = Self {
        bandwidth: BucketUpdate::Keep,
        ops: BucketUpdate::Keep,
    };

    /// The update a PATCH body's optional limiter field asks for.
    pub fn from_patch(body: Option<RateLimiterConfig>) -> Self {
        body.map_or(Self::KEEP, Self::from)
    }
}

impl From<RateLimiterConfig> for RateLimiterUpdate {
    fn from(body: RateLimiterConfig) -> Self {
        Self {
            bandwidth: BucketUpdate::from_patch(body.bandwidth),
            ops: BucketUpdate::from_patch(body.ops),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<RateLimiterConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    fn bucket(size: u64, one_time_burst: Option<u64>, refill_time: u64) -> TokenBucketConfig {
        TokenBucketConfig {
            size,
            one_time_burst,
            refill_time,
        }
    }

    #[test]
    fn firecracker_example_bodies_parse() {
        assert_eq!(
            parse(r#"{"bandwidth": {"size": 10485760, "refill_time": 1000}}"#).unwrap(),
            RateLimiterConfig {
                bandwidth: Some(bucket(10_485_760, None, 1000)),
                ops: None,
            }
        );
        let both = parse(
            r#"{"bandwidth": {"size": 1048576, "one_time_burst": 4194304, "refill_time": 1000},
                "ops": {"size": 100, "one_time_burst": null, "refill_time": 1000}}"#,
        )
        .unwrap();
        assert_eq!(
            both.bandwidth,
            Some(bucket(1_048_576, Some(4_194_304), 1000))
        );
        assert_eq!(both.ops, Some(bucket(100, None, 1000)));
        assert!(both.is_limiting());
    }

    #[test]
    fn empty_and_null_buckets_mean_no_limit() {
        for json in [
            "{}",
            r#"{"bandwidth": null}"#,
            r#"{"bandwidth": null, "ops": null}"#,
        ] {
            let config = parse(json).unwrap();
            assert_eq!(config, RateLimiterConfig::UNLIMITED, "{json}");
            assert!(!config.is_limiting());
        }
        // Firecracker's "disabled" buckets: accepted, limiting nothing.
        for json in [
            r#"{"ops": {"size": 0, "refill_time": 1000}}"#,
            r#"{"ops": {"size": 100, "refill_time": 0}}"#,
        ] {
            assert!(!parse(json).unwrap().is_limiting(), "{json}");
        }
    }

    #[test]
    fn malformed_bodies_are_refused_with_the_reason() {
        let cases = [
            (r#"{"bandwidth": {}}"#, "missing field `size`"),
            (r#"{"ops": {"size": 10}}"#, "missing field `refill_time`"),
            (
                r#"{"bandwith": {"size": 1, "refill_time": 1}}"#,
                "unknown field `bandwith`",
            ),
            (
                r#"{"ops": {"size": 1, "refill_time": 1, "one_time_bust": 5}}"#,
                "unknown field `one_time_bust`",
            ),
            (
                r#"{"ops": {"size": -1, "refill_time": 1}}"#,
                "invalid value",
            ),
            (
                r#"{"ops": {"size": 1, "refill_time": 18446744073709552}}"#,
                "refill_time 18446744073709552 ms is above the longest supported",
            ),
            (r#"{"ops": "fast"}"#, "invalid type"),
        ];
        for (json, reason) in cases {
            let err = parse(json).unwrap_err().to_string();
            assert!(err.contains(reason), "{json}: {err}");
        }
        // The refill_time limit applies to limiting buckets only.
        assert!(parse(r#"{"ops": {"size": 0, "refill_time": 18446744073709552}}"#).is_ok());
    }

    #[test]
    fn configs_serialize_back_to_the_same_json() {
        let json = r#"{"bandwidth":{"size":1000,"one_time_burst":5,"refill_time":100},"ops":{"size":10,"refill_time":1000}}"#;
        let config = parse(json).unwrap();
        assert_eq!(serde_json::to_string(&config).unwrap(), json);
        assert_eq!(
            serde_json::to_string(&RateLimiterConfig::UNLIMITED).unwrap(),
            "{}"
        );
    }

    #[test]
    fn a_patch_keeps_absent_buckets_disables_zero_ones_and_replaces_others() {
        let update: RateLimiterUpdate =
            serde_json::from_str(r#"{"ops": {"size": 0, "refill_time": 0}}"#).unwrap();
        assert_eq!(
            update,
            RateLimiterUpdate {
                bandwidth: BucketUpdate::Keep,
                ops: BucketUpdate::Disable,
            }
        );
        let update: RateLimiterUpdate =
            serde_json::from_str(r#"{"bandwidth": {"size": 5, "refill_time": 10}, "ops": null}"#)
                .unwrap();
        assert_eq!(update.bandwidth, BucketUpdate::Replace(bucket(5, None, 10)));
        assert_eq!(update.ops, BucketUpdate::Keep);
        assert_eq!(RateLimiterUpdate::from_patch(None), RateLimiterUpdate::KEEP);
        assert!(serde_json::from_str::<RateLimiterUpdate>(r#"{"x": 1}"#).is_err());

        let before = RateLimiterConfig {
            bandwidth: Some(bucket(1000, None, 100)),
            ops: Some(bucket(10, Some(2), 1000)),
        };
        let after = before.patched(&RateLimiterUpdate {
            bandwidth: BucketUpdate::Replace(bucket(2000, None, 100)),
            ops: BucketUpdate::Keep,
        });
        assert_eq!(after.bandwidth, Some(bucket(2000, None, 100)));
        assert_eq!(after.ops, before.ops);
        let after = before.patched(&RateLimiterUpdate {
            bandwidth: BucketUpdate::Keep,
            ops: BucketUpdate::Disable,
        });
        assert_eq!(
            after,
            RateLimiterConfig {
                ops: None,
                ..before
            }
        );
    }
}
