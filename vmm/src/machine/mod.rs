//! A running microVM: guest memory and KVM VM, its vCPU threads, its
//! devices and the device event loop; and how it ends.

pub(crate) mod build;
mod snapshot;

pub use build::{BootOptions, RestoreOptions};

use crate::arch;
use crate::config::ConfigError;
use crate::config::DriveConfig;
use crate::event_loop::{EventLoop, EventLoopError, GuestSignal};
use crate::metrics::{DeviceMetrics, METRICS};
use crate::persist::SnapshotError;
use crate::phases::Phases;
use crate::threads::{self, ThreadKind};
use crate::vcpu::{self, IoBuses, Vcpu, VcpuControl, VcpuRequest, VcpuStop};
use crate::virtio_devices::{open_disk, AttachedDevices, VirtioSetupError};
use crate::vm::{Vm, VmError};
use brique_devices::console_sink::ConsoleSink;
use brique_devices::rate_limiter::RateLimiterUpdate;
use brique_devices::serial::{GuestPanicReport, SerialConsole};
use brique_devices::virtio::block::Block;
use brique_devices::GuestMemoryMmap;
use build::Parts;
use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{channel, Receiver, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::Killable;

/// Errors building or starting a machine.
#[derive(Debug, thiserror::Error)]
pub enum MachineError {
    /// The configuration is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Creating the KVM VM failed.
    #[error(transparent)]
    Vm(#[from] VmError),
    /// Loading the guest or setting up vCPUs failed.
    #[error(transparent)]
    Arch(#[from] arch::ArchError),
    /// The kernel command line is invalid or too long.
    #[error("kernel command line: {0}")]
    Cmdline(linux_loader::cmdline::Error),
    /// A file named by the configuration cannot be opened.
    #[error("cannot open {path}: {source}")]
    Open {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    /// The configuration asks for a device this build cannot provide yet.
    #[error("{0} are not supported yet")]
    Unsupported(&'static str),
    /// A device could not be set up.
    #[error("device setup: {0}")]
    Device(String),
    /// KVM refused a vCPU.
    #[error("cannot create vCPU {id}: {source}")]
    CreateVcpu { id: u8, source: kvm_ioctls::Error },
    /// The device event loop failed to start.
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    /// A virtio device could not be attached.
    #[error(transparent)]
    Virtio(#[from] VirtioSetupError),
    /// A thread could not be started.
    #[error("cannot start a thread: {0}")]
    Thread(std::io::Error),
    /// The vCPUs did not all pause in time (they were resumed).
    #[error("the vCPUs did not pause within {0:?}; the microVM keeps running")]
    PauseTimeout(Duration),
    /// No drive has this id.
    #[error("no drive with id {0:?}")]
    NoSuchDrive(String),
    /// A snapshot could not be taken or loaded.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// A vCPU did not do what it was asked while paused.
    #[error("{0}")]
    VcpuRequest(String),
    /// The new backing file cannot replace the old one.
    #[error("drive {id}: {detail}")]
    ReplaceDrive { id: String, detail: String },
}

/// How long a pause may take before it is given up.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a paused vCPU may take to save or restore its state.
const VCPU_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// Why a machine ended. Clean ends exit brique with status 0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitReason {
    /// The guest rebooted (Linux `reboot` with `reboot=k`): the microVM ends.
    GuestReset,
    /// The guest powered off through a KVM system event.
    GuestPowerOff,
    /// The guest kernel panicked; its panic line.
    GuestPanic(String),
    /// A vCPU triple-faulted; `state` is its registers as KVM reports them.
    TripleFault { vcpu: u8, state: String },
    /// The guest reported a crash through a KVM system event.
    GuestCrash { vcpu: u8 },
    /// A vCPU could not go on running.
    VcpuFailed { vcpu: u8, detail: String },
    /// The operator stopped brique (SIGTERM or SIGINT).
    Stopped,
}

impl ExitReason {
    /// Whether the guest ended the machine on purpose.
    pub fn is_clean(&self) -> bool {
        matches!(self, Self::GuestReset | Self::GuestPowerOff | Self::Stopped)
    }

    /// brique's process exit status for this reason.
    pub fn exit_code(&self) -> i32 {
        if self.is_clean() {
            0
        } else {
            1
        }
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::GuestReset => write!(f, "guest rebooted"),
            Self::GuestPowerOff => write!(f, "guest powered off"),
            Self::Stopped => write!(f, "stopped by a signal (SIGTERM or SIGINT)"),
            Self::GuestPanic(line) => write!(f, "guest kernel panic: {line}"),
            Self::TripleFault { vcpu, state } => {
                write!(f, "guest triple fault on vCPU {vcpu}; vCPU state:")?;
                for line in state.lines() {
                    write!(f, "\n  {line}")?;
                }
                Ok(())
            }
            Self::GuestCrash { vcpu } => write!(f, "guest crashed on vCPU {vcpu}"),
            Self::VcpuFailed { vcpu, detail } => write!(f, "vCPU {vcpu} failed: {detail}"),
        }
    }
}

/// What the guest runs.
#[derive(Debug, Clone, Copy)]
pub enum Payload<'a> {
    /// The kernel, initrd and command line of the configuration.
    Linux,
    /// Raw 64-bit code loaded at [`BARE_CODE_ADDR`] and entered there by
    /// vCPU 0 in the state a Linux kernel gets (long mode, first GiB
    /// identity-mapped, boot GDT, empty IDT): for tests of the VMM itself
    /// with tiny hand-assembled guests.
    #[cfg(target_arch = "x86_64")]
    BareCode(&'a [u8]),
    #[doc(hidden)]
    #[cfg(not(target_arch = "x86_64"))]
    _Unused(std::marker::PhantomData<&'a ()>),
}

/// Where [`Payload::BareCode`] is loaded and entered.
#[cfg(target_arch = "x86_64")]
pub use arch::x86_64::BARE_CODE_ADDR;

/// The host side of the guest console.
pub struct ConsoleIo {
    /// Where guest console output goes.
    pub output: Box<dyn Write + Send>,
    /// A pollable descriptor whose bytes become guest console input.
    pub input: Option<RawFd>,
}

impl std::fmt::Debug for ConsoleIo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsoleIo")
            .field("input", &self.input)
            .finish_non_exhaustive()
    }
}

/// Events the machine waits on.
#[derive(Debug)]
enum MachineEvent {
    Guest(GuestSignal),
    VcpuStopped { id: u8, reason: VcpuStop },
}

/// Sends machine events and makes the machine's exit descriptor readable.
#[derive(Debug)]
struct EventSender {
    events: Sender<MachineEvent>,
    ready: Arc<EventFd>,
}

impl EventSender {
    fn send(&self, event: MachineEvent) -> bool {
        let sent = self.events.send(event).is_ok();
        if sent {
            if let Err(err) = self.ready.write(1) {
                log::error!("cannot signal a machine event: {err}");
            }
        }
        sent
    }
}

impl Clone for EventSender {
    fn clone(&self) -> Self {
        Self {
            events: self.events.clone(),
            ready: self.ready.clone(),
        }
    }
}

/// A booted microVM.
#[derive(Debug)]
pub struct Machine {
    vcpu_threads: Vec<JoinHandle<()>>,
    vcpu_control: Arc<VcpuControl>,
    paused: bool,
    events: Receiver<MachineEvent>,
    events_ready: Arc<EventFd>,
    serial: Arc<Mutex<SerialConsole>>,
    /// The console's host side: what it holds is written out at the end.
    console: Arc<ConsoleSink>,
    legacy: arch::LegacyDevices,
    devices: AttachedDevices,
    /// Started last (see [`Machine::start`]).
    event_loop: Option<EventLoop>,
    panic_report: GuestPanicReport,
    _buses: Arc<IoBuses>,
    irqchip: arch::InterruptController,
    /// Last: the VM and its guest memory go after every device, bus and
    /// thread that uses them.
    vm: Vm,
}

fn open(path: &std::path::Path) -> Result<File, MachineError> {
    File::open(path).map_err(|source| MachineError::Open {
        path: path.to_owned(),
        source,
    })
}

impl Machine {
    /// Starts a built machine: the signal forwarder, the device event loop
    /// and one thread per vCPU, running, or parked before their first
    /// KVM_RUN when `saved_vcpus` are given: each puts its saved state into
    /// its vCPU first. The device loop starts only then, and interrupts the
    /// devices have pending are raised again: one raised while no vCPU's
    /// LAPIC was restored would be lost. The one place a machine's threads
    /// are started.
    fn start(
        parts: Parts,
        saved_vcpus: Option<&[arch::VcpuState]>,
        phases: &mut Phases,
    ) -> Result<Self, MachineError> {
        let paused = saved_vcpus.is_some();
        vcpu::install_kick_handler()
            .map_err(|err| MachineError::Device(format!("vCPU kick signal: {err}")))?;
        let (events_tx, events) = channel();
        let events_ready = Arc::new(build::eventfd()?);
        let machine_events = EventSender {
            events: events_tx,
            ready: events_ready.clone(),
        };
        let forwarder = machine_events.clone();
        let guest_signals = parts.guest_signals;
        threads::spawn(ThreadKind::GuestSignals, move || {
            for signal in guest_signals {
                if !forwarder.send(MachineEvent::Guest(signal)) {
                    break;
                }
            }
        })
        .map_err(MachineError::Thread)?;

        let vcpu_control = Arc::new(VcpuControl::default());
        if paused {
            vcpu_control.request_pause();
        }
        let vcpu_count = parts.vcpus.len();
        let mut machine = Self {
            vm: parts.vm,
            vcpu_threads: Vec::with_capacity(vcpu_count),
            vcpu_control,
            paused,
            events,
            events_ready,
            serial: parts.serial,
            console: parts.console,
            legacy: parts.legacy,
            devices: parts.devices,
            event_loop: None,
            panic_report: parts.panic_report,
            _buses: parts.buses,
            irqchip: parts.irqchip,
        };
        // Each thread joins the machine as it starts: should a later one fail
        // to start, dropping the machine stops and joins the earlier ones
        // before the VM and its memory go away.
        for vcpu in parts.vcpus {
            let thread = spawn_vcpu(vcpu, machine.vcpu_control.clone(), machine_events.clone())?;
            machine.vcpu_threads.push(thread);
        }
        phases.mark("vCPU threads");
        if let Some(states) = saved_vcpus {
            if !machine.vcpu_control.wait_parked(vcpu_count, PAUSE_TIMEOUT) {
                return Err(MachineError::PauseTimeout(PAUSE_TIMEOUT));
            }
            phases.mark("vCPUs parked");
            machine.restore_vcpus(states)?;
            phases.mark("vCPU state");
        }
        machine.event_loop = Some(EventLoop::start(parts.subscribers)?);
        phases.mark("device loop");
        if paused {
            machine.devices.raise_pending_interrupts();
            let serial = machine
                .serial
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Err(err) = serial.raise_pending_interrupt() {
                log::warn!("restore: {err}");
            }
        }
        Ok(machine)
    }

    /// Guest memory.
    pub fn memory(&self) -> &GuestMemoryMmap {
        self.vm.memory()
    }

    /// Waits until the guest ends the machine (or a vCPU fails), then stops
    /// every vCPU and the device loop, and says why it ended.
    pub fn wait_for_exit(mut self) -> ExitReason {
        let first = self.events.recv().unwrap_or_else(|_| all_vcpus_gone());
        self.end(first)
    }

    /// A descriptor that becomes readable when the machine has ended (then
    /// [`Machine::try_exit`] says why), for callers that wait on several
    /// things at once.
    pub fn exit_fd(&self) -> RawFd {
        self.events_ready.as_raw_fd()
    }

    /// Whether the machine has ended; if so, stops what is left of it and
    /// says why.
    pub fn try_exit(&mut self) -> Option<ExitReason> {
        // Reset the descriptor first: an event sent after this read makes
        // it readable again.
        let _ = self.events_ready.read();
        match self.events.try_recv() {
            Ok(event) => Some(self.end(event)),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => Some(self.end(all_vcpus_gone())),
        }
    }

    /// Pauses every vCPU: returns once all are parked outside KVM_RUN.
    /// Pausing a paused machine does nothing.
    pub fn pause(&mut self) -> Result<(), MachineError> {
        if self.paused {
            return Ok(());
        }
        self.vcpu_control.request_pause();
        self.kick_vcpus();
        if !self
            .vcpu_control
            .wait_parked(self.vcpu_threads.len(), PAUSE_TIMEOUT)
        {
            self.vcpu_control.request_resume();
            return Err(MachineError::PauseTimeout(PAUSE_TIMEOUT));
        }
        self.paused = true;
        // What the guest printed before it stopped is on the console now.
        self.console.flush_now();
        Ok(())
    }

    /// Asks every (parked) vCPU for something, one request each made by
    /// `request`, and collects the answers in vCPU order.
    fn ask_each_vcpu<T>(
        &self,
        mut request: impl FnMut(u8, Sender<Result<T, String>>) -> VcpuRequest,
    ) -> Result<Vec<T>, MachineError> {
        if !self.paused {
            return Err(MachineError::VcpuRequest(
                "the vCPUs must be paused first".into(),
            ));
        }
        let answers: Vec<_> = (0..self.vcpu_threads.len())
            .map(|index| {
                let id = index as u8;
                let (reply, answer) = channel();
                self.vcpu_control.post(id, request(id, reply));
                (id, answer)
            })
            .collect();
        answers
            .into_iter()
            .map(
                |(id, answer)| match answer.recv_timeout(VCPU_REQUEST_TIMEOUT) {
                    Ok(result) => result.map_err(MachineError::VcpuRequest),
                    Err(_) => Err(MachineError::VcpuRequest(format!(
                        "vCPU {id} did not answer within {VCPU_REQUEST_TIMEOUT:?}"
                    ))),
                },
            )
            .collect()
    }

    /// Every vCPU's state (the machine must be paused).
    pub fn save_vcpus(&self) -> Result<Vec<arch::VcpuState>, MachineError> {
        self.ask_each_vcpu(|_, reply| VcpuRequest::SaveState(reply))
    }

    /// Puts one saved state into each vCPU (the machine must be paused).
    fn restore_vcpus(&self, states: &[arch::VcpuState]) -> Result<(), MachineError> {
        if states.len() != self.vcpu_threads.len() {
            return Err(MachineError::VcpuRequest(format!(
                "{} saved vCPU states for {} vCPUs",
                states.len(),
                self.vcpu_threads.len()
            )));
        }
        self.ask_each_vcpu(|id, reply| {
            VcpuRequest::RestoreState(Box::new(states[usize::from(id)].clone()), reply)
        })
        .map(|_| ())
    }

    /// Lets paused vCPUs run again. Resuming a running machine does nothing.
    pub fn resume(&mut self) {
        self.vcpu_control.request_resume();
        self.paused = false;
    }

    /// Whether the vCPUs are paused.
    pub fn is_paused(&self) -> bool {
        self.paused
    }

    /// Presses Ctrl-Alt-Del on the guest's keyboard (x86_64).
    pub fn send_ctrl_alt_del(&self) -> Result<(), MachineError> {
        self.legacy.send_ctrl_alt_del()
    }

    /// Points drive `drive.drive_id` at `drive.path_on_host` (opened with
    /// the drive's modes); the guest is told of the new size. On error the
    /// drive keeps its old file.
    pub fn replace_drive_file(&self, drive: &DriveConfig) -> Result<(), MachineError> {
        let block = self.drive(&drive.drive_id)?;
        let disk = open_disk(drive)?;
        block
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .replace_disk(disk)
            .map_err(|err| MachineError::ReplaceDrive {
                id: drive.drive_id.clone(),
                detail: err.to_string(),
            })
    }

    /// The block device of drive `id`.
    fn drive(&self, id: &str) -> Result<&Arc<Mutex<Block>>, MachineError> {
        self.devices
            .drives()
            .find(|(drive, _)| *drive == id)
            .map(|(_, block)| block)
            .ok_or_else(|| MachineError::NoSuchDrive(id.to_owned()))
    }

    /// Changes a drive's rate limiter at runtime (a PATCH).
    pub fn update_drive_rate_limiter(
        &self,
        id: &str,
        update: &RateLimiterUpdate,
    ) -> Result<(), MachineError> {
        self.drive(id)?
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .update_rate_limiter(update)
            .map_err(|err| MachineError::Device(format!("drive {id}: rate limiter: {err}")))
    }

    /// Changes an interface's rate limiters at runtime (a PATCH): both
    /// directions or neither.
    pub fn update_net_rate_limiters(
        &self,
        id: &str,
        rx: &RateLimiterUpdate,
        tx: &RateLimiterUpdate,
    ) -> Result<(), MachineError> {
        let net = self
            .devices
            .nets()
            .find(|(iface, _)| *iface == id)
            .map(|(_, net)| net)
            .ok_or_else(|| MachineError::Device(format!("no network interface {id}")))?;
        net.lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .update_rate_limiters(rx, tx)
            .map_err(|err| {
                MachineError::Device(format!("network interface {id}: rate limiter: {err}"))
            })
    }

    /// The devices' I/O counters now.
    pub fn device_metrics(&self) -> DeviceMetrics {
        let mut metrics = DeviceMetrics::default();
        for (id, block) in self.devices.drives() {
            let counters = block
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .counters();
            metrics.block.insert(id.to_owned(), counters);
        }
        for (id, net) in self.devices.nets() {
            let counters = net
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .counters();
            metrics.net.insert(id.to_owned(), counters);
        }
        metrics.entropy = self.devices.entropy().map(|entropy| {
            entropy
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .counters()
        });
        metrics.vsock = self.devices.vsock().map(|vsock| {
            vsock
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .counters()
        });
        metrics
    }

    fn kick_vcpus(&self) {
        for thread in &self.vcpu_threads {
            // A thread that already ended cannot be signalled; that is fine.
            let _ = thread.kill(vcpu::kick_signal());
        }
    }

    /// Turns the first event into the exit reason and stops the machine.
    fn end(&mut self, first: MachineEvent) -> ExitReason {
        let reason = match first {
            MachineEvent::Guest(GuestSignal::Reset) => ExitReason::GuestReset,
            MachineEvent::Guest(GuestSignal::Panicked) => ExitReason::GuestPanic(String::new()),
            MachineEvent::VcpuStopped { id, reason } => match reason {
                VcpuStop::SystemReset => ExitReason::GuestReset,
                VcpuStop::SystemShutdown => ExitReason::GuestPowerOff,
                VcpuStop::TripleFault(state) => ExitReason::TripleFault { vcpu: id, state },
                VcpuStop::SystemCrash => ExitReason::GuestCrash { vcpu: id },
                // Its text has the registers on several lines: not Debug-quoted.
                VcpuStop::InternalError(detail) => ExitReason::VcpuFailed { vcpu: id, detail },
                other => ExitReason::VcpuFailed {
                    vcpu: id,
                    detail: format!("{other:?}"),
                },
            },
        };
        // A panic report wins over what the panicking guest does next:
        // the reset that `panic=N` leads to, or a triple fault or crash
        // while it prints its backtrace.
        let reason = match (self.panic_report.message(), reason) {
            (
                Some(line),
                ExitReason::GuestReset
                | ExitReason::GuestPanic(_)
                | ExitReason::TripleFault { .. }
                | ExitReason::GuestCrash { .. },
            ) => ExitReason::GuestPanic(line),
            (_, reason) => reason,
        };
        self.stop();
        reason
    }

    /// Stops every vCPU (out of KVM_RUN: kicked, then joined) and then the
    /// device loop. Runs on every end (guest reset, power-off, panic,
    /// triple fault, vCPU failure, SIGTERM, API) and again on drop, always
    /// before the fields go: the VM fd and guest memory outlive every thread
    /// that uses them.
    fn stop(&mut self) {
        self.vcpu_control.request_stop();
        self.kick_vcpus();
        for thread in self.vcpu_threads.drain(..) {
            let _ = thread.join();
        }
        if let Some(event_loop) = self.event_loop.as_mut() {
            event_loop.stop();
        }
        self.console.flush_now();
    }
}

impl Drop for Machine {
    fn drop(&mut self) {
        self.stop();
    }
}

fn all_vcpus_gone() -> MachineEvent {
    MachineEvent::VcpuStopped {
        id: 0,
        reason: VcpuStop::RunFailed("every vCPU thread is gone".into()),
    }
}

fn spawn_vcpu(
    mut vcpu: Vcpu,
    control: Arc<VcpuControl>,
    events: EventSender,
) -> Result<JoinHandle<()>, MachineError> {
    threads::spawn(ThreadKind::Vcpu(vcpu.id()), move || {
        let reason = vcpu.run(&control);
        if !matches!(
            reason,
            VcpuStop::Requested | VcpuStop::SystemReset | VcpuStop::SystemShutdown
        ) {
            METRICS.vcpu.failures.inc();
        }
        if reason != VcpuStop::Requested {
            events.send(MachineEvent::VcpuStopped {
                id: vcpu.id(),
                reason,
            });
        }
    })
    .map_err(MachineError::Thread)
}
