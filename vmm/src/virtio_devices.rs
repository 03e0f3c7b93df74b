//! Wiring virtio devices into a VM: each gets an MMIO window and an
//! interrupt line, its queue notifications become KVM ioeventfds, its
//! interrupt a KVM irqfd, and the guest learns of it from the kernel
//! command line (`virtio_mmio.device=4K@0xADDR:IRQ`).

use crate::arch;
use crate::config::{parse_mac, CacheType, DriveConfig, NetworkInterfaceConfig};
use crate::event_loop::Subscriber;
use crate::vm::Vm;
use brique_devices::bus::Bus;
use brique_devices::virtio::block::{Block, CacheMode, Disk};
use brique_devices::virtio::mmio::{MmioTransport, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET};
use brique_devices::virtio::net::tap::{Tap, TapError};
use brique_devices::virtio::net::Net;
use brique_devices::virtio::{Interrupt, VirtioDevice};
use brique_devices::EventFdTrigger;
use event_manager::MutEventSubscriber;
use kvm_ioctls::IoEventAddress;
use linux_loader::cmdline::Cmdline;
use std::sync::{Arc, Mutex};
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Errors attaching virtio devices.
#[derive(Debug, thiserror::Error)]
pub enum VirtioSetupError {
    /// The drive's backing file cannot be opened.
    #[error("drive {id}: cannot open {path}: {source}")]
    OpenDrive {
        id: String,
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The interface's tap cannot be used.
    #[error("network interface {id}: {source}")]
    Tap { id: String, source: TapError },
    /// The interface's MAC address is malformed.
    #[error("network interface {id}: {detail}")]
    Mac { id: String, detail: String },
    /// No interrupt line or MMIO window is left.
    #[error("too many virtio devices (at most {0})")]
    TooManyDevices(usize),
    /// A KVM registration failed.
    #[error("{what}: {source}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    /// Device setup failed.
    #[error("{0}")]
    Device(String),
    /// The command line is full.
    #[error("kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
}

/// Hands out MMIO windows and interrupt lines to virtio devices.
#[derive(Debug, Default)]
struct VirtioSlots {
    next: usize,
}

impl VirtioSlots {
    fn take(&mut self) -> Result<(u64, u32), VirtioSetupError> {
        let count = arch::VIRTIO_IRQS.count();
        let irq = arch::VIRTIO_IRQS
            .clone()
            .nth(self.next)
            .ok_or(VirtioSetupError::TooManyDevices(count))?;
        let base = arch::MMIO_DEVICES_START + self.next as u64 * MMIO_WINDOW_SIZE;
        self.next += 1;
        Ok((base, irq))
    }
}

/// The attached virtio devices, by drive and interface id, for runtime
/// changes and counters.
#[derive(Debug, Default)]
pub struct AttachedDevices {
    /// Block devices by drive_id.
    pub drives: Vec<(String, Arc<Mutex<Block>>)>,
    /// Network devices by iface_id.
    pub nets: Vec<(String, Arc<Mutex<Net>>)>,
}

/// Opens `drive`'s backing file with its read-only and cache modes.
pub fn open_disk(drive: &DriveConfig) -> Result<Disk, VirtioSetupError> {
    let open_error = |source| VirtioSetupError::OpenDrive {
        id: drive.drive_id.clone(),
        path: drive.path_on_host.clone(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(!drive.is_read_only)
        .open(&drive.path_on_host)
        .map_err(open_error)?;
    let cache = match drive.cache_type {
        CacheType::Unsafe => CacheMode::Unsafe,
        CacheType::Writeback => CacheMode::Writeback,
    };
    Disk::new(file, drive.is_read_only, cache, &drive.drive_id).map_err(open_error)
}

/// Attaches virtio devices to one VM: each gets the next MMIO window and
/// interrupt line, a place on the MMIO bus and on the kernel command line;
/// the attacher collects their event loop subscribers and handles.
pub struct VirtioAttacher<'a> {
    vm: &'a Vm,
    mmio: &'a mut Bus,
    cmdline: &'a mut Cmdline,
    slots: VirtioSlots,
    subscribers: Vec<Subscriber>,
    devices: AttachedDevices,
}

impl std::fmt::Debug for VirtioAttacher<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioAttacher")
            .field("slots", &self.slots)
            .field("devices", &self.devices)
            .finish_non_exhaustive()
    }
}

