//! Arbitrary bytes as a snapshot state file, and as its payload.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    brique_vmm::persist::fuzzing::run(data);
});
