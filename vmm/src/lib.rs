//! brique's VMM core: the configuration model, the KVM VM and its memory,
//! vCPU threads, boot (per architecture), devices and the device event loop.
//!
//! Data flow: a [`config::VmConfig`] (from `--config-file`, later the API)
//! is booted by [`machine::Machine::boot`] into a VM with vCPU threads and
//! one device event loop; [`machine::Machine::wait_for_exit`] says how the
//! guest ended.

pub mod arch;
pub mod config;
pub mod console;
pub mod controller;
pub mod event_loop;
pub mod guest_ram;
pub mod logger;
pub mod machine;
pub mod metrics;
pub mod persist;
pub mod phases;
pub mod seccomp;
pub mod threads;
pub mod vcpu;
pub mod virtio_devices;
pub mod vm;

pub use config::VmConfig;
pub use machine::{ConsoleIo, ExitReason, Machine, MachineError, Payload};
