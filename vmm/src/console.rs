//! The host side of the serial console: brique's stdin feeds the guest's
//! UART (raw mode when stdin is a terminal), paced by the UART's FIFO.
//! Its output side writes out partial lines when their timer fires.

use brique_devices::console_sink::ConsoleSink;
use brique_devices::serial::SerialConsole;
use event_manager::{EventOps, Events, MutEventSubscriber};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::terminal::Terminal;

/// Puts the terminal on stdin in raw mode and restores it when dropped.
#[derive(Debug)]
pub struct RawTerminal(());

impl RawTerminal {
    /// Raw mode for stdin when it is a terminal; `None` otherwise.
    pub fn enter() -> Option<Self> {
        let stdin = std::io::stdin();
        // SAFETY: isatty only inspects the descriptor.
        if unsafe { libc::isatty(stdin.as_raw_fd()) } != 1 {
            return None;
        }
        match stdin.lock().set_raw_mode() {
            Ok(()) => Some(Self(())),
            Err(err) => {
                log::warn!("cannot put the terminal in raw mode: {err}");
                None
            }
        }
    }
}

impl Drop for RawTerminal {
    fn drop(&mut self) {
        if let Err(err) = std::io::stdin().lock().set_canon_mode() {
            log::warn!("cannot restore the terminal: {err}");
        }
    }
}

/// Writes out the console's partial line when its timer fires (see
/// `brique_devices::console_sink`).
#[derive(Debug)]
pub struct ConsoleFlusher {
    sink: Arc<ConsoleSink>,
}

impl ConsoleFlusher {
    /// Watches `sink`'s partial-line timer.
    pub fn new(sink: Arc<ConsoleSink>) -> Self {
        Self { sink }
    }
}

impl MutEventSubscriber for ConsoleFlusher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::new_raw(self.sink.as_raw_fd(), EventSet::IN)) {
            log::warn!("console: partial lines wait for their newline: {err:?}");
        }
    }

    fn process(&mut self, _: Events, _: &mut EventOps) {
        self.sink.flush_partial_line();
    }
}

/// Largest read from the input source at once.
const READ_CHUNK: usize = 64;

/// Moves bytes from an input descriptor into the UART. While the FIFO is
/// full it stops watching the input and waits for the guest to drain it.
#[derive(Debug)]
pub struct ConsoleInput {
    input: RawFd,
    serial: Arc<Mutex<SerialConsole>>,
    drained: EventFd,
    pending: Vec<u8>,
}

impl ConsoleInput {
    /// Forwards `input` to `serial`; `drained` is the UART's input-drained event.
    pub fn new(input: RawFd, serial: Arc<Mutex<SerialConsole>>, drained: EventFd) -> Self {
        Self {
            input,
            serial,
            drained,
            pending: Vec::new(),
        }
    }

    fn input_events(&self) -> Events {
        Events::new_raw(self.input, EventSet::IN)
    }

    /// Queues pending bytes; true when all of them fit.
    fn flush_pending(&mut self) -> bool {
        let mut serial = self.serial.lock().unwrap_or_else(|p| p.into_inner());
        match serial.queue_input(&self.pending) {
            Ok(queued) => {
                self.pending.drain(..queued);
            }
            Err(err) => {
                log::warn!("console input dropped: {err}");
                self.pending.clear();
            }
        }
        self.pending.is_empty()
    }

    fn read_input(&mut self, ops: &mut EventOps) {
        let mut buf = [0u8; READ_CHUNK];
        // SAFETY: reads at most buf.len() bytes into a buffer we own.
        let n = unsafe { libc::read(self.input, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            if n == 0 || std::io::Error::last_os_error().kind() != std::io::ErrorKind::WouldBlock {
                // End of input (or a broken one): stop watching it.
                let _ = ops.remove(self.input_events());
            }
            return;
        }
        self.pending.extend_from_slice(&buf[..n as usize]);
        if !self.flush_pending() {
            let _ = ops.remove(self.input_events());
            if let Err(err) = ops.add(Events::new(&self.drained, EventSet::IN)) {
                log::warn!("console input: cannot wait for the guest: {err:?}");
            }
        }
    }

    fn on_drained(&mut self, ops: &mut EventOps) {
        let _ = self.drained.read();
        if self.flush_pending() {
            let _ = ops.remove(Events::new(&self.drained, EventSet::IN));
            if let Err(err) = ops.add(self.input_events()) {
                log::warn!("console input: cannot resume: {err:?}");
            }
        }
    }
}

impl MutEventSubscriber for ConsoleInput {
    fn init(&mut self, ops: &mut EventOps) {
        // epoll refuses regular files and /dev/null: then there is no input.
        if let Err(err) = ops.add(self.input_events()) {
            log::debug!("console input not watched (not pollable): {err:?}");
        }
    }

    fn process(&mut self, events: Events, ops: &mut EventOps) {
        if events.fd() == self.input {
            if events.event_set().intersects(EventSet::IN) {
                self.read_input(ops);
            } else {
                let _ = ops.remove(self.input_events());
            }
        } else if events.fd() == self.drained.as_raw_fd() {
            self.on_drained(ops);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use brique_devices::serial::ConsoleOutput;
    use brique_devices::EventFdTrigger;
    use event_manager::{EventManager, SubscriberOps};
    use vmm_sys_util::eventfd::EFD_NONBLOCK;

    fn pipe() -> (RawFd, RawFd) {
        let mut fds = [0; 2];
        assert_eq!(
            // SAFETY: pipe2 fills the two-element array we pass.
            unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK) },
            0
        );
        (fds[0], fds[1])
    }

    #[test]
    fn input_waits_for_the_guest_when_the_fifo_is_full() {
        let drained = EventFd::new(EFD_NONBLOCK).unwrap();
        let serial = Arc::new(Mutex::new(SerialConsole::new(
            EventFdTrigger::new(EventFd::new(EFD_NONBLOCK).unwrap()),
            ConsoleOutput::new(
                Arc::new(ConsoleSink::new(Box::new(std::io::sink())).unwrap()),
                None,
            ),
            Some(EventFdTrigger::new(drained.try_clone().unwrap())),
        )));
        let capacity = serial.lock().unwrap().input_capacity();
        let (read_end, write_end) = pipe();
        let input = vec![b'a'; capacity + 10];
        // SAFETY: writes from a live buffer to our pipe.
        let written = unsafe { libc::write(write_end, input.as_ptr().cast(), input.len()) };
        assert_eq!(written as usize, input.len());

        let mut manager = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
        let forwarder = Arc::new(Mutex::new(ConsoleInput::new(
            read_end,
            serial.clone(),
            drained,
        )));
        manager.add_subscriber(forwarder.clone());
        for _ in 0..10 {
            manager.run_with_timeout(10).unwrap();
        }
        assert_eq!(serial.lock().unwrap().input_capacity(), 0, "fifo filled");
        assert!(
            !forwarder.lock().unwrap().pending.is_empty(),
            "rest kept, not dropped"
        );

        // The guest reads everything: the rest follows.
        {
            let mut serial = serial.lock().unwrap();
            let mut byte = [0u8];
            for _ in 0..capacity {
                brique_devices::bus::BusDevice::read(&mut *serial, 0, &mut byte);
            }
        }
        for _ in 0..10 {
            manager.run_with_timeout(10).unwrap();
        }
        assert_eq!(serial.lock().unwrap().input_capacity(), capacity - 10);
        assert!(forwarder.lock().unwrap().pending.is_empty());
        // SAFETY: closing descriptors this test opened.
        unsafe {
            libc::close(read_end);
            libc::close(write_end);
        }
    }
}
