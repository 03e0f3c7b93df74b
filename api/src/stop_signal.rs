//! SIGTERM and SIGINT ask brique to stop in order: the handler only makes
//! an eventfd readable (async-signal-safe), and the VMM thread, which waits
//! on it, writes a last metrics line, stops the microVM and exits 0, and the
//! API socket is removed.

use std::sync::atomic::{AtomicI32, Ordering};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// The eventfd the handler writes to (-1 until installed).
static STOP_FD: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_stop_signal(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    let fd = STOP_FD.load(Ordering::Relaxed);
    if fd >= 0 {
        let one: u64 = 1;
        // SAFETY: write(2) is async-signal-safe; `one` is a valid 8-byte
        // buffer and `fd` an eventfd kept open for the process's life.
        unsafe { libc::write(fd, (&one as *const u64).cast(), 8) };
    }
}

/// Installs the handlers; returns the eventfd that becomes readable when
/// SIGTERM or SIGINT arrives.
pub fn install() -> std::io::Result<&'static EventFd> {
    let evt: &'static EventFd = Box::leak(Box::new(EventFd::new(EFD_NONBLOCK)?));
    STOP_FD.store(std::os::fd::AsRawFd::as_raw_fd(evt), Ordering::Relaxed);
    for signal in [libc::SIGTERM, libc::SIGINT] {
        vmm_sys_util::signal::register_signal_handler(signal, on_stop_signal)
            .map_err(|err| std::io::Error::from_raw_os_error(err.errno()))?;
    }
    Ok(evt)
}