impl<'a> VirtioAttacher<'a> {
    /// Attaches to `vm`'s `mmio` bus, announcing devices on `cmdline`.
    pub fn new(vm: &'a Vm, mmio: &'a mut Bus, cmdline: &'a mut Cmdline) -> Self {
        Self {
            vm,
            mmio,
            cmdline,
            slots: VirtioSlots::default(),
            subscribers: Vec::new(),
            devices: AttachedDevices::default(),
        }
    }

    /// The attached devices' event loop subscribers, and their handles.
    pub fn finish(self) -> (Vec<Subscriber>, AttachedDevices) {
        (self.subscribers, self.devices)
    }

    /// Opens every drive (root device first, so it is /dev/vda), attaches
    /// it, and puts `root=` on the command line.
    pub fn attach_drives(&mut self, drives: &[DriveConfig]) -> Result<(), VirtioSetupError> {
        let mut ordered: Vec<&DriveConfig> = drives.iter().filter(|d| d.is_root_device).collect();
        ordered.extend(drives.iter().filter(|d| !d.is_root_device));
        for drive in ordered {
            let block = Block::new(open_disk(drive)?)
                .map_err(|err| VirtioSetupError::Device(err.to_string()))?;
            let block = self.attach(block)?;
            self.devices.drives.push((drive.drive_id.clone(), block));
            if drive.is_root_device {
                let root = match &drive.partuuid {
                    Some(partuuid) => format!("root=PARTUUID={partuuid}"),
                    None => "root=/dev/vda".to_owned(),
                };
                let mode = if drive.is_read_only { "ro" } else { "rw" };
                self.cmdline
                    .insert_str(format!("{root} {mode}"))
                    .map_err(VirtioSetupError::Cmdline)?;
            }
        }
        Ok(())
    }

    /// Opens every interface's tap (before the guest runs, so that a
    /// missing or busy tap is a clear error) and attaches a virtio-net
    /// device for it.
    pub fn attach_network_interfaces(
        &mut self,
        interfaces: &[NetworkInterfaceConfig],
    ) -> Result<(), VirtioSetupError> {
        for iface in interfaces {
            let mac = iface
                .guest_mac
                .as_deref()
                .map(parse_mac)
                .transpose()
                .map_err(|err| VirtioSetupError::Mac {
                    id: iface.iface_id.clone(),
                    detail: err.to_string(),
                })?;
            let tap = Tap::open(&iface.host_dev_name).map_err(|source| VirtioSetupError::Tap {
                id: iface.iface_id.clone(),
                source,
            })?;
            let net = Net::new(Box::new(tap), mac)
                .map_err(|err| VirtioSetupError::Device(err.to_string()))?;
            let net = self.attach(net)?;
            self.devices.nets.push((iface.iface_id.clone(), net));
        }
        Ok(())
    }

    /// Attaches one virtio device, which is also an event loop subscriber,
    /// and returns the shared handle on it.
    fn attach<D>(&mut self, device: D) -> Result<Arc<Mutex<D>>, VirtioSetupError>
    where
        D: VirtioDevice + MutEventSubscriber + Send + 'static,
    {
        let device = Arc::new(Mutex::new(device));
        let (base, irq) = self.slots.take()?;
        let kvm = |what| move |source| VirtioSetupError::Kvm { what, source };
        let irq_evt =
            EventFd::new(EFD_NONBLOCK).map_err(|err| VirtioSetupError::Device(err.to_string()))?;
        self.vm
            .fd()
            .register_irqfd(&irq_evt, irq)
            .map_err(kvm("virtio irqfd"))?;
        let interrupt = Interrupt::new(EventFdTrigger::new(irq_evt));
        let transport = MmioTransport::new(device.clone(), self.vm.memory().clone(), interrupt)
            .map_err(|err| VirtioSetupError::Device(err.to_string()))?;
        for (index, evt) in transport.queue_evts().iter().enumerate() {
            self.vm
                .fd()
                .register_ioevent(
                    evt,
                    &IoEventAddress::Mmio(base + QUEUE_NOTIFY_OFFSET),
                    index as u32,
                )
                .map_err(kvm("virtio ioeventfd"))?;
        }
        self.mmio
            .insert(Arc::new(Mutex::new(transport)), base, MMIO_WINDOW_SIZE)
            .map_err(|err| VirtioSetupError::Device(err.to_string()))?;
        self.cmdline
            .add_virtio_mmio_device(MMIO_WINDOW_SIZE, GuestAddress(base), irq, None)
            .map_err(VirtioSetupError::Cmdline)?;
        self.subscribers.push(device.clone());
        Ok(device)
    }
}
