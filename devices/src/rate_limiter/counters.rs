//! How often a rate limiter held a device back, for metrics lines.

use super::TokenKind;

/// Throttling counters of one rate limiter (cumulative from the device's
/// creation or restore; runtime updates keep them).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct ThrottleCounters {
    /// Requests refused for lack of bytes: by the `bandwidth` bucket, or
    /// while its refill timer ran.
    pub bandwidth_throttled: u64,
    /// Requests refused for lack of operations: by the `ops` bucket, or
    /// while its refill timer ran.
    pub ops_throttled: u64,
    /// Refill timer events that let the device resume.
    pub resumed: u64,
}

impl ThrottleCounters {
    /// Counts one request refused because of `kind`'s bucket.
    pub fn count_throttled(&mut self, kind: TokenKind) {
        let counter = match kind {
            TokenKind::Bytes => &mut self.bandwidth_throttled,
            TokenKind::Ops => &mut self.ops_throttled,
        };
        *counter = counter.saturating_add(1);
    }

    /// Counts one resumption.
    pub fn count_resumed(&mut self) {
        self.resumed = self.resumed.saturating_add(1);
    }

    /// All throttled requests.
    pub fn throttled(&self) -> u64 {
        self.bandwidth_throttled.saturating_add(self.ops_throttled)
    }
}
