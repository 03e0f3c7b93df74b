//! virtio-rng against mock queues: writable buffers are filled with
//! random bytes, hostile chains get nothing and break nothing.

use super::*;
use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const MEM_SIZE: usize = 0x10_0000;
const RINGS: u64 = 0x4_0000;
const NEXT: u16 = VRING_DESC_F_NEXT as u16;
const WRITE: u16 = VRING_DESC_F_WRITE as u16;

fn desc(addr: u64, len: u32, flags: u16, next: u16) -> RawDescriptor {
    RawDescriptor::from(SplitDescriptor::new(addr, len, flags, next))
}

/// Runs `chains` (each a list of descriptors) through a fresh device;
/// returns the used lengths, the device and guest memory.
fn run(chains: &[&[RawDescriptor]]) -> (Vec<u32>, Entropy, GuestMemoryMmap) {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
    let mock = MockSplitQueue::create(&mem, GuestAddress(RINGS), 16);
    let mut first = 0;
    for chain in chains {
        mock.add_desc_chains(chain, first).unwrap();
        first += chain.len() as u16;
    }
    let queue: Queue = mock.create_queue().unwrap();
    let mut device = Entropy::new().unwrap();
    let irq = EventFd::new(EFD_NONBLOCK).unwrap();
    let interrupt = Interrupt::new(crate::EventFdTrigger::new(irq.try_clone().unwrap()));
    let notify = EventFd::new(EFD_NONBLOCK).unwrap();
    device
        .activate(
            mem.clone(),
            vec![ActiveQueue { queue, notify }],
            interrupt.clone(),
        )
        .unwrap();
    device.process_queue();
    let used = mock.used().idx().load();
    let lens = (0..used)
        .map(|i| mock.used().ring().ref_at(i.into()).unwrap().load().len())
        .collect();
    assert_eq!(interrupt.status() & crate::virtio::INT_USED_RING, 1);
    (lens, device, mem)
}

#[test]
fn writable_buffers_are_filled_with_random_bytes() {
    let chain = [
        desc(0x1000, 512, WRITE | NEXT, 1),
        desc(0x3000, 256, WRITE, 0),
    ];
    let (lens, device, mem) = run(&[&chain]);
    assert_eq!(lens, vec![768]);
    let mut first = [0u8; 512];
    mem.read_slice(&mut first, GuestAddress(0x1000)).unwrap();
    let mut second = [0u8; 256];
    mem.read_slice(&mut second, GuestAddress(0x3000)).unwrap();
    // 768 random bytes are all zero with probability 2^-6144.
    assert!(first.iter().chain(second.iter()).any(|&b| b != 0));
    assert_ne!(first[..256], second[..], "two draws differ");
    let mut after = [0u8; 16];
    mem.read_slice(&mut after, GuestAddress(0x1200)).unwrap();
    assert_eq!(after, [0; 16], "nothing past the buffer");
    assert_eq!(device.counters().bytes, 768);
    assert_eq!(device.counters().requests, 1);
}

#[test]
fn hostile_chains_get_nothing_or_at_most_the_per_request_limit() {
    let readable_only = [desc(0x1000, 64, 0, 0)];
    let outside_memory = [desc(MEM_SIZE as u64 - 16, 4096, WRITE, 0)];
    let huge = [desc(0x8000, 0x8_0000, WRITE, 0)];
    let (lens, device, _mem) = run(&[&readable_only, &outside_memory, &huge]);
    assert_eq!(lens, vec![0, 0, MAX_BYTES_PER_REQUEST]);
    assert_eq!(device.counters().failed, 2);
    assert_eq!(device.counters().bytes, u64::from(MAX_BYTES_PER_REQUEST));
}

mod rate_limited {
    //! A rate-limited entropy queue: the bytes asked for count against the
    //! bandwidth bucket; what the bucket refuses waits in the ring until
    //! the limiter's timer fires. The limiter reads a clock the test moves.

    use super::*;
    use crate::rate_limiter::{ManualClock, RateLimiter, RateLimiterConfig, TokenBucketConfig};
    use event_manager::{EventManager, MutEventSubscriber, SubscriberOps};
    use std::sync::Mutex;
    use std::time::Duration;

    type Loop = EventManager<Arc<Mutex<dyn MutEventSubscriber + Send>>>;

    #[test]
    fn bytes_beyond_the_bandwidth_wait_for_the_refill_timer() {
        let clock = Arc::new(ManualClock::new());
        // 1024 bytes per second: two 512-byte requests, not a third.
        let config = RateLimiterConfig {
            bandwidth: Some(TokenBucketConfig {
                size: 1024,
                one_time_burst: None,
                refill_time: 1000,
            }),
            ops: None,
        };
        let limiter = RateLimiter::with_clock(&config, clock.clone()).unwrap();
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).unwrap();
        let mock = MockSplitQueue::create(&mem, GuestAddress(RINGS), 16);
        let chains: Vec<RawDescriptor> = (0..3u16)
            .map(|i| desc(0x1000 + u64::from(i) * 0x1000, 512, WRITE, 0))
            .collect();
        for (i, chain) in chains.iter().enumerate() {
            mock.add_desc_chains(std::slice::from_ref(chain), i as u16)
                .unwrap();
        }
        let device = Arc::new(Mutex::new(Entropy::with_rate_limiter(limiter).unwrap()));
        let mut loop_ = Loop::new().unwrap();
        loop_.add_subscriber(device.clone());
        let irq = EventFd::new(EFD_NONBLOCK).unwrap();
        let interrupt = Interrupt::new(crate::EventFdTrigger::new(irq.try_clone().unwrap()));
        let notify = EventFd::new(EFD_NONBLOCK).unwrap();
        device
            .lock()
            .unwrap()
            .activate(
                mem.clone(),
                vec![ActiveQueue {
                    queue: mock.create_queue().unwrap(),
                    notify,
                }],
                interrupt,
            )
            .unwrap();
        assert_eq!(loop_.run_with_timeout(100).unwrap(), 1, "activation");
        let used = || mock.used().idx().load();
        assert_eq!(
            used(),
            2,
            "the bucket's 1024 bytes, the third request left queued"
        );
        assert!(device.lock().unwrap().is_throttled());
        assert_eq!(
            device
                .lock()
                .unwrap()
                .counters()
                .rate_limiter_throttled_bandwidth,
            1
        );
        // 512 bytes refill in 500 ms of the limiter's clock.
        clock.advance(Duration::from_millis(500));
        assert_eq!(loop_.run_with_timeout(3000).unwrap(), 1, "the timer");
        assert_eq!(used(), 3);
        let counters = device.lock().unwrap().counters();
        assert_eq!((counters.requests, counters.bytes), (3, 1536));
        assert_eq!(counters.rate_limiter_resumed, 1);
        // The saved state carries the spent budget.
        let state = device.lock().unwrap().save();
        assert!(Entropy::restore(&state).is_ok());
    }
}
