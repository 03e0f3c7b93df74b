//! The control socket server: one thread multiplexes every client with
//! epoll and non-blocking sockets, so a slow, silent or half-open client
//! never holds up the others. Each complete request is handed to `serve`
//! and answered in order; partial requests that stall are dropped after
//! [`REQUEST_TIMEOUT`], and the oldest idle connection makes room when
//! [`max_connections`] are open: at most [`MAX_CONNECTIONS`], and never more
//! than a quarter of the process's descriptors, so that clients cannot take
//! the descriptors the VMM needs for its VM, drives and snapshot files.

use super::request::{parse_request, HttpRequest, ParseOutcome, MAX_BODY_BYTES, MAX_HEADER_BYTES};
use super::response::{Response, CONTINUE};
use brique_vmm::metrics::METRICS;
use std::collections::HashMap;
use std::io::{ErrorKind, Read, Write};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};

/// Most clients connected at once, whatever the descriptor limit.
pub const MAX_CONNECTIONS: usize = 128;
/// Fewest clients connected at once, however low the descriptor limit.
const MIN_CONNECTIONS: usize = 2;
/// How long a started request (or an unread response) may stall.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes buffered per connection: one whole request at most.
const LISTENER: u64 = u64::MAX;
/// How long the listener rests after accept() failed for another reason.
const ACCEPT_RETRY: Duration = Duration::from_secs(1);

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The socket path is taken.
    #[error("API socket {0}: the path already exists (remove it, or choose another)")]
    PathExists(PathBuf),
    /// The socket cannot be created.
    #[error("API socket {path}: {source}")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    /// epoll failed.
    #[error("API server epoll: {0}")]
    Epoll(std::io::Error),
}

struct Connection {
    stream: UnixStream,
    input: Vec<u8>,
    output: Vec<u8>,
    written: usize,
    last_activity: Instant,
    close_after_output: bool,
    continue_sent: bool,
    watching_output: bool,
}

impl Connection {
    fn busy(&self) -> bool {
        !self.input.is_empty() || self.written < self.output.len()
    }

    fn queue(&mut self, bytes: &[u8]) {
        if self.written == self.output.len() {
            self.output.clear();
            self.written = 0;
        }
        self.output.extend_from_slice(bytes);
    }
}

/// The API server: a listening socket and its clients.
pub struct Server<F> {
    listener: UnixListener,
    epoll: Epoll,
    connections: HashMap<RawFd, Connection>,
    serve: F,
    accept_retry_at: Option<Instant>,
    /// Largest request body accepted.
    max_body: usize,
    /// Most clients connected at once.
    max_connections: usize,
}

/// How many clients may be connected at once in a process whose soft
/// `RLIMIT_NOFILE` is `descriptor_limit`: a quarter of it, within
/// [`MIN_CONNECTIONS`]..=[`MAX_CONNECTIONS`].
pub fn max_connections(descriptor_limit: u64) -> usize {
    let quarter = usize::try_from(descriptor_limit / 4).unwrap_or(usize::MAX);
    quarter.clamp(MIN_CONNECTIONS, MAX_CONNECTIONS)
}

/// The soft descriptor limit of this process (`None` if unknown).
fn descriptor_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `limit`, which lives for the call.
    let read = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) };
    (read == 0).then_some(limit.rlim_cur)
}

impl<F> std::fmt::Debug for Server<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("connections", &self.connections.len())
            .finish_non_exhaustive()
    }
}

/// Creates the socket at `path` (which must not exist).
pub fn bind(path: &Path) -> Result<UnixListener, ServerError> {
    if path.symlink_metadata().is_ok() {
        return Err(ServerError::PathExists(path.to_owned()));
    }
    let listener = UnixListener::bind(path).map_err(|source| ServerError::Bind {
        path: path.to_owned(),
        source,
    })?;
    listener
        .set_nonblocking(true)
        .map_err(|source| ServerError::Bind {
            path: path.to_owned(),
            source,
        })?;
    Ok(listener)
}

impl<F: FnMut(HttpRequest) -> Response> Server<F> {
    /// A server on `listener` that answers each request with `serve`.
    pub fn new(listener: UnixListener, serve: F) -> Result<Self, ServerError> {
        let epoll = Epoll::new().map_err(ServerError::Epoll)?;
        epoll
            .ctl(
                ControlOperation::Add,
                listener.as_raw_fd(),
                EpollEvent::new(EventSet::IN, LISTENER),
            )
            .map_err(ServerError::Epoll)?;
        Ok(Self {
            listener,
            epoll,
            connections: HashMap::new(),
            serve,
            accept_retry_at: None,
            max_body: MAX_BODY_BYTES,
            max_connections: descriptor_limit().map_or(MAX_CONNECTIONS, max_connections),
        })
    }

