//! virtio-vsock with Firecracker's Unix-socket backend.
//!
//! The guest talks AF_VSOCK; the host talks AF_UNIX:
//! - a host process connects to the socket at `uds_path`, sends
//!   `CONNECT <port>\n`, and once the guest's listener on `<port>` accepts
//!   it reads `OK <host port>\n`; from then on the socket is a byte stream
//!   to the guest ([`handshake`], [`muxer`]);
//! - a guest connection to host port P is connected to the Unix socket
//!   `<uds_path>_P` ([`unix`]).
//!
//! Modules, one job each: [`packet`] (the header and descriptor chains),
//! [`credit`] (flow control), [`connection`] (one connection's state
//! machine), [`handshake`] (the CONNECT line), [`unix`] (sockets),
//! [`muxer`] (routing, limits, polling), [`device`] (queues, config space,
//! snapshots and the transport reset a restored guest receives).

pub mod connection;
pub mod credit;
pub mod device;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod handshake;
pub mod muxer;
pub mod packet;
pub mod unix;

pub use device::{
    Vsock, VsockConfig, VsockCounters, VsockError, VsockState, EVENT_QUEUE, QUEUE_SIZE, RX_QUEUE,
    TX_QUEUE,
};
pub use muxer::Limits;

#[cfg(test)]
mod tests;

#[cfg(test)]
mod fuzz_smoke {
    /// The fuzz harness on pseudo-random inputs, on stable Rust in every
    /// test run (cargo-fuzz explores far more; see fuzz/).
    #[test]
    fn random_chains_and_packets_never_panic() {
        let inputs = crate::virtio::fuzzing::pseudo_random_inputs(600, 400);
        for (n, mut input) in inputs.enumerate() {
            // Steer half of the inputs to carry well-formed packets, with
            // few raw descriptors, so that connections do get made.
            if n % 2 == 0 && input.len() > 2 {
                input[0] &= 0x31;
                input[1] |= 0x1c;
            }
            super::fuzzing::run(&input);
        }
    }

    /// An input cargo-fuzz found (CI, stop 19): RX buffers laid over the
    /// rings, whose used entries the device's packets then overwrote; the
    /// harness took them for malformed packets.
    const RX_BUFFERS_OVER_THE_RINGS: &[u8] = &[
        241, 0, 0, 0, 47, 255, 78, 198, 198, 198, 198, 198, 198, 198, 198, 198, 198, 198, 198, 198,
        198, 198, 198, 198, 198, 198, 198, 198, 198, 201, 198, 14, 0, 0, 0, 0, 0, 91, 0, 0, 0, 212,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        212, 212, 212, 212, 212, 212, 212, 212, 212, 212, 195, 212, 212, 212, 212, 212, 212, 212,
        212, 212, 212, 212, 212, 212, 212, 212, 212, 212, 212, 212, 212, 212, 212, 212, 0, 1, 86,
        212, 212, 212, 212, 212, 212, 212, 212, 212, 212, 212, 195, 212, 212, 212, 212, 212, 212,
        212, 212, 212, 212, 212, 212, 198, 198, 198, 198, 198, 198, 198, 198, 198, 122, 198, 198,
        198, 198, 198, 198, 198, 198, 198, 198, 198, 198, 198, 198, 198, 198, 198, 198, 198, 198,
        198, 198, 198, 198, 198, 198, 201, 198, 0, 0, 0, 0, 198, 198, 198, 198, 198, 0, 20, 0, 0,
        10, 0, 224, 212, 212, 212, 212, 212, 0, 1, 86, 0, 212, 212, 212, 212, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    /// Another (here): 13 RX chains, whose avail entries the mock queue
    /// lays over its own used ring, which the harness then read back.
    const MORE_RX_CHAINS_THAN_THE_MOCK_HOLDS: &[u8] = &[
        209, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 242, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        61, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 32, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 54, 0, 0, 0, 51,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 209,
        61, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];

    /// A third: a restored device, which has the default connection limit,
    /// not the harness's.
    const A_RESTORED_DEVICE_S_LIMIT: &[u8] = &[
        0, 255, 255, 0, 0, 0, 0, 0, 0, 0, 61, 255, 95, 0, 1, 0, 0, 0, 49, 26, 10, 0, 0, 1, 0, 0, 1,
        0, 132, 0, 49, 255, 95, 0, 48, 0, 0, 0, 49, 254, 10, 0, 0, 1, 0, 0, 1, 0, 4, 0, 49, 26, 10,
        0, 0, 1, 255, 0, 26, 132, 65, 0, 49, 0, 1, 0, 49, 0, 1, 0, 10, 0, 0, 0, 0,
    ];

    #[test]
    fn inputs_found_by_cargo_fuzz_pass() {
        super::fuzzing::run(RX_BUFFERS_OVER_THE_RINGS);
        super::fuzzing::run(MORE_RX_CHAINS_THAN_THE_MOCK_HOLDS);
        super::fuzzing::run(A_RESTORED_DEVICE_S_LIMIT);
    }
}
