//! A datagram socket pair standing in for a tap in tests and fuzzing: one
//! end is the device's backend, the other plays the host network. Frame
//! boundaries are kept, as with a tap.

use super::FrameBackend;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// The device's end of the pair.
#[derive(Debug)]
pub struct SocketBackend(OwnedFd);

impl AsRawFd for SocketBackend {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

impl FrameBackend for SocketBackend {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        recv(self.as_raw_fd(), buf)
    }
    fn write_frame(&mut self, frame: &[u8]) -> io::Result<usize> {
        send(self.as_raw_fd(), frame)
    }
    fn set_offload(&self, _flags: libc::c_uint) -> io::Result<()> {
        Ok(())
    }
}

/// A backend and its peer (the "host" end), both non-blocking, with room
/// for many 64 KiB frames.
pub fn socket_pair() -> io::Result<(SocketBackend, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: socketpair fills the two-element array it is given.
    let ret = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    if ret != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned from here on.
    let (ours, peer) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    for fd in [&ours, &peer] {
        let size: libc::c_int = 8 << 20;
        // SAFETY: setsockopt reads one int from a live local.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_SNDBUF,
                (&size as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    }
    Ok((SocketBackend(ours), peer))
}

/// Receives one frame without blocking.
pub fn recv(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: receives into a buffer we own, at most its length.
    let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), libc::MSG_DONTWAIT) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}

/// Sends one frame without blocking.
pub fn send(fd: RawFd, frame: &[u8]) -> io::Result<usize> {
    // SAFETY: sends from a live buffer, at most its length.
    let n = unsafe { libc::send(fd, frame.as_ptr().cast(), frame.len(), libc::MSG_DONTWAIT) };
    usize::try_from(n).map_err(|_| io::Error::last_os_error())
}
