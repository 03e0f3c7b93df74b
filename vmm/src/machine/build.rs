//! Building a machine, apart from running it. There are two ways in:
//! [`Machine::boot`] builds for a fresh boot (loads the kernel, sets the
//! boot vCPU's registers), [`Machine::restore`] builds from a snapshot
//! (maps its memory file, gives every device, the VM and each vCPU its
//! saved state). Both end in [`Machine::start`], which starts every thread
//! of a machine and nothing else does.

use super::{open, Machine, MachineError, Payload};
use crate::arch;
use crate::config::{ConfigError, HostLimits, HugePages, MachineConfig, VmConfig};
use crate::console::{ConsoleFlusher, ConsoleInput};
use crate::event_loop::{GuestSignal, GuestSignalWatcher, Subscriber};
use crate::guest_ram::RamBacking;
use crate::persist::MicrovmState;
use crate::phases::Phases;
use crate::vcpu::{IoBuses, Vcpu};
use crate::virtio_devices::{AttachedDevices, VirtioAttacher};
use crate::vm::Vm;
use crate::ConsoleIo;
use brique_devices::boot_timer::{BootTimer, BOOT_TIMER_LEN};
use brique_devices::console_sink::ConsoleSink;
use brique_devices::serial::{
    ConsoleOutput, GuestPanicReport, PanicWatcher, SerialConsole, SerialConsoleState,
};
use brique_devices::EventFdTrigger;
use kvm_ioctls::VcpuFd;
use linux_loader::cmdline::Cmdline;
use std::fs::File;
use std::sync::mpsc::{channel, Receiver};
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A machine built and not yet running: no thread of it started.
pub(super) struct Parts {
    pub(super) vm: Vm,
    pub(super) irqchip: arch::InterruptController,
    pub(super) vcpus: Vec<Vcpu>,
    pub(super) serial: Arc<Mutex<SerialConsole>>,
    pub(super) console: Arc<ConsoleSink>,
    pub(super) legacy: arch::LegacyDevices,
    pub(super) devices: AttachedDevices,
    pub(super) subscribers: Vec<Subscriber>,
    pub(super) buses: Arc<IoBuses>,
    pub(super) panic_report: GuestPanicReport,
    pub(super) guest_signals: Receiver<GuestSignal>,
}

/// What a booted machine has beyond its configuration: process-wide
/// choices from brique's command line.
#[derive(Debug, Clone, Copy, Default)]
pub struct BootOptions {
    /// The boot timer device (`--boot-timer`).
    pub boot_timer: bool,
}

/// How a restored machine comes up.
#[derive(Debug, Clone, Copy, Default)]
pub struct RestoreOptions {
    /// KVM logs the pages the guest writes (diff snapshots of it).
    pub track_dirty_pages: bool,
    /// The guest's clock advances by the wall time since the snapshot.
    pub clock_realtime: bool,
    /// Run at once (otherwise it comes up paused).
    pub resume: bool,
}

pub(crate) fn eventfd() -> Result<EventFd, MachineError> {
    EventFd::new(EFD_NONBLOCK).map_err(|err| MachineError::Device(format!("eventfd: {err}")))
}

pub(crate) fn clone_evt(evt: &EventFd) -> Result<EventFd, MachineError> {
    evt.try_clone()
        .map_err(|err| MachineError::Device(format!("eventfd: {err}")))
}

/// The devices every machine has, wired to the VM: the serial console,
/// the architecture's legacy devices, the reset and panic signals and the
/// console input; new, or in saved states.
struct FixedDevices {
    buses: IoBuses,
    serial: Arc<Mutex<SerialConsole>>,
    console: Arc<ConsoleSink>,
    legacy: arch::LegacyDevices,
    subscribers: Vec<Subscriber>,
    panic_report: GuestPanicReport,
    guest_signals: Receiver<GuestSignal>,
}

