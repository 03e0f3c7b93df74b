//! One vsock stream connection between a guest port and a host socket: its
//! state machine (connect, data, half and full close, reset) and its flow
//! control.
//!
//! A connection never holds more than [`BUF_ALLOC`] bytes from the guest
//! (what brique advertised; a guest sending more is reset) and never reads
//! more from the host socket than the guest's credit allows, so a guest
//! that stops reading leaves the host writer blocked on its own socket.
//!
//! Packets for the guest are not queued: the connection keeps flags of what
//! it has to say and builds each packet when the device has an RX buffer
//! ([`Connection::next_packet`]).

use super::credit::{Credit, BUF_ALLOC};
use super::packet::{Header, Op, HOST_CID, MAX_PAYLOAD, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::unix::HostStream;
use std::collections::VecDeque;
use std::io::{self, ErrorKind};
use std::time::{Duration, Instant};
use vmm_sys_util::epoll::EventSet;

/// How long a host-initiated connection waits for the guest's RESPONSE,
/// and a closing one for its last bytes or the guest's RST.
pub const TIMEOUT: Duration = Duration::from_secs(2);

/// Guest bytes a connection holds at most.
pub const MAX_HELD: usize = BUF_ALLOC as usize;

/// Where a connection is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Host-initiated: the REQUEST is (to be) sent, the RESPONSE awaited.
    Connecting,
    /// Data may flow (each direction until its shutdown).
    Established,
    /// An RST is due or sent: the connection is going.
    Closing,
}

/// What the connection has to tell the guest.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Pending {
    request: bool,
    response: bool,
    rst: bool,
    credit_update: bool,
    /// The host socket has bytes (or its end of file) to read.
    readable: bool,
}

/// Why a connection was reset.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// The guest broke the flow control.
    #[error(transparent)]
    Overrun(#[from] super::credit::CreditOverrun),
    /// The host socket failed.
    #[error("host socket: {0}")]
    Host(io::Error),
    /// The host socket did not take the whole `OK <port>` line.
    #[error("the host socket took {0} bytes of the OK line")]
    ShortAck(usize),
}

/// A connection over host stream `S`.
#[derive(Debug)]
pub struct Connection<S: HostStream> {
    guest_cid: u64,
    local_port: u32,
    peer_port: u32,
    stream: S,
    phase: Phase,
    credit: Credit,
    /// Guest bytes the host socket has not taken yet.
    to_host: VecDeque<u8>,
    pending: Pending,
    /// SHUTDOWN_* flags the guest sent.
    guest_shutdown: u32,
    /// The host socket read end of file.
    host_eof: bool,
    /// The host closed its socket entirely (EPOLLHUP).
    host_hangup: bool,
    /// brique shut down the host socket's writing half.
    host_write_shut: bool,
    /// A CREDIT_REQUEST went out and no credit came back since.
    credit_requested: bool,
    deadline: Option<Instant>,
}

impl<S: HostStream> Connection<S> {
    /// A connection the guest asked for (its REQUEST header), to `stream`:
    /// the RESPONSE is due.
    pub fn guest_initiated(stream: S, guest_cid: u64, request: &Header) -> Self {
        let mut conn = Self::new(stream, guest_cid, request.dst_port, request.src_port);
        conn.credit = Credit::new(request.buf_alloc, request.fwd_cnt);
        conn.phase = Phase::Established;
        conn.pending.response = true;
        conn
    }

    /// A connection a host process asked for, from host port `local_port`
    /// to guest port `peer_port`: the REQUEST is due.
    pub fn host_initiated(stream: S, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        let mut conn = Self::new(stream, guest_cid, local_port, peer_port);
        conn.pending.request = true;
        conn
    }

    fn new(stream: S, guest_cid: u64, local_port: u32, peer_port: u32) -> Self {
        Self {
            guest_cid,
            local_port,
            peer_port,
            stream,
            phase: Phase::Connecting,
            credit: Credit::default(),
            to_host: VecDeque::new(),
            pending: Pending::default(),
            guest_shutdown: 0,
            host_eof: false,
            host_hangup: false,
            host_write_shut: false,
            credit_requested: false,
            deadline: None,
        }
    }

    /// The phase.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// The host stream (for its descriptor).
    pub fn stream(&self) -> &S {
        &self.stream
    }

    /// Guest bytes held for the host socket.
    pub fn held_bytes(&self) -> usize {
        self.to_host.len()
    }

