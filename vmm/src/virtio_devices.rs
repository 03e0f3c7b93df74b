//! Wiring virtio devices into a VM: each gets an MMIO window and an
//! interrupt line, its queue notifications become KVM ioeventfds, its
//! interrupt a KVM irqfd, and the guest learns of it from the kernel
//! command line (`virtio_mmio.device=4K@0xADDR:IRQ`).

use crate::arch;
use crate::config::{
    parse_mac, CacheType, DriveConfig, EntropyConfig, NetworkInterfaceConfig, VmConfig,
    VsockDeviceConfig,
};
use crate::event_loop::Subscriber;
use crate::persist::{VirtioDeviceState, VirtioKindState};
use crate::vm::Vm;
use brique_devices::bus::Bus;
use brique_devices::rate_limiter::{RateLimiter, RateLimiterConfig};
use brique_devices::virtio::block::{Block, CacheMode, Disk};
use brique_devices::virtio::mmio::{
    MmioTransport, MmioTransportState, MMIO_WINDOW_SIZE, QUEUE_NOTIFY_OFFSET,
};
use brique_devices::virtio::net::tap::{Tap, TapError};
use brique_devices::virtio::net::Net;
use brique_devices::virtio::rng::Entropy;
use brique_devices::virtio::vsock::{Vsock, VsockConfig};
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
    /// A saved device state does not fit the configured device.
    #[error("{id}: {detail}")]
    SavedState { id: String, detail: String },
}

/// Hands out MMIO windows and interrupt lines to virtio devices.
#[derive(Debug, Default)]
struct VirtioSlots {
    next: usize,
}

impl VirtioSlots {
    /// The next slot's MMIO base and interrupt line.
    fn peek(&self) -> Result<(u64, u32), VirtioSetupError> {
        let count = arch::VIRTIO_IRQS.count();
        let irq = arch::VIRTIO_IRQS
            .clone()
            .nth(self.next)
            .ok_or(VirtioSetupError::TooManyDevices(count))?;
        let base = arch::MMIO_DEVICES_START + self.next as u64 * MMIO_WINDOW_SIZE;
        Ok((base, irq))
    }

    fn take(&mut self) -> Result<(u64, u32), VirtioSetupError> {
        let slot = self.peek()?;
        self.next += 1;
        Ok(slot)
    }
}

/// A typed handle on an attached virtio device model.
#[derive(Debug, Clone)]
pub enum VirtioModel {
    /// virtio-blk.
    Block(Arc<Mutex<Block>>),
    /// virtio-net.
    Net(Arc<Mutex<Net>>),
    /// virtio-rng.
    Entropy(Arc<Mutex<Entropy>>),
    /// virtio-vsock.
    Vsock(Arc<Mutex<Vsock>>),
}

/// The id the entropy device goes by in snapshots and logs (Firecracker's
/// has none: there is at most one).
pub const ENTROPY_ID: &str = "entropy";
/// The id the vsock device goes by in snapshots and logs (there is at most
/// one; Firecracker's deprecated `vsock_id` is only kept in the config).
pub const VSOCK_ID: &str = "vsock";

/// One attached virtio device: its id, where it sits, its transport and
/// its model, kept for runtime changes, counters and snapshots.
#[derive(Debug)]
pub struct AttachedVirtio {
    /// drive_id or iface_id.
    pub id: String,
    /// MMIO window base.
    pub mmio_base: u64,
    /// Interrupt line.
    pub irq: u32,
    /// The virtio-mmio transport (also on the MMIO bus).
    pub transport: Arc<Mutex<MmioTransport>>,
    /// The device model.
    pub model: VirtioModel,
}

/// The attached virtio devices, in attach order.
#[derive(Debug, Default)]
pub struct AttachedDevices {
    /// Every device.
    pub virtio: Vec<AttachedVirtio>,
}

