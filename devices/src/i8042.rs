//! The i8042 keyboard controller, as far as a Linux guest uses it: the
//! controller commands its driver sends while probing (self-test, command
//! byte, port tests), a keyboard that acknowledges its commands, and the
//! reset line: `reboot=k` pulses it with command 0xFE, which brique turns
//! into a clean VMM exit.
//!
//! Answering the probe (instead of ignoring it) saves a Linux guest the
//! ~1.5 s it otherwise spends timing out on "Can't read CTR".

use crate::bus::BusDevice;
use crate::EventFdTrigger;
use std::collections::VecDeque;
use vm_superio::Trigger;

/// First I/O port of the controller (data port); the command port is +4.
pub const I8042_PORT_BASE: u64 = 0x60;
/// Ports 0x60..=0x64.
pub const I8042_PORT_LEN: u64 = 5;
/// The keyboard's legacy ISA interrupt line.
pub const I8042_KBD_IRQ: u32 = 1;

const DATA_PORT: u64 = 0;
const COMMAND_PORT: u64 = 4;

/// Status register bits.
mod status {
    /// Output buffer full: a byte waits on the data port.
    pub const OBF: u8 = 1 << 0;
    /// System flag: set once the self-test passed.
    pub const SYS: u8 = 1 << 2;
    /// The last write went to the command port.
    pub const CMD: u8 = 1 << 3;
    /// Keyboard not inhibited (no keylock).
    pub const UNLOCKED: u8 = 1 << 4;
}

/// Controller command byte ("CTR") bits.
mod ctr {
    /// Keyboard interrupt enabled.
    pub const KBD_INT: u8 = 1 << 0;
    /// System flag.
    pub const SYS: u8 = 1 << 2;
    /// Keyboard clock disabled.
    pub const KBD_DISABLED: u8 = 1 << 4;
    /// Aux (mouse) clock disabled.
    pub const AUX_DISABLED: u8 = 1 << 5;
    /// Translate scan code set 2 to set 1.
    pub const TRANSLATE: u8 = 1 << 6;
}

/// Controller commands (command port).
mod command {
    pub const READ_CTR: u8 = 0x20;
    pub const WRITE_CTR: u8 = 0x60;
    pub const DISABLE_AUX: u8 = 0xa7;
    pub const ENABLE_AUX: u8 = 0xa8;
    pub const TEST_AUX: u8 = 0xa9;
    pub const SELF_TEST: u8 = 0xaa;
    pub const TEST_KBD: u8 = 0xab;
    pub const DISABLE_KBD: u8 = 0xad;
    pub const ENABLE_KBD: u8 = 0xae;
    pub const READ_OUTPUT_PORT: u8 = 0xd0;
    pub const WRITE_OUTPUT_PORT: u8 = 0xd1;
    pub const WRITE_KBD_BUFFER: u8 = 0xd2;
    pub const WRITE_AUX_BUFFER: u8 = 0xd3;
    pub const WRITE_AUX: u8 = 0xd4;
    pub const PULSE_RESET: u8 = 0xfe;
}

/// Keyboard commands and replies (data port).
mod kbd {
    pub const SET_LEDS: u8 = 0xed;
    pub const ECHO: u8 = 0xee;
    pub const IDENTIFY: u8 = 0xf2;
    pub const SET_TYPEMATIC: u8 = 0xf3;
    pub const RESET: u8 = 0xff;
    pub const ACK: u8 = 0xfa;
    pub const SELF_TEST_PASSED: u8 = 0xaa;
    /// MF2 keyboard id, with translation.
    pub const ID: [u8; 2] = [0xab, 0x41];
}

const SELF_TEST_OK: u8 = 0x55;
const PORT_TEST_OK: u8 = 0x00;
/// Output port: bit 0 is the (active-low) CPU reset line, bit 1 A20.
const OUTPUT_PORT_DEFAULT: u8 = 0x03;
/// Bytes the output queue holds; more are dropped (a real i8042 holds one).
const OUTPUT_QUEUE_MAX: usize = 16;

