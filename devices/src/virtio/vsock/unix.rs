//! The host end of the Unix-socket backend: the listening socket at
//! `uds_path` that host processes connect to, and the connections brique
//! makes to `<uds_path>_<port>` for the guest. Every socket is
//! non-blocking, connecting included: a host listener whose backlog is full
//! refuses the guest's request instead of stalling the device thread.

use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// A byte stream to a host process: what a connection forwards to.
pub trait HostStream: Read + Write + AsRawFd + Send {
    /// Shuts down the writing half (the host reads end of file).
    fn shutdown_write(&self) -> io::Result<()>;
}

impl HostStream for UnixStream {
    fn shutdown_write(&self) -> io::Result<()> {
        self.shutdown(std::net::Shutdown::Write)
    }
}

/// Errors of the Unix-socket backend.
#[derive(Debug, thiserror::Error)]
pub enum UnixBackendError {
    /// The listening socket cannot be created at `uds_path`.
    #[error("cannot listen on {path}: {source}")]
    Bind { path: PathBuf, source: io::Error },
    /// A socket path does not fit a `sockaddr_un`.
    #[error("socket path {0} is longer than 107 bytes")]
    PathTooLong(PathBuf),
}

/// Binds the non-blocking listening socket at `path` (which must not exist,
/// as with Firecracker).
pub fn listen(path: &Path) -> Result<UnixListener, UnixBackendError> {
    if path.as_os_str().len() >= max_path_len() {
        return Err(UnixBackendError::PathTooLong(path.to_owned()));
    }
    let bind = || -> io::Result<UnixListener> {
        let listener = UnixListener::bind(path)?;
        listener.set_nonblocking(true)?;
        Ok(listener)
    };
    bind().map_err(|source| UnixBackendError::Bind {
        path: path.to_owned(),
        source,
    })
}

/// Accepts one pending host connection, non-blocking.
pub fn accept(listener: &UnixListener) -> io::Result<UnixStream> {
    let (stream, _) = listener.accept()?;
    stream.set_nonblocking(true)?;
    Ok(stream)
}

/// The socket a guest connection to host port `port` goes to.
pub fn port_path(uds_path: &Path, port: u32) -> PathBuf {
    let mut path = uds_path.as_os_str().to_owned();
    path.push(format!("_{port}"));
    PathBuf::from(path)
}

fn max_path_len() -> usize {
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    addr.sun_path.len()
}

/// Connects to the Unix socket at `path` without blocking: a listener
/// whose backlog is full answers `WouldBlock`, a missing one `NotFound` or
/// `ConnectionRefused`.
pub fn connect(path: &Path) -> io::Result<UnixStream> {
    let bytes = path.as_os_str().as_bytes();
    // SAFETY: sockaddr_un is plain data; all-zero is a valid value.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if bytes.len() >= addr.sun_path.len() || bytes.contains(&0) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            UnixBackendError::PathTooLong(path.to_owned()),
        ));
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (slot, byte) in addr.sun_path.iter_mut().zip(bytes) {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: plain system call with constant arguments; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a fresh socket that nothing else owns.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let len = std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1;
    // SAFETY: `addr` is a live, initialised sockaddr_un and `len` is within it.
    let ret = unsafe {
        libc::connect(
            socket.as_raw_fd(),
            (&addr as *const libc::sockaddr_un).cast(),
            len as libc::socklen_t,
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(UnixStream::from(socket))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guest_connections_reach_the_port_socket() {
        let dir = tempdir("unix-connect");
        let uds = dir.join("v.sock");
        assert_eq!(port_path(&uds, 52), dir.join("v.sock_52"));
        let listener = listen(&port_path(&uds, 52)).unwrap();
        let mut ours = connect(&port_path(&uds, 52)).unwrap();
        let mut theirs = accept(&listener).unwrap();
        ours.write_all(b"ping").unwrap();
        let mut got = [0u8; 4];
        theirs.set_nonblocking(false).unwrap();
        theirs.read_exact(&mut got).unwrap();
        assert_eq!(&got, b"ping");
        let missing = connect(&port_path(&uds, 53)).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn an_existing_path_or_an_overlong_one_cannot_be_bound() {
        let dir = tempdir("unix-bind");
        let uds = dir.join("v.sock");
        let _first = listen(&uds).unwrap();
        assert!(matches!(listen(&uds), Err(UnixBackendError::Bind { .. })));
        let long = dir.join("x".repeat(120));
        assert!(matches!(
            listen(&long),
            Err(UnixBackendError::PathTooLong(_))
        ));
        assert_eq!(
            connect(&long).unwrap_err().kind(),
            io::ErrorKind::InvalidInput
        );
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A fresh directory for one test's sockets.
    pub(crate) fn tempdir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("brique-vsock-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }
}