    /// Accepts request bodies of up to `bytes` (Firecracker's
    /// `--http-api-max-payload-size`) instead of [`MAX_BODY_BYTES`].
    pub fn with_max_body(mut self, bytes: usize) -> Self {
        self.max_body = bytes;
        self
    }

    /// Serves clients until epoll fails.
    pub fn run(mut self) -> ServerError {
        loop {
            if let Err(err) = self.run_once(Duration::from_secs(1)) {
                return err;
            }
        }
    }

    /// Waits up to `timeout` for socket events and handles them.
    pub fn run_once(&mut self, timeout: Duration) -> Result<(), ServerError> {
        let mut events = [EpollEvent::default(); 64];
        let timeout_ms = i32::try_from(timeout.as_millis()).unwrap_or(i32::MAX);
        let count = match self.epoll.wait(timeout_ms, &mut events) {
            Ok(count) => count,
            Err(err) if err.kind() == ErrorKind::Interrupted => 0,
            Err(err) => return Err(ServerError::Epoll(err)),
        };
        for event in &events[..count] {
            if event.data() == LISTENER {
                self.accept_all();
            } else if let Ok(fd) = RawFd::try_from(event.data()) {
                self.service(fd);
            }
        }
        self.drop_stalled();
        if self.accept_retry_at.is_some_and(|at| Instant::now() >= at) {
            self.accept_retry_at = None;
            self.epoll
                .ctl(
                    ControlOperation::Add,
                    self.listener.as_raw_fd(),
                    EpollEvent::new(EventSet::IN, LISTENER),
                )
                .map_err(ServerError::Epoll)?;
            self.accept_all();
        }
        Ok(())
    }

