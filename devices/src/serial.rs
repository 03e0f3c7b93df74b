//! The 16550 UART console (COM1, port 0x3f8, IRQ 4), built on
//! `vm_superio::Serial`. Guest output goes to a host writer (brique's stdout)
//! through a [`ConsoleOutput`] that also watches for the guest kernel's panic
//! banner (whole lines at a time through a `ConsoleSink`); host input is
//! queued into the UART's receive FIFO.

use crate::bus::BusDevice;
use crate::console_sink::ConsoleSink;
use crate::state::StateError;
use crate::EventFdTrigger;
use serde::{Deserialize, Serialize};
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use vm_superio::serial::{SerialEvents, SerialState};
use vm_superio::Serial;

/// COM1's first I/O port.
pub const COM1_PORT_BASE: u64 = 0x3f8;
/// A 16550 decodes eight ports.
pub const COM1_PORT_LEN: u64 = 8;
/// COM1's legacy ISA interrupt line.
pub const COM1_IRQ: u32 = 4;

/// Errors from the serial console.
#[derive(Debug, thiserror::Error)]
pub enum SerialError {
    /// Raising the UART interrupt failed.
    #[error("cannot raise the serial interrupt: {0}")]
    Interrupt(io::Error),
}

/// Interrupt Enable Register: received data available, transmitter empty.
const IER_RECEIVED_DATA: u8 = 0x01;
const IER_TRANSMITTER_EMPTY: u8 = 0x02;
/// Interrupt Identification Register: the same two causes.
const IIR_TRANSMITTER_EMPTY: u8 = 0x02;
const IIR_RECEIVED_DATA: u8 = 0x04;

const PANIC_START: &[u8] = b"Kernel panic - not syncing";
const PANIC_END: &[u8] = b"---[ end Kernel panic";
/// Longest console line the panic watcher keeps; the rest is not scanned.
const MAX_WATCHED_LINE: usize = 512;

/// What the panic watcher saw: `None` until the guest kernel panicked.
#[derive(Debug, Default, Clone)]
pub struct GuestPanicReport(Arc<Mutex<Option<String>>>);

impl GuestPanicReport {
    /// The panic line, once the guest kernel printed one.
    pub fn message(&self) -> Option<String> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    fn record(&self, message: String) {
        *self
            .0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(message);
    }
}

/// Scans console output, line by line, for Linux's panic banner. The panic
/// line is recorded as soon as it appears (so a `panic=N` reboot that
/// follows is reported as the panic it is); `panic_evt` is signalled when
/// the kernel ends its report with `---[ end Kernel panic` (printed when it
/// will hang rather than reboot), so the VMM stops instead of waiting for a
/// guest that will never recover.
#[derive(Debug)]
pub struct PanicWatcher {
    line: Vec<u8>,
    panic_line: Option<String>,
    report: GuestPanicReport,
    panic_evt: EventFdTrigger,
}

impl PanicWatcher {
    /// A watcher that fills `report` and signals `panic_evt`.
    pub fn new(report: GuestPanicReport, panic_evt: EventFdTrigger) -> Self {
        Self {
            line: Vec::with_capacity(128),
            panic_line: None,
            report,
            panic_evt,
        }
    }

    /// Feeds console bytes.
    pub fn feed(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            if byte == b'\n' {
                self.end_of_line();
            } else if self.line.len() < MAX_WATCHED_LINE {
                self.line.push(byte);
            }
        }
    }

    fn end_of_line(&mut self) {
        if self.panic_line.is_none() {
            if let Some(start) = find(&self.line, PANIC_START) {
                let text = String::from_utf8_lossy(&self.line[start..]);
                let text = text.trim_end().to_owned();
                self.report.record(text.clone());
                self.panic_line = Some(text);
            }
        }
        if find(&self.line, PANIC_END).is_some() {
            if self.panic_line.is_none() {
                self.report.record("Kernel panic".to_owned());
                self.panic_line = Some("Kernel panic".to_owned());
            }
            if let Err(err) = vm_superio::Trigger::trigger(&self.panic_evt) {
                log::error!("serial: cannot signal the guest panic: {err}");
            }
        }
        self.line.clear();
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}

