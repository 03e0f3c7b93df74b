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
