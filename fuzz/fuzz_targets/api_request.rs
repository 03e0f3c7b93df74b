//! Arbitrary client bytes into the API's HTTP parser and router.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    brique_api::fuzzing::run(data);
});