/// Where the UART's output goes: the host's [`ConsoleSink`], plus an
/// optional watcher.
pub struct ConsoleOutput {
    sink: Arc<ConsoleSink>,
    watcher: Option<PanicWatcher>,
}

impl std::fmt::Debug for ConsoleOutput {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleOutput")
            .field("watcher", &self.watcher)
            .finish_non_exhaustive()
    }
}

impl ConsoleOutput {
    /// Output to `sink`, whole lines at a time (the device loop writes out
    /// partial lines when the sink's timer fires), scanned by `watcher`
    /// when given.
    pub fn new(sink: Arc<ConsoleSink>, watcher: Option<PanicWatcher>) -> Self {
        Self { sink, watcher }
    }
}

impl Write for ConsoleOutput {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(watcher) = &mut self.watcher {
            watcher.feed(buf);
        }
        self.sink.write_guest_bytes(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.sink.guest_flushed();
        Ok(())
    }
}

/// Signals when the guest has read every queued input byte, so that a host
/// input source paused on a full FIFO can resume.
#[derive(Debug)]
pub struct InputDrained(Option<EventFdTrigger>);

impl SerialEvents for InputDrained {
    fn buffer_read(&self) {}
    fn out_byte(&self) {}
    fn tx_lost_byte(&self) {}
    fn in_buffer_empty(&self) {
        if let Some(evt) = &self.0 {
            if let Err(err) = vm_superio::Trigger::trigger(evt) {
                log::warn!("serial: cannot signal drained input: {err}");
            }
        }
    }
}

/// The COM1 UART on the port I/O bus.
#[derive(Debug)]
pub struct SerialConsole {
    uart: Serial<EventFdTrigger, InputDrained, ConsoleOutput>,
}

/// The UART's registers and receive FIFO, as saved in a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SerialConsoleState {
    /// Divisor latch, low and high bytes.
    pub baud_divisor: [u8; 2],
    /// Interrupt Enable Register.
    pub interrupt_enable: u8,
    /// Interrupt Identification Register.
    pub interrupt_identification: u8,
    /// Line Control Register.
    pub line_control: u8,
    /// Line Status Register.
    pub line_status: u8,
    /// Modem Control Register.
    pub modem_control: u8,
    /// Modem Status Register.
    pub modem_status: u8,
    /// Scratch Register.
    pub scratch: u8,
    /// Bytes in the receive FIFO, not yet read by the guest.
    pub receive_fifo: Vec<u8>,
}

impl SerialConsole {
    /// The UART's state.
    pub fn save(&self) -> SerialConsoleState {
        let state = self.uart.state();
        SerialConsoleState {
            baud_divisor: [state.baud_divisor_low, state.baud_divisor_high],
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            receive_fifo: state.in_buffer,
        }
    }

    /// A UART in a saved state, wired as [`SerialConsole::new`] does; an
    /// interrupt the saved state has pending is raised again.
    pub fn restore(
        state: &SerialConsoleState,
        interrupt: EventFdTrigger,
        output: ConsoleOutput,
        input_drained: Option<EventFdTrigger>,
    ) -> Result<Self, StateError> {
        let saved = SerialState {
            baud_divisor_low: state.baud_divisor[0],
            baud_divisor_high: state.baud_divisor[1],
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.receive_fifo.clone(),
        };
        let uart = Serial::from_state(&saved, interrupt, InputDrained(input_drained), output)
            .map_err(|err| StateError::invalid("serial", format!("{err:?}")))?;
        Ok(Self { uart })
    }

    /// Whether the UART has an enabled interrupt pending (received data or
    /// transmitter empty) that the guest has not acknowledged.
    pub fn interrupt_pending(&self) -> bool {
        let state = self.uart.state();
        let enabled = state.interrupt_enable;
        let pending = state.interrupt_identification;
        (enabled & IER_RECEIVED_DATA != 0 && pending & IIR_RECEIVED_DATA != 0)
            || (enabled & IER_TRANSMITTER_EMPTY != 0 && pending & IIR_TRANSMITTER_EMPTY != 0)
    }