    /// When the connection is to be reset if nothing happens first.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// Whether its deadline has passed.
    pub fn expired(&self, now: Instant) -> bool {
        self.deadline.is_some_and(|deadline| deadline <= now)
    }

    /// Resets the connection: an RST is due, held bytes are dropped.
    pub fn kill(&mut self) {
        self.phase = Phase::Closing;
        self.pending = Pending {
            rst: true,
            ..Pending::default()
        };
        self.to_host.clear();
        self.deadline = None;
    }

    fn kill_for(&mut self, err: &ConnectionError) {
        log::debug!(
            "virtio-vsock: resetting {}:{}: {err}",
            self.local_port,
            self.peer_port
        );
        self.kill();
    }

    /// Whether data may go from the host to the guest now or later.
    fn host_to_guest_open(&self) -> bool {
        self.phase == Phase::Established
            && self.guest_shutdown & SHUTDOWN_RCV == 0
            && !self.host_eof
    }

    /// Whether the connection has a packet for the guest.
    pub fn has_pending_rx(&self) -> bool {
        let p = &self.pending;
        p.rst
            || p.response
            || p.request
            || p.credit_update
            || (p.readable
                && self.host_to_guest_open()
                && (self.credit.peer_free() > 0 || !self.credit_requested))
    }

    /// The host socket events the connection waits for (none: it can be
    /// left out of the poll set, so that a hung-up socket cannot spin it).
    pub fn interest(&self) -> EventSet {
        let mut events = EventSet::empty();
        if self.phase == Phase::Closing {
            return events;
        }
        if !self.to_host.is_empty() {
            events |= EventSet::OUT;
        }
        if self.host_to_guest_open() && !self.pending.readable && self.credit.peer_free() > 0 {
            events |= EventSet::IN;
        }
        events
    }

    /// Host socket events.
    pub fn notify(&mut self, events: EventSet) {
        if self.phase == Phase::Closing {
            return;
        }
        let hangup = events.intersects(EventSet::HANG_UP | EventSet::ERROR);
        if events.contains(EventSet::HANG_UP) {
            self.host_hangup = true;
        }
        if self.phase == Phase::Connecting && hangup {
            // The host process left before the guest answered.
            self.kill();
            return;
        }
        if events.contains(EventSet::IN) || hangup {
            self.pending.readable = self.host_to_guest_open();
        }
        if events.contains(EventSet::OUT) || (hangup && !self.to_host.is_empty()) {
            self.flush();
        }
    }

    /// A guest packet for this connection (not an RST: the muxer removes
    /// the connection for those).
    pub fn handle_guest_packet(&mut self, header: &Header, payload: &[u8]) {
        self.credit.update_peer(header.buf_alloc, header.fwd_cnt);
        if self.credit.peer_free() > 0 {
            self.credit_requested = false;
        }
        let sending_open = self.guest_shutdown & SHUTDOWN_SEND == 0;
        match (header.op(), self.phase) {
            (Some(Op::Rw), Phase::Established) if sending_open => self.take_guest_data(payload),
            (Some(Op::Response), Phase::Connecting) if !self.pending.request => {
                self.established_by_guest()
            }
            (Some(Op::Shutdown), Phase::Established) => {
                self.guest_shutdown |= header.flags & (SHUTDOWN_RCV | SHUTDOWN_SEND);
                if self.guest_shutdown & SHUTDOWN_RCV != 0 {
                    self.pending.readable = false;
                }
                self.close_finished_directions();
            }
            (Some(Op::CreditRequest), Phase::Established) => self.pending.credit_update = true,
            (Some(Op::CreditUpdate), _) => {}
            (op, phase) => log::debug!(
                "virtio-vsock: dropped a guest packet ({op:?}, op {}) for {}:{} in {phase:?}",
                header.op,
                self.local_port,
                self.peer_port
            ),
        }
    }

    fn take_guest_data(&mut self, payload: &[u8]) {
        if payload.is_empty() {
            return;
        }
        let len = u32::try_from(payload.len()).unwrap_or(u32::MAX);
        if let Err(err) = self.credit.on_received(len, self.to_host.len()) {
            self.kill_for(&err.into());
            return;
        }
        self.to_host.extend(payload);
        self.flush();
    }