/// What the next data-port write means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum PendingWrite {
    /// A keyboard command.
    None,
    /// The new command byte.
    Ctr,
    /// The output port (bit 0 clear resets the CPU).
    OutputPort,
    /// A byte to return as if the keyboard sent it.
    KbdBuffer,
    /// A byte to return as if the mouse sent it.
    AuxBuffer,
    /// A byte for the mouse, which is absent.
    Aux,
    /// The parameter of a keyboard command.
    KbdParameter,
}

/// The i8042 on the port I/O bus.
#[derive(Debug)]
pub struct I8042 {
    ctr: u8,
    status: u8,
    output: VecDeque<u8>,
    pending: PendingWrite,
    reset_evt: EventFdTrigger,
    kbd_irq: Option<EventFdTrigger>,
    /// Keyboard bytes queued by the host and not yet read: Linux reads one
    /// byte per interrupt, so each read of one of them raises the next.
    keyboard_bytes: usize,
}

/// Ctrl-Alt-Del pressed and released, in scan code set 1 (what the guest
/// reads when the controller translates) and set 2 (untranslated).
const CTRL_ALT_DEL_SET1: [u8; 8] = [0x1d, 0x38, 0xe0, 0x53, 0xe0, 0xd3, 0xb8, 0x9d];
const CTRL_ALT_DEL_SET2: [u8; 11] = [
    0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14,
];

/// The controller's registers and output queue, as saved in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct I8042State {
    /// Controller configuration byte.
    pub ctr: u8,
    /// Status register (the output-buffer-full bit follows the queue).
    pub status: u8,
    /// Bytes waiting for the guest to read them.
    pub output: Vec<u8>,
    /// What the next data-port write means.
    pub pending: PendingWrite,
    /// How many of the queued bytes are keyboard input.
    pub keyboard_bytes: usize,
}

impl I8042 {
    /// The controller's state.
    pub fn save(&self) -> I8042State {
        I8042State {
            ctr: self.ctr,
            status: self.status,
            output: self.output.iter().copied().collect(),
            pending: self.pending,
            keyboard_bytes: self.keyboard_bytes,
        }
    }

    /// A controller in a saved state, wired as [`I8042::new`] does.
    pub fn restore(
        state: &I8042State,
        reset_evt: EventFdTrigger,
        kbd_irq: Option<EventFdTrigger>,
    ) -> Result<Self, crate::state::StateError> {
        if state.output.len() > OUTPUT_QUEUE_MAX || state.keyboard_bytes > state.output.len() {
            return Err(crate::state::StateError::invalid(
                "i8042",
                format!(
                    "{} queued bytes ({} from the keyboard), at most {OUTPUT_QUEUE_MAX}",
                    state.output.len(),
                    state.keyboard_bytes
                ),
            ));
        }
        let mut i8042 = Self::new(reset_evt, kbd_irq);
        i8042.ctr = state.ctr;
        i8042.status = state.status;
        i8042.output = state.output.iter().copied().collect();
        i8042.pending = state.pending;
        i8042.keyboard_bytes = state.keyboard_bytes;
        Ok(i8042)
    }

    /// A controller that signals `reset_evt` when the guest resets the CPU
    /// and raises `kbd_irq` (if given) when keyboard bytes are ready.
    pub fn new(reset_evt: EventFdTrigger, kbd_irq: Option<EventFdTrigger>) -> Self {
        Self {
            ctr: ctr::KBD_INT | ctr::SYS | ctr::AUX_DISABLED | ctr::TRANSLATE,
            status: status::UNLOCKED,
            output: VecDeque::with_capacity(OUTPUT_QUEUE_MAX),
            pending: PendingWrite::None,
            reset_evt,
            kbd_irq,
            keyboard_bytes: 0,
        }
    }

    /// Presses and releases Ctrl-Alt-Del, in the scan code set the guest
    /// configured. False when the output buffer has no room for the whole
    /// sequence (nothing is queued then).
    pub fn send_ctrl_alt_del(&mut self) -> bool {
        let codes: &[u8] = if self.ctr & ctr::TRANSLATE != 0 {
            &CTRL_ALT_DEL_SET1
        } else {
            &CTRL_ALT_DEL_SET2
        };
        if OUTPUT_QUEUE_MAX - self.output.len() < codes.len() {
            return false;
        }
        self.push_keyboard_bytes(codes) == codes.len()
    }