    /// Raises the interrupt again if one is pending: after a restore, once
    /// the vCPUs and the interrupt controller have their saved state (an
    /// interrupt raised while they load is overwritten by them, and a guest
    /// waiting for received data would wait forever).
    pub fn raise_pending_interrupt(&self) -> Result<(), SerialError> {
        if self.interrupt_pending() {
            vm_superio::Trigger::trigger(self.uart.interrupt_evt())
                .map_err(SerialError::Interrupt)?;
        }
        Ok(())
    }

    /// A UART raising `interrupt`, writing to `output`, and signalling
    /// `input_drained` (when given) once the guest emptied its receive FIFO.
    pub fn new(
        interrupt: EventFdTrigger,
        output: ConsoleOutput,
        input_drained: Option<EventFdTrigger>,
    ) -> Self {
        Self {
            uart: Serial::with_events(interrupt, InputDrained(input_drained), output),
        }
    }

    /// Queues host input for the guest; returns how many bytes fit in the
    /// receive FIFO (the rest must be offered again later).
    pub fn queue_input(&mut self, input: &[u8]) -> Result<usize, SerialError> {
        match self.uart.enqueue_raw_bytes(input) {
            Ok(queued) => Ok(queued),
            Err(vm_superio::serial::Error::FullFifo) => Ok(0),
            Err(vm_superio::serial::Error::Trigger(err)) => Err(SerialError::Interrupt(err)),
            Err(vm_superio::serial::Error::IOError(err)) => Err(SerialError::Interrupt(err)),
        }
    }

    /// Room left in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.uart.fifo_capacity()
    }
}

