//! virtio-vsock against mock queues and real Unix sockets: the host's
//! CONNECT/OK handshake, guest connections to `<uds_path>_<port>`, data
//! both ways, RST for what cannot be routed, connection limits, a guest
//! that never reads, hostile chains, and the transport reset of a restored
//! device.

use super::credit::BUF_ALLOC;
use super::device::{EVENT_TRANSPORT_RESET, MIN_GUEST_CID};
use super::muxer::Limits;
use super::packet::{Header, Op, HEADER_LEN, HOST_CID, SHUTDOWN_RCV, SHUTDOWN_SEND, TYPE_STREAM};
use super::*;
use crate::virtio::{ActiveQueue, Interrupt, VirtioDevice, INT_USED_RING};
use crate::GuestMemoryMmap;
use std::io::{ErrorKind, Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};
use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use vm_memory::{Bytes, GuestAddress};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const GUEST_CID: u64 = 3;
const MEM_SIZE: usize = 0x800_0000;
const RX_RING: u64 = 0x10_0000;
const TX_RING: u64 = 0x20_0000;
const EVENT_RING: u64 = 0x30_0000;
const EVENT_BUFFERS: u64 = 0x40_0000;
const RX_BUFFERS: u64 = 0x100_0000;
const TX_BUFFERS: u64 = 0x580_0000;
/// Room for a header and the largest payload.
const SLOT: u64 = 0x1_1000;
/// TX buffers are reused round robin (each is consumed at once).
const TX_SLOTS: u16 = 256;
/// Entries of each mock queue (tests stay below it).
const QLEN: u16 = 1024;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;
const FIRST_HOST_PORT: u32 = 1 << 30;

fn desc(addr: u64, len: u32, flags: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, 0))
}

/// A fresh directory and socket path for one test.
fn socket_dir(name: &str) -> (PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("brique-vsock-dev-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let uds = dir.join("v.sock");
    (dir, uds)
}

fn memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap()
}

/// The guest driver's side of the three queues.
struct Driver<'m> {
    mem: &'m GuestMemoryMmap,
    rx: MockSplitQueue<'m, GuestMemoryMmap>,
    tx: MockSplitQueue<'m, GuestMemoryMmap>,
    event: MockSplitQueue<'m, GuestMemoryMmap>,
    rx_next: u16,
    rx_seen: u16,
    tx_next: u16,
    event_next: u16,
}

impl<'m> Driver<'m> {
    fn new(mem: &'m GuestMemoryMmap) -> Self {
        Self {
            mem,
            rx: MockSplitQueue::create(mem, GuestAddress(RX_RING), QLEN),
            tx: MockSplitQueue::create(mem, GuestAddress(TX_RING), QLEN),
            event: MockSplitQueue::create(mem, GuestAddress(EVENT_RING), 16),
            rx_next: 0,
            rx_seen: 0,
            tx_next: 0,
            event_next: 0,
        }
    }

    fn queues(&self) -> Vec<ActiveQueue> {
        [&self.rx, &self.tx, &self.event]
            .iter()
            .map(|mock| ActiveQueue {
                queue: mock.create_queue().unwrap(),
                notify: EventFd::new(EFD_NONBLOCK).unwrap(),
            })
            .collect()
    }

    /// Adds `count` RX chains of one `len`-byte writable buffer each.
    fn add_rx_buffers(&mut self, count: u16, len: u32) {
        for _ in 0..count {
            let index = self.rx_next;
            let addr = RX_BUFFERS + u64::from(index) * SLOT;
            self.rx
                .add_desc_chains(&[desc(addr, len, WRITE)], index)
                .unwrap();
            self.rx_next += 1;
        }
    }

    fn add_event_buffer(&mut self) {
        let index = self.event_next;
        let addr = EVENT_BUFFERS + u64::from(index) * 0x100;
        self.mem
            .write_obj(0xffff_ffffu32, GuestAddress(addr))
            .unwrap();
        self.event
            .add_desc_chains(&[desc(addr, 8, WRITE)], index)
            .unwrap();
        self.event_next += 1;
    }

