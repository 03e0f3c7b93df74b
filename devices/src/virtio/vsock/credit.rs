//! Credit-based flow control of one connection (virtio 1.2, 5.10.6.3).
//!
//! Each side tells the other, in every packet header, how much receive
//! buffer it has for the connection (`buf_alloc`) and how many bytes it has
//! consumed so far (`fwd_cnt`, a wrapping counter). A sender may have at
//! most `buf_alloc - (sent - fwd_cnt)` bytes in flight.
//!
//! Both directions are bounded here: brique reads from a host socket no
//! more than the guest's credit allows (so a guest that never reads leaves
//! the data in the host socket, not in brique), and a guest that sends more
//! than the [`BUF_ALLOC`] brique advertised has broken the protocol.

use std::num::Wrapping;

/// Receive buffer brique advertises per connection: bytes from the guest
/// that brique holds while the host socket cannot take them.
pub const BUF_ALLOC: u32 = 64 * 1024;
/// When the guest's view of brique's free buffer falls below this and
/// brique has freed space since it last said so, a credit update is due.
pub const CREDIT_UPDATE_THRESHOLD: u32 = BUF_ALLOC / 2;

/// The guest wrote past the credit brique gave it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the guest sent {buffered} bytes, more than the {BUF_ALLOC} bytes of credit it has")]
pub struct CreditOverrun {
    /// Bytes that would be held.
    pub buffered: u64,
}

/// Both directions' counters of one connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Credit {
    /// Payload bytes received from the guest.
    received: Wrapping<u32>,
    /// Of those, bytes written to the host socket (our fwd_cnt).
    forwarded: Wrapping<u32>,
    /// `forwarded` as last told to the guest.
    forwarded_told: Wrapping<u32>,
    /// Payload bytes sent to the guest.
    sent: Wrapping<u32>,
    /// The guest's receive buffer for this connection.
    peer_buf_alloc: u32,
    /// Bytes the guest has consumed.
    peer_fwd_cnt: Wrapping<u32>,
}

impl Credit {
    /// Counters of a new connection whose guest side advertised
    /// `peer_buf_alloc` and `peer_fwd_cnt`.
    pub fn new(peer_buf_alloc: u32, peer_fwd_cnt: u32) -> Self {
        Self {
            peer_buf_alloc,
            peer_fwd_cnt: Wrapping(peer_fwd_cnt),
            ..Self::default()
        }
    }

    /// Takes the guest's credit from a packet header.
    pub fn update_peer(&mut self, buf_alloc: u32, fwd_cnt: u32) {
        self.peer_buf_alloc = buf_alloc;
        self.peer_fwd_cnt = Wrapping(fwd_cnt);
    }

    /// Bytes brique may still send to the guest. A guest claiming to have
    /// consumed more than it was sent (in flight "negative", which wraps
    /// to more than 2^31) gets none, not a huge window.
    pub fn peer_free(&self) -> u32 {
        let in_flight = (self.sent - self.peer_fwd_cnt).0;
        if in_flight > i32::MAX as u32 {
            return 0;
        }
        self.peer_buf_alloc.saturating_sub(in_flight)
    }

    /// `n` payload bytes went to the guest.
    pub fn on_sent(&mut self, n: u32) {
        self.sent += n;
    }

    /// `n` payload bytes arrived from the guest, with `held` bytes already
    /// waiting for the host socket; refused if it breaks the credit.
    pub fn on_received(&mut self, n: u32, held: usize) -> Result<(), CreditOverrun> {
        let buffered = held as u64 + u64::from(n);
        if buffered > u64::from(BUF_ALLOC) {
            return Err(CreditOverrun { buffered });
        }
        self.received += n;
        Ok(())
    }

    /// `n` bytes reached the host socket.
    pub fn on_forwarded(&mut self, n: u32) {
        self.forwarded += n;
    }

    /// The `(buf_alloc, fwd_cnt)` for a header brique sends now; the guest
    /// will know this fwd_cnt.
    pub fn stamp(&mut self) -> (u32, u32) {
        self.forwarded_told = self.forwarded;
        (BUF_ALLOC, self.forwarded.0)
    }

    /// Whether the guest should be told about freed buffer: its view of
    /// brique's free space is under the threshold and brique has freed
    /// some since it last said.
    pub fn guest_needs_update(&self) -> bool {
        let unannounced = (self.forwarded - self.forwarded_told).0;
        let seen_in_flight = (self.received - self.forwarded_told).0;
        let seen_free = BUF_ALLOC.saturating_sub(seen_in_flight);
        unannounced > 0 && seen_free < CREDIT_UPDATE_THRESHOLD
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sending_stops_at_the_guests_buffer_and_resumes_as_it_consumes() {
        let mut credit = Credit::new(4096, 0);
        assert_eq!(credit.peer_free(), 4096);
        credit.on_sent(4000);
        assert_eq!(credit.peer_free(), 96);
        credit.on_sent(96);
        assert_eq!(credit.peer_free(), 0);
        credit.update_peer(4096, 1000);
        assert_eq!(credit.peer_free(), 1000);
        // A bigger buffer counts at once.
        credit.update_peer(8192, 1000);
        assert_eq!(credit.peer_free(), 5096);
    }

    #[test]
    fn counters_wrap_around_u32() {
        let mut credit = Credit::new(4096, u32::MAX - 10);
        credit.sent = Wrapping(u32::MAX - 10);
        credit.on_sent(100);
        assert_eq!(credit.peer_free(), 3996);
        credit.update_peer(4096, 89);
        assert_eq!(credit.peer_free(), 4096);
    }

    #[test]
    fn a_guest_claiming_more_consumed_than_sent_gets_no_credit() {
        let mut credit = Credit::new(4096, 0);
        credit.on_sent(10);
        credit.update_peer(u32::MAX, 1000);
        assert_eq!(credit.peer_free(), 0);
    }

    #[test]
    fn a_guest_may_not_overrun_the_advertised_buffer() {
        let mut credit = Credit::new(0, 0);
        assert!(credit.on_received(BUF_ALLOC, 0).is_ok());
        assert_eq!(
            credit.on_received(1, BUF_ALLOC as usize),
            Err(CreditOverrun {
                buffered: u64::from(BUF_ALLOC) + 1
            })
        );
        assert!(credit.on_received(100, BUF_ALLOC as usize - 100).is_ok());
    }

    #[test]
    fn credit_updates_are_due_when_the_guest_sees_little_room_and_room_was_freed() {
        let mut credit = Credit::new(0, 0);
        assert_eq!(credit.stamp(), (BUF_ALLOC, 0));
        credit.on_received(40_000, 0).unwrap();
        assert!(!credit.guest_needs_update(), "nothing freed yet");
        credit.on_forwarded(40_000);
        assert!(credit.guest_needs_update(), "the guest sees 24 KiB free");
        assert_eq!(credit.stamp(), (BUF_ALLOC, 40_000));
        assert!(!credit.guest_needs_update(), "told");
        credit.on_received(1000, 0).unwrap();
        credit.on_forwarded(1000);
        assert!(!credit.guest_needs_update(), "the guest still sees 63 KiB");
    }
}
