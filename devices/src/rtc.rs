//! The PL031 real-time clock (aarch64 guests read the wall time from it),
//! built on `vm_superio::Rtc`, on the MMIO bus.

use crate::bus::BusDevice;
use crate::state::StateError;
use serde::{Deserialize, Serialize};
use vm_superio::rtc_pl031::{NoEvents, RtcState};
use vm_superio::Rtc;

/// A PL031's MMIO window.
pub const RTC_WINDOW_SIZE: u64 = 0x1000;

/// The PL031 on the MMIO bus.
#[derive(Debug, Default)]
pub struct Pl031 {
    rtc: Rtc<NoEvents>,
}

/// The clock's registers, as saved in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Pl031State {
    /// Load register.
    pub load: u32,
    /// Offset from the host's clock to the guest's.
    pub offset: i64,
    /// Match register.
    pub match_value: u32,
    /// Interrupt mask.
    pub interrupt_mask: u32,
    /// Raw interrupt status.
    pub raw_interrupt: u32,
}

impl Pl031 {
    /// A clock that reads the host's wall time.
    pub fn new() -> Self {
        Self::default()
    }

    /// Its registers.
    pub fn save(&self) -> Pl031State {
        let state = self.rtc.state();
        Pl031State {
            load: state.lr,
            offset: state.offset,
            match_value: state.mr,
            interrupt_mask: state.imsc,
            raw_interrupt: state.ris,
        }
    }

    /// A clock with saved registers.
    pub fn restore(state: &Pl031State) -> Result<Self, StateError> {
        if state.interrupt_mask > 1 || state.raw_interrupt > 1 {
            return Err(StateError::invalid(
                "pl031",
                "interrupt registers have one bit",
            ));
        }
        let saved = RtcState {
            lr: state.load,
            offset: state.offset,
            mr: state.match_value,
            imsc: state.interrupt_mask,
            ris: state.raw_interrupt,
        };
        Ok(Self {
            rtc: Rtc::from_state(&saved, NoEvents),
        })
    }
}

impl BusDevice for Pl031 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // Registers are 32-bit, read whole and aligned.
        match (<&mut [u8; 4]>::try_from(&mut *data), u16::try_from(offset)) {
            (Ok(word), Ok(offset)) if offset % 4 == 0 => self.rtc.read(offset, word),
            _ => data.fill(0),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(word), Ok(offset)) = (<&[u8; 4]>::try_from(data), u16::try_from(offset)) {
            if offset % 4 == 0 {
                self.rtc.write(offset, word);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(rtc: &mut Pl031, offset: u64) -> u32 {
        let mut word = [0u8; 4];
        rtc.read(offset, &mut word);
        u32::from_le_bytes(word)
    }

    #[test]
    fn the_clock_reads_the_wall_time_and_its_primecell_id() {
        let mut rtc = Pl031::new();
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs() as u32;
        assert!(read(&mut rtc, 0).abs_diff(now) <= 2, "RTCDR is the time");
        // AMBA peripheral and PrimeCell ids, which Linux probes.
        assert_eq!(read(&mut rtc, 0xfe0), 0x31);
        assert_eq!(read(&mut rtc, 0xff0), 0x0d);
        // Odd-sized accesses read zeros and change nothing.
        let mut byte = [0xffu8];
        rtc.read(0, &mut byte);
        assert_eq!(byte[0], 0);
    }

    #[test]
    fn a_set_clock_survives_a_restore() {
        let mut rtc = Pl031::new();
        rtc.write(8, &1_000_000u32.to_le_bytes()); // RTCLR: set the time
        let saved = rtc.save();
        let mut restored = Pl031::restore(&saved).unwrap();
        assert!(read(&mut restored, 0).abs_diff(1_000_000) <= 2);
        assert_eq!(restored.save(), saved);
        let bad = Pl031State {
            interrupt_mask: 7,
            ..saved
        };
        assert!(Pl031::restore(&bad).is_err());
    }
}
