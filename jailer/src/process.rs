//! The jailer's own process: inherited descriptors, resource limits,
//! namespaces, session, identity, and the final exec of brique.

use crate::args::ResourceLimit;
use std::ffi::CString;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

/// What can fail while preparing or replacing the process.
#[derive(Debug, thiserror::Error)]
pub enum ProcessError {
    #[error("cannot close inherited file descriptors: {0}")]
    CloseFds(io::Error),
    #[error("cannot set the resource limit {name}: {source}")]
    Limit {
        name: &'static str,
        source: io::Error,
    },
    #[error("cannot join the network namespace {path}: {source}")]
    Netns { path: String, source: io::Error },
    #[error("cannot {what}: {source}")]
    Fork {
        what: &'static str,
        source: io::Error,
    },
    #[error("cannot detach from the terminal: {0}")]
    Daemonize(io::Error),
    #[error("cannot write the pid file {path}: {source}")]
    PidFile { path: String, source: io::Error },
    #[error("cannot drop to uid {uid} and gid {gid}: {source}")]
    Identity {
        uid: u32,
        gid: u32,
        source: io::Error,
    },
    #[error("an argument holds a NUL byte")]
    NulInArgument,
    #[error("cannot execute {path}: {source}")]
    Exec { path: String, source: io::Error },
}

/// Firecracker's jailer default for open files.
const DEFAULT_OPEN_FILES: u64 = 2048;

/// Closes every descriptor above stderr.
pub fn close_inherited_fds() -> Result<(), ProcessError> {
    // SAFETY: close_range only closes descriptors; none above 2 is used
    // by this process yet (std opens none behind our back).
    let closed = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if closed == 0 {
        return Ok(());
    }
    // Kernels before 5.9: close what /proc lists.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map_err(ProcessError::CloseFds)?
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd > 2)
        .collect();
    for fd in fds {
        // SAFETY: closing a descriptor number; the directory handle used to
        // list them is already dropped, and errors (EBADF) are harmless.
        unsafe { libc::close(fd) };
    }
    Ok(())
}

/// Sets the asked limits, and the default for open files unless asked.
pub fn set_limits(limits: &[ResourceLimit]) -> Result<(), ProcessError> {
    let mut all = limits.to_vec();
    if !all
        .iter()
        .any(|limit| matches!(limit, ResourceLimit::OpenFiles(_)))
    {
        all.push(ResourceLimit::OpenFiles(DEFAULT_OPEN_FILES));
    }
    for limit in all {
        let (resource, name, value) = match limit {
            ResourceLimit::FileSize(value) => (libc::RLIMIT_FSIZE, "fsize", value),
            ResourceLimit::OpenFiles(value) => (libc::RLIMIT_NOFILE, "no-file", value),
        };
        let rlimit = libc::rlimit {
            rlim_cur: value,
            rlim_max: value,
        };
        // SAFETY: setrlimit reads the struct we pass.
        if unsafe { libc::setrlimit(resource, &rlimit) } != 0 {
            return Err(ProcessError::Limit {
                name,
                source: io::Error::last_os_error(),
            });
        }
    }
    Ok(())
}

/// Joins the network namespace at `path`.
pub fn join_netns(path: &Path) -> Result<(), ProcessError> {
    let error = |source| ProcessError::Netns {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::open(path).map_err(error)?;
    // SAFETY: setns takes a descriptor we keep open for the call.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(error(io::Error::last_os_error()));
    }
    Ok(())
}

/// In the parent: the child's pid; in the child: `None`.
fn fork(what: &'static str) -> Result<Option<libc::pid_t>, ProcessError> {
    // SAFETY: the jailer is single-threaded, so the child may go on with
    // any code; both sides return normally.
    match unsafe { libc::fork() } {
        -1 => Err(ProcessError::Fork {
            what,
            source: io::Error::last_os_error(),
        }),
        0 => Ok(None),
        child => Ok(Some(child)),
    }
}

