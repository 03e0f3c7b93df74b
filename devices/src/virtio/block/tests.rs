//! virtio-blk against mock queues: requests of every type, and hostile
//! descriptor chains that must end in an error status, not a panic, with
//! guest memory and disk bytes outside the request untouched.

use super::*;
use crate::GuestMemoryMmap;
use std::io::{Read, Seek, SeekFrom, Write};
use virtio_bindings::virtio_blk::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEM_SIZE: usize = 0x10_0000;
const HEADER: u64 = 0x1_0000;
const DATA: u64 = 0x2_0000;
const STATUS: u64 = 0x3_0000;
const DISK_SECTORS: u64 = 64;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;

struct Fixture {
    mem: GuestMemoryMmap,
    path: std::path::PathBuf,
}

impl Fixture {
    fn new(name: &str) -> Self {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let path = std::env::temp_dir().join(format!("brique-blk-{name}-{}", std::process::id()));
        let mut file = std::fs::File::create(&path).unwrap();
        for sector in 0..DISK_SECTORS {
            file.write_all(&[sector as u8; 512]).unwrap();
        }
        Self { mem, path }
    }

    fn disk_bytes(&self) -> Vec<u8> {
        let mut bytes = Vec::new();
        std::fs::File::open(&self.path)
            .unwrap()
            .read_to_end(&mut bytes)
            .unwrap();
        bytes
    }

