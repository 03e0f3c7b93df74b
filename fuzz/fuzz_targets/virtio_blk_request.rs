//! Arbitrary guest descriptor chains and buffers into virtio-blk.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    brique_devices::virtio::block::fuzzing::run(data);
});
