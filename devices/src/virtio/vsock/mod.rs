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
}
