//! Turning fuzz input bytes into what a guest driver makes: descriptor
//! tables and buffers in guest memory. Shared by the device harnesses
//! (`block::fuzzing`, `net::fuzzing`) that the cargo-fuzz targets (fuzz/)
//! and the unit tests run.

use crate::GuestMemoryMmap;
use virtio_queue::desc::{split::Descriptor as SplitDescriptor, RawDescriptor};
use vm_memory::{Bytes, GuestAddress};

/// Guest memory size of a harness.
pub const MEM_SIZE: usize = 0x1_0000;
/// Where the input's payload bytes go.
pub const PAYLOAD_ADDR: u64 = 0x1000;
/// Where the harness puts its queues' rings (up to the end of memory).
pub const RINGS_ADDR: u64 = 0x8000;
/// Bytes of input per descriptor: address (8), length (4), flags (2), next (2).
pub const DESCRIPTOR_BYTES: usize = 16;

/// Up to `count` descriptors from `bytes`. Even addresses are folded into
/// guest memory or just past it, odd ones are used raw.
pub fn descriptors(bytes: &[u8], count: usize) -> Vec<RawDescriptor> {
    bytes
        .chunks_exact(DESCRIPTOR_BYTES)
        .take(count)
        .map(|chunk| {
            let word = |range: std::ops::Range<usize>| {
                let mut le = [0u8; 8];
                le[..range.len()].copy_from_slice(&chunk[range]);
                u64::from_le_bytes(le)
            };
            let raw_addr = word(0..8);
            let addr = if raw_addr & 1 == 0 {
                raw_addr % (MEM_SIZE as u64 + 0x1000)
            } else {
                raw_addr
            };
            RawDescriptor::from(SplitDescriptor::new(
                addr,
                word(8..12) as u32,
                word(12..14) as u16,
                word(14..16) as u16,
            ))
        })
        .collect()
}

/// Guest memory with as much of `payload` as fits below the rings.
pub fn guest_memory(payload: &[u8]) -> Option<GuestMemoryMmap> {
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), MEM_SIZE)]).ok()?;
    let len = payload.len().min((RINGS_ADDR - PAYLOAD_ADDR) as usize);
    mem.write_slice(&payload[..len], GuestAddress(PAYLOAD_ADDR))
        .ok()?;
    Some(mem)
}

/// `count` pseudo-random inputs of up to `max_len` bytes (xorshift, fixed
/// seed), to run a harness on stable Rust in every test run.
pub fn pseudo_random_inputs(count: usize, max_len: usize) -> impl Iterator<Item = Vec<u8>> {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    (0..count).map(move |_| {
        let len = (next() % (max_len as u64 + 1)) as usize;
        (0..len).map(|_| next() as u8).collect()
    })
}