    fn device(&self, read_only: bool, cache: CacheMode) -> Block {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&self.path)
            .unwrap();
        Block::new(Disk::new(file, read_only, cache, "data-disk").unwrap()).unwrap()
    }

    /// A device over the fixture's file whose requests go through `limiter`.
    fn limited_device(&self, limiter: crate::rate_limiter::RateLimiter) -> Block {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&self.path)
            .unwrap();
        let disk = Disk::new(file, false, CacheMode::Unsafe, "data-disk").unwrap();
        Block::with_rate_limiter(disk, limiter).unwrap()
    }

    /// Runs one chain through a fresh activated device; returns the used
    /// length, the status byte and the device.
    fn run(&self, block: &mut Block, descs: &[RawDescriptor]) -> (u32, u8) {
        let queue_mem = &self.mem;
        // Fresh rings for every run.
        queue_mem
            .write_slice(&[0u8; 0x1_0000], GuestAddress(0x4_0000))
            .unwrap();
        let mock = MockSplitQueue::create(queue_mem, GuestAddress(0x4_0000), 16);
        mock.add_desc_chains(descs, 0).unwrap();
        let queue: Queue = mock.create_queue().unwrap();
        self.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
        let (interrupt, _irq) = self.activate(block, queue);
        block.process_queue();
        let used = mock.used().ring().ref_at(0).unwrap().load();
        assert_eq!(mock.used().idx().load(), 1, "exactly one used entry");
        assert_eq!(interrupt.status() & crate::virtio::INT_USED_RING, 1);
        let status: u8 = self.mem.read_obj(GuestAddress(STATUS)).unwrap();
        (used.len(), status)
    }

    /// Activates `block` on `queue`; returns its interrupt and the irqfd.
    fn activate(&self, block: &mut Block, queue: Queue) -> (Arc<Interrupt>, EventFd) {
        self.activate_notified_by(block, queue, EventFd::new(EFD_NONBLOCK).unwrap())
    }

    /// Activates `block` on `queue` with `notify` as the queue's notifier.
    fn activate_notified_by(
        &self,
        block: &mut Block,
        queue: Queue,
        notify: EventFd,
    ) -> (Arc<Interrupt>, EventFd) {
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = Interrupt::new(crate::EventFdTrigger::new(irq.try_clone().unwrap()));
        block
            .activate(
                self.mem.clone(),
                vec![ActiveQueue { queue, notify }],
                interrupt.clone(),
            )
            .unwrap();
        (interrupt, irq)
    }

    fn header(&self, kind: u32, sector: u64) {
        self.mem
            .write_obj(kind.to_le(), GuestAddress(HEADER))
            .unwrap();
        self.mem.write_obj(0u32, GuestAddress(HEADER + 4)).unwrap();
        self.mem
            .write_obj(sector.to_le(), GuestAddress(HEADER + 8))
            .unwrap();
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// header -> data (len, direction) -> status
fn three(data_len: u32, data_flags: u16) -> Vec<RawDescriptor> {
    vec![
        desc(HEADER, 16, NEXT, 1),
        desc(DATA, data_len, data_flags | NEXT, 2),
        desc(STATUS, 1, WRITE, 0),
    ]
}

#[test]
fn read_returns_disk_sectors() {
    let f = Fixture::new("read");
    let mut block = f.device(false, CacheMode::Unsafe);
    f.header(VIRTIO_BLK_T_IN, 3);
    let (used, status) = f.run(&mut block, &three(1024, WRITE));
    assert_eq!((used, u32::from(status)), (1025, VIRTIO_BLK_S_OK));
    let mut data = [0u8; 1024];
    f.mem.read_slice(&mut data, GuestAddress(DATA)).unwrap();
    assert!(data[..512].iter().all(|b| *b == 3) && data[512..].iter().all(|b| *b == 4));
    assert_eq!(block.counters().completed, 1);
}

#[test]
fn write_reaches_the_file_and_nothing_else() {
    let f = Fixture::new("write");
    let before = f.disk_bytes();
    let mut block = f.device(false, CacheMode::Writeback);
    f.mem.write_slice(&[0xab; 512], GuestAddress(DATA)).unwrap();
    f.header(VIRTIO_BLK_T_OUT, 10);
    let (used, status) = f.run(&mut block, &three(512, 0));
    assert_eq!((used, u32::from(status)), (1, VIRTIO_BLK_S_OK));
    let after = f.disk_bytes();
    assert!(after[10 * 512..11 * 512].iter().all(|b| *b == 0xab));
    assert_eq!(after[..10 * 512], before[..10 * 512]);
    assert_eq!(after[11 * 512..], before[11 * 512..]);
}

#[test]
fn read_only_disk_refuses_writes_and_offers_ro() {
    let f = Fixture::new("ro");
    let before = f.disk_bytes();
    let mut block = f.device(true, CacheMode::Unsafe);
    assert_ne!(block.offered_features() & (1 << VIRTIO_BLK_F_RO), 0);
    assert_eq!(block.offered_features() & (1 << VIRTIO_BLK_F_DISCARD), 0);
    f.header(VIRTIO_BLK_T_OUT, 0);
    let (_, status) = f.run(&mut block, &three(512, 0));
    assert_eq!(u32::from(status), VIRTIO_BLK_S_IOERR);
    assert_eq!(f.disk_bytes(), before);
}

#[test]
fn flush_get_id_and_unsupported() {
    let f = Fixture::new("misc");
    let mut block = f.device(false, CacheMode::Writeback);
    assert_ne!(block.offered_features() & (1 << VIRTIO_BLK_F_FLUSH), 0);
    f.header(VIRTIO_BLK_T_FLUSH, 0);
    let flush = [desc(HEADER, 16, NEXT, 1), desc(STATUS, 1, WRITE, 0)];
    assert_eq!(f.run(&mut block, &flush).1, VIRTIO_BLK_S_OK as u8);

    f.header(VIRTIO_BLK_T_GET_ID, 0);
    let (used, status) = f.run(&mut block, &three(20, WRITE));
    assert_eq!((used, u32::from(status)), (21, VIRTIO_BLK_S_OK));
    let mut id = [0u8; 20];
    f.mem.read_slice(&mut id, GuestAddress(DATA)).unwrap();
    assert_eq!(&id[..9], b"data-disk");
    assert!(id[9..].iter().all(|b| *b == 0));

    f.header(0x77, 0);
    assert_eq!(f.run(&mut block, &flush).1, VIRTIO_BLK_S_UNSUPP as u8);
    let unsafe_block = f.device(false, CacheMode::Unsafe);
    assert_eq!(
        unsafe_block.offered_features() & (1 << VIRTIO_BLK_F_FLUSH),
        0
    );
}

#[test]
fn discard_and_write_zeroes_zero_the_range_only() {
    let f = Fixture::new("discard");
    let mut block = f.device(false, CacheMode::Unsafe);
    for (kind, sector) in [
        (VIRTIO_BLK_T_DISCARD, 8u64),
        (VIRTIO_BLK_T_WRITE_ZEROES, 16),
    ] {
        f.mem.write_obj(sector.to_le(), GuestAddress(DATA)).unwrap();
        f.mem
            .write_obj(8u32.to_le(), GuestAddress(DATA + 8))
            .unwrap();
        f.mem.write_obj(0u32, GuestAddress(DATA + 12)).unwrap();
        f.header(kind, 0);
        assert_eq!(f.run(&mut block, &three(16, 0)).1, VIRTIO_BLK_S_OK as u8);
    }
    let bytes = f.disk_bytes();
    assert_eq!(bytes.len() as u64, DISK_SECTORS * 512, "size kept");
    assert!(bytes[8 * 512..24 * 512].iter().all(|b| *b == 0));
    assert!(bytes[7 * 512..8 * 512].iter().all(|b| *b == 7));
    assert!(bytes[24 * 512..25 * 512].iter().all(|b| *b == 24));

    // A segment past the end is refused, nothing changes.
    let before = f.disk_bytes();
    f.mem
        .write_obj((DISK_SECTORS - 1).to_le(), GuestAddress(DATA))
        .unwrap();
    f.header(VIRTIO_BLK_T_DISCARD, 0);
    assert_eq!(f.run(&mut block, &three(16, 0)).1, VIRTIO_BLK_S_IOERR as u8);
    assert_eq!(f.disk_bytes(), before);
}

#[test]
fn hostile_chains_end_in_an_error_status() {
    let f = Fixture::new("hostile");
    let before = f.disk_bytes();
    let mut block = f.device(false, CacheMode::Unsafe);
    let ioerr = VIRTIO_BLK_S_IOERR as u8;

    // Data buffer outside guest memory.
    f.header(VIRTIO_BLK_T_OUT, 0);
    let outside = [
        desc(HEADER, 16, NEXT, 1),
        desc(MEM_SIZE as u64 - 256, 512, NEXT, 2),
        desc(STATUS, 1, WRITE, 0),
    ];
    assert_eq!(f.run(&mut block, &outside), (1, ioerr));
    // Address + length wrapping around.
    let wrapping = [
        desc(HEADER, 16, NEXT, 1),
        desc(u64::MAX - 511, 512, WRITE | NEXT, 2),
        desc(STATUS, 1, WRITE, 0),
    ];
    f.header(VIRTIO_BLK_T_IN, 0);
    assert_eq!(f.run(&mut block, &wrapping), (1, ioerr));
    // Lengths whose sum overflows 4 GiB: the walk stops there (virtio
    // forbids such chains), leaving no status byte: returned unanswered.
    let huge = [
        desc(HEADER, 16, NEXT, 1),
        desc(DATA, u32::MAX, WRITE | NEXT, 2),
        desc(STATUS, 1, WRITE, 0),
    ];
    assert_eq!(f.run(&mut block, &huge), (0, 0xff));
    // Not a whole sector.
    assert_eq!(f.run(&mut block, &three(100, WRITE)), (1, ioerr));
    // Header in a device-writable buffer.
    let writable_header = [
        desc(HEADER, 16, WRITE | NEXT, 1),
        desc(DATA, 512, WRITE | NEXT, 2),
        desc(STATUS, 1, WRITE, 0),
    ];
    assert_eq!(f.run(&mut block, &writable_header), (1, ioerr));
    // Header too short.
    let short_header = [desc(HEADER, 8, NEXT, 1), desc(STATUS, 1, WRITE, 0)];
    assert_eq!(f.run(&mut block, &short_header), (1, ioerr));
    // Read into a device-readable buffer (wrong direction).
    assert_eq!(f.run(&mut block, &three(512, 0)), (1, ioerr));
    // Sector past the end, and a sector count that overflows.
    f.header(VIRTIO_BLK_T_IN, DISK_SECTORS);
    assert_eq!(f.run(&mut block, &three(512, WRITE)), (1, ioerr));
    f.header(VIRTIO_BLK_T_OUT, u64::MAX);
    assert_eq!(f.run(&mut block, &three(512, 0)), (1, ioerr));

    assert_eq!(
        f.disk_bytes(),
        before,
        "no hostile request touched the disk"
    );
    assert_eq!(block.counters().failed, 8);
    assert_eq!(block.counters().dropped, 1);
}

#[test]
fn unanswerable_chains_are_returned_without_status() {
    let f = Fixture::new("noanswer");
    let mut block = f.device(false, CacheMode::Unsafe);
    f.header(VIRTIO_BLK_T_IN, 0);
    // Last descriptor readable: no status byte to write.
    let no_status = [desc(HEADER, 16, NEXT, 1), desc(DATA, 512, 0, 0)];
    assert_eq!(f.run(&mut block, &no_status), (0, 0xff));
    // Status outside guest memory.
    let bad_status = [
        desc(HEADER, 16, NEXT, 1),
        desc(MEM_SIZE as u64, 1, WRITE, 0),
    ];
    assert_eq!(f.run(&mut block, &bad_status), (0, 0xff));
    assert_eq!(block.counters().dropped, 2);
    // A loop: 0 -> 1 -> 0 -> ... The walk stops at the queue size; what
    // it collected mixes directions, so the request fails, bounded.
    let looping = [desc(HEADER, 16, NEXT, 1), desc(DATA, 512, WRITE | NEXT, 0)];
    assert_eq!(f.run(&mut block, &looping).0, 1);
    let status: u8 = f.mem.read_obj(GuestAddress(DATA)).unwrap();
    assert_eq!(u32::from(status), VIRTIO_BLK_S_IOERR);
}

#[test]
fn config_space_reports_capacity_and_limits() {
    let f = Fixture::new("config");
    let block = f.device(false, CacheMode::Writeback);
    let mut capacity = [0u8; 8];
    block.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), DISK_SECTORS);
    let mut seg_max = [0u8; 4];
    block.read_config(12, &mut seg_max);
    assert_eq!(u32::from_le_bytes(seg_max), 254);
    let mut past = [0xffu8; 4];
    block.read_config(200, &mut past);
    assert_eq!(past, [0; 4]);
    let mut file = std::fs::File::open(&f.path).unwrap();
    assert_eq!(file.seek(SeekFrom::End(0)).unwrap(), DISK_SECTORS * 512);
}

