//! The boot timer, Firecracker's pseudo device behind `--boot-timer`: a
//! guest that writes the byte 123 at its offset 0 (its init, once booted)
//! has brique log the wall and CPU time since the microVM was started.
//! Every other access is ignored.

use crate::bus::BusDevice;
use std::time::{Duration, Instant};

/// The value a guest writes to say it has booted.
pub const BOOT_DONE: u8 = 123;
/// Size of the device's MMIO window.
pub const BOOT_TIMER_LEN: u64 = 0x1000;

/// Times the guest's boot from when it was created.
#[derive(Debug)]
pub struct BootTimer {
    started: Instant,
    started_cpu: Duration,
    /// Wall time of the last boot-done write, for tests and metrics.
    last: Option<Duration>,
}

impl BootTimer {
    /// A timer started now.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            started_cpu: process_cpu_time(),
            last: None,
        }
    }

    /// The wall time from start to the guest's last boot-done write.
    pub fn boot_time(&self) -> Option<Duration> {
        self.last
    }
}

impl Default for BootTimer {
    fn default() -> Self {
        Self::new()
    }
}

impl BusDevice for BootTimer {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset != 0 || data != [BOOT_DONE] {
            return;
        }
        let wall = self.started.elapsed();
        let cpu = process_cpu_time().saturating_sub(self.started_cpu);
        self.last = Some(wall);
        log::info!(
            "Guest-boot-time = {:>6} us {} ms, {:>6} CPU us {} CPU ms",
            wall.as_micros(),
            wall.as_millis(),
            cpu.as_micros(),
            cpu.as_millis()
        );
    }
}

/// CPU time this process has used.
fn process_cpu_time() -> Duration {
    crate::clock::now(libc::CLOCK_PROCESS_CPUTIME_ID)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_boot_done_byte_at_offset_zero_stops_the_clock() {
        let mut timer = BootTimer::new();
        std::thread::sleep(Duration::from_millis(5));
        for (offset, data) in [(0, &[122u8][..]), (1, &[BOOT_DONE]), (0, &[BOOT_DONE, 0])] {
            timer.write(offset, data);
            assert_eq!(timer.boot_time(), None, "{offset} {data:?}");
        }
        timer.write(0, &[BOOT_DONE]);
        let boot = timer.boot_time().unwrap();
        assert!(boot >= Duration::from_millis(5), "{boot:?}");
        let mut read = [0xffu8; 4];
        timer.read(0, &mut read);
        assert_eq!(read, [0; 4]);
    }
}
