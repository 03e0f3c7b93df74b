//! What each kind of thread may call: the allow-lists behind the built-in
//! filters. The lists hold what the threads were seen to call (strace of
//! the test suites) plus what their error and exit paths call; the
//! architecture adds its own system calls and KVM ioctls
//! (`arch::seccomp`).

use super::ioctls;
use super::FilterKind;
use crate::arch;
use seccompiler::{BackendError, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompRule};
use std::collections::{BTreeMap, BTreeSet};

/// A system call: its number on this host and its name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Syscall {
    pub nr: i64,
    pub name: &'static str,
}

/// `Syscall` for libc's `SYS_name` constant.
macro_rules! syscall {
    ($sys:ident) => {
        $crate::seccomp::Syscall {
            nr: libc::$sys as i64,
            name: stringify!($sys),
        }
    };
}
pub(crate) use syscall;

impl Syscall {
    /// The name without libc's `SYS_` prefix.
    pub fn short_name(&self) -> &'static str {
        self.name.strip_prefix("SYS_").unwrap_or(self.name)
    }
}

/// Every thread: memory, signals, time, futexes, logging, exit.
const EVERY_THREAD: &[Syscall] = &[
    syscall!(SYS_brk),
    syscall!(SYS_clock_gettime),
    syscall!(SYS_clock_nanosleep),
    syscall!(SYS_close),
    syscall!(SYS_exit),
    syscall!(SYS_exit_group),
    syscall!(SYS_futex),
    syscall!(SYS_getpid),
    syscall!(SYS_getrandom),
    syscall!(SYS_gettid),
    syscall!(SYS_madvise),
    syscall!(SYS_mremap),
    syscall!(SYS_munmap),
    syscall!(SYS_nanosleep),
    syscall!(SYS_restart_syscall),
    syscall!(SYS_rt_sigprocmask),
    syscall!(SYS_rt_sigreturn),
    syscall!(SYS_sched_getaffinity),
    syscall!(SYS_sched_yield),
    syscall!(SYS_sigaltstack),
    syscall!(SYS_write),
];

/// The VMM thread: builds the VM (files, eventfds, KVM, taps), saves and
/// restores it, starts the other threads, and waits for events.
const VMM: &[Syscall] = &[
    syscall!(SYS_dup),
    syscall!(SYS_dup3),
    syscall!(SYS_epoll_create1),
    syscall!(SYS_epoll_ctl),
    syscall!(SYS_epoll_pwait),
    syscall!(SYS_eventfd2),
    syscall!(SYS_fallocate),
    syscall!(SYS_fcntl),
    syscall!(SYS_fdatasync),
    syscall!(SYS_fstat),
    syscall!(SYS_fsync),
    syscall!(SYS_ftruncate),
    syscall!(SYS_lseek),
    syscall!(SYS_newfstatat),
    syscall!(SYS_openat),
    syscall!(SYS_pipe2),
    syscall!(SYS_ppoll),
    syscall!(SYS_prlimit64),
    syscall!(SYS_pread64),
    syscall!(SYS_pwrite64),
    syscall!(SYS_read),
    syscall!(SYS_readv),
    syscall!(SYS_renameat),
    // vsock's listening socket (the socket itself: see `allowed`).
    syscall!(SYS_bind),
    syscall!(SYS_listen),
    syscall!(SYS_statx),
    syscall!(SYS_sysinfo),
    syscall!(SYS_timerfd_create),
    syscall!(SYS_unlinkat),
    syscall!(SYS_writev),
];

/// The real-time signals glibc keeps for its threads (SIGCANCEL = 32,
/// SIGSETXID = 33), below the SIGRTMIN it gives programs.
const GLIBC_THREAD_SIGNALS: [u64; 2] = [32, 33];

/// What a new thread calls before its own filter is in (glibc and std's
/// thread start).
const THREAD_START: &[Syscall] = &[syscall!(SYS_rseq), syscall!(SYS_set_robust_list)];

/// The API server: accepts connections, reads requests, writes answers and
/// wakes the VMM thread through an eventfd.
const API: &[Syscall] = &[
    syscall!(SYS_accept4),
    syscall!(SYS_epoll_ctl),
    syscall!(SYS_epoll_pwait),
    syscall!(SYS_fcntl),
    syscall!(SYS_read),
    syscall!(SYS_recvfrom),
    syscall!(SYS_sendto),
    syscall!(SYS_shutdown),
];

/// A vCPU: KVM_RUN and its exits (serial output, device registers, which
/// may activate a device and signal its eventfds).
const VCPU: &[Syscall] = &[
    syscall!(SYS_eventfd2),
    syscall!(SYS_fcntl),
    syscall!(SYS_read),
    // The console's partial-line timer (brique_devices::console_sink).
    syscall!(SYS_timerfd_settime),
];

