//! The connection multiplexer of the Unix-socket backend: maps each
//! (host port, guest port) pair to its [`Connection`], routes guest packets
//! to them, accepts host processes on the listening socket and reads their
//! `CONNECT` line, connects guest requests to `<uds_path>_<port>`, answers
//! what it cannot route with RST, and decides whose packet goes into the
//! next RX buffer (queued RSTs first, then connections in turn).
//!
//! Every socket it owns sits in one epoll set of its own, which the device's
//! event loop watches as a single descriptor ([`Muxer::as_raw_fd`]), with a
//! timer for connection deadlines. Everything is bounded: connections,
//! host connections not yet accepted by the guest, queued RSTs.

use super::connection::{Connection, Phase};
use super::handshake::LineReader;
use super::packet::{Header, Op, HOST_CID, TYPE_STREAM};
use super::unix::{self, UnixBackendError};
use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::timerfd::TimerFd;

/// Host ports handed to host-initiated connections: round robin over
/// [2^30, 2^31), as Firecracker does (the port is in the `OK` line).
const LOCAL_PORT_FIRST: u32 = 1 << 30;
/// Host connections accepted per listener event (the rest wait for the
/// next one: the listener stays readable).
const ACCEPTS_PER_EVENT: usize = 32;

/// How much the muxer takes on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections, plus host connections still sending their CONNECT line.
    pub max_connections: usize,
    /// Host connections the guest has not accepted yet (still sending
    /// their CONNECT line, or REQUEST sent and no RESPONSE).
    pub max_pending_host_connects: usize,
    /// RSTs waiting for an RX buffer; more are dropped (the guest learns
    /// of the failure when it times out).
    pub max_queued_rsts: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_connections: 1023,
            max_pending_host_connects: 128,
            max_queued_rsts: 256,
        }
    }
}

/// A connection's identity: host (local) port and guest (peer) port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// The host-side port.
    pub local_port: u32,
    /// The guest-side port.
    pub peer_port: u32,
}

/// Errors setting up the muxer.
#[derive(Debug, thiserror::Error)]
pub enum MuxerError {
    /// The listening socket.
    #[error(transparent)]
    Unix(#[from] UnixBackendError),
    /// The epoll set.
    #[error("epoll: {0}")]
    Epoll(io::Error),
    /// The deadline timer.
    #[error("timer: {0}")]
    Timer(io::Error),
}

/// What a descriptor in the epoll set is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Watched {
    Listener,
    Timer,
    Handshake,
    Connection(ConnKey),
}

/// The multiplexer.
#[derive(Debug)]
pub struct Muxer {
    guest_cid: u64,
    uds_path: PathBuf,
    listener: UnixListener,
    epoll: Epoll,
    timer: TimerFd,
    timer_deadline: Option<Instant>,
    watched: HashMap<RawFd, (Watched, EventSet)>,
    connections: HashMap<ConnKey, Connection<UnixStream>>,
    handshakes: HashMap<RawFd, (UnixStream, LineReader)>,
    rx_ready: VecDeque<ConnKey>,
    rx_queued: HashSet<ConnKey>,
    rsts: VecDeque<ConnKey>,
    last_local_port: u32,
    limits: Limits,
    active: bool,
    /// The listener is left unpolled after accept failed (out of file
    /// descriptors): still readable, it would spin the event loop. It is
    /// polled again when a connection goes.
    listener_paused: bool,
}

impl Muxer {
    /// Listens at `uds_path` for a guest with context id `guest_cid`.
    /// Host processes may connect at once; they are served from activation.
    pub fn new(guest_cid: u64, uds_path: &Path, limits: Limits) -> Result<Self, MuxerError> {
        Ok(Self {
            guest_cid,
            uds_path: uds_path.to_owned(),
            listener: unix::listen(uds_path)?,
            epoll: Epoll::new().map_err(MuxerError::Epoll)?,
            timer: TimerFd::new().map_err(|err| MuxerError::Timer(err.into()))?,
            timer_deadline: None,
            watched: HashMap::new(),
            connections: HashMap::new(),
            handshakes: HashMap::new(),
            rx_ready: VecDeque::new(),
            rx_queued: HashSet::new(),
            rsts: VecDeque::new(),
            last_local_port: LOCAL_PORT_FIRST - 1,
            limits,
            active: false,
            listener_paused: false,
        })
    }