    /// The guest accepted a host-initiated connection: the host process is
    /// told `OK <host port>`.
    fn established_by_guest(&mut self) {
        self.phase = Phase::Established;
        self.deadline = None;
        let line = format!("OK {}\n", self.local_port);
        match self.stream.write(line.as_bytes()) {
            Ok(n) if n == line.len() => {}
            Ok(n) => self.kill_for(&ConnectionError::ShortAck(n)),
            Err(err) => self.kill_for(&ConnectionError::Host(err)),
        }
    }

    /// Writes held guest bytes to the host socket.
    fn flush(&mut self) {
        while !self.to_host.is_empty() {
            let (chunk, _) = self.to_host.as_slices();
            match self.stream.write(chunk) {
                Ok(0) => break,
                Ok(n) => {
                    self.to_host.drain(..n);
                    self.credit
                        .on_forwarded(u32::try_from(n).unwrap_or(u32::MAX));
                }
                Err(err) if err.kind() == ErrorKind::WouldBlock => break,
                Err(err) if err.kind() == ErrorKind::Interrupted => {}
                Err(err) => {
                    self.kill_for(&ConnectionError::Host(err));
                    return;
                }
            }
        }
        if self.credit.guest_needs_update() {
            self.pending.credit_update = true;
        }
        self.close_finished_directions();
    }

    /// Half-closes the host socket once the guest sends no more and every
    /// byte went out; resets the connection once both directions are over.
    fn close_finished_directions(&mut self) {
        if self.phase != Phase::Established {
            return;
        }
        let guest_done_sending = self.guest_shutdown & SHUTDOWN_SEND != 0;
        if guest_done_sending && self.to_host.is_empty() && !self.host_write_shut {
            self.host_write_shut = true;
            if let Err(err) = self.stream.shutdown_write() {
                log::debug!("virtio-vsock: cannot half-close a host socket: {err}");
            }
        }
        let host_to_guest_over = self.host_eof || self.guest_shutdown & SHUTDOWN_RCV != 0;
        if guest_done_sending && host_to_guest_over {
            if self.to_host.is_empty() {
                self.kill();
            } else if self.deadline.is_none() {
                self.deadline = Some(Instant::now() + TIMEOUT);
            }
        }
    }

    fn header(&mut self, op: Op) -> Header {
        let (buf_alloc, fwd_cnt) = self.credit.stamp();
        Header {
            src_cid: HOST_CID,
            dst_cid: self.guest_cid,
            src_port: self.local_port,
            dst_port: self.peer_port,
            len: 0,
            socket_type: TYPE_STREAM,
            op: op.code(),
            flags: 0,
            buf_alloc,
            fwd_cnt,
        }
    }

    /// The next packet for the guest, its payload in `payload`, for an RX
    /// buffer with `room` payload bytes; `None` if there is nothing to say.
    /// After an RST the connection is done.
    pub fn next_packet(&mut self, room: usize, payload: &mut Vec<u8>) -> Option<Header> {
        payload.clear();
        if self.pending.rst {
            self.pending = Pending::default();
            self.phase = Phase::Closing;
            return Some(self.header(Op::Rst));
        }
        if self.pending.response {
            self.pending.response = false;
            return Some(self.header(Op::Response));
        }
        if self.pending.request {
            self.pending.request = false;
            self.deadline = Some(Instant::now() + TIMEOUT);
            return Some(self.header(Op::Request));
        }
        if self.pending.readable && self.host_to_guest_open() {
            if let Some(header) = self.read_host_data(room, payload) {
                return Some(header);
            }
        }
        if self.pending.credit_update && self.phase != Phase::Closing {
            self.pending.credit_update = false;
            return Some(self.header(Op::CreditUpdate));
        }
        None
    }