impl BusDevice for SerialConsole {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match (u8::try_from(offset), data.len()) {
            (Ok(offset), 1) => self.uart.read(offset),
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(offset), [value]) = (u8::try_from(offset), data) else {
            return;
        };
        if let Err(err) = self.uart.write(offset, *value) {
            log::warn!("serial: write to register {offset} failed: {err:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

    #[derive(Clone, Default)]
    struct SharedBuffer(Arc<Mutex<Vec<u8>>>);
    impl Write for SharedBuffer {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    fn evt() -> EventFd {
        EventFd::new(EFD_NONBLOCK).unwrap()
    }

    fn sink(out: impl Write + Send + 'static) -> Arc<ConsoleSink> {
        Arc::new(ConsoleSink::new(Box::new(out)).unwrap())
    }

    #[test]
    fn guest_output_reaches_the_host_writer() {
        let out = SharedBuffer::default();
        let irq = evt();
        let mut console = SerialConsole::new(
            EventFdTrigger::new(irq.try_clone().unwrap()),
            ConsoleOutput::new(sink(out.clone()), None),
            None,
        );
        for byte in b"hi\n" {
            console.write(0, &[*byte]);
        }
        assert_eq!(out.0.lock().unwrap().as_slice(), b"hi\n");
    }

    #[test]
    fn host_input_is_readable_by_the_guest_and_raises_an_interrupt() {
        let irq = evt();
        let drained = evt();
        let mut console = SerialConsole::new(
            EventFdTrigger::new(irq.try_clone().unwrap()),
            ConsoleOutput::new(sink(io::sink()), None),
            Some(EventFdTrigger::new(drained.try_clone().unwrap())),
        );
        // Enable the "received data available" interrupt (IER bit 0).
        console.write(1, &[0x01]);
        assert_eq!(console.queue_input(b"ok").unwrap(), 2);
        assert!(irq.read().unwrap() >= 1);
        let mut lsr = [0u8];
        console.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 1, "data ready");
        let mut byte = [0u8];
        console.read(0, &mut byte);
        assert_eq!(byte[0], b'o');
        assert!(drained.read().is_err(), "one byte still queued");
        console.read(0, &mut byte);
        assert_eq!(byte[0], b'k');
        assert_eq!(drained.read().unwrap(), 1, "drained signalled");
        console.read(5, &mut lsr);
        assert_eq!(lsr[0] & 1, 0, "fifo drained");
    }

    #[test]
    fn a_restored_uart_has_the_saved_registers_and_unread_input() {
        let irq = evt();
        let mut console = SerialConsole::new(
            EventFdTrigger::new(irq.try_clone().unwrap()),
            ConsoleOutput::new(sink(io::sink()), None),
            None,
        );
        console.write(3, &[0x83]); // DLAB on
        console.write(0, &[0x0c]); // divisor 12
        console.write(3, &[0x03]); // 8N1, DLAB off
        console.write(1, &[0x01]); // RX interrupt on
        console.write(7, &[0x5a]); // scratch
        console.queue_input(b"ls\n").unwrap();
        let saved = console.save();
        assert_eq!(saved.receive_fifo, b"ls\n");
        let json = serde_json::to_string(&saved).unwrap();
        let saved: SerialConsoleState = serde_json::from_str(&json).unwrap();

        let new_irq = evt();
        let mut restored = SerialConsole::restore(
            &saved,
            EventFdTrigger::new(new_irq.try_clone().unwrap()),
            ConsoleOutput::new(sink(io::sink()), None),
            None,
        )
        .unwrap();
        assert_eq!(restored.save(), saved);
        assert!(
            new_irq.read().unwrap() >= 1,
            "pending input raises the interrupt again"
        );
        let mut byte = [0u8];
        // Raised at restore, that interrupt may be lost to the interrupt
        // controller's own restore: the machine raises it again later.
        assert!(restored.interrupt_pending());
        restored.raise_pending_interrupt().unwrap();
        assert_eq!(new_irq.read().unwrap(), 1, "raised again");
        restored.read(7, &mut byte);
        assert_eq!(byte[0], 0x5a);
        restored.read(0, &mut byte);
        assert_eq!(byte[0], b'l');
        restored.read(0, &mut byte);
        restored.read(0, &mut byte);
        assert!(!restored.interrupt_pending(), "input read: nothing pending");
        restored.raise_pending_interrupt().unwrap();
        assert!(new_irq.read().is_err(), "nothing raised");

        let mut overfull = saved;
        overfull.receive_fifo = vec![b'x'; 4096];
        assert!(SerialConsole::restore(
            &overfull,
            EventFdTrigger::new(evt()),
            ConsoleOutput::new(sink(io::sink()), None),
            None,
        )
        .is_err());
    }

    #[test]
    fn full_fifo_takes_nothing_more() {
        let mut console = SerialConsole::new(
            EventFdTrigger::new(evt()),
            ConsoleOutput::new(sink(io::sink()), None),
            None,
        );
        let capacity = console.input_capacity();
        assert!(capacity > 0);
        let big = vec![b'x'; capacity + 10];
        assert_eq!(console.queue_input(&big).unwrap(), capacity);
        assert_eq!(console.queue_input(b"y").unwrap(), 0);
    }

    #[test]
    fn panic_banner_is_reported_once_the_report_ends() {
        let panic_evt = evt();
        let report = GuestPanicReport::default();
        let mut watcher = PanicWatcher::new(
            report.clone(),
            EventFdTrigger::new(panic_evt.try_clone().unwrap()),
        );
        watcher.feed(b"[    1.0] Run /init as init process\n");
        watcher.feed(b"[    1.2] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100\r\n");
        watcher.feed(b"[    1.2] CPU: 0 PID: 1 Comm: init\n");
        assert_eq!(
            report.message().as_deref(),
            Some("Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100"),
            "recorded at once: a panic=N reboot may follow instead of the end line"
        );
        assert!(
            panic_evt.read().is_err(),
            "not signalled before the report ends"
        );
        watcher
            .feed(b"[    1.3] ---[ end Kernel panic - not syncing: Attempted to kill init! ]---\n");
        assert_eq!(
            report.message().as_deref(),
            Some("Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100")
        );
        assert_eq!(panic_evt.read().unwrap(), 1);
    }

    #[test]
    fn ordinary_output_and_overlong_lines_are_not_a_panic() {
        let panic_evt = evt();
        let report = GuestPanicReport::default();
        let mut watcher = PanicWatcher::new(
            report.clone(),
            EventFdTrigger::new(panic_evt.try_clone().unwrap()),
        );
        let mut long_line = vec![b'a'; 4 * MAX_WATCHED_LINE];
        long_line.extend_from_slice(b"---[ end Kernel panic\n");
        watcher.feed(&long_line);
        watcher.feed(b"Kernel panic is a phrase, not a panic\n");
        assert!(report.message().is_none());
        assert!(panic_evt.read().is_err());
    }
}