/// Leaves the terminal and session: a child goes on in a new session with
/// stdio on /dev/null (of the jail); the parent ends with 0.
pub fn daemonize() -> Result<(), ProcessError> {
    if fork("fork to daemonize")?.is_some() {
        // SAFETY: _exit ends the parent at once, as a daemon's parent does.
        unsafe { libc::_exit(0) };
    }
    // SAFETY: setsid has no arguments; the child of a fork is no group leader.
    if unsafe { libc::setsid() } == -1 {
        return Err(ProcessError::Daemonize(io::Error::last_os_error()));
    }
    let null = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(ProcessError::Daemonize)?;
    for target in 0..=2 {
        // SAFETY: dup2 onto the standard descriptors from one we hold open.
        if unsafe { libc::dup2(null.as_raw_fd(), target) } == -1 {
            return Err(ProcessError::Daemonize(io::Error::last_os_error()));
        }
    }
    Ok(())
}

/// Makes the next child of the jailer PID 1 of a new PID namespace.
pub fn new_pid_ns_for_children() -> Result<(), ProcessError> {
    // SAFETY: unshare only changes which namespace our next child gets.
    if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
        return Err(ProcessError::Fork {
            what: "make a new PID namespace",
            source: io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Starts `program` with `args` (and no environment) as the jailer's child
/// (PID 1 of the new PID namespace, `new_pid_ns_for_children`), writes its
/// pid to `pid_file` and ends the jailer with 0 (or 1 if the pid cannot be
/// written). The child is started the way posix_spawn(3) does, sharing the
/// jailer's memory until it execs: no copy of the jailer's address space
/// as a fork makes, so the jailer drops its privileges before
/// (`drop_privileges`).
pub fn spawn_and_exit(
    program: &str,
    args: &[String],
    pid_file: &Path,
) -> Result<std::convert::Infallible, ProcessError> {
    let child = std::process::Command::new(program)
        .args(args)
        .env_clear()
        .spawn()
        .map_err(|source| ProcessError::Exec {
            path: program.to_owned(),
            source,
        })?;
    let status = match std::fs::write(pid_file, format!("{}\n", child.id())) {
        Ok(()) => 0,
        Err(source) => {
            eprintln!(
                "brique-jailer: {}",
                ProcessError::PidFile {
                    path: pid_file.display().to_string(),
                    source
                }
            );
            1
        }
    };
    // SAFETY: _exit ends the jailer at once; brique runs on without it.
    unsafe { libc::_exit(status) }
}

/// Becomes `uid`:`gid` with no supplementary groups, for good.
pub fn drop_privileges(uid: u32, gid: u32) -> Result<(), ProcessError> {
    let error = |source| ProcessError::Identity { uid, gid, source };
    // SAFETY: setgroups with an empty list reads no memory.
    if unsafe { libc::setgroups(0, std::ptr::null()) } != 0 {
        return Err(error(io::Error::last_os_error()));
    }
    // SAFETY: setresgid/setresuid take plain ids; group first, while we
    // still may change it.
    if unsafe { libc::setresgid(gid, gid, gid) } != 0 {
        return Err(error(io::Error::last_os_error()));
    }
    // SAFETY: as above.
    if unsafe { libc::setresuid(uid, uid, uid) } != 0 {
        return Err(error(io::Error::last_os_error()));
    }
    Ok(())
}

/// Replaces the process with `path` run with `args`, in an empty environment.
pub fn exec(path: &str, args: &[String]) -> ProcessError {
    let to_c = |text: &str| CString::new(text).map_err(|_| ProcessError::NulInArgument);
    let program = match to_c(path) {
        Ok(program) => program,
        Err(err) => return err,
    };
    let argv: Vec<CString> = match std::iter::once(path)
        .chain(args.iter().map(String::as_str))
        .map(to_c)
        .collect()
    {
        Ok(argv) => argv,
        Err(err) => return err,
    };
    let mut argv_ptrs: Vec<*const libc::c_char> = argv.iter().map(|arg| arg.as_ptr()).collect();
    argv_ptrs.push(std::ptr::null());
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: the program path and every argv string are NUL-terminated
    // and live across the call; argv and envp end with NULL.
    unsafe { libc::execve(program.as_ptr(), argv_ptrs.as_ptr(), envp.as_ptr()) };
    ProcessError::Exec {
        path: path.to_owned(),
        source: io::Error::last_os_error(),
    }
}

/// A clock's value in microseconds.
pub fn clock_us(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the struct we pass.
    unsafe { libc::clock_gettime(clock, &mut now) };
    u64::try_from(now.tv_sec).unwrap_or_default() * 1_000_000
        + u64::try_from(now.tv_nsec).unwrap_or_default() / 1_000
}