#[test]
fn replacing_the_disk_updates_capacity_generation_and_interrupts() {
    let f = Fixture::new("swap");
    let mut block = f.device(false, CacheMode::Unsafe);
    // Activate (one read), so that a config change has someone to tell.
    f.header(VIRTIO_BLK_T_IN, 0);
    let (_, status) = f.run(&mut block, &three(512, WRITE));
    assert_eq!(u32::from(status), VIRTIO_BLK_S_OK);
    assert_eq!(block.counters().read_bytes, 512);
    let irq_status_before = block.active.as_ref().unwrap().interrupt.status();
    assert_eq!(irq_status_before & crate::virtio::INT_CONFIG, 0);

    let bigger = std::env::temp_dir().join(format!("brique-blk-swap2-{}", std::process::id()));
    std::fs::File::create(&bigger)
        .unwrap()
        .set_len(DISK_SECTORS * 512 * 4)
        .unwrap();
    let open = |read_only: bool| {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(!read_only)
            .open(&bigger)
            .unwrap();
        Disk::new(file, read_only, CacheMode::Unsafe, "data-disk").unwrap()
    };
    assert!(matches!(
        block.replace_disk(open(true)),
        Err(ReplaceDiskError::ModeChanged)
    ));
    assert_eq!(block.capacity_sectors(), DISK_SECTORS, "refused: unchanged");
    assert_eq!(block.config_generation(), 0);

    block.replace_disk(open(false)).unwrap();
    let mut capacity = [0u8; 8];
    block.read_config(0, &mut capacity);
    assert_eq!(u64::from_le_bytes(capacity), DISK_SECTORS * 4);
    assert_eq!(block.config_generation(), 1);
    let irq_status = block.active.as_ref().unwrap().interrupt.status();
    assert_ne!(irq_status & crate::virtio::INT_CONFIG, 0);
    std::fs::remove_file(&bigger).unwrap();
}

