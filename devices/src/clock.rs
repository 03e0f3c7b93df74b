//! Reading the kernel's clocks by id (`CLOCK_MONOTONIC`,
//! `CLOCK_PROCESS_CPUTIME_ID`, ...), which `std::time` does not offer for
//! every clock.

use std::time::Duration;

/// The value of `clock` now (zero if the kernel cannot read it).
pub fn now(clock: libc::clockid_t) -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes the struct it is given.
    unsafe { libc::clock_gettime(clock, &mut now) };
    Duration::new(
        u64::try_from(now.tv_sec).unwrap_or_default(),
        u32::try_from(now.tv_nsec).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clocks_read_and_advance() {
        let first = now(libc::CLOCK_MONOTONIC);
        std::thread::sleep(Duration::from_millis(2));
        assert!(now(libc::CLOCK_MONOTONIC) >= first + Duration::from_millis(2));
        let cpu = now(libc::CLOCK_PROCESS_CPUTIME_ID);
        let mut spin = 0u64;
        while now(libc::CLOCK_PROCESS_CPUTIME_ID) == cpu {
            spin = std::hint::black_box(spin + 1);
        }
        assert!(now(libc::CLOCK_PROCESS_CPUTIME_ID) > cpu);
    }
}