    /// Open connections (for tests).
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if stream.set_nonblocking(true).is_err() {
                        continue;
                    }
                    if self.connections.len() >= self.max_connections {
                        self.evict_one();
                    }
                    let fd = stream.as_raw_fd();
                    let registered = self.epoll.ctl(
                        ControlOperation::Add,
                        fd,
                        EpollEvent::new(EventSet::IN | EventSet::READ_HANG_UP, fd as u64),
                    );
                    if registered.is_ok() {
                        self.connections.insert(
                            fd,
                            Connection {
                                stream,
                                input: Vec::new(),
                                output: Vec::new(),
                                written: 0,
                                last_activity: Instant::now(),
                                close_after_output: false,
                                continue_sent: false,
                                watching_output: false,
                            },
                        );
                    }
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => return,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(err)
                    if matches!(err.raw_os_error(), Some(libc::EMFILE | libc::ENFILE))
                        && !self.connections.is_empty() =>
                {
                    // Out of descriptors: make room, then take the new client.
                    self.evict_one();
                }
                Err(err) => {
                    // Level-triggered epoll would report the listener again at
                    // once: stop watching it for a while instead of spinning.
                    log::warn!("API socket accept: {err}; retrying in {ACCEPT_RETRY:?}");
                    let _ = self.epoll.ctl(
                        ControlOperation::Delete,
                        self.listener.as_raw_fd(),
                        EpollEvent::default(),
                    );
                    self.accept_retry_at = Some(Instant::now() + ACCEPT_RETRY);
                    return;
                }
            }
        }
    }

    /// Closes the connection idle the longest (busy ones only if none is idle).
    fn evict_one(&mut self) {
        let victim = self
            .connections
            .iter()
            .min_by_key(|(_, c)| (c.busy(), c.last_activity))
            .map(|(fd, _)| *fd);
        if let Some(fd) = victim {
            self.close(fd, true);
        }
    }

    fn drop_stalled(&mut self) {
        let now = Instant::now();
        let stalled: Vec<RawFd> = self
            .connections
            .iter()
            .filter(|(_, c)| c.busy() && now.duration_since(c.last_activity) > REQUEST_TIMEOUT)
            .map(|(fd, _)| *fd)
            .collect();
        for fd in stalled {
            log::debug!("API: dropping a client stalled mid-request");
            self.close(fd, true);
        }
    }

    fn close(&mut self, fd: RawFd, count_as_dropped: bool) {
        if let Some(conn) = self.connections.remove(&fd) {
            let _ = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default());
            if count_as_dropped {
                METRICS.api.connections_dropped.inc();
            }
            drop(conn);
        }
    }

    fn service(&mut self, fd: RawFd) {
        let Some(conn) = self.connections.get_mut(&fd) else {
            return;
        };
        // Read what there is room for.
        let mut peer_closed = false;
        let mut chunk = [0u8; 16 * 1024];
        let max_input = MAX_HEADER_BYTES.saturating_add(self.max_body);
        while conn.input.len() < max_input && conn.written == conn.output.len() {
            let room = (max_input - conn.input.len()).min(chunk.len());
            match conn.stream.read(&mut chunk[..room]) {
                Ok(0) => {
                    peer_closed = true;
                    break;
                }
                Ok(n) => {
                    conn.input.extend_from_slice(&chunk[..n]);
                    conn.last_activity = Instant::now();
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == ErrorKind::Interrupted => continue,
                Err(_) => {
                    peer_closed = true;
                    break;
                }
            }
        }
        self.process_and_flush(fd);
        if peer_closed {
            // Whatever was half-sent is discarded: nothing was executed for it.
            let mid_request = self
                .connections
                .get(&fd)
                .is_some_and(|c| !c.input.is_empty());
            self.close(fd, mid_request);
        }
    }

    /// Answers every complete request in the buffer, one response at a
    /// time, and writes out what the client accepts.
    fn process_and_flush(&mut self, fd: RawFd) {
        loop {
            let Some(conn) = self.connections.get_mut(&fd) else {
                return;
            };
            if conn.written == conn.output.len() && !conn.close_after_output {
                match parse_request(&conn.input, self.max_body) {
                    Ok(ParseOutcome::Incomplete { expects_continue }) => {
                        if expects_continue && !conn.continue_sent {
                            conn.continue_sent = true;
                            conn.queue(CONTINUE);
                        }
                    }
                    Ok(ParseOutcome::Complete(request, used)) => {
                        conn.input.drain(..used);
                        conn.continue_sent = false;
                        let keep_alive = request.keep_alive;
                        let response = (self.serve)(request);
                        count(&response);
                        let Some(conn) = self.connections.get_mut(&fd) else {
                            return;
                        };
                        conn.queue(&response.to_bytes(!keep_alive));
                        conn.close_after_output = !keep_alive;
                    }
                    Err(err) => {
                        log::debug!("API: bad request: {err}");
                        let response = Response::fault(err.status, &err.message);
                        count(&response);
                        conn.queue(&response.to_bytes(true));
                        conn.input.clear();
                        conn.close_after_output = true;
                    }
                }
            }
            let Some(conn) = self.connections.get_mut(&fd) else {
                return;
            };
            let flushed = match flush(conn) {
                Ok(flushed) => flushed,
                Err(()) => {
                    self.close(fd, true);
                    return;
                }
            };
            if !flushed {
                self.watch(fd, true);
                return;
            }
            if conn.close_after_output {
                self.close(fd, false);
                return;
            }
            self.watch(fd, false);
            // More pipelined requests may already be buffered.
            let Some(conn) = self.connections.get(&fd) else {
                return;
            };
            if matches!(
                parse_request(&conn.input, self.max_body),
                Ok(ParseOutcome::Incomplete { .. })
            ) {
                return;
            }
        }
    }

    /// Watches `fd` for writability (a response is pending) or for input.
    fn watch(&mut self, fd: RawFd, output: bool) {
        let Some(conn) = self.connections.get_mut(&fd) else {
            return;
        };
        if conn.watching_output == output {
            return;
        }
        conn.watching_output = output;
        let events = if output {
            EventSet::OUT | EventSet::READ_HANG_UP
        } else {
            EventSet::IN | EventSet::READ_HANG_UP
        };
        if self
            .epoll
            .ctl(
                ControlOperation::Modify,
                fd,
                EpollEvent::new(events, fd as u64),
            )
            .is_err()
        {
            self.close(fd, true);
        }
    }
}

fn count(response: &Response) {
    METRICS.api.requests.inc();
    if response.status.code() >= 400 {
        METRICS.api.errors.inc();
    }
}

/// Writes pending output; `Ok(true)` once all of it is out.
fn flush(conn: &mut Connection) -> Result<bool, ()> {
    while conn.written < conn.output.len() {
        match conn.stream.write(&conn.output[conn.written..]) {
            Ok(0) => return Err(()),
            Ok(n) => {
                conn.written += n;
                conn.last_activity = Instant::now();
            }
            Err(err) if err.kind() == ErrorKind::WouldBlock => return Ok(false),
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(_) => return Err(()),
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_get_a_quarter_of_the_descriptors_within_bounds() {
        assert_eq!(max_connections(32), 8);
        assert_eq!(max_connections(1024), 128);
        assert_eq!(max_connections(1 << 20), MAX_CONNECTIONS);
        assert_eq!(max_connections(5), MIN_CONNECTIONS);
        assert_eq!(max_connections(0), MIN_CONNECTIONS);
        assert_eq!(max_connections(u64::MAX), MAX_CONNECTIONS);
    }
}