/// The device event loop: block, net and vsock I/O, console input,
/// interrupts. vsock accepts host connections on its socket and connects
/// guest connections to `<uds_path>_<port>` (Unix sockets only: see
/// [`allowed`]).
const DEVICES: &[Syscall] = &[
    syscall!(SYS_accept4),
    syscall!(SYS_connect),
    // std reads and writes sockets with recv and send (MSG_NOSIGNAL).
    syscall!(SYS_recvfrom),
    syscall!(SYS_sendto),
    syscall!(SYS_shutdown),
    // Rate limiters re-arm their refill timers (brique_devices::rate_limiter).
    syscall!(SYS_timerfd_settime),
    syscall!(SYS_epoll_ctl),
    syscall!(SYS_epoll_pwait),
    syscall!(SYS_fallocate),
    syscall!(SYS_fcntl),
    syscall!(SYS_fdatasync),
    syscall!(SYS_fsync),
    syscall!(SYS_lseek),
    syscall!(SYS_pread64),
    syscall!(SYS_preadv),
    syscall!(SYS_pwrite64),
    syscall!(SYS_pwritev),
    syscall!(SYS_read),
    syscall!(SYS_readv),
    syscall!(SYS_writev),
];

/// The guest-signal forwarder waits on a channel (futexes); it reads and
/// lets go of the guest's reset and panic eventfds.
const SIGNALS: &[Syscall] = &[syscall!(SYS_read), syscall!(SYS_fcntl)];

/// The allow-list of `kind`, as seccompiler rules by system call number.
pub fn allowed(kind: FilterKind) -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
    let mut rules = Rules::default();
    rules.always(EVERY_THREAD);
    rules.always(arch::seccomp::every_thread());
    // Memory may be mapped and protected, never made executable.
    rules.when(syscall!(SYS_mmap), vec![no_exec(2)?]);
    rules.when(syscall!(SYS_mprotect), vec![no_exec(2)?]);
    // abort() (panic = "abort") raises SIGABRT, resetting its handler first.
    rules.when(syscall!(SYS_tgkill), vec![arg_eq(2, libc::SIGABRT as u64)?]);
    rules.when(
        syscall!(SYS_rt_sigaction),
        vec![arg_eq(0, libc::SIGABRT as u64)?],
    );
    // Sockets are Unix sockets: the API's and vsock's (the VMM thread binds
    // vsock's listener, the device loop connects to host listeners).
    let unix_sockets = || arg_eq(0, libc::AF_UNIX as u64);
    match kind {
        FilterKind::Vmm => {
            rules.always(VMM);
            rules.when(syscall!(SYS_socket), vec![unix_sockets()?]);
            rules.always(arch::seccomp::vmm_thread());
            rules.ioctls(&ioctls::vmm());
            // The threads the VMM thread starts inherit its filter, and the
            // kernel applies every filter a thread has: what they do, their
            // start (before their own filter is in) included, must pass here
            // too. Their own filters then narrow each of them down.
            rules.always(VCPU);
            rules.always(DEVICES);
            rules.always(SIGNALS);
            rules.always(arch::seccomp::waiting_threads());
            rules.ioctls(&ioctls::vcpu());
            rules.always(THREAD_START);
            rules.when(
                syscall!(SYS_prctl),
                vec![
                    arg_eq(0, libc::PR_SET_NAME as u64)?,
                    arg_eq(0, libc::PR_SET_NO_NEW_PRIVS as u64)?,
                ],
            );
            rules.when(
                syscall!(SYS_seccomp),
                vec![arg_eq(0, libc::SECCOMP_SET_MODE_FILTER as u64)?],
            );
            // Threads only, never a new process. clone3 passes this list
            // so that the ENOSYS filter's answer is the one that counts
            // (the kernel takes the strictest of a thread's filters, and a
            // trap here would beat it); glibc then falls back to clone.
            rules.always(&[syscall!(SYS_clone3)]);
            rules.when(
                syscall!(SYS_clone),
                vec![masked_eq(0, libc::CLONE_THREAD as u64)?],
            );
            // Kicking vCPUs out of KVM_RUN, and the vCPU kick handler.
            let kick = crate::vcpu::kick_signal() as u64;
            rules.when(syscall!(SYS_tgkill), vec![arg_eq(2, kick)?]);
            rules.when(syscall!(SYS_rt_sigaction), vec![arg_eq(0, kick)?]);
            // glibc installs its own thread signals' handlers (SIGCANCEL,
            // SIGSETXID: the two below SIGRTMIN) when it starts the first
            // thread, which may come after this filter.
            for internal in GLIBC_THREAD_SIGNALS {
                rules.when(syscall!(SYS_rt_sigaction), vec![arg_eq(0, internal)?]);
            }
        }
        FilterKind::Api => {
            rules.always(API);
            rules.always(arch::seccomp::waiting_threads());
            rules.ioctls(&ioctls::api());
        }
        FilterKind::Vcpu => {
            rules.always(VCPU);
            rules.ioctls(&ioctls::vcpu());
        }
        FilterKind::Devices => {
            rules.always(DEVICES);
            rules.always(arch::seccomp::waiting_threads());
            rules.when(syscall!(SYS_socket), vec![unix_sockets()?]);
            rules.ioctls(&ioctls::devices());
        }
        FilterKind::Signals => rules.always(SIGNALS),
    }
    rules.finish()
}

