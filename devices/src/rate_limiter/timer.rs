//! The refill timer a throttled device waits on: a one-shot timerfd the
//! device's event loop watches. It is non-blocking, so that reading it
//! when it has not fired (it was re-armed or disarmed by a runtime update
//! after epoll reported it) returns at once instead of stalling the loop.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, RawFd};
use std::time::Duration;
use vmm_sys_util::timerfd::TimerFd;

/// The shortest time the timer is armed for (a zero duration would disarm
/// a timerfd instead).
const SHORTEST: Duration = Duration::from_nanos(1);

/// A timer that cannot be created, set or read.
#[derive(Debug, thiserror::Error)]
pub enum TimerError {
    /// timerfd_create failed.
    #[error("cannot create the refill timer: {0}")]
    Create(io::Error),
    /// timerfd_settime failed.
    #[error("cannot set the refill timer: {0}")]
    Set(io::Error),
    /// Reading the expirations failed (other than "not fired yet").
    #[error("cannot read the refill timer: {0}")]
    Read(io::Error),
}

/// A non-blocking one-shot timer on the monotonic clock.
#[derive(Debug)]
pub struct RefillTimer {
    fd: TimerFd,
}

impl RefillTimer {
    /// A disarmed timer.
    pub fn new() -> Result<Self, TimerError> {
        // SAFETY: timerfd_create takes no pointers; its result is checked.
        let raw = unsafe {
            libc::timerfd_create(
                libc::CLOCK_MONOTONIC,
                libc::TFD_NONBLOCK | libc::TFD_CLOEXEC,
            )
        };
        if raw < 0 {
            return Err(TimerError::Create(io::Error::last_os_error()));
        }
        // SAFETY: `raw` is a fresh timerfd that nothing else owns.
        let fd = unsafe { TimerFd::from_raw_fd(raw) };
        Ok(Self { fd })
    }

    /// Fires once, `after` from now (at least 1 ns), replacing any earlier
    /// setting.
    pub fn arm(&mut self, after: Duration) -> Result<(), TimerError> {
        self.fd
            .reset(after.max(SHORTEST), None)
            .map_err(|err| TimerError::Set(err.into()))
    }

    /// Cancels the timer and any expiration not read yet.
    pub fn disarm(&mut self) -> Result<(), TimerError> {
        self.fd.clear().map_err(|err| TimerError::Set(err.into()))
    }

    /// Reads and clears the expiration: whether the timer had fired.
    pub fn take_expiration(&mut self) -> Result<bool, TimerError> {
        match self.fd.wait() {
            Ok(count) => Ok(count > 0),
            Err(err) if err.errno() == libc::EAGAIN => Ok(false),
            Err(err) => Err(TimerError::Read(err.into())),
        }
    }
}

impl AsRawFd for RefillTimer {
    fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn readable_within(timer: &RefillTimer, ms: i32) -> bool {
        let mut pollfd = libc::pollfd {
            fd: timer.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll reads and writes one pollfd we own.
        let ready = unsafe { libc::poll(&mut pollfd, 1, ms) };
        ready == 1
    }

    #[test]
    fn an_armed_timer_fires_once_and_reading_it_early_does_not_block() {
        let mut timer = RefillTimer::new().unwrap();
        assert!(!timer.take_expiration().unwrap(), "not armed: no block");
        timer.arm(Duration::from_millis(300)).unwrap();
        assert!(!timer.take_expiration().unwrap(), "not yet");
        assert!(readable_within(&timer, 3000));
        assert!(timer.take_expiration().unwrap());
        assert!(!timer.take_expiration().unwrap(), "one shot");
        assert!(!readable_within(&timer, 30));
    }

    #[test]
    fn a_zero_duration_fires_at_once_and_disarm_cancels() {
        let mut timer = RefillTimer::new().unwrap();
        timer.arm(Duration::ZERO).unwrap();
        assert!(readable_within(&timer, 1000));
        // Disarming drops an expiration that was not read.
        timer.disarm().unwrap();
        assert!(!readable_within(&timer, 0));
        assert!(!timer.take_expiration().unwrap());
    }
}