    /// The socket path host processes connect to.
    pub fn uds_path(&self) -> &Path {
        &self.uds_path
    }

    /// Connections, whatever their phase.
    pub fn connection_count(&self) -> usize {
        self.connections.len()
    }

    /// Starts serving the listening socket (device activation).
    pub fn activate(&mut self) -> io::Result<()> {
        if self.active {
            return Ok(());
        }
        self.set_interest(self.listener.as_raw_fd(), Watched::Listener, EventSet::IN)?;
        self.set_interest(self.timer.as_raw_fd(), Watched::Timer, EventSet::IN)?;
        self.active = true;
        Ok(())
    }

    /// Drops every connection and stops serving (device reset). Host
    /// processes see their sockets closed.
    pub fn reset(&mut self) {
        let fds: Vec<RawFd> = self.watched.keys().copied().collect();
        for fd in fds {
            self.unwatch(fd);
        }
        self.connections.clear();
        self.handshakes.clear();
        self.rx_ready.clear();
        self.rx_queued.clear();
        self.rsts.clear();
        self.last_local_port = LOCAL_PORT_FIRST - 1;
        if let Err(err) = self.timer.clear() {
            log::warn!("virtio-vsock: cannot disarm the timer: {err}");
        }
        self.timer_deadline = None;
        self.active = false;
        self.listener_paused = false;
    }

    /// Whether there is a packet for the guest.
    pub fn has_pending_rx(&self) -> bool {
        !self.rsts.is_empty() || !self.rx_ready.is_empty()
    }

    /// A packet from the guest (already validated as a chain).
    pub fn send_to_host(&mut self, header: &Header, payload: &[u8]) {
        let key = ConnKey {
            local_port: header.dst_port,
            peer_port: header.src_port,
        };
        let op = header.op();
        if header.socket_type != TYPE_STREAM {
            if op != Some(Op::Rst) {
                self.queue_rst(key);
            }
            return;
        }
        if header.dst_cid != HOST_CID {
            log::debug!("virtio-vsock: dropped a packet for cid {}", header.dst_cid);
            return;
        }
        if let Some(conn) = self.connections.get_mut(&key) {
            if op == Some(Op::Rst) {
                self.remove_connection(key);
            } else {
                conn.handle_guest_packet(header, payload);
                self.refresh(key);
            }
            return;
        }
        match op {
            Some(Op::Request) => self.connect_for_guest(key, header),
            // Never answer an RST with an RST.
            Some(Op::Rst) => {}
            _ => self.queue_rst(key),
        }
    }

    /// The next packet for the guest into an RX buffer with `room` payload
    /// bytes (payload in `payload`), or `None`.
    pub fn next_rx_packet(&mut self, room: usize, payload: &mut Vec<u8>) -> Option<Header> {
        payload.clear();
        if let Some(key) = self.rsts.pop_front() {
            return Some(self.rst_header(key));
        }
        // Each waiting connection gets one turn at most.
        for _ in 0..self.rx_ready.len() {
            let key = self.rx_ready.pop_front()?;
            self.rx_queued.remove(&key);
            let Some(conn) = self.connections.get_mut(&key) else {
                continue;
            };
            let packet = conn.next_packet(room, payload);
            if packet.is_some_and(|header| header.op() == Some(Op::Rst)) {
                self.remove_connection(key);
                return packet;
            }
            self.refresh(key);
            if packet.is_some() {
                return packet;
            }
        }
        None
    }

    /// Handles whatever happened on the muxer's sockets and timer.
    pub fn process_events(&mut self) {
        let mut events = [EpollEvent::default(); 64];
        let count = match self.epoll.wait(0, &mut events) {
            Ok(count) => count,
            Err(err) => {
                log::warn!("virtio-vsock: epoll wait failed: {err}");
                return;
            }
        };
        for event in &events[..count] {
            let fd = event.fd();
            let set = EventSet::from_bits_truncate(event.events());
            match self.watched.get(&fd).map(|(what, _)| *what) {
                Some(Watched::Listener) => self.accept_host_connections(),
                Some(Watched::Timer) => self.timer_fired(),
                Some(Watched::Handshake) => self.continue_handshake(fd),
                Some(Watched::Connection(key)) => {
                    if let Some(conn) = self.connections.get_mut(&key) {
                        conn.notify(set);
                        self.refresh(key);
                    }
                }
                None => {}
            }
        }
    }

