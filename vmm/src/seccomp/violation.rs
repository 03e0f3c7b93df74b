//! What happens when a thread makes a system call its filter does not
//! allow: the filter traps (SIGSYS), and this handler writes one line naming
//! the thread and the system call to stderr, then ends brique with
//! `EXIT_BAD_SYSCALL`, after the thread's return addresses (glibc's
//! `backtrace_symbols_fd`: `brique(+0x1234)`, which `addr2line -f -C -e
//! brique 0x1234` names). The handler only reads data prepared before any
//! filter was installed, formats on the stack and calls write, glibc's
//! backtrace (its unwinder loaded beforehand) and _exit.

use super::rules::{self, Syscall};
use super::{FilterKind, EXIT_BAD_SYSCALL};
use std::cell::Cell;
use std::fmt::Write as _;
use std::sync::OnceLock;

thread_local! {
    /// This thread's name and filter kind, for the violation message.
    static THREAD: Cell<(&'static str, &'static str)> = const { Cell::new(("unnamed", "none")) };
}

/// System call names by number, built before the first filter.
static NAMES: OnceLock<Vec<Syscall>> = OnceLock::new();

/// Records the calling thread's name and kind for the message.
pub(super) fn name_this_thread(kind: FilterKind) {
    let name: &'static str = match std::thread::current().name() {
        // One small string per thread brique starts; threads are few and
        // live as long as the microVM.
        Some(name) => Box::leak(name.to_owned().into_boxed_str()),
        None => "brique",
    };
    THREAD.with(|thread| thread.set((name, kind.key())));
}

/// The names messages use, without the handler (unit tests).
#[cfg(test)]
pub(super) fn install_names_for_tests() {
    NAMES.get_or_init(rules::known_syscalls);
}

extern "C" {
    // glibc's <execinfo.h> (not in the libc crate).
    fn backtrace(buffer: *mut *mut libc::c_void, size: libc::c_int) -> libc::c_int;
    fn backtrace_symbols_fd(buffer: *const *mut libc::c_void, size: libc::c_int, fd: libc::c_int);
}

/// Return addresses a violation report shows at most.
const BACKTRACE_DEPTH: usize = 48;

/// Installs the SIGSYS handler.
pub(super) fn install_handler() -> std::io::Result<()> {
    NAMES.get_or_init(rules::known_syscalls);
    // The first backtrace loads glibc's unwinder (libgcc_s), which opens
    // files: done here, before any filter, so the handler's need not.
    let mut warm_up = [std::ptr::null_mut(); 2];
    // SAFETY: backtrace writes at most 2 addresses into the 2-slot buffer.
    unsafe { backtrace(warm_up.as_mut_ptr(), 2) };
    vmm_sys_util::signal::register_signal_handler(libc::SIGSYS, on_sigsys)
        .map_err(|err| std::io::Error::from_raw_os_error(err.errno()))
}

/// The line a violation prints (without its newline).
pub(super) fn message(thread: &str, kind: &str, nr: i64, out: &mut impl std::fmt::Write) {
    let name = NAMES
        .get()
        .and_then(|names| names.iter().find(|syscall| syscall.nr == nr))
        .map(Syscall::short_name);
    let _ = match name {
        Some(name) => write!(
            out,
            "brique: seccomp: thread {thread} ({kind} filter) made system call {name} ({nr}), which its filter does not allow; exiting with status {EXIT_BAD_SYSCALL}"
        ),
        None => write!(
            out,
            "brique: seccomp: thread {thread} ({kind} filter) made system call {nr}, which its filter does not allow; exiting with status {EXIT_BAD_SYSCALL}"
        ),
    };
}

/// The system call number a SIGSYS from seccomp carries. In the kernel's
/// `siginfo_t`, after signo, errno and code (and padding to 8 bytes), the
/// `_sigsys` member holds the call address, then the system call number.
///
/// # Safety
/// `info` must point to the siginfo of a SIGSYS delivered by seccomp.
unsafe fn syscall_number(info: *const libc::siginfo_t) -> i64 {
    const SIGSYS_SYSCALL_OFFSET: usize = 16 + std::mem::size_of::<*const u8>();
    // SAFETY: per this function's contract the siginfo is a seccomp SIGSYS
    // one, whose union holds `_sigsys`; the offset lies inside siginfo_t.
    let nr = unsafe {
        std::ptr::read_unaligned(info.cast::<u8>().add(SIGSYS_SYSCALL_OFFSET).cast::<i32>())
    };
    i64::from(nr)
}

extern "C" fn on_sigsys(_: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // SAFETY: this handler is only installed for SIGSYS, which brique only
    // gets from its seccomp filters (SECCOMP_RET_TRAP).
    let nr = unsafe { syscall_number(info) };
    let (thread, kind) = THREAD.with(Cell::get);
    let mut line = StackLine::default();
    message(thread, kind, nr, &mut line);
    let _ = line.write_str("\n");
    let mut frames = [std::ptr::null_mut(); BACKTRACE_DEPTH];
    // SAFETY: write and _exit are async-signal-safe; the buffer is ours and
    // `len` bytes of it are initialised. backtrace writes at most
    // BACKTRACE_DEPTH addresses into `frames` (its unwinder was loaded
    // before any filter) and backtrace_symbols_fd writes that many to
    // stderr without allocating; the process ends right after.
    unsafe {
        libc::write(libc::STDERR_FILENO, line.bytes.as_ptr().cast(), line.len);
        let depth = backtrace(frames.as_mut_ptr(), BACKTRACE_DEPTH as libc::c_int);
        backtrace_symbols_fd(frames.as_ptr(), depth, libc::STDERR_FILENO);
        libc::_exit(EXIT_BAD_SYSCALL);
    }
}

/// A fixed buffer that formatting can write into without allocating;
/// what does not fit is dropped.
struct StackLine {
    bytes: [u8; 384],
    len: usize,
}

impl Default for StackLine {
    fn default() -> Self {
        StackLine {
            bytes: [0; 384],
            len: 0,
        }
    }
}

impl std::fmt::Write for StackLine {
    fn write_str(&mut self, text: &str) -> std::fmt::Result {
        let room = self.bytes.len() - self.len;
        let taken = text.len().min(room);
        self.bytes[self.len..self.len + taken].copy_from_slice(&text.as_bytes()[..taken]);
        self.len += taken;
        Ok(())
    }
}
