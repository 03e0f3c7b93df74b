//! The fuzzing harness for the snapshot state file: any bytes go through
//! the file decoder; any payload (wrapped in a valid header and checksum,
//! so that the JSON parser and the checks are reached) through the parser,
//! the whole-state checks, the description and each saved queue's own
//! check. None may panic. Used by `fuzz/fuzz_targets/snapshot_state.rs`
//! and by a unit test over mutations of a real state.

use super::{file, MicrovmState};
use crate::config::HostLimits;

/// Runs `data` as a state file and as a state file's payload.
pub fn run(data: &[u8]) {
    let limits = HostLimits::of_this_host();
    exercise(MicrovmState::from_file_bytes(data), &limits);
    exercise(MicrovmState::from_file_bytes(&file::encode(data)), &limits);
}

fn exercise(parsed: Result<MicrovmState, super::SnapshotError>, limits: &HostLimits) {
    let state = match parsed {
        Ok(state) => state,
        Err(err) => {
            assert!(!err.to_string().is_empty());
            return;
        }
    };
    let checked = state.check(limits);
    let _ = state.describe();
    let _ = state.memory_bytes();
    for device in &state.devices.virtio {
        for queue in &device.transport.queues {
            let _ = queue.to_queue("fuzz", queue.max_size);
        }
    }
    if checked.is_ok() {
        let again = state.to_file_bytes().expect("a parsed state serializes");
        assert!(MicrovmState::from_file_bytes(&again).is_ok());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic mutations (flipped, dropped, duplicated bytes) of a
    /// real state's payload, through the harness on stable Rust.
    #[test]
    fn mutated_states_never_panic() {
        let state = super::super::tests::sample_state();
        let payload = serde_json::to_vec(&state).unwrap();
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let mut next = || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        run(&payload);
        for _ in 0..400 {
            let mut mutated = payload.clone();
            for _ in 0..(next() % 4 + 1) {
                let at = (next() as usize) % mutated.len();
                match next() % 3 {
                    0 => mutated[at] = next() as u8,
                    1 => {
                        mutated.remove(at);
                    }
                    _ => mutated.insert(at, mutated[at]),
                }
            }
            run(&mutated);
        }
    }
}