/// System calls that answer ENOSYS instead of trapping: clone3, whose
/// flags live in memory where a filter cannot read them, so that glibc
/// starts threads with clone, whose flags the VMM thread's filter checks.
pub fn refused_with_enosys(kind: FilterKind) -> BTreeMap<i64, Vec<SeccompRule>> {
    let mut refused = BTreeMap::new();
    if kind == FilterKind::Vmm {
        refused.insert(syscall!(SYS_clone3).nr, Vec::new());
    }
    refused
}

/// Every system call named in any built-in list, for violation messages.
pub fn known_syscalls() -> Vec<Syscall> {
    let mut all: Vec<Syscall> = [EVERY_THREAD, VMM, API, VCPU, DEVICES, SIGNALS, THREAD_START]
        .into_iter()
        .flatten()
        .copied()
        .chain(arch::seccomp::every_thread().iter().copied())
        .chain(arch::seccomp::vmm_thread().iter().copied())
        .chain(arch::seccomp::waiting_threads().iter().copied())
        .chain(arch::seccomp::notable().iter().copied())
        .chain(NOTABLE.iter().copied())
        .chain([
            syscall!(SYS_mmap),
            syscall!(SYS_mprotect),
            syscall!(SYS_tgkill),
            syscall!(SYS_rt_sigaction),
            syscall!(SYS_clone),
            syscall!(SYS_clone3),
            syscall!(SYS_ioctl),
            syscall!(SYS_prctl),
            syscall!(SYS_seccomp),
            syscall!(SYS_socket),
        ])
        .collect();
    all.sort_by_key(|syscall| syscall.nr);
    all.dedup_by_key(|syscall| syscall.nr);
    all
}

/// System calls no thread is allowed, named so that an attempt reads well.
const NOTABLE: &[Syscall] = &[
    syscall!(SYS_bpf),
    syscall!(SYS_chroot),
    syscall!(SYS_execve),
    syscall!(SYS_execveat),
    syscall!(SYS_finit_module),
    syscall!(SYS_init_module),
    syscall!(SYS_io_uring_setup),
    syscall!(SYS_kill),
    syscall!(SYS_memfd_create),
    syscall!(SYS_mount),
    syscall!(SYS_perf_event_open),
    syscall!(SYS_pivot_root),
    syscall!(SYS_process_vm_readv),
    syscall!(SYS_process_vm_writev),
    syscall!(SYS_ptrace),
    syscall!(SYS_setgid),
    syscall!(SYS_setns),
    syscall!(SYS_setuid),
    syscall!(SYS_umount2),
    syscall!(SYS_unshare),
    syscall!(SYS_userfaultfd),
];

/// Rules by system call number; a call allowed both always and under
/// conditions is allowed always.
#[derive(Default)]
struct Rules {
    by_number: BTreeMap<i64, Vec<SeccompRule>>,
    unconditional: BTreeSet<i64>,
    ioctl_requests: BTreeSet<u64>,
}

impl Rules {
    fn always(&mut self, syscalls: &[Syscall]) {
        for syscall in syscalls {
            self.unconditional.insert(syscall.nr);
            self.by_number.insert(syscall.nr, Vec::new());
        }
    }

    /// Allowed when any one of `rules` matches.
    fn when(&mut self, syscall: Syscall, rules: Vec<SeccompRule>) {
        if !self.unconditional.contains(&syscall.nr) {
            self.by_number.entry(syscall.nr).or_default().extend(rules);
        }
    }

    /// `ioctl` with one of these request numbers (each kept once, however
    /// many lists name it).
    fn ioctls(&mut self, requests: &[u64]) {
        self.ioctl_requests.extend(requests);
    }

    /// The rules by number, with one `ioctl` rule per request, in
    /// ascending order: KVM's argument-less requests, KVM_RUN among them,
    /// come first, so a vCPU's KVM_RUN is matched after few comparisons.
    fn finish(mut self) -> Result<BTreeMap<i64, Vec<SeccompRule>>, BackendError> {
        let ioctl_rules = self
            .ioctl_requests
            .iter()
            .map(|&request| arg_eq(1, request))
            .collect::<Result<Vec<_>, _>>()?;
        if !ioctl_rules.is_empty() {
            self.when(syscall!(SYS_ioctl), ioctl_rules);
        }
        Ok(self.by_number)
    }
}

/// Argument `index` equals `value` (compared on its low 32 bits: ioctl
/// requests, signal numbers and flags all fit).
fn arg_eq(index: u8, value: u64) -> Result<SeccompRule, BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        index,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::Eq,
        value,
    )?])
}

/// Argument `index` has every bit of `mask` set.
fn masked_eq(index: u8, mask: u64) -> Result<SeccompRule, BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        index,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(mask),
        mask,
    )?])
}

/// Argument `index` (memory protection) lacks PROT_EXEC.
fn no_exec(index: u8) -> Result<SeccompRule, BackendError> {
    SeccompRule::new(vec![SeccompCondition::new(
        index,
        SeccompCmpArgLen::Dword,
        SeccompCmpOp::MaskedEq(libc::PROT_EXEC as u64),
        0,
    )?])
}
