//! Arbitrary guest TX/RX descriptor chains and vsock packets into
//! virtio-vsock, with a host socket listening and a host process connecting.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    brique_devices::virtio::vsock::fuzzing::run(data);
});