    /// A data packet (or the SHUTDOWN for the host's end of file, or a
    /// CREDIT_REQUEST when the guest has no room) read from the host.
    fn read_host_data(&mut self, room: usize, payload: &mut Vec<u8>) -> Option<Header> {
        let free = self.credit.peer_free() as usize;
        if free == 0 {
            if self.credit_requested {
                return None;
            }
            self.credit_requested = true;
            return Some(self.header(Op::CreditRequest));
        }
        let max = room.min(free).min(MAX_PAYLOAD);
        if max == 0 {
            return None;
        }
        payload.resize(max, 0);
        match self.stream.read(payload) {
            Ok(0) => {
                payload.clear();
                self.pending.readable = false;
                self.host_eof = true;
                Some(self.host_closed())
            }
            Ok(n) => {
                payload.truncate(n);
                let len = u32::try_from(n).unwrap_or(u32::MAX);
                self.credit.on_sent(len);
                let mut header = self.header(Op::Rw);
                header.len = len;
                Some(header)
            }
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                payload.clear();
                self.pending.readable = false;
                None
            }
            Err(err) => {
                payload.clear();
                self.kill_for(&ConnectionError::Host(err));
                self.next_packet(0, payload)
            }
        }
    }

    /// The SHUTDOWN telling the guest the host sends no more: and receives
    /// no more either if the host closed its socket (as Firecracker says it
    /// for any end of file), then the guest's RST is awaited.
    fn host_closed(&mut self) -> Header {
        let mut header = self.header(Op::Shutdown);
        header.flags = SHUTDOWN_SEND;
        if self.host_hangup {
            header.flags |= SHUTDOWN_RCV;
            self.to_host.clear();
            self.deadline = Some(Instant::now() + TIMEOUT);
        } else {
            self.close_finished_directions();
        }
        header
    }
}

#[cfg(test)]
mod tests {
    use super::super::packet::SHUTDOWN_RCV;
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::net::UnixStream;

    const GUEST_CID: u64 = 3;

    fn pair() -> (UnixStream, UnixStream) {
        let (ours, host) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        host.set_nonblocking(true).unwrap();
        (ours, host)
    }

    fn guest_header(op: Op, len: u32, buf_alloc: u32, fwd_cnt: u32) -> Header {
        Header {
            src_cid: GUEST_CID,
            dst_cid: HOST_CID,
            src_port: 40_000,
            dst_port: 52,
            len,
            socket_type: TYPE_STREAM,
            op: op.code(),
            flags: 0,
            buf_alloc,
            fwd_cnt,
        }
    }

    fn established(buf_alloc: u32) -> (Connection<UnixStream>, UnixStream) {
        let (ours, host) = pair();
        let request = guest_header(Op::Request, 0, buf_alloc, 0);
        let mut conn = Connection::guest_initiated(ours, GUEST_CID, &request);
        let mut payload = Vec::new();
        let response = conn.next_packet(4096, &mut payload).unwrap();
        assert_eq!(response.op(), Some(Op::Response));
        assert_eq!((response.src_port, response.dst_port), (52, 40_000));
        assert_eq!((response.src_cid, response.dst_cid), (HOST_CID, GUEST_CID));
        assert_eq!(response.buf_alloc, BUF_ALLOC);
        (conn, host)
    }

    /// Drains every packet the connection has, with `room` per RX buffer.
    fn drain(conn: &mut Connection<UnixStream>, room: usize) -> Vec<(Header, Vec<u8>)> {
        let mut out = Vec::new();
        let mut payload = Vec::new();
        while conn.has_pending_rx() {
            match conn.next_packet(room, &mut payload) {
                Some(header) => out.push((header, payload.clone())),
                None => break,
            }
        }
        out
    }

    #[test]
    fn the_host_sends_no_more_than_the_guest_has_room_for() {
        let (mut conn, mut host) = established(1000);
        host.write_all(&[7u8; 5000]).unwrap();
        conn.notify(EventSet::IN);
        let packets = drain(&mut conn, 4096);
        let data: usize = packets
            .iter()
            .filter(|(h, _)| h.op() == Some(Op::Rw))
            .map(|(_, p)| p.len())
            .sum();
        assert_eq!(data, 1000, "exactly the guest's buf_alloc");
        assert_eq!(
            packets.last().unwrap().0.op(),
            Some(Op::CreditRequest),
            "then one credit request"
        );
        assert!(!conn.has_pending_rx(), "and silence");
        assert!(!conn.interest().contains(EventSet::IN), "socket not polled");
        // The guest consumed 600 bytes.
        conn.handle_guest_packet(&guest_header(Op::CreditUpdate, 0, 1000, 600), &[]);
        assert!(conn.has_pending_rx());
        let packets = drain(&mut conn, 4096);
        assert_eq!(packets[0].0.op(), Some(Op::Rw));
        assert_eq!(packets[0].1.len(), 600);
    }

