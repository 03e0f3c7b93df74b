//! Where the guest console's output goes on the host: written through in
//! whole lines, not byte by byte. A UART hands the VMM one byte per guest
//! register write and asks for a flush after each; writing each byte out
//! would cost a host system call per character of every boot log. A line
//! is written when its newline comes; a partial line (a shell prompt) at
//! most [`PARTIAL_LINE_DELAY`] after its first byte: that byte arms a timer
//! (unless it is armed already, so once per burst of output, not per line),
//! and the device loop calls [`ConsoleSink::flush_partial_line`] when it
//! fires.

use std::io::{self, LineWriter, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::Duration;
use vmm_sys_util::timerfd::TimerFd;

/// How long a partial line waits for more before it is written out.
pub const PARTIAL_LINE_DELAY: Duration = Duration::from_millis(20);

/// The host writer behind the console, line-buffered, and the timer that
/// writes out partial lines.
pub struct ConsoleSink {
    out: Mutex<LineWriter<Box<dyn Write + Send>>>,
    /// Whether bytes after the last newline wait in the buffer.
    partial: AtomicBool,
    /// Whether the timer is armed for them.
    armed: AtomicBool,
    timer: Mutex<TimerFd>,
}

impl std::fmt::Debug for ConsoleSink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleSink")
            .field("partial", &self.partial)
            .field("armed", &self.armed)
            .finish_non_exhaustive()
    }
}

impl ConsoleSink {
    /// Output to `out`, whole lines at a time.
    pub fn new(out: Box<dyn Write + Send>) -> io::Result<ConsoleSink> {
        Ok(ConsoleSink {
            out: Mutex::new(LineWriter::new(out)),
            partial: AtomicBool::new(false),
            armed: AtomicBool::new(false),
            timer: Mutex::new(TimerFd::new().map_err(io::Error::from)?),
        })
    }

    /// Writes guest bytes: every complete line goes out now (a broken host
    /// writer must not stop the guest, so its errors are dropped).
    pub fn write_guest_bytes(&self, bytes: &[u8]) {
        let Some(&last) = bytes.last() else {
            return;
        };
        let _ = lock(&self.out).write_all(bytes);
        self.partial.store(last != b'\n', Ordering::Release);
    }

    /// Called where the UART asks for a flush: a partial line gets the
    /// timer armed (once), a complete one needs nothing.
    pub fn guest_flushed(&self) {
        if self.partial.load(Ordering::Acquire) && !self.armed.swap(true, Ordering::AcqRel) {
            if let Err(err) = lock(&self.timer).reset(PARTIAL_LINE_DELAY, None) {
                // Without the timer the line goes out now.
                log::debug!("console: partial line timer: {err}");
                self.armed.store(false, Ordering::Release);
                self.flush_now();
            }
        }
    }

    /// The timer fired: writes out the partial line.
    pub fn flush_partial_line(&self) {
        // The timer is readable, so this read does not block; it clears it.
        let _ = lock(&self.timer).wait();
        self.armed.store(false, Ordering::Release);
        self.flush_now();
    }

    /// Writes out everything buffered.
    pub fn flush_now(&self) {
        let _ = lock(&self.out).flush();
        self.partial.store(false, Ordering::Release);
    }
}

impl AsRawFd for ConsoleSink {
    /// The partial-line timer, for the device loop to watch.
    fn as_raw_fd(&self) -> RawFd {
        lock(&self.timer).as_raw_fd()
    }
}

impl Drop for ConsoleSink {
    fn drop(&mut self) {
        self.flush_now();
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A host writer that records each write it gets (one per system call
    /// a real one would make).
    #[derive(Clone, Default)]
    struct Writes(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().push(buf.to_vec());
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Writes {
        fn all(&self) -> Vec<Vec<u8>> {
            self.0.lock().unwrap().clone()
        }
    }

    /// Feeds `text` byte by byte, with a flush after each, as a UART does.
    fn type_in(sink: &ConsoleSink, text: &[u8]) {
        for byte in text {
            sink.write_guest_bytes(&[*byte]);
            sink.guest_flushed();
        }
    }

    fn timer_fired(sink: &ConsoleSink, within: Duration) -> bool {
        let mut poll = libc::pollfd {
            fd: sink.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: polls one descriptor we own, through a struct we own.
        let ready = unsafe { libc::poll(&mut poll, 1, within.as_millis() as i32) };
        ready == 1
    }

    #[test]
    fn whole_lines_go_out_in_one_write_each() {
        let writes = Writes::default();
        let sink = ConsoleSink::new(Box::new(writes.clone())).unwrap();
        type_in(&sink, b"Booting the kernel.\nMemory: 128M\n");
        assert_eq!(
            writes.all(),
            vec![
                b"Booting the kernel.\n".to_vec(),
                b"Memory: 128M\n".to_vec()
            ]
        );
        // The first byte armed the timer once for the whole burst; when it
        // fires there is nothing left to write.
        assert!(timer_fired(&sink, Duration::from_secs(2)));
        sink.flush_partial_line();
        assert_eq!(writes.all().len(), 2);
        assert!(!timer_fired(&sink, Duration::from_millis(60)), "armed once");
    }

    #[test]
    fn a_partial_line_goes_out_once_the_timer_fires() {
        let writes = Writes::default();
        let sink = ConsoleSink::new(Box::new(writes.clone())).unwrap();
        type_in(&sink, b"done\n~ # ");
        assert_eq!(writes.all(), vec![b"done\n".to_vec()], "the prompt waits");
        assert!(timer_fired(&sink, Duration::from_secs(2)));
        sink.flush_partial_line();
        assert_eq!(writes.all(), vec![b"done\n".to_vec(), b"~ # ".to_vec()]);
        // The next partial line arms the timer again.
        type_in(&sink, b"ls");
        assert!(timer_fired(&sink, Duration::from_secs(2)));
        sink.flush_partial_line();
        assert_eq!(writes.all().last().unwrap(), b"ls");
    }

    #[test]
    fn what_is_buffered_goes_out_when_the_sink_goes_away() {
        let writes = Writes::default();
        let sink = ConsoleSink::new(Box::new(writes.clone())).unwrap();
        type_in(&sink, b"reboot: Restarting system");
        drop(sink);
        assert_eq!(writes.all(), vec![b"reboot: Restarting system".to_vec()]);
    }
}