    /// Queues bytes as if the keyboard sent them (scan codes), raising the
    /// keyboard interrupt when enabled. Returns how many fit.
    pub fn push_keyboard_bytes(&mut self, bytes: &[u8]) -> usize {
        let room = OUTPUT_QUEUE_MAX - self.output.len();
        let taken = bytes.len().min(room);
        self.output.extend(&bytes[..taken]);
        if taken > 0 {
            self.keyboard_bytes = self.output.len();
            self.raise_kbd_irq();
        }
        taken
    }

    fn reply(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if self.output.len() < OUTPUT_QUEUE_MAX {
                self.output.push_back(byte);
            }
        }
    }

    fn raise_kbd_irq(&self) {
        if self.ctr & ctr::KBD_INT == 0 {
            return;
        }
        if let Some(irq) = &self.kbd_irq {
            if let Err(err) = irq.trigger() {
                log::warn!("i8042: cannot raise the keyboard interrupt: {err}");
            }
        }
    }

    fn reset_cpu(&self) {
        if let Err(err) = self.reset_evt.trigger() {
            log::error!("i8042: cannot signal the reset request: {err}");
        }
    }

    fn controller_command(&mut self, cmd: u8) {
        match cmd {
            command::READ_CTR => self.reply(&[self.ctr]),
            command::WRITE_CTR => self.pending = PendingWrite::Ctr,
            command::DISABLE_AUX => self.ctr |= ctr::AUX_DISABLED,
            command::ENABLE_AUX => self.ctr &= !ctr::AUX_DISABLED,
            command::TEST_AUX | command::TEST_KBD => self.reply(&[PORT_TEST_OK]),
            command::SELF_TEST => {
                self.status |= status::SYS;
                self.reply(&[SELF_TEST_OK]);
            }
            command::DISABLE_KBD => self.ctr |= ctr::KBD_DISABLED,
            command::ENABLE_KBD => self.ctr &= !ctr::KBD_DISABLED,
            command::READ_OUTPUT_PORT => self.reply(&[OUTPUT_PORT_DEFAULT]),
            command::WRITE_OUTPUT_PORT => self.pending = PendingWrite::OutputPort,
            command::WRITE_KBD_BUFFER => self.pending = PendingWrite::KbdBuffer,
            command::WRITE_AUX_BUFFER => self.pending = PendingWrite::AuxBuffer,
            command::WRITE_AUX => self.pending = PendingWrite::Aux,
            command::PULSE_RESET => self.reset_cpu(),
            _ => {}
        }
    }

    fn data_write(&mut self, value: u8) {
        match std::mem::replace(&mut self.pending, PendingWrite::None) {
            PendingWrite::Ctr => {
                self.ctr = value;
                if value & ctr::SYS != 0 {
                    self.status |= status::SYS;
                }
            }
            PendingWrite::OutputPort => {
                if value & 1 == 0 {
                    self.reset_cpu();
                }
            }
            PendingWrite::KbdBuffer => {
                self.reply(&[value]);
                self.raise_kbd_irq();
            }
            PendingWrite::AuxBuffer => self.reply(&[value]),
            // No mouse: the byte goes nowhere.
            PendingWrite::Aux => {}
            PendingWrite::KbdParameter => self.reply(&[kbd::ACK]),
            PendingWrite::None => self.keyboard_command(value),
        }
    }

    fn keyboard_command(&mut self, cmd: u8) {
        match cmd {
            kbd::RESET => self.reply(&[kbd::ACK, kbd::SELF_TEST_PASSED]),
            kbd::IDENTIFY => {
                self.reply(&[kbd::ACK]);
                self.reply(&kbd::ID);
            }
            kbd::ECHO => self.reply(&[kbd::ECHO]),
            kbd::SET_LEDS | kbd::SET_TYPEMATIC => {
                self.reply(&[kbd::ACK]);
                self.pending = PendingWrite::KbdParameter;
            }
            _ => self.reply(&[kbd::ACK]),
        }
        self.raise_kbd_irq();
    }

    fn read_status(&self) -> u8 {
        let obf = if self.output.is_empty() {
            0
        } else {
            status::OBF
        };
        self.status | obf
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match offset {
            DATA_PORT => {
                let byte = self.output.pop_front().unwrap_or(0);
                if self.keyboard_bytes > 0 {
                    self.keyboard_bytes = self.keyboard_bytes.min(self.output.len());
                    if self.keyboard_bytes > 0 {
                        self.raise_kbd_irq();
                    }
                }
                byte
            }
            COMMAND_PORT => self.read_status(),
            _ => 0,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let [value] = data else { return };
        match offset {
            DATA_PORT => {
                self.status &= !status::CMD;
                self.data_write(*value);
            }
            COMMAND_PORT => {
                self.status |= status::CMD;
                self.controller_command(*value);
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    struct Fixture {
        dev: I8042,
        reset: EventFd,
        irq: EventFd,
    }

    fn fixture() -> Fixture {
        let reset = EventFd::new(EFD_NONBLOCK).unwrap();
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let dev = I8042::new(
            EventFdTrigger::new(reset.try_clone().unwrap()),
            Some(EventFdTrigger::new(irq.try_clone().unwrap())),
        );
        Fixture { dev, reset, irq }
    }

    fn status(dev: &mut I8042) -> u8 {
        let mut byte = [0u8];
        dev.read(COMMAND_PORT, &mut byte);
        byte[0]
    }

    fn data(dev: &mut I8042) -> u8 {
        let mut byte = [0u8];
        dev.read(DATA_PORT, &mut byte);
        byte[0]
    }

    #[test]
    fn a_restored_controller_has_the_saved_state_and_refuses_impossible_ones() {
        let mut f = fixture();
        f.dev.write(COMMAND_PORT, &[command::WRITE_CTR]);
        f.dev.write(DATA_PORT, &[0x07]);
        assert!(f.dev.send_ctrl_alt_del());
        f.dev.write(DATA_PORT, &[kbd::SET_LEDS]);
        let saved = f.dev.save();
        let json = serde_json::to_string(&saved).unwrap();
        let saved: I8042State = serde_json::from_str(&json).unwrap();
        let restored = I8042::restore(
            &saved,
            EventFdTrigger::new(f.reset.try_clone().unwrap()),
            None,
        )
        .unwrap();
        assert_eq!(restored.save(), saved);
        assert_eq!(saved.pending, PendingWrite::KbdParameter);

        let mut overfull = saved.clone();
        overfull.output = vec![0; OUTPUT_QUEUE_MAX + 1];
        assert!(I8042::restore(&overfull, EventFdTrigger::new(f.irq), None).is_err());
        let mut phantom = saved;
        phantom.keyboard_bytes = phantom.output.len() + 1;
        let reset = EventFdTrigger::new(f.reset);
        assert!(I8042::restore(&phantom, reset, None).is_err());
    }

    #[test]
    fn ctrl_alt_del_is_one_interrupt_per_byte_in_the_translated_set() {
        let mut f = fixture();
        assert!(f.dev.send_ctrl_alt_del());
        assert_eq!(f.irq.read().unwrap(), 1);
        let mut got = Vec::new();
        while status(&mut f.dev) & status::OBF != 0 {
            got.push(data(&mut f.dev));
            let raised = f.irq.read().is_ok();
            assert_eq!(
                raised,
                got.len() < CTRL_ALT_DEL_SET1.len(),
                "after byte {}",
                got.len()
            );
        }
        assert_eq!(got, CTRL_ALT_DEL_SET1);
    }

    #[test]
    fn ctrl_alt_del_uses_set_2_without_translation_and_never_queues_half() {
        let mut f = fixture();
        f.dev.write(COMMAND_PORT, &[command::WRITE_CTR]);
        f.dev.write(DATA_PORT, &[ctr::KBD_INT | ctr::SYS]);
        assert!(f.dev.send_ctrl_alt_del());
        let mut got = Vec::new();
        while status(&mut f.dev) & status::OBF != 0 {
            got.push(data(&mut f.dev));
        }
        assert_eq!(got, CTRL_ALT_DEL_SET2);
        let filler = vec![0u8; OUTPUT_QUEUE_MAX - 4];
        f.dev.push_keyboard_bytes(&filler);
        assert!(!f.dev.send_ctrl_alt_del(), "no room: refused whole");
        assert_eq!(f.dev.output.len(), filler.len());
    }

    #[test]
    fn reset_command_on_command_port_signals_reset() {
        let mut f = fixture();
        f.dev.write(COMMAND_PORT, &[0x00]);
        f.dev.write(DATA_PORT, &[0xfe]);
        f.dev.write(COMMAND_PORT, &[0xfe, 0xfe]);
        assert!(
            f.reset.read().is_err(),
            "only a 1-byte 0xFE on port 0x64 resets"
        );
        f.dev.write(COMMAND_PORT, &[0xfe]);
        assert_eq!(f.reset.read().unwrap(), 1);
    }

    #[test]
    fn linux_probe_sequence_gets_answers() {
        let mut f = fixture();
        assert_eq!(status(&mut f.dev) & status::OBF, 0, "nothing to flush");
        assert_eq!(
            status(&mut f.dev) & status::UNLOCKED,
            status::UNLOCKED,
            "no keylock"
        );
        // Self-test.
        f.dev.write(COMMAND_PORT, &[command::SELF_TEST]);
        assert_eq!(status(&mut f.dev) & status::OBF, status::OBF);
        assert_eq!(data(&mut f.dev), SELF_TEST_OK);
        assert_eq!(
            status(&mut f.dev) & (status::OBF | status::SYS),
            status::SYS
        );
        // Read, change and write back the command byte.
        f.dev.write(COMMAND_PORT, &[command::READ_CTR]);
        let ctr = data(&mut f.dev);
        assert_eq!(ctr & ctr::KBD_INT, ctr::KBD_INT);
        f.dev.write(COMMAND_PORT, &[command::WRITE_CTR]);
        f.dev.write(DATA_PORT, &[ctr & !ctr::KBD_INT]);
        f.dev.write(COMMAND_PORT, &[command::READ_CTR]);
        assert_eq!(data(&mut f.dev), ctr & !ctr::KBD_INT);
        // Keyboard port test.
        f.dev.write(COMMAND_PORT, &[command::TEST_KBD]);
        assert_eq!(data(&mut f.dev), PORT_TEST_OK);
        assert!(f.reset.read().is_err());
    }

    #[test]
    fn keyboard_acknowledges_and_interrupts() {
        let mut f = fixture();
        f.dev.write(DATA_PORT, &[kbd::RESET]);
        assert_eq!(data(&mut f.dev), kbd::ACK);
        assert_eq!(data(&mut f.dev), kbd::SELF_TEST_PASSED);
        assert!(f.irq.read().unwrap() >= 1);
        // A command with a parameter: both bytes are acknowledged.
        f.dev.write(DATA_PORT, &[kbd::SET_LEDS]);
        f.dev.write(DATA_PORT, &[0x07]);
        assert_eq!((data(&mut f.dev), data(&mut f.dev)), (kbd::ACK, kbd::ACK));
        assert_eq!(status(&mut f.dev) & status::OBF, 0);
    }

    #[test]
    fn output_port_reset_line_and_injected_keys() {
        let mut f = fixture();
        f.dev.write(COMMAND_PORT, &[command::WRITE_OUTPUT_PORT]);
        f.dev.write(DATA_PORT, &[0x03]);
        assert!(f.reset.read().is_err(), "reset line not asserted");
        f.dev.write(COMMAND_PORT, &[command::WRITE_OUTPUT_PORT]);
        f.dev.write(DATA_PORT, &[0x02]);
        assert_eq!(f.reset.read().unwrap(), 1);

        let keys = [0x1du8; 20];
        assert_eq!(
            f.dev.push_keyboard_bytes(&keys),
            OUTPUT_QUEUE_MAX,
            "bounded queue"
        );
        assert_eq!(f.dev.push_keyboard_bytes(&keys), 0);
        assert_eq!(data(&mut f.dev), 0x1d);
    }

    #[test]
    fn keyboard_interrupt_follows_the_command_byte() {
        let mut f = fixture();
        f.dev.write(COMMAND_PORT, &[command::WRITE_CTR]);
        f.dev.write(DATA_PORT, &[ctr::SYS]);
        f.dev.push_keyboard_bytes(&[0x1c]);
        assert!(
            f.irq.read().is_err(),
            "interrupt disabled in the command byte"
        );
    }
}
