//! brique's device models.
//!
//! Everything here is plain device logic: no KVM, no threads of its own. The
//! VMM wires devices to vCPU exits through a [`bus::Bus`] and to interrupts
//! through [`EventFdTrigger`]s (irqfds on KVM), which keeps every device
//! testable in an ordinary unit test.

pub mod boot_timer;
pub mod bus;
pub mod clock;
pub mod console_sink;
pub mod i8042;
pub mod rate_limiter;
pub mod rtc;
pub mod serial;
pub mod state;
pub mod virtio;

use vmm_sys_util::eventfd::EventFd;

/// Guest memory as every device and the VMM see it: mmap-backed regions
/// with a dirty bitmap, so that what the VMM itself writes into guest memory
/// (virtio buffers and rings) is known to diff snapshots, beside KVM's dirty
/// log of the guest's own writes.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;
/// One region of [`GuestMemoryMmap`].
pub type GuestRegionMmap = vm_memory::GuestRegionMmap<vm_memory::bitmap::AtomicBitmap>;

/// An [`EventFd`] used as a `vm_superio::Trigger`: writing it raises an
/// interrupt (when registered as a KVM irqfd) or wakes an event loop.
#[derive(Debug)]
pub struct EventFdTrigger(EventFd);

impl EventFdTrigger {
    /// Wraps `evt`.
    pub fn new(evt: EventFd) -> Self {
        Self(evt)
    }

    /// The wrapped eventfd.
    pub fn event_fd(&self) -> &EventFd {
        &self.0
    }
}

impl vm_superio::Trigger for EventFdTrigger {
    type E = std::io::Error;

    fn trigger(&self) -> std::io::Result<()> {
        self.0.write(1)
    }
}