fn fixed_devices(
    vm: &Vm,
    console: ConsoleIo,
    saved: Option<(&SerialConsoleState, &arch::LegacyState)>,
) -> Result<FixedDevices, MachineError> {
    let (guest_signal_sender, guest_signals) = channel();
    let panic_report = GuestPanicReport::default();
    let panic_evt = eventfd()?;
    let reset_evt = eventfd()?;
    let serial_irq = eventfd()?;
    let input_drained = eventfd()?;
    let sink = Arc::new(
        ConsoleSink::new(console.output)
            .map_err(|err| MachineError::Device(format!("console output: {err}")))?,
    );
    let output = ConsoleOutput::new(
        sink.clone(),
        Some(PanicWatcher::new(
            panic_report.clone(),
            EventFdTrigger::new(clone_evt(&panic_evt)?),
        )),
    );
    let serial_trigger = EventFdTrigger::new(clone_evt(&serial_irq)?);
    let drained_trigger = Some(EventFdTrigger::new(clone_evt(&input_drained)?));
    let serial = match saved {
        Some((state, _)) => SerialConsole::restore(state, serial_trigger, output, drained_trigger)
            .map_err(|err| MachineError::Device(err.to_string()))?,
        None => SerialConsole::new(serial_trigger, output, drained_trigger),
    };
    let serial = Arc::new(Mutex::new(serial));
    let mut buses = IoBuses::default();
    let legacy = arch::attach_legacy_devices(
        vm,
        &mut buses,
        serial.clone(),
        &serial_irq,
        &reset_evt,
        saved.map(|(_, legacy)| legacy),
    )?;
    let mut subscribers: Vec<Subscriber> = vec![
        Arc::new(Mutex::new(GuestSignalWatcher::new(
            reset_evt,
            panic_evt,
            guest_signal_sender,
        ))),
        Arc::new(Mutex::new(ConsoleFlusher::new(sink.clone()))),
    ];
    if let Some(input) = console.input {
        subscribers.push(Arc::new(Mutex::new(ConsoleInput::new(
            input,
            serial.clone(),
            input_drained,
        ))));
    }
    Ok(FixedDevices {
        buses,
        serial,
        console: sink,
        legacy,
        subscribers,
        panic_report,
        guest_signals,
    })
}

impl FixedDevices {
    /// The whole machine, from these devices and the rest.
    fn into_parts(
        self,
        (vm, irqchip): (Vm, arch::InterruptController),
        vcpus: Vec<Vcpu>,
        devices: AttachedDevices,
        virtio_subscribers: Vec<Subscriber>,
        buses: Arc<IoBuses>,
    ) -> Parts {
        let mut subscribers = virtio_subscribers;
        subscribers.extend(self.subscribers);
        Parts {
            vm,
            irqchip,
            vcpus,
            serial: self.serial,
            console: self.console,
            legacy: self.legacy,
            devices,
            subscribers,
            buses,
            panic_report: self.panic_report,
            guest_signals: self.guest_signals,
        }
    }
}

/// Creates the VM's vCPUs, each set up as a new vCPU of this VM, then the
/// interrupt controller (which on some architectures needs every vCPU).
fn create_vcpus(
    vm: &Vm,
    config: &MachineConfig,
) -> Result<
    (
        Vec<VcpuFd>,
        Arc<arch::VcpuTemplate>,
        arch::InterruptController,
    ),
    MachineError,
> {
    let template = Arc::new(arch::VcpuTemplate::new(
        vm.kvm(),
        vm.fd(),
        config.vcpu_count,
        config.smt,
    )?);
    let fds = (0..config.vcpu_count)
        .map(|id| {
            let fd = vm
                .fd()
                .create_vcpu(u64::from(id))
                .map_err(|source| MachineError::CreateVcpu { id, source })?;
            arch::init_vcpu(&fd, id, &template)?;
            Ok(fd)
        })
        .collect::<Result<Vec<_>, MachineError>>()?;
    let irqchip = arch::create_interrupt_controller(vm.fd(), config.vcpu_count)?;
    Ok((fds, template, irqchip))
}

/// The vCPUs, ready to run on `buses`.
fn vcpus_on(
    fds: Vec<VcpuFd>,
    buses: &Arc<IoBuses>,
    template: &Arc<arch::VcpuTemplate>,
) -> Vec<Vcpu> {
    fds.into_iter()
        .zip(0u8..)
        .map(|(fd, id)| Vcpu::new(id, fd, buses.clone(), template.clone()))
        .collect()
}

