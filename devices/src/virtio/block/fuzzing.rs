//! A harness that feeds arbitrary bytes to virtio-blk as a guest's
//! descriptor table, avail ring and buffers, and checks that the device
//! neither panics nor changes the disk's size, whatever the bytes say.
//! Used by the cargo-fuzz target (fuzz/) and by a randomized unit test.

use super::{Block, CacheMode, Disk};
use crate::virtio::fuzzing::{self, DESCRIPTOR_BYTES, RINGS_ADDR};
use crate::virtio::{ActiveQueue, Interrupt, VirtioDevice};
use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::os::fd::FromRawFd;
use virtio_queue::mock::MockSplitQueue;
use virtio_queue::Queue;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

const QUEUE_SIZE: u16 = 16;
const DISK_SIZE: u64 = 16 * 512;

fn memfd_disk() -> Option<File> {
    // SAFETY: memfd_create takes a NUL-terminated name and flags; the
    // returned descriptor (checked) is owned by the File from here on.
    let fd = unsafe { libc::memfd_create(c"brique-fuzz-disk".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let mut file = unsafe { File::from_raw_fd(fd) };
    file.write_all(&[0xa5; DISK_SIZE as usize]).ok()?;
    Some(file)
}

/// Runs one fuzz input: byte 0 picks the number of descriptors and flags
/// (read-only disk, cache mode), then 16 bytes per descriptor (address,
/// length, flags, next), then bytes copied into guest memory as payload.
pub fn run(input: &[u8]) {
    let Some((&control, rest)) = input.split_first() else {
        return;
    };
    let count = usize::from(control % QUEUE_SIZE as u8) + 1;
    let read_only = control & 0x40 != 0;
    let cache = if control & 0x80 != 0 {
        CacheMode::Writeback
    } else {
        CacheMode::Unsafe
    };
    let descriptors = fuzzing::descriptors(rest, count);
    if descriptors.is_empty() {
        return;
    }
    let payload = rest.get(count * DESCRIPTOR_BYTES..).unwrap_or_default();
    let Some(mem) = fuzzing::guest_memory(payload) else {
        return;
    };
    let mock = MockSplitQueue::create(&mem, GuestAddress(RINGS_ADDR), QUEUE_SIZE);
    if mock.add_desc_chains(&descriptors, 0).is_err() {
        return;
    }
    let Ok(queue) = mock.create_queue::<Queue>() else {
        return;
    };
    let Some(file) = memfd_disk() else { return };
    let Ok(disk) = Disk::new(file, read_only, cache, "fuzz") else {
        return;
    };
    let Ok(mut block) = Block::new(disk) else {
        return;
    };
    let (Ok(irq), Ok(notify)) = (EventFd::new(EFD_NONBLOCK), EventFd::new(EFD_NONBLOCK)) else {
        return;
    };
    let interrupt = Interrupt::new(crate::EventFdTrigger::new(irq));
    if block
        .activate(mem.clone(), vec![ActiveQueue { queue, notify }], interrupt)
        .is_err()
    {
        return;
    }
    block.process_queue();
    let mut file = block.disk.file_for_checks();
    let size = file.seek(SeekFrom::End(0)).unwrap_or(DISK_SIZE);
    assert_eq!(size, DISK_SIZE, "the disk never grows or shrinks");
}