fn lock<T: ?Sized>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl AttachedDevices {
    /// Raises again the interrupt of every device with unacknowledged
    /// status (after a restore, once the vCPUs can take it).
    pub fn raise_pending_interrupts(&self) {
        for device in &self.virtio {
            lock(&device.transport).raise_pending_interrupt();
        }
    }

    /// Every device's window and interrupt line, for the boot tables.
    pub fn slots(&self) -> Vec<arch::VirtioSlot> {
        self.virtio
            .iter()
            .map(|d| arch::VirtioSlot {
                base: d.mmio_base,
                irq: d.irq,
            })
            .collect()
    }

    /// Block devices with their drive ids.
    pub fn drives(&self) -> impl Iterator<Item = (&str, &Arc<Mutex<Block>>)> {
        self.virtio.iter().filter_map(|d| match &d.model {
            VirtioModel::Block(block) => Some((d.id.as_str(), block)),
            _ => None,
        })
    }

    /// Network devices with their interface ids.
    pub fn nets(&self) -> impl Iterator<Item = (&str, &Arc<Mutex<Net>>)> {
        self.virtio.iter().filter_map(|d| match &d.model {
            VirtioModel::Net(net) => Some((d.id.as_str(), net)),
            _ => None,
        })
    }

    /// The entropy device, if there is one.
    pub fn entropy(&self) -> Option<&Arc<Mutex<Entropy>>> {
        self.virtio.iter().find_map(|d| match &d.model {
            VirtioModel::Entropy(entropy) => Some(entropy),
            _ => None,
        })
    }

    /// The vsock device, if there is one.
    pub fn vsock(&self) -> Option<&Arc<Mutex<Vsock>>> {
        self.virtio.iter().find_map(|d| match &d.model {
            VirtioModel::Vsock(vsock) => Some(vsock),
            _ => None,
        })
    }

    /// Every device's state. Each device's and transport's lock is held
    /// until `then` returns, so that the device event loop changes neither
    /// them nor guest memory meanwhile (a snapshot writes guest memory in
    /// `then`).
    pub fn save_then<T>(&self, then: impl FnOnce(Vec<VirtioDeviceState>) -> T) -> T {
        let mut transports = Vec::with_capacity(self.virtio.len());
        let mut blocks = Vec::new();
        let mut nets = Vec::new();
        let mut entropies = Vec::new();
        let mut vsocks = Vec::new();
        let mut states = Vec::with_capacity(self.virtio.len());
        for device in &self.virtio {
            // Transport first, then model: the order a vCPU's MMIO access
            // takes them in.
            let transport = lock(&device.transport);
            let transport_state = transport.save();
            let model_state = match &device.model {
                VirtioModel::Block(block) => {
                    let guard = lock(block);
                    let state = VirtioKindState::Block(guard.save());
                    blocks.push(guard);
                    state
                }
                VirtioModel::Net(net) => {
                    let guard = lock(net);
                    let state = VirtioKindState::Net(guard.save());
                    nets.push(guard);
                    state
                }
                VirtioModel::Entropy(entropy) => {
                    let guard = lock(entropy);
                    let state = VirtioKindState::Entropy(guard.save());
                    entropies.push(guard);
                    state
                }
                VirtioModel::Vsock(vsock) => {
                    let guard = lock(vsock);
                    let state = VirtioKindState::Vsock(guard.save());
                    vsocks.push(guard);
                    state
                }
            };
            transports.push(transport);
            states.push(VirtioDeviceState {
                id: device.id.clone(),
                mmio_base: device.mmio_base,
                irq: device.irq,
                transport: transport_state,
                device: model_state,
            });
        }
        let result = then(states);
        drop((blocks, nets, entropies, vsocks, transports));
        result
    }
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
        for drive in boot_order(drives) {
            let limiter = rate_limiter(&drive.drive_id, drive.rate_limiter)?;
            let block = Block::with_rate_limiter(open_disk(drive)?, limiter)
                .map_err(|err| VirtioSetupError::Device(err.to_string()))?;
            self.attach(&drive.drive_id, block, None, VirtioModel::Block)?;
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
            let rx = rate_limiter(&iface.iface_id, iface.rx_rate_limiter)?;
            let tx = rate_limiter(&iface.iface_id, iface.tx_rate_limiter)?;
            let net = Net::with_rate_limiters(Box::new(open_tap(iface)?), mac, rx, tx)
                .map_err(|err| VirtioSetupError::Device(err.to_string()))?
                .with_mtu(iface.mtu);
            self.attach(&iface.iface_id, net, None, VirtioModel::Net)?;
        }
        Ok(())
    }

    /// Attaches the entropy device, if configured.
    pub fn attach_entropy(
        &mut self,
        entropy: Option<&EntropyConfig>,
    ) -> Result<(), VirtioSetupError> {
        if let Some(entropy) = entropy {
            let limiter = rate_limiter(ENTROPY_ID, entropy.rate_limiter)?;
            let device = Entropy::with_rate_limiter(limiter)
                .map_err(|err| VirtioSetupError::Device(err.to_string()))?;
            self.attach(ENTROPY_ID, device, None, VirtioModel::Entropy)?;
        }
        Ok(())
    }

    /// Attaches the vsock device, if configured: its socket is bound now,
    /// so that a taken path fails the start.
    pub fn attach_vsock(
        &mut self,
        vsock: Option<&VsockDeviceConfig>,
    ) -> Result<(), VirtioSetupError> {
        if let Some(config) = vsock {
            let device = Vsock::new(&VsockConfig {
                guest_cid: config.guest_cid,
                uds_path: config.uds_path.clone(),
            })
            .map_err(|err| VirtioSetupError::Device(format!("vsock: {err}")))?;
            self.attach(VSOCK_ID, device, None, VirtioModel::Vsock)?;
        }
        Ok(())
    }

    /// Rebuilds the virtio devices of a snapshot, in their saved order and
    /// slots: each drive's file, interface's tap and vsock socket is opened
    /// by the path and name in `config` (the saved configuration, with any
    /// overrides), and each device is given its saved state.
    pub fn attach_saved(
        &mut self,
        saved: &[VirtioDeviceState],
        config: &VmConfig,
    ) -> Result<(), VirtioSetupError> {
        let (drives, interfaces) = (&config.drives, &config.network_interfaces);
        for state in saved {
            let unfit = |detail: String| VirtioSetupError::SavedState {
                id: state.id.clone(),
                detail,
            };
            let slot = self.slots.peek()?;
            if (state.mmio_base, state.irq) != slot {
                return Err(unfit(format!(
                    "saved at {:#x} (IRQ {}), where slot {:#x} (IRQ {}) comes next",
                    state.mmio_base, state.irq, slot.0, slot.1
                )));
            }
            match &state.device {
                VirtioKindState::Block(block_state) => {
                    let drive = drives
                        .iter()
                        .find(|d| d.drive_id == state.id)
                        .ok_or_else(|| unfit("no such drive in the saved configuration".into()))?;
                    let block = Block::restore(open_disk(drive)?, block_state)
                        .map_err(|err| unfit(err.to_string()))?;
                    self.attach(&state.id, block, Some(&state.transport), VirtioModel::Block)?;
                }
                VirtioKindState::Net(net_state) => {
                    let iface = interfaces
                        .iter()
                        .find(|n| n.iface_id == state.id)
                        .ok_or_else(|| {
                            unfit("no such interface in the saved configuration".into())
                        })?;
                    let mac = iface
                        .guest_mac
                        .as_deref()
                        .map(parse_mac)
                        .transpose()
                        .map_err(|err| unfit(err.to_string()))?;
                    let net = Net::restore(Box::new(open_tap(iface)?), mac, net_state)
                        .map_err(|err| unfit(err.to_string()))?
                        .with_mtu(iface.mtu);
                    self.attach(&state.id, net, Some(&state.transport), VirtioModel::Net)?;
                }
                VirtioKindState::Entropy(entropy_state) => {
                    let device =
                        Entropy::restore(entropy_state).map_err(|err| unfit(err.to_string()))?;
                    self.attach(
                        &state.id,
                        device,
                        Some(&state.transport),
                        VirtioModel::Entropy,
                    )?;
                }
                VirtioKindState::Vsock(vsock_state) => {
                    let vsock = config
                        .vsock
                        .as_ref()
                        .ok_or_else(|| unfit("no vsock in the saved configuration".into()))?;
                    if vsock.guest_cid != vsock_state.guest_cid {
                        return Err(unfit(format!(
                            "the device has guest_cid {}, the configuration {}",
                            vsock_state.guest_cid, vsock.guest_cid
                        )));
                    }
                    let device = Vsock::restore(&vsock.uds_path, vsock_state)
                        .map_err(|err| unfit(format!("vsock: {err}")))?;
                    self.attach(
                        &state.id,
                        device,
                        Some(&state.transport),
                        VirtioModel::Vsock,
                    )?;
                }
            }
        }
        Ok(())
    }

    /// Attaches one virtio device, which is also an event loop subscriber:
    /// a new transport, or one in `saved` state (which activates a device
    /// that was active). `typed` makes the typed handle kept on it.
    fn attach<D>(
        &mut self,
        id: &str,
        device: D,
        saved: Option<&MmioTransportState>,
        typed: fn(Arc<Mutex<D>>) -> VirtioModel,
    ) -> Result<(), VirtioSetupError>
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
            .register_irqfd(&irq_evt, arch::irqfd_gsi(irq))
            .map_err(kvm("virtio irqfd"))?;
        let interrupt = Interrupt::new(EventFdTrigger::new(irq_evt));
        let memory = self.vm.memory().clone();
        let transport = match saved {
            Some(state) => MmioTransport::restore(device.clone(), memory, interrupt, state)
                .map_err(|err| VirtioSetupError::SavedState {
                    id: id.to_owned(),
                    detail: err.to_string(),
                })?,
            None => MmioTransport::new(device.clone(), memory, interrupt)
                .map_err(|err| VirtioSetupError::Device(err.to_string()))?,
        };
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
        let transport = Arc::new(Mutex::new(transport));
        self.mmio
            .insert(transport.clone(), base, MMIO_WINDOW_SIZE)
            .map_err(|err| VirtioSetupError::Device(err.to_string()))?;
        if arch::VIRTIO_ON_CMDLINE {
            self.cmdline
                .add_virtio_mmio_device(MMIO_WINDOW_SIZE, GuestAddress(base), irq, None)
                .map_err(VirtioSetupError::Cmdline)?;
        }
        self.subscribers.push(device.clone());
        self.devices.virtio.push(AttachedVirtio {
            id: id.to_owned(),
            mmio_base: base,
            irq,
            transport,
            model: typed(device),
        });
        Ok(())
    }
}

/// The limiter `config` asks for (none: no limit) for device `id`.
fn rate_limiter(
    id: &str,
    config: Option<RateLimiterConfig>,
) -> Result<RateLimiter, VirtioSetupError> {
    RateLimiter::new(&config.unwrap_or_default())
        .map_err(|err| VirtioSetupError::Device(format!("{id}: rate limiter: {err}")))
}

/// Drives in attach order: the root device first, so it is /dev/vda.
fn boot_order(drives: &[DriveConfig]) -> impl Iterator<Item = &DriveConfig> {
    let root = drives.iter().filter(|d| d.is_root_device);
    root.chain(drives.iter().filter(|d| !d.is_root_device))
}

/// Opens `iface`'s tap (before the guest runs, so that a missing or busy
/// tap is a clear error).
fn open_tap(iface: &NetworkInterfaceConfig) -> Result<Tap, VirtioSetupError> {
    Tap::open(&iface.host_dev_name).map_err(|source| VirtioSetupError::Tap {
        id: iface.iface_id.clone(),
        source,
    })
}