/// With EVENT_IDX: after draining the queue the device tells the driver to
/// notify at the next request (avail_event = requests seen), and it raises
/// an interrupt only when the used index passes the driver's used_event.
#[test]
fn event_idx_rearms_the_driver_and_suppresses_interrupts() {
    const QSIZE: u16 = 16;
    let f = Fixture::new("event-idx");
    assert_ne!(
        f.device(false, CacheMode::Unsafe).offered_features()
            & crate::virtio::VIRTIO_RING_F_EVENT_IDX,
        0
    );
    for (used_event, interrupt_expected) in [(5u16, false), (1u16, true)] {
        let mut block = f.device(false, CacheMode::Unsafe);
        f.mem
            .write_slice(&[0u8; 0x1_0000], GuestAddress(0x4_0000))
            .unwrap();
        let mock = MockSplitQueue::create(&f.mem, GuestAddress(0x4_0000), QSIZE);
        f.header(VIRTIO_BLK_T_IN, 0);
        let mut chains = three(512, WRITE);
        chains.extend(vec![
            desc(HEADER, 16, NEXT, 4),
            desc(DATA, 512, WRITE | NEXT, 5),
            desc(STATUS, 1, WRITE, 0),
        ]);
        mock.add_desc_chains(&chains, 0).unwrap();
        // used_event sits after the avail ring's entries.
        let used_event_addr = GuestAddress(mock.avail_addr().0 + 4 + 2 * u64::from(QSIZE));
        f.mem
            .write_obj(used_event.to_le(), used_event_addr)
            .unwrap();
        let mut queue: Queue = mock.create_queue().unwrap();
        // The mock lays its used ring over used_event: use a ring of our own.
        const USED_RING: u64 = 0x5_0000;
        queue.set_used_ring_address(Some(USED_RING as u32), Some(0));
        queue.set_event_idx(true);
        let (_interrupt, irq) = f.activate(&mut block, queue);
        block.process_queue();
        let used_idx: u16 = f.mem.read_obj(GuestAddress(USED_RING + 2)).unwrap();
        assert_eq!(u16::from_le(used_idx), 2, "both requests served");
        let avail_event_addr = GuestAddress(USED_RING + 4 + 8 * u64::from(QSIZE));
        let avail_event: u16 = f.mem.read_obj(avail_event_addr).unwrap();
        assert_eq!(u16::from_le(avail_event), 2, "notify me at request 3");
        assert_eq!(
            irq.read().is_ok(),
            interrupt_expected,
            "used_event {used_event}"
        );
    }
}

