//! The i8042 keyboard controller, only as far as a guest uses it to reset
//! the machine: Linux's `reboot=k` writes 0xFE (pulse reset line) to port
//! 0x64, which brique turns into a clean VMM exit.

use crate::bus::BusDevice;
use crate::EventFdTrigger;
use vm_superio::I8042Device;

/// First I/O port of the controller (data port); the command port is +4.
pub const I8042_PORT_BASE: u64 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_PORT_LEN: u64 = 5;

/// The i8042 on the port I/O bus; its reset request writes `reset_evt`.
#[derive(Debug)]
pub struct I8042 {
    inner: I8042Device<EventFdTrigger>,
}

impl I8042 {
    /// A controller that signals `reset_evt` when the guest resets the CPU.
    pub fn new(reset_evt: EventFdTrigger) -> Self {
        Self {
            inner: I8042Device::new(reset_evt),
        }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = u8::try_from(offset).map_or(0, |offset| self.inner.read(offset));
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(offset), [value]) = (u8::try_from(offset), data) else {
            return;
        };
        if let Err(err) = self.inner.write(offset, *value) {
            log::error!("i8042: cannot signal the reset request: {err}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[test]
    fn reset_command_on_command_port_signals_reset() {
        let evt = EventFd::new(EFD_NONBLOCK).unwrap();
        let mut dev = I8042::new(EventFdTrigger::new(evt.try_clone().unwrap()));
        dev.write(4, &[0x00]);
        dev.write(0, &[0xfe]);
        dev.write(4, &[0xfe, 0xfe]);
        assert!(
            evt.read().is_err(),
            "only a 1-byte 0xFE on port 0x64 resets"
        );
        dev.write(4, &[0xfe]);
        assert_eq!(evt.read().unwrap(), 1);
    }
}