    /// Queues one TX chain holding `header` (its len set) and `payload`.
    fn queue_tx(&mut self, mut header: Header, payload: &[u8]) {
        header.len = payload.len() as u32;
        let index = self.tx_next;
        let addr = TX_BUFFERS + u64::from(index % TX_SLOTS) * SLOT;
        self.mem
            .write_slice(&header.to_bytes(), GuestAddress(addr))
            .unwrap();
        self.mem
            .write_slice(payload, GuestAddress(addr + HEADER_LEN as u64))
            .unwrap();
        let len = (HEADER_LEN + payload.len()) as u32;
        self.tx
            .add_desc_chains(&[desc(addr, len, 0)], index)
            .unwrap();
        self.tx_next += 1;
    }

    /// Packets the device delivered since the last call.
    fn received(&mut self) -> Vec<(Header, Vec<u8>)> {
        let mut packets = Vec::new();
        let used = self.rx.used().idx().load();
        while self.rx_seen != used {
            let entry = self
                .rx
                .used()
                .ring()
                .ref_at(usize::from(self.rx_seen % QLEN))
                .unwrap()
                .load();
            self.rx_seen += 1;
            let len = entry.len() as usize;
            if len == 0 {
                continue;
            }
            let addr = RX_BUFFERS + u64::from(entry.id()) * SLOT;
            let mut bytes = vec![0u8; len];
            self.mem.read_slice(&mut bytes, GuestAddress(addr)).unwrap();
            let header = Header::from_bytes(bytes[..HEADER_LEN].try_into().unwrap());
            assert_eq!(header.len as usize, len - HEADER_LEN, "used length");
            packets.push((header, bytes[HEADER_LEN..].to_vec()));
        }
        packets
    }
}