/// A driver that moves the avail index more than a queue's length ahead
/// (here by overwriting it) has broken the queue: the device serves
/// nothing, asks for a reset once (config interrupt), stays quiet on later
/// notifications, and works again after the reset.
#[test]
fn avail_index_beyond_the_queue_needs_a_reset() {
    let f = Fixture::new("broken-avail");
    let mut block = f.device(false, CacheMode::Unsafe);
    f.mem
        .write_slice(&[0u8; 0x1_0000], GuestAddress(0x4_0000))
        .unwrap();
    let mock = MockSplitQueue::create(&f.mem, GuestAddress(0x4_0000), 16);
    f.header(VIRTIO_BLK_T_IN, 0);
    mock.add_desc_chains(&three(512, WRITE), 0).unwrap();
    mock.avail().idx().store(u16::to_le(1 + 16 + 1));
    let queue: Queue = mock.create_queue().unwrap();
    let (interrupt, irq) = f.activate(&mut block, queue);
    let data = |mem: &GuestMemoryMmap| {
        let mut bytes = vec![0u8; 512];
        mem.read_slice(&mut bytes, GuestAddress(DATA)).unwrap();
        bytes
    };
    let before = data(&f.mem);
    block.process_queue();
    assert!(interrupt.needs_reset());
    assert_eq!(interrupt.status(), crate::virtio::INT_CONFIG);
    assert_eq!(irq.read().unwrap(), 1, "one config interrupt");
    assert_eq!(mock.used().idx().load(), 0, "nothing served");
    assert_eq!(data(&f.mem), before, "no byte moved");
    block.process_queue();
    assert!(irq.read().is_err(), "no second interrupt");
    assert_eq!(block.counters(), BlockCounters::default());

    // After a reset and a fresh activation the device serves again.
    block.reset();
    interrupt.clear();
    f.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    mock.avail().idx().store(u16::to_le(1));
    let queue: Queue = mock.create_queue().unwrap();
    let (interrupt, _irq) = f.activate(&mut block, queue);
    block.process_queue();
    assert!(!interrupt.needs_reset());
    assert_eq!(mock.used().idx().load(), 1);
    assert_eq!(f.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
}

/// A driver may reset the device and then notify its queue (the ioeventfd
/// stays registered): the event loop must consume that notification, not
/// see it again and again (a busy loop on the device thread). After
/// re-activation the same notifier serves requests again.
#[test]
fn notifications_after_a_reset_are_consumed() {
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use std::sync::Mutex;
    let f = Fixture::new("reset-notify");
    let block = Arc::new(Mutex::new(f.device(false, CacheMode::Unsafe)));
    let mut loop_ = EventManager::<Arc<Mutex<dyn MutEventSubscriber + Send>>>::new().unwrap();
    loop_.add_subscriber(block.clone());
    let notify = EventFd::new(EFD_NONBLOCK).unwrap();
    let activate = |mock: &MockSplitQueue<GuestMemoryMmap>| {
        f.activate_notified_by(
            &mut block.lock().unwrap(),
            mock.create_queue().unwrap(),
            notify.try_clone().unwrap(),
        );
    };
    f.mem
        .write_slice(&[0u8; 0x1_0000], GuestAddress(0x4_0000))
        .unwrap();
    let mock = MockSplitQueue::create(&f.mem, GuestAddress(0x4_0000), 16);
    activate(&mock);
    assert_eq!(loop_.run_with_timeout(100).unwrap(), 1, "activation");

    for _ in 0..3 {
        block.lock().unwrap().reset();
        notify.write(1).unwrap();
        assert_eq!(loop_.run_with_timeout(100).unwrap(), 1, "the notification");
        assert_eq!(
            loop_.run_with_timeout(50).unwrap(),
            0,
            "and nothing after it"
        );
        activate(&mock);
        assert_eq!(loop_.run_with_timeout(100).unwrap(), 1, "re-activation");
    }

    // The re-activated device serves a request announced on the notifier.
    f.header(VIRTIO_BLK_T_IN, 0);
    f.mem.write_obj(0xffu8, GuestAddress(STATUS)).unwrap();
    mock.add_desc_chains(&three(512, WRITE), 0).unwrap();
    notify.write(1).unwrap();
    assert_eq!(loop_.run_with_timeout(100).unwrap(), 1);
    assert_eq!(loop_.run_with_timeout(50).unwrap(), 0);
    assert_eq!(mock.used().idx().load(), 1);
    assert_eq!(f.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);
}

#[test]
fn a_restored_block_device_needs_the_disk_size_the_guest_knows() {
    let f = Fixture::new("restore");
    let saved = f.device(false, CacheMode::Writeback).save();
    assert_eq!(saved.capacity_sectors, DISK_SECTORS);
    let file = || {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&f.path)
            .unwrap()
    };
    let disk = Disk::new(file(), false, CacheMode::Writeback, "data-disk").unwrap();
    let block = Block::restore(disk, &saved).unwrap();
    assert_eq!(block.save(), saved);
    // The file grew since: another disk than the guest's.
    file().set_len((DISK_SECTORS + 8) * 512).unwrap();
    let disk = Disk::new(file(), false, CacheMode::Writeback, "data-disk").unwrap();
    let err = Block::restore(disk, &saved).unwrap_err();
    assert!(err.to_string().contains("sectors"), "{err}");
}

