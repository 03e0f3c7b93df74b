//! Arbitrary guest TX/RX descriptor chains and host frames into virtio-net.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    brique_devices::virtio::net::fuzzing::run(data);
});