struct Fixture {
    dir: PathBuf,
    uds: PathBuf,
    vsock: Vsock,
    interrupt: Arc<Interrupt>,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Fixture {
    fn new(name: &str, limits: Limits) -> Self {
        let (dir, uds) = socket_dir(name);
        let config = VsockConfig {
            guest_cid: GUEST_CID,
            uds_path: uds.clone(),
        };
        let vsock = Vsock::with_limits(&config, limits).unwrap();
        Self::around(dir, uds, vsock)
    }

    fn around(dir: PathBuf, uds: PathBuf, vsock: Vsock) -> Self {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = Interrupt::new(crate::EventFdTrigger::new(irq));
        Self {
            dir,
            uds,
            vsock,
            interrupt,
        }
    }

    /// Activates on `driver`'s queues and starts as the event loop would.
    fn activate(&mut self, driver: &Driver) {
        self.vsock
            .activate(driver.mem.clone(), driver.queues(), self.interrupt.clone())
            .unwrap();
        self.vsock.start();
    }

    /// Lets the backend see what the host sockets did.
    fn pump(&mut self) {
        for _ in 0..5 {
            self.vsock.process_backend();
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn send(&mut self, driver: &mut Driver, header: Header, payload: &[u8]) {
        driver.queue_tx(header, payload);
        self.vsock.process_tx();
    }
}

fn guest_packet(op: Op, src_port: u32, dst_port: u32) -> Header {
    Header {
        src_cid: GUEST_CID,
        dst_cid: HOST_CID,
        src_port,
        dst_port,
        socket_type: TYPE_STREAM,
        op: op.code(),
        buf_alloc: 256 * 1024,
        ..Header::default()
    }
}

fn ops(packets: &[(Header, Vec<u8>)]) -> Vec<Option<Op>> {
    packets.iter().map(|(header, _)| header.op()).collect()
}

fn read_exactly(stream: &mut UnixStream, len: usize) -> Vec<u8> {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut buf = vec![0u8; len];
    stream.read_exact(&mut buf).unwrap();
    buf
}

/// Asserts that the device closed `stream`: it reads end of file (within
/// 5 s) with no bytes before it.
fn assert_closed(stream: &mut UnixStream, what: &str) {
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut rest = Vec::new();
    assert_eq!(stream.read_to_end(&mut rest).unwrap(), 0, "{what}");
}

/// A host process connected through the device's socket to guest port
/// `guest_port`, accepted by the guest: returns the client and its host port.
fn host_connection(f: &mut Fixture, driver: &mut Driver, guest_port: u32) -> (UnixStream, u32) {
    let mut client = UnixStream::connect(&f.uds).unwrap();
    client
        .write_all(format!("CONNECT {guest_port}\n").as_bytes())
        .unwrap();
    f.pump();
    let packets = driver.received();
    assert_eq!(ops(&packets), vec![Some(Op::Request)]);
    let request = packets[0].0;
    assert_eq!((request.src_cid, request.dst_cid), (HOST_CID, GUEST_CID));
    assert_eq!(request.dst_port, guest_port);
    let host_port = request.src_port;
    f.send(
        driver,
        guest_packet(Op::Response, guest_port, host_port),
        &[],
    );
    let ok = format!("OK {host_port}\n");
    assert_eq!(read_exactly(&mut client, ok.len()), ok.as_bytes());
    (client, host_port)
}

#[test]
fn host_connect_gets_ok_with_the_host_port_and_bytes_flow_both_ways() {
    let mut f = Fixture::new("host-connect", Limits::default());
    let mem = memory();
    let mut driver = Driver::new(&mem);
    driver.add_rx_buffers(32, SLOT as u32);
    f.activate(&driver);
    let (mut client, host_port) = host_connection(&mut f, &mut driver, 1234);
    assert_eq!(host_port, FIRST_HOST_PORT, "Firecracker's first host port");
    assert_ne!(f.interrupt.status() & INT_USED_RING, 0);

    client.write_all(b"hello guest").unwrap();
    f.pump();
    let packets = driver.received();
    assert_eq!(ops(&packets), vec![Some(Op::Rw)]);
    assert_eq!(packets[0].1, b"hello guest");
    assert_eq!(
        (packets[0].0.src_port, packets[0].0.dst_port),
        (host_port, 1234)
    );
    assert_eq!(packets[0].0.buf_alloc, BUF_ALLOC);

    f.send(
        &mut driver,
        guest_packet(Op::Rw, 1234, host_port),
        b"hello host",
    );
    assert_eq!(read_exactly(&mut client, 10), b"hello host");

    // A second host process gets the next port.
    let (_second, second_port) = host_connection(&mut f, &mut driver, 1234);
    assert_eq!(second_port, FIRST_HOST_PORT + 1);
    assert_eq!(f.vsock.connection_count(), 2);
}

#[test]
fn a_host_connect_the_guest_refuses_closes_the_host_socket() {
    let mut f = Fixture::new("host-refused", Limits::default());
    let mem = memory();
    let mut driver = Driver::new(&mem);
    driver.add_rx_buffers(8, 4096);
    f.activate(&driver);
    let mut client = UnixStream::connect(&f.uds).unwrap();
    client.write_all(b"connect 99\n").unwrap();
    f.pump();
    let request = driver.received()[0].0;
    // No listener on port 99 in the guest: it answers RST.
    f.send(
        &mut driver,
        guest_packet(Op::Rst, 99, request.src_port),
        &[],
    );
    assert_closed(&mut client, "closed, no OK");
    assert_eq!(f.vsock.connection_count(), 0);
}

#[test]
fn a_malformed_connect_line_closes_the_host_socket() {
    let mut f = Fixture::new("host-malformed", Limits::default());
    let mem = memory();
    let mut driver = Driver::new(&mem);
    driver.add_rx_buffers(8, 4096);
    f.activate(&driver);
    let mut client = UnixStream::connect(&f.uds).unwrap();
    client.write_all(b"HELLO 5\n").unwrap();
    f.pump();
    assert!(driver.received().is_empty(), "nothing reaches the guest");
    assert_closed(&mut client, "closed");
}

#[test]
fn an_unanswered_host_connect_times_out_with_an_rst() {
    let mut f = Fixture::new("host-timeout", Limits::default());
    let mem = memory();
    let mut driver = Driver::new(&mem);
    driver.add_rx_buffers(8, 4096);
    f.activate(&driver);
    let mut client = UnixStream::connect(&f.uds).unwrap();
    client.write_all(b"CONNECT 7\n").unwrap();
    f.pump();
    assert_eq!(ops(&driver.received()), vec![Some(Op::Request)]);
    f.vsock
        .muxer_mut()
        .expire(Instant::now() + connection::TIMEOUT);
    f.vsock.process_rx();
    let packets = driver.received();
    assert_eq!(ops(&packets), vec![Some(Op::Rst)]);
    assert_eq!(packets[0].0.dst_port, 7);
    assert_closed(&mut client, "closed");
}

#[test]
fn a_guest_connection_goes_to_the_port_socket_and_closes_cleanly() {
    let mut f = Fixture::new("guest-connect", Limits::default());
    let listener = UnixListener::bind(unix::port_path(&f.uds, 5000)).unwrap();
    let mem = memory();
    let mut driver = Driver::new(&mem);
    driver.add_rx_buffers(32, 4096);
    f.activate(&driver);
    let mut request = guest_packet(Op::Request, 40_000, 5000);
    request.buf_alloc = 4096;
    f.send(&mut driver, request, &[]);
    let packets = driver.received();
    assert_eq!(ops(&packets), vec![Some(Op::Response)]);
    assert_eq!(
        (packets[0].0.src_port, packets[0].0.dst_port),
        (5000, 40_000)
    );
    let (mut host, _) = listener.accept().unwrap();

    f.send(&mut driver, guest_packet(Op::Rw, 40_000, 5000), b"ping");
    assert_eq!(read_exactly(&mut host, 4), b"ping");
    host.write_all(b"pong").unwrap();
    f.pump();
    let packets = driver.received();
    assert_eq!(ops(&packets), vec![Some(Op::Rw)]);
    assert_eq!(packets[0].1, b"pong");

    let mut shutdown = guest_packet(Op::Shutdown, 40_000, 5000);
    shutdown.flags = SHUTDOWN_RCV | SHUTDOWN_SEND;
    f.send(&mut driver, shutdown, &[]);
    assert_eq!(ops(&driver.received()), vec![Some(Op::Rst)]);
    assert_closed(&mut host, "host sees EOF");
    assert_eq!(f.vsock.connection_count(), 0);
}

#[test]
fn a_host_close_reaches_the_guest_as_a_shutdown() {
    let mut f = Fixture::new("host-close", Limits::default());
    let listener = UnixListener::bind(unix::port_path(&f.uds, 5001)).unwrap();
    let mem = memory();
    let mut driver = Driver::new(&mem);
    driver.add_rx_buffers(16, 4096);
    f.activate(&driver);
    f.send(&mut driver, guest_packet(Op::Request, 40_001, 5001), &[]);
    driver.received();
    let (host, _) = listener.accept().unwrap();
    drop(host);
    f.pump();
    let packets = driver.received();
    assert_eq!(ops(&packets), vec![Some(Op::Shutdown)]);
    assert_eq!(packets[0].0.flags, SHUTDOWN_RCV | SHUTDOWN_SEND);
    // The guest answers RST: the connection goes.
    f.send(&mut driver, guest_packet(Op::Rst, 40_001, 5001), &[]);
    assert!(driver.received().is_empty(), "no RST for an RST");
    assert_eq!(f.vsock.connection_count(), 0);
}

#[test]
fn unroutable_packets_get_an_rst_and_rsts_get_nothing() {
    let mut f = Fixture::new("unroutable", Limits::default());
    let mem = memory();
    let mut driver = Driver::new(&mem);
    driver.add_rx_buffers(16, 4096);
    f.activate(&driver);
    // Data for no connection.
    f.send(&mut driver, guest_packet(Op::Rw, 41_000, 77), b"stray");
    // A request to a host port nobody listens on.
    f.send(&mut driver, guest_packet(Op::Request, 41_001, 78), &[]);
    // A seqpacket request (not offered).
    let mut seqpacket = guest_packet(Op::Request, 41_002, 79);
    seqpacket.socket_type = 2;
    f.send(&mut driver, seqpacket, &[]);
    // An op no spec defines.
    let mut unknown = guest_packet(Op::Rw, 41_003, 80);
    unknown.op = 99;
    f.send(&mut driver, unknown, &[]);
    let packets = driver.received();
    assert_eq!(ops(&packets), vec![Some(Op::Rst); 4]);
    let ports: Vec<(u32, u32)> = packets
        .iter()
        .map(|(h, _)| (h.src_port, h.dst_port))
        .collect();
    assert_eq!(
        ports,
        vec![(77, 41_000), (78, 41_001), (79, 41_002), (80, 41_003)]
    );
    assert!(packets
        .iter()
        .all(|(h, _)| h.src_cid == HOST_CID && h.dst_cid == GUEST_CID));

    // No answer to an RST, nor to a packet for another CID.
    f.send(&mut driver, guest_packet(Op::Rst, 41_000, 77), &[]);
    let mut elsewhere = guest_packet(Op::Rw, 41_004, 81);
    elsewhere.dst_cid = 7;
    f.send(&mut driver, elsewhere, b"x");
    assert!(driver.received().is_empty());
    assert_eq!(f.vsock.counters().tx_packets, 6);
}

#[test]
fn a_flood_of_guest_requests_is_refused_beyond_the_limit() {
    let limits = Limits {
        max_connections: 4,
        ..Limits::default()
    };
    let mut f = Fixture::new("guest-flood", limits);
    let listener = UnixListener::bind(unix::port_path(&f.uds, 6000)).unwrap();
    let mem = memory();
    let mut driver = Driver::new(&mem);
    driver.add_rx_buffers(16, 4096);
    f.activate(&driver);
    for port in 0..6 {
        f.send(
            &mut driver,
            guest_packet(Op::Request, 50_000 + port, 6000),
            &[],
        );
    }
    let packets = driver.received();
    assert_eq!(
        ops(&packets),
        [vec![Some(Op::Response); 4], vec![Some(Op::Rst); 2]].concat()
    );
    assert_eq!(f.vsock.connection_count(), 4);
    listener.set_nonblocking(true).unwrap();
    let accepted = std::iter::from_fn(|| listener.accept().ok()).count();
    assert_eq!(accepted, 4, "only admitted connections reach the host");
}

#[test]
fn host_connections_beyond_the_pending_limit_are_closed() {
    let limits = Limits {
        max_pending_host_connects: 2,
        ..Limits::default()
    };
    let mut f = Fixture::new("host-flood", limits);
    let mem = memory();
    let mut driver = Driver::new(&mem);
    driver.add_rx_buffers(16, 4096);
    f.activate(&driver);
    let clients: Vec<UnixStream> = (0..3)
        .map(|_| UnixStream::connect(&f.uds).unwrap())
        .collect();
    f.pump();
    let mut open = 0;
    for mut client in clients {
        client.set_nonblocking(true).unwrap();
        match client.read(&mut [0u8; 8]) {
            Err(err) if err.kind() == ErrorKind::WouldBlock => open += 1,
            Ok(0) => {}
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(open, 2);
}

#[test]
fn a_guest_that_never_reads_gets_only_its_credit() {
    let mut f = Fixture::new("never-reads", Limits::default());
    let listener = UnixListener::bind(unix::port_path(&f.uds, 7000)).unwrap();
    let mem = memory();
    let mut driver = Driver::new(&mem);
    driver.add_rx_buffers(64, 4096);
    f.activate(&driver);
    let mut request = guest_packet(Op::Request, 42_000, 7000);
    request.buf_alloc = 10_000;
    f.send(&mut driver, request, &[]);
    driver.received();
    let (mut host, _) = listener.accept().unwrap();
    host.set_nonblocking(true).unwrap();
    let mut written = 0usize;
    let chunk = [0xabu8; 4096];
    while let Ok(n) = host.write(&chunk) {
        written += n;
        if written > 1 << 20 {
            break;
        }
    }
    assert!(written > 10_000);
    f.pump();
    f.pump();
    let packets = driver.received();
    let data: usize = packets
        .iter()
        .filter(|(h, _)| h.op() == Some(Op::Rw))
        .map(|(_, p)| p.len())
        .sum();
    assert_eq!(data, 10_000, "exactly the guest's buf_alloc");
    assert_eq!(packets.last().unwrap().0.op(), Some(Op::CreditRequest));
    assert!(packets.iter().all(|(_, p)| p.len() <= 4096 - HEADER_LEN));
    // The guest reads 5000 bytes and says so.
    let mut update = guest_packet(Op::CreditUpdate, 42_000, 7000);
    update.buf_alloc = 10_000;
    update.fwd_cnt = 5000;
    f.send(&mut driver, update, &[]);
    f.pump();
    let data: usize = driver.received().iter().map(|(_, p)| p.len()).sum();
    assert_eq!(data, 5000);
}

#[test]
fn unusable_chains_are_returned_and_the_packet_waits_for_a_good_buffer() {
    let mut f = Fixture::new("hostile-chains", Limits::default());
    let mem = memory();
    let mut driver = Driver::new(&mem);
    f.activate(&driver);
    // TX: shorter than a header, then device-writable.
    driver
        .tx
        .add_desc_chains(&[desc(TX_BUFFERS, 20, 0)], 0)
        .unwrap();
    driver
        .tx
        .add_desc_chains(&[desc(TX_BUFFERS, 64, WRITE)], 1)
        .unwrap();
    driver.tx_next = 2;
    f.vsock.process_tx();
    assert_eq!(driver.tx.used().idx().load(), 2, "both returned");
    assert_eq!(f.vsock.counters().tx_dropped, 2);
    // RX: one buffer too small for a header, one readable only, one good.
    driver
        .rx
        .add_desc_chains(&[desc(RX_BUFFERS, 20, WRITE)], 0)
        .unwrap();
    driver
        .rx
        .add_desc_chains(&[desc(RX_BUFFERS + SLOT, 4096, 0)], 1)
        .unwrap();
    driver.rx_next = 2;
    driver.add_rx_buffers(1, 4096);
    f.send(&mut driver, guest_packet(Op::Rw, 1, 2), b"?");
    let packets = driver.received();
    assert_eq!(ops(&packets), vec![Some(Op::Rst)], "in the good buffer");
    assert_eq!(driver.rx.used().idx().load(), 3);
    assert_eq!(f.vsock.counters().rx_dropped, 2);
}

#[test]
fn without_rx_buffers_packets_wait_and_a_buffer_notification_delivers_them() {
    let mut f = Fixture::new("no-rx", Limits::default());
    let mem = memory();
    let mut driver = Driver::new(&mem);
    f.activate(&driver);
    f.send(&mut driver, guest_packet(Op::Rw, 1, 2), b"?");
    assert!(driver.received().is_empty());
    driver.add_rx_buffers(1, 4096);
    f.vsock.process_rx();
    assert_eq!(ops(&driver.received()), vec![Some(Op::Rst)]);
}

#[test]
fn a_restored_device_resets_the_guest_transport_and_holds_rx_until_acknowledged() {
    let (dir, uds) = socket_dir("restore");
    let state = VsockState {
        guest_cid: GUEST_CID,
    };
    let vsock = Vsock::restore(&uds, &state).unwrap();
    assert_eq!(vsock.save(), state, "the guest CID survives");
    assert!(vsock.transport_reset_pending());
    let mut f = Fixture::around(dir, uds, vsock);
    let mem = memory();
    let mut driver = Driver::new(&mem);
    driver.add_rx_buffers(8, 4096);
    for _ in 0..4 {
        driver.add_event_buffer();
    }
    f.activate(&driver);
    let used = driver.event.used();
    assert_eq!(used.idx().load(), 1, "one event");
    let entry = used.ring().ref_at(0).unwrap().load();
    assert_eq!(entry.len(), 4);
    let event: u32 = mem
        .read_obj(GuestAddress(EVENT_BUFFERS + u64::from(entry.id()) * 0x100))
        .unwrap();
    assert_eq!(u32::from_le(event), EVENT_TRANSPORT_RESET);
    assert_ne!(f.interrupt.status() & INT_USED_RING, 0);
    assert_eq!(f.vsock.counters().transport_resets, 1);

    // A host connection made before the guest handled the event waits.
    let mut client = UnixStream::connect(&f.uds).unwrap();
    client.write_all(b"CONNECT 1234\n").unwrap();
    f.pump();
    assert!(driver.received().is_empty(), "RX held");
    // The guest refills the event queue and notifies it: RX resumes.
    driver.add_event_buffer();
    f.vsock.process_event_queue();
    assert!(!f.vsock.transport_reset_pending());
    assert_eq!(ops(&driver.received()), vec![Some(Op::Request)]);
    assert_eq!(driver.event.used().idx().load(), 1, "one reset only");
}

#[test]
fn a_restored_device_without_event_buffers_owes_the_reset_until_one_comes() {
    let (dir, uds) = socket_dir("restore-late");
    let vsock = Vsock::restore(
        &uds,
        &VsockState {
            guest_cid: GUEST_CID,
        },
    )
    .unwrap();
    let mut f = Fixture::around(dir, uds, vsock);
    let mem = memory();
    let mut driver = Driver::new(&mem);
    f.activate(&driver);
    assert_eq!(driver.event.used().idx().load(), 0);
    driver.add_event_buffer();
    f.vsock.process_event_queue();
    assert_eq!(driver.event.used().idx().load(), 1);
    assert!(f.vsock.transport_reset_pending(), "until acknowledged");
}

#[test]
fn reserved_context_ids_are_refused() {
    let (dir, uds) = socket_dir("cid");
    for cid in [0, 1, 2, u64::from(u32::MAX) + 1] {
        let config = VsockConfig {
            guest_cid: cid,
            uds_path: uds.clone(),
        };
        assert!(matches!(
            Vsock::new(&config),
            Err(VsockError::InvalidCid(c)) if c == cid
        ));
        assert!(Vsock::restore(&uds, &VsockState { guest_cid: cid }).is_err());
    }
    assert!(!uds.exists(), "no socket left behind");
    let _ = std::fs::remove_dir_all(dir);
    assert_eq!(MIN_GUEST_CID, 3);
}

#[test]
fn config_space_holds_the_guest_cid_and_the_device_has_three_queues() {
    let (dir, uds) = socket_dir("config");
    let config = VsockConfig {
        guest_cid: 0x1234_5678,
        uds_path: uds,
    };
    let vsock = Vsock::new(&config).unwrap();
    let mut space = [0xffu8; 12];
    vsock.read_config(0, &mut space);
    assert_eq!(&space[..8], &0x1234_5678u64.to_le_bytes());
    assert_eq!(&space[8..], &[0; 4], "nothing past guest_cid");
    assert_eq!(vsock.device_type(), 19);
    assert_eq!(vsock.queue_max_sizes(), &[256, 256, 256]);
    assert_ne!(
        vsock.offered_features() & crate::virtio::VIRTIO_F_VERSION_1,
        0
    );
    let state_json = serde_json::to_string(&vsock.save()).unwrap();
    assert_eq!(state_json, r#"{"guest_cid":305419896}"#);
    drop(vsock);
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn a_driver_reset_drops_every_connection() {
    let mut f = Fixture::new("reset", Limits::default());
    let mem = memory();
    let mut driver = Driver::new(&mem);
    driver.add_rx_buffers(16, SLOT as u32);
    f.activate(&driver);
    let (mut client, _) = host_connection(&mut f, &mut driver, 1234);
    f.vsock.reset();
    assert!(f.vsock.active_queues().is_none());
    // The event loop carries the reset out.
    f.vsock.process_backend();
    assert_eq!(f.vsock.connection_count(), 0);
    assert_closed(&mut client, "closed");
}

#[test]
fn many_concurrent_connections_keep_their_bytes_apart() {
    let mut f = Fixture::new("concurrent", Limits::default());
    let mem = memory();
    let mut driver = Driver::new(&mem);
    driver.add_rx_buffers(128, SLOT as u32);
    f.activate(&driver);
    let mut clients: Vec<(UnixStream, u32, u32)> = (0..8u32)
        .map(|i| {
            let (client, host_port) = host_connection(&mut f, &mut driver, 2000 + i);
            (client, host_port, 2000 + i)
        })
        .collect();
    for (i, (client, _, _)) in clients.iter_mut().enumerate() {
        client.write_all(&[i as u8; 1000]).unwrap();
    }
    f.pump();
    let mut per_port = std::collections::HashMap::<u32, Vec<u8>>::new();
    for (header, payload) in driver.received() {
        assert_eq!(header.op(), Some(Op::Rw));
        per_port.entry(header.dst_port).or_default().extend(payload);
    }
    for (i, (client, host_port, guest_port)) in clients.iter_mut().enumerate() {
        assert_eq!(per_port[guest_port], vec![i as u8; 1000]);
        let answer = vec![0x80 | i as u8; 300];
        f.send(
            &mut driver,
            guest_packet(Op::Rw, *guest_port, *host_port),
            &answer,
        );
        assert_eq!(read_exactly(client, 300), answer);
    }
}

/// Through the event loop, as the vmm runs it: the activation makes the
/// device watch its backend, and a host connect reaches the guest without
/// any direct call.
#[test]
fn the_event_loop_serves_the_backend_after_activation() {
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use std::sync::Mutex;
    let (dir, uds) = socket_dir("event-loop");
    let config = VsockConfig {
        guest_cid: GUEST_CID,
        uds_path: uds.clone(),
    };
    let vsock = Arc::new(Mutex::new(Vsock::new(&config).unwrap()));
    let mut event_loop = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    event_loop.add_subscriber(vsock.clone());
    let mem = memory();
    let mut driver = Driver::new(&mem);
    driver.add_rx_buffers(8, 4096);
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let interrupt = Interrupt::new(crate::EventFdTrigger::new(irq));
    vsock
        .lock()
        .unwrap()
        .activate(mem.clone(), driver.queues(), interrupt)
        .unwrap();
    assert!(event_loop.run_with_timeout(100).unwrap() >= 1, "activation");
    let mut client = UnixStream::connect(&uds).unwrap();
    client.write_all(b"CONNECT 9\n").unwrap();
    for _ in 0..10 {
        event_loop.run_with_timeout(20).unwrap();
    }
    assert_eq!(ops(&driver.received()), vec![Some(Op::Request)]);
    drop(event_loop);
    let _ = std::fs::remove_dir_all(dir);
}