    #[test]
    fn guest_data_reaches_the_host_and_credit_updates_follow() {
        let (mut conn, mut host) = established(65536);
        let chunk = vec![0x5au8; 20_000];
        for _ in 0..2 {
            conn.handle_guest_packet(&guest_header(Op::Rw, 20_000, 65536, 0), &chunk);
        }
        let mut got = vec![0u8; 40_000];
        host.read_exact(&mut got).unwrap();
        assert!(got.iter().all(|b| *b == 0x5a));
        let packets = drain(&mut conn, 4096);
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].0.op(), Some(Op::CreditUpdate));
        assert_eq!(packets[0].0.fwd_cnt, 40_000);
    }

    #[test]
    fn a_guest_overrunning_its_credit_is_reset_and_nothing_beyond_is_held() {
        let (mut conn, _host) = established(65536);
        let chunk = vec![1u8; MAX_PAYLOAD];
        let mut sent = 0;
        while conn.phase() == Phase::Established {
            conn.handle_guest_packet(&guest_header(Op::Rw, MAX_PAYLOAD as u32, 65536, 0), &chunk);
            assert!(conn.held_bytes() <= MAX_HELD);
            sent += 1;
            assert!(sent < 100, "the host socket buffer is not that large");
        }
        let packets = drain(&mut conn, 4096);
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].0.op(), Some(Op::Rst));
        assert_eq!(conn.held_bytes(), 0);
    }

    #[test]
    fn host_initiated_connections_answer_ok_with_the_host_port() {
        let (ours, mut host) = pair();
        let mut conn = Connection::host_initiated(ours, GUEST_CID, 1 << 30, 1234);
        let mut payload = Vec::new();
        let request = conn.next_packet(4096, &mut payload).unwrap();
        assert_eq!(request.op(), Some(Op::Request));
        assert_eq!((request.src_port, request.dst_port), (1 << 30, 1234));
        assert!(conn.deadline().is_some());
        let mut response = guest_header(Op::Response, 0, 4096, 0);
        response.src_port = 1234;
        response.dst_port = 1 << 30;
        conn.handle_guest_packet(&response, &[]);
        assert_eq!(conn.phase(), Phase::Established);
        assert!(conn.deadline().is_none());
        let mut line = [0u8; 14];
        host.read_exact(&mut line).unwrap();
        assert_eq!(&line, b"OK 1073741824\n");
    }

    #[test]
    fn an_unanswered_request_expires() {
        let (ours, _host) = pair();
        let mut conn = Connection::host_initiated(ours, GUEST_CID, 1 << 30, 1234);
        conn.next_packet(4096, &mut Vec::new()).unwrap();
        assert!(!conn.expired(Instant::now()));
        assert!(conn.expired(Instant::now() + TIMEOUT));
    }

    #[test]
    fn guest_half_close_reaches_the_host_and_full_close_resets() {
        let (mut conn, mut host) = established(4096);
        let mut shutdown = guest_header(Op::Shutdown, 0, 4096, 0);
        shutdown.flags = SHUTDOWN_SEND;
        conn.handle_guest_packet(&shutdown, &[]);
        let mut rest = Vec::new();
        host.set_nonblocking(false).unwrap();
        assert_eq!(host.read_to_end(&mut rest).unwrap(), 0, "end of file");
        // The host still talks to the guest.
        host.write_all(b"reply").unwrap();
        conn.notify(EventSet::IN);
        let packets = drain(&mut conn, 4096);
        assert_eq!(packets[0].1, b"reply");
        shutdown.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
        conn.handle_guest_packet(&shutdown, &[]);
        let packets = drain(&mut conn, 4096);
        assert_eq!(packets.last().unwrap().0.op(), Some(Op::Rst));
    }

    #[test]
    fn host_close_is_a_full_shutdown_and_half_close_a_send_shutdown() {
        let (mut conn, host) = established(4096);
        host.shutdown(std::net::Shutdown::Write).unwrap();
        conn.notify(EventSet::IN | EventSet::READ_HANG_UP);
        let packets = drain(&mut conn, 4096);
        assert_eq!(packets.len(), 1);
        assert_eq!(packets[0].0.op(), Some(Op::Shutdown));
        assert_eq!(packets[0].0.flags, SHUTDOWN_SEND);
        assert!(conn.deadline().is_none(), "the guest may still send");

        let (mut conn, host) = established(4096);
        drop(host);
        conn.notify(EventSet::IN | EventSet::HANG_UP);
        let packets = drain(&mut conn, 4096);
        assert_eq!(packets[0].0.flags, SHUTDOWN_SEND | SHUTDOWN_RCV);
        assert!(conn.deadline().is_some(), "the guest's RST is awaited");
    }
}