mod rate_limited {
    //! A rate-limited queue: it serves what the limiter allows, leaves the
    //! rest in the ring, and resumes when the limiter's timer fires in the
    //! event loop. The limiter reads a clock the test moves, so whether a
    //! timer event serves anything depends on that clock only.

    use super::*;
    use crate::rate_limiter::{
        BucketUpdate, ManualClock, RateLimiter, RateLimiterConfig, RateLimiterUpdate,
        TokenBucketConfig,
    };
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use std::sync::Mutex;
    use std::time::Duration;

    type Loop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

    fn bucket(size: u64, refill_time: u64) -> Option<TokenBucketConfig> {
        Some(TokenBucketConfig {
            size,
            one_time_burst: None,
            refill_time,
        })
    }

    /// `count` read requests of `len` bytes each, three descriptors apiece.
    fn reads(count: u16, len: u32) -> Vec<RawDescriptor> {
        (0..count)
            .flat_map(|i| {
                [
                    desc(HEADER, 16, NEXT, 3 * i + 1),
                    desc(DATA, len, WRITE | NEXT, 3 * i + 2),
                    desc(STATUS, 1, WRITE, 0),
                ]
            })
            .collect()
    }

    /// A limited device in an event loop, activated on a mock queue
    /// holding `chains`; returns the loop, the device, the mock queue and
    /// the queue's notifier.
    fn started<'m>(
        f: &'m Fixture,
        limiter: RateLimiter,
        chains: &[RawDescriptor],
    ) -> (
        Loop,
        Arc<Mutex<Block>>,
        MockSplitQueue<'m, GuestMemoryMmap>,
        EventFd,
    ) {
        let block = Arc::new(Mutex::new(f.limited_device(limiter)));
        let mut loop_ = Loop::new().unwrap();
        loop_.add_subscriber(block.clone());
        f.mem
            .write_slice(&[0u8; 0x1_0000], GuestAddress(0x4_0000))
            .unwrap();
        let mock = MockSplitQueue::create(&f.mem, GuestAddress(0x4_0000), 16);
        f.header(VIRTIO_BLK_T_IN, 0);
        mock.add_desc_chains(chains, 0).unwrap();
        let notify = EventFd::new(EFD_NONBLOCK).unwrap();
        f.activate_notified_by(
            &mut block.lock().unwrap(),
            mock.create_queue().unwrap(),
            notify.try_clone().unwrap(),
        );
        assert_eq!(loop_.run_with_timeout(100).unwrap(), 1, "activation");
        (loop_, block, mock, notify)
    }

    /// Runs the loop for one event (the limiter's timer), waiting up to 1 s.
    fn next_event(loop_: &mut Loop) {
        assert_eq!(loop_.run_with_timeout(3000).unwrap(), 1, "one event");
    }

    #[test]
    fn an_ops_limited_queue_stops_and_resumes_when_the_timer_fires() {
        let f = Fixture::new("rl-ops");
        let clock = Arc::new(ManualClock::new());
        // 2 requests per 400 ms: one every 200 ms (long enough that the
        // timer does not fire early on a loaded machine).
        let config = RateLimiterConfig {
            bandwidth: None,
            ops: bucket(2, 400),
        };
        let limiter = RateLimiter::with_clock(&config, clock.clone()).unwrap();
        let (mut loop_, block, mock, notify) = started(&f, limiter, &reads(5, 512));
        let used = || mock.used().idx().load();
        assert_eq!(used(), 2, "the bucket's 2 requests, the rest left queued");
        assert!(block.lock().unwrap().is_throttled());
        assert_eq!(
            block.lock().unwrap().counters().rate_limiter_throttled_ops,
            1
        );

        // A notification while throttled serves nothing.
        notify.write(1).unwrap();
        assert_eq!(loop_.run_with_timeout(100).unwrap(), 1);
        assert_eq!(used(), 2);

        // The timer fires (200 ms) but the limiter's clock has not moved:
        // still no token, the device waits again.
        next_event(&mut loop_);
        assert_eq!(used(), 2);
        assert_eq!(block.lock().unwrap().counters().rate_limiter_resumed, 1);

        // 400 ms on the limiter's clock: two more requests.
        clock.advance(Duration::from_millis(400));
        next_event(&mut loop_);
        assert_eq!(used(), 4);
        clock.advance(Duration::from_millis(200));
        next_event(&mut loop_);
        assert_eq!(used(), 5, "all served, in order");
        assert_eq!(f.mem.read_obj::<u8>(GuestAddress(STATUS)).unwrap(), 0);

        // An empty queue arms no timer.
        assert!(!block.lock().unwrap().is_throttled());
        assert_eq!(loop_.run_with_timeout(100).unwrap(), 0);
        let counters = block.lock().unwrap().counters();
        assert_eq!(counters.completed, 5);
        assert_eq!(counters.rate_limiter_throttled_bandwidth, 0);
        assert_eq!(counters.rate_limiter_resumed, 3);
    }

    #[test]
    fn a_bandwidth_limited_queue_counts_data_bytes() {
        let f = Fixture::new("rl-bytes");
        let clock = Arc::new(ManualClock::new());
        // 2048 bytes per 1000 ms: two 1 KiB reads, not a third.
        let config = RateLimiterConfig {
            bandwidth: bucket(2048, 1000),
            ops: None,
        };
        let limiter = RateLimiter::with_clock(&config, clock.clone()).unwrap();
        let (mut loop_, block, mock, _notify) = started(&f, limiter, &reads(3, 1024));
        assert_eq!(mock.used().idx().load(), 2);
        let counters = block.lock().unwrap().counters();
        assert_eq!(counters.rate_limiter_throttled_bandwidth, 1);
        assert_eq!(counters.read_bytes, 2048);
        // 1024 bytes refill in 500 ms.
        clock.advance(Duration::from_millis(499));
        let wait = block
            .lock()
            .unwrap()
            .rate_limiter
            .time_until_available(1024, crate::rate_limiter::TokenKind::Bytes);
        assert!(wait <= Duration::from_millis(1), "{wait:?}");
        clock.advance(Duration::from_millis(1));
        next_event(&mut loop_);
        assert_eq!(mock.used().idx().load(), 3);
    }

    #[test]
    fn an_update_lifts_the_limit_and_the_queue_resumes() {
        let f = Fixture::new("rl-patch");
        // One request per 1000 s: without the update, the queue would wait.
        let config = RateLimiterConfig {
            bandwidth: None,
            ops: bucket(1, 1_000_000),
        };
        let limiter = RateLimiter::new(&config).unwrap();
        let (mut loop_, block, mock, _notify) = started(&f, limiter, &reads(4, 512));
        assert_eq!(mock.used().idx().load(), 1);
        let update: RateLimiterUpdate =
            serde_json::from_str(r#"{"ops": {"size": 0, "refill_time": 0}}"#).unwrap();
        assert_eq!(update.ops, BucketUpdate::Disable);
        block.lock().unwrap().update_rate_limiter(&update).unwrap();
        assert_eq!(
            block.lock().unwrap().rate_limiter_config(),
            RateLimiterConfig::UNLIMITED
        );
        next_event(&mut loop_);
        assert_eq!(mock.used().idx().load(), 4);
    }

    #[test]
    fn the_limiter_is_saved_with_the_device_and_old_states_have_none() {
        let f = Fixture::new("rl-state");
        let config = RateLimiterConfig {
            bandwidth: bucket(1 << 20, 100),
            ops: bucket(100, 1000),
        };
        let block = f.limited_device(RateLimiter::new(&config).unwrap());
        let saved = block.save();
        assert_eq!(saved.rate_limiter.ops.map(|ops| ops.budget), Some(100));
        let json = serde_json::to_string(&saved).unwrap();
        let parsed: BlockState = serde_json::from_str(&json).unwrap();
        assert_eq!(parsed, saved);
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&f.path)
            .unwrap();
        let disk = Disk::new(file, false, CacheMode::Unsafe, "data-disk").unwrap();
        let restored = Block::restore(disk, &parsed).unwrap();
        assert_eq!(restored.rate_limiter_config(), config);

        let old: BlockState =
            serde_json::from_str(r#"{"capacity_sectors": 64, "config_generation": 2}"#).unwrap();
        assert_eq!(old.rate_limiter, Default::default());
    }
}