impl Machine {
    /// Validates `config`, builds the VM, loads `payload` and starts the
    /// vCPUs and the device event loop.
    pub fn boot(
        config: &VmConfig,
        payload: Payload<'_>,
        console: ConsoleIo,
        options: BootOptions,
    ) -> Result<Self, MachineError> {
        let machine_config = &config.machine_config;
        // A Linux payload needs the whole configuration (which includes the
        // machine config); bare test code only the machine config.
        let limits = HostLimits::of_this_host();
        if matches!(payload, Payload::Linux) {
            config.validate(&limits)?;
        } else {
            machine_config.validate(&limits)?;
        }
        let backing = match machine_config.huge_pages {
            HugePages::Hugetlbfs2M => RamBacking::HugePages2M,
            HugePages::None | HugePages::Transparent => RamBacking::Anonymous,
        };
        let vm = Vm::new(
            machine_config.mem_size_mib,
            backing,
            machine_config.track_dirty_pages,
        )?;
        let (vcpu_fds, template, irqchip) = create_vcpus(&vm, machine_config)?;
        let mut fixed = fixed_devices(&vm, console, None)?;
        let mut buses = std::mem::take(&mut fixed.buses);
        if options.boot_timer {
            buses
                .mmio
                .insert(
                    Arc::new(Mutex::new(BootTimer::new())),
                    arch::BOOT_TIMER_START,
                    BOOT_TIMER_LEN,
                )
                .map_err(|err| MachineError::Device(format!("boot timer: {err}")))?;
        }

        // virtio devices, announced on the kernel command line.
        let mut cmdline = Cmdline::new(arch::CMDLINE_CAPACITY).map_err(MachineError::Cmdline)?;
        if let Some(boot) = &config.boot_source {
            cmdline
                .insert_str(boot.boot_args.as_deref().unwrap_or(arch::DEFAULT_BOOT_ARGS))
                .map_err(MachineError::Cmdline)?;
        }
        let mut virtio = VirtioAttacher::new(&vm, &mut buses.mmio, &mut cmdline);
        virtio.attach_drives(&config.drives)?;
        virtio.attach_network_interfaces(&config.network_interfaces)?;
        virtio.attach_entropy(config.entropy.as_ref())?;
        virtio.attach_vsock(config.vsock.as_ref())?;
        let (virtio_subscribers, devices) = virtio.finish();
        let buses = Arc::new(buses);

        // Guest payload and vCPU state.
        let entry = match payload {
            Payload::Linux => load_linux(&vm, config, &cmdline, &devices.slots())?,
            #[cfg(target_arch = "x86_64")]
            Payload::BareCode(code) => arch::load_bare_code(vm.memory(), code)?,
            #[cfg(not(target_arch = "x86_64"))]
            Payload::_Unused(_) => return Err(MachineError::Unsupported("raw payloads")),
        };
        for (fd, id) in vcpu_fds.iter().zip(0u8..) {
            arch::set_boot_registers(fd, id, entry)?;
        }
        let vcpus = vcpus_on(vcpu_fds, &buses, &template);
        let parts = fixed.into_parts((vm, irqchip), vcpus, devices, virtio_subscribers, buses);
        Self::start(parts, None, &mut Phases::new())
    }

    /// Builds the machine a snapshot saved: `config` is the snapshot's own
    /// (with any tap overrides), `memory_file` its memory, mapped privately.
    /// The vCPU threads start paused and restore their state; the machine
    /// then runs or stays paused as `options` say. On error nothing of it
    /// is left running.
    pub fn restore(
        state: &MicrovmState,
        config: &VmConfig,
        memory_file: &File,
        options: RestoreOptions,
        console: ConsoleIo,
        phases: &mut Phases,
    ) -> Result<Self, MachineError> {
        let machine_config = &config.machine_config;
        let vm = Vm::new(
            machine_config.mem_size_mib,
            RamBacking::File(memory_file),
            options.track_dirty_pages,
        )?;
        phases.mark("VM and memory");
        let (vcpu_fds, template, irqchip) = create_vcpus(&vm, machine_config)?;
        phases.mark("vCPUs");
        arch::restore_vm(vm.fd(), &irqchip, &state.vm, options.clock_realtime)?;
        phases.mark("VM state");
        let mut fixed = fixed_devices(
            &vm,
            console,
            Some((&state.devices.serial, &state.devices.legacy)),
        )?;
        let mut buses = std::mem::take(&mut fixed.buses);
        // The guest booted long ago: this command line is never read.
        let mut cmdline = Cmdline::new(arch::CMDLINE_CAPACITY).map_err(MachineError::Cmdline)?;
        let mut virtio = VirtioAttacher::new(&vm, &mut buses.mmio, &mut cmdline);
        virtio.attach_saved(&state.devices.virtio, config)?;
        let (virtio_subscribers, devices) = virtio.finish();
        let buses = Arc::new(buses);
        phases.mark("devices");
        let vcpus = vcpus_on(vcpu_fds, &buses, &template);
        let parts = fixed.into_parts((vm, irqchip), vcpus, devices, virtio_subscribers, buses);
        let mut machine = Self::start(parts, Some(&state.vcpus), phases)?;
        if options.resume {
            machine.resume();
            phases.mark("resume");
        }
        Ok(machine)
    }
}

fn load_linux(
    vm: &Vm,
    config: &VmConfig,
    cmdline: &Cmdline,
    virtio: &[arch::VirtioSlot],
) -> Result<arch::BootEntry, MachineError> {
    let boot = config
        .boot_source
        .as_ref()
        .ok_or(ConfigError::NoBootSource)?;
    let mut kernel = open(&boot.kernel_image_path)?;
    let mut initrd = boot.initrd_path.as_deref().map(open).transpose()?;
    Ok(arch::load_guest(
        vm.memory(),
        &mut kernel,
        initrd.as_mut(),
        cmdline,
        config.machine_config.vcpu_count,
        virtio,
    )?)
}