    fn rst_header(&self, key: ConnKey) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: key.local_port,
            dst_port: key.peer_port,
            socket_type: TYPE_STREAM,
            op: Op::Rst.code(),
            ..Header::default()
        }
    }

    fn queue_rst(&mut self, key: ConnKey) {
        if self.rsts.len() < self.limits.max_queued_rsts {
            self.rsts.push_back(key);
        } else {
            log::debug!("virtio-vsock: RST queue full, dropped one");
        }
    }

    fn has_room_for_a_connection(&self) -> bool {
        self.connections.len() + self.handshakes.len() < self.limits.max_connections
    }

    fn pending_host_connects(&self) -> usize {
        let connecting = self
            .connections
            .values()
            .filter(|conn| conn.phase() == Phase::Connecting)
            .count();
        self.handshakes.len() + connecting
    }

    fn connect_for_guest(&mut self, key: ConnKey, request: &Header) {
        if !self.has_room_for_a_connection() {
            log::debug!("virtio-vsock: connection limit reached, refusing the guest");
            self.queue_rst(key);
            return;
        }
        let path = unix::port_path(&self.uds_path, request.dst_port);
        match unix::connect(&path) {
            Ok(stream) => {
                let conn = Connection::guest_initiated(stream, self.guest_cid, request);
                self.connections.insert(key, conn);
                self.refresh(key);
            }
            Err(err) => {
                log::debug!("virtio-vsock: cannot connect to {}: {err}", path.display());
                self.queue_rst(key);
            }
        }
    }

    fn accept_host_connections(&mut self) {
        for _ in 0..ACCEPTS_PER_EVENT {
            let stream = match unix::accept(&self.listener) {
                Ok(stream) => stream,
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return,
                Err(err) => {
                    log::warn!("virtio-vsock: accept failed, pausing the listener: {err}");
                    self.unwatch(self.listener.as_raw_fd());
                    self.listener_paused = true;
                    return;
                }
            };
            if !self.has_room_for_a_connection()
                || self.pending_host_connects() >= self.limits.max_pending_host_connects
            {
                log::debug!("virtio-vsock: too many connections, closing a host one");
                continue;
            }
            let fd = stream.as_raw_fd();
            match self.set_interest(fd, Watched::Handshake, EventSet::IN) {
                Ok(()) => {
                    self.handshakes.insert(fd, (stream, LineReader::default()));
                }
                Err(err) => log::warn!("virtio-vsock: cannot watch a host connection: {err}"),
            }
        }
    }

    fn continue_handshake(&mut self, fd: RawFd) {
        let Some((stream, reader)) = self.handshakes.get_mut(&fd) else {
            return;
        };
        let result = reader.read_from(stream);
        if let Ok(None) = result {
            return;
        }
        self.unwatch(fd);
        let Some((stream, _)) = self.handshakes.remove(&fd) else {
            return;
        };
        self.resume_listener();
        match result {
            Ok(Some(peer_port)) => {
                let local_port = self.allocate_local_port();
                let key = ConnKey {
                    local_port,
                    peer_port,
                };
                let conn =
                    Connection::host_initiated(stream, self.guest_cid, local_port, peer_port);
                self.connections.insert(key, conn);
                self.refresh(key);
            }
            Ok(None) => {}
            Err(err) => log::debug!("virtio-vsock: host connection refused: {err}"),
        }
    }

    /// The next free host port after the last one given.
    fn allocate_local_port(&mut self) -> u32 {
        loop {
            let next = self.last_local_port.wrapping_add(1);
            self.last_local_port = if next >= 1 << 31 {
                LOCAL_PORT_FIRST
            } else {
                next
            };
            let port = self.last_local_port;
            if !self.connections.keys().any(|key| key.local_port == port) {
                return port;
            }
        }
    }

    /// After a connection changed: queue it for RX if it has something to
    /// say, poll its socket for what it waits for, mind its deadline.
    fn refresh(&mut self, key: ConnKey) {
        let Some(conn) = self.connections.get(&key) else {
            return;
        };
        let pending = conn.has_pending_rx();
        let fd = conn.stream().as_raw_fd();
        let interest = conn.interest();
        let deadline = conn.deadline();
        if pending && self.rx_queued.insert(key) {
            self.rx_ready.push_back(key);
        }
        if let Err(err) = self.set_interest(fd, Watched::Connection(key), interest) {
            log::warn!("virtio-vsock: cannot poll a connection: {err}");
            if let Some(conn) = self.connections.get_mut(&key) {
                conn.kill();
            }
            if self.rx_queued.insert(key) {
                self.rx_ready.push_back(key);
            }
        }
        if let Some(deadline) = deadline {
            self.arm_timer(deadline);
        }
    }

    fn remove_connection(&mut self, key: ConnKey) {
        if let Some(conn) = self.connections.remove(&key) {
            self.unwatch(conn.stream().as_raw_fd());
        }
        self.rx_queued.remove(&key);
        self.resume_listener();
    }

    /// Polls the listener again after a pause, now that a descriptor is free.
    fn resume_listener(&mut self) {
        if !self.listener_paused || !self.active {
            return;
        }
        let fd = self.listener.as_raw_fd();
        match self.set_interest(fd, Watched::Listener, EventSet::IN) {
            Ok(()) => self.listener_paused = false,
            Err(err) => log::warn!("virtio-vsock: cannot poll the listener again: {err}"),
        }
    }

    fn set_interest(&mut self, fd: RawFd, what: Watched, events: EventSet) -> io::Result<()> {
        let current = self.watched.get(&fd).map(|(_, set)| *set);
        let data = u64::try_from(fd).unwrap_or_default();
        match current {
            None if events.is_empty() => {}
            None => {
                self.epoll
                    .ctl(ControlOperation::Add, fd, EpollEvent::new(events, data))?;
                self.watched.insert(fd, (what, events));
            }
            Some(_) if events.is_empty() => self.unwatch(fd),
            Some(set) if set != events => {
                self.epoll
                    .ctl(ControlOperation::Modify, fd, EpollEvent::new(events, data))?;
                self.watched.insert(fd, (what, events));
            }
            Some(_) => {}
        }
        Ok(())
    }

    fn unwatch(&mut self, fd: RawFd) {
        if self.watched.remove(&fd).is_some() {
            if let Err(err) = self
                .epoll
                .ctl(ControlOperation::Delete, fd, EpollEvent::default())
            {
                log::warn!("virtio-vsock: cannot stop polling fd {fd}: {err}");
            }
        }
    }

    fn arm_timer(&mut self, deadline: Instant) {
        if self.timer_deadline.is_some_and(|armed| armed <= deadline) {
            return;
        }
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        match self.timer.reset(wait, None) {
            Ok(()) => self.timer_deadline = Some(deadline),
            Err(err) => log::warn!("virtio-vsock: cannot arm the timer: {err}"),
        }
    }

    /// The deadline timer expired.
    fn timer_fired(&mut self) {
        // Disarming also makes the timer unreadable again.
        if let Err(err) = self.timer.clear() {
            log::warn!("virtio-vsock: cannot disarm the timer: {err}");
        }
        self.timer_deadline = None;
        self.expire(Instant::now());
    }

    /// Resets the connections whose deadline is `now` or earlier; arms the
    /// timer for the next deadline.
    pub fn expire(&mut self, now: Instant) {
        let expired: Vec<ConnKey> = self
            .connections
            .iter()
            .filter(|(_, conn)| conn.expired(now))
            .map(|(key, _)| *key)
            .collect();
        for key in expired {
            if let Some(conn) = self.connections.get_mut(&key) {
                log::debug!("virtio-vsock: {key:?} timed out");
                conn.kill();
            }
            self.refresh(key);
        }
        let next = self
            .connections
            .values()
            .filter_map(Connection::deadline)
            .min();
        if let Some(deadline) = next {
            self.arm_timer(deadline);
        }
    }
}

impl AsRawFd for Muxer {
    /// The epoll set: readable when a socket or the timer needs attention.
    fn as_raw_fd(&self) -> RawFd {
        self.epoll.as_raw_fd()
    }
}
