//! The controller: the one owner of the microVM's configuration and, once
//! started, of the [`Machine`]. It runs on the VMM thread and executes
//! [`VmmAction`]s one at a time, whether they come from `--config-file` or
//! from the API thread through a [`ControllerHandle`]. A failed action
//! changes nothing.

mod actions;
mod serve;

pub use actions::{
    FullVmConfig, InstanceInfo, InstanceState, MetricsConfig, VersionInfo, VmmAction, VmmData,
};
pub use serve::{serve, ControllerHandle, RequestReceiver, ServeError};

use crate::config::{ConfigError, HostLimits, VmConfig};
use crate::logger::{self, LoggerConfig, LoggerError};
use crate::machine::{
    BootOptions, ConsoleIo, ExitReason, Machine, MachineError, Payload, RestoreOptions,
};
use crate::metrics::{MetricsError, MetricsWriter};
use crate::persist::{self, SnapshotCreateParams, SnapshotError, SnapshotLoadParams};
use crate::phases::Phases;
use brique_devices::rate_limiter::{RateLimiterConfig, RateLimiterUpdate};

/// The Firecracker API version whose paths, bodies and status codes brique
/// follows (for the subset it implements; see resources/openapi.json).
pub const FIRECRACKER_API_VERSION: &str = "1.7.0";

/// Why an action was refused. Every variant is a client error (HTTP 400).
#[derive(Debug, thiserror::Error)]
pub enum ControllerError {
    /// The action needs a started microVM.
    #[error("{0} is only possible after InstanceStart: the microVM is not started")]
    NotStarted(&'static str),
    /// The action is only possible before the microVM starts.
    #[error("{0} is only possible before InstanceStart: the microVM is already running")]
    AlreadyStarted(&'static str),
    /// The configuration change is invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The machine refused the action or could not be built.
    #[error(transparent)]
    Machine(#[from] MachineError),
    /// No drive or interface has this id.
    #[error("no {kind} with id {id:?}")]
    NotFound { kind: &'static str, id: String },
    /// The request would change something that cannot change at runtime.
    #[error("{0}")]
    Unsupported(String),
    /// The VMM thread is gone.
    #[error("the VMM is not answering")]
    VmmGone,
    /// Metrics were already configured.
    #[error("metrics are already configured (to {0}); they can be set once")]
    MetricsAlreadyConfigured(String),
    /// FlushMetrics without a metrics path.
    #[error("metrics are not configured: PUT /metrics first")]
    MetricsNotConfigured,
    /// Writing metrics failed.
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    /// The logger could not be configured.
    #[error(transparent)]
    Logger(#[from] LoggerError),
    /// A snapshot needs a paused microVM.
    #[error("{0} is only possible while the microVM is Paused (PATCH /vm {{\"state\": \"Paused\"}} first)")]
    NotPaused(&'static str),
    /// A snapshot load needs a fresh process.
    #[error("loading a snapshot is only possible in a fresh brique, before anything is configured or started ({0})")]
    LoadAfterConfiguration(&'static str),
    /// The snapshot could not be loaded or created.
    #[error(transparent)]
    Snapshot(#[from] SnapshotError),
    /// The snapshot load request is invalid.
    #[error("snapshot load: {0}")]
    LoadRequest(String),
}

/// Makes the guest console for each boot attempt (a failed start must
/// leave a console for the next one).
pub type ConsoleFactory = Box<dyn FnMut() -> ConsoleIo + Send>;

/// The configuration and, once started, the machine.
pub struct Controller {
    config: VmConfig,
    machine: Option<Machine>,
    console: ConsoleFactory,
    limits: HostLimits,
    instance_id: String,
    logger: Option<LoggerConfig>,
    metrics: Option<MetricsWriter>,
    /// Whether a boot resource (machine config, kernel, drive, interface)
    /// was configured: a snapshot load is refused from then on.
    boot_configured: bool,
    /// Command-line choices for the machine it boots.
    boot_options: BootOptions,
    /// For tests of the VMM itself: the guest is raw code, not Linux.
    #[cfg(target_arch = "x86_64")]
    bare_code: Option<Vec<u8>>,
}

impl std::fmt::Debug for Controller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Controller")
            .field("config", &self.config)
            .field("machine", &self.machine)
            .field("instance_id", &self.instance_id)
            .finish_non_exhaustive()
    }
}

impl Controller {
    /// A controller for a microVM not started yet, configured as `config`.
    pub fn new(config: VmConfig, console: ConsoleFactory, instance_id: String) -> Self {
        Self {
            config,
            machine: None,
            console,
            limits: HostLimits::of_this_host(),
            instance_id,
            logger: None,
            metrics: None,
            boot_configured: false,
            boot_options: BootOptions::default(),
            #[cfg(target_arch = "x86_64")]
            bare_code: None,
        }
    }

    /// Adds the boot timer device (`--boot-timer`) to the machine it boots.
    pub fn with_boot_timer(mut self, enabled: bool) -> Self {
        self.boot_options.boot_timer = enabled;
        self
    }

    /// Boots raw 64-bit code instead of a Linux kernel at InstanceStart
    /// (for tests of the VMM with tiny guests; see [`Payload::BareCode`]).
    #[cfg(target_arch = "x86_64")]
    pub fn with_bare_code(mut self, code: Vec<u8>) -> Self {
        self.bare_code = Some(code);
        self
    }

    /// The lifecycle state.
    pub fn state(&self) -> InstanceState {
        match &self.machine {
            None => InstanceState::NotStarted,
            Some(machine) if machine.is_paused() => InstanceState::Paused,
            Some(_) => InstanceState::Running,
        }
    }

    /// The running machine, if started.
    pub fn machine(&self) -> Option<&Machine> {
        self.machine.as_ref()
    }

    /// Whether the machine ended; if so, why (and the machine is gone).
    pub fn try_exit(&mut self) -> Option<ExitReason> {
        let reason = self.machine.as_mut()?.try_exit()?;
        self.flush_metrics_quietly();
        self.machine = None;
        Some(reason)
    }

    /// Stops the microVM (if started) on the operator's request, after a
    /// last metrics line.
    pub fn stop(&mut self) -> ExitReason {
        self.flush_metrics_quietly();
        // Dropping the machine stops its vCPUs and device loop.
        self.machine = None;
        ExitReason::Stopped
    }

    /// Writes a metrics line if metrics are configured (periodic flushes).
    pub fn flush_metrics_quietly(&mut self) {
        if let Err(err) = self.flush_metrics() {
            if !matches!(err, ControllerError::MetricsNotConfigured) {
                log::warn!("{err}");
            }
        }
    }

    /// Executes one action.
    pub fn handle(&mut self, action: VmmAction) -> Result<VmmData, ControllerError> {
        let name = action.name();
        match action {
            VmmAction::GetInstanceInfo => Ok(VmmData::InstanceInfo(InstanceInfo {
                id: self.instance_id.clone(),
                state: self.state(),
                vmm_version: env!("CARGO_PKG_VERSION").to_owned(),
                app_name: "brique".to_owned(),
            })),
            VmmAction::GetVersion => Ok(VmmData::Version(VersionInfo {
                firecracker_version: FIRECRACKER_API_VERSION.to_owned(),
                brique_version: env!("CARGO_PKG_VERSION").to_owned(),
            })),
            VmmAction::GetMachineConfig => {
                Ok(VmmData::MachineConfig(self.config.machine_config.clone()))
            }
            VmmAction::GetFullConfig => Ok(VmmData::FullConfig(Box::new(FullVmConfig {
                vm: self.config.clone(),
                logger: self.logger.clone(),
                metrics: self.metrics.as_ref().map(|writer| writer.config().clone()),
            }))),
            VmmAction::PutMachineConfig(machine) => self.change_config(name, |config, limits| {
                machine.validate(limits)?;
                config.machine_config = machine;
                Ok(())
            }),
            VmmAction::PatchMachineConfig(update) => self.change_config(name, |config, limits| {
                let machine = config.machine_config.updated(&update);
                machine.validate(limits)?;
                config.machine_config = machine;
                Ok(())
            }),
            VmmAction::PutBootSource(boot) => self.change_config(name, |config, _| {
                boot.validate()?;
                config.boot_source = Some(boot);
                Ok(())
            }),
            VmmAction::PutDrive(mut drive) => self.change_config(name, |config, _| {
                drive.settle_io_engine();
                match config
                    .drives
                    .iter_mut()
                    .find(|d| d.drive_id == drive.drive_id)
                {
                    Some(existing) => *existing = drive,
                    None => config.drives.push(drive),
                }
                config.validate_drives()
            }),
            VmmAction::PutNetworkInterface(iface) => self.change_config(name, |config, _| {
                match config
                    .network_interfaces
                    .iter_mut()
                    .find(|n| n.iface_id == iface.iface_id)
                {
                    Some(existing) => *existing = iface,
                    None => config.network_interfaces.push(iface),
                }
                config.validate_network_interfaces()
            }),
            VmmAction::PutEntropy(entropy) => self.change_config(name, |config, _| {
                config.entropy = Some(entropy);
                Ok(())
            }),
            VmmAction::PutVsock(vsock) => self.change_config(name, |config, _| {
                vsock.validate()?;
                config.vsock = Some(vsock);
                Ok(())
            }),
            VmmAction::PatchDrive(update) => self.patch_drive(name, update),
            VmmAction::PatchNetworkInterface(update) => self.patch_network_interface(name, update),
            VmmAction::InstanceStart => self.start(),
            VmmAction::SendCtrlAltDel => {
                self.started(name)?.send_ctrl_alt_del()?;
                Ok(VmmData::Empty)
            }
            VmmAction::FlushMetrics => self.flush_metrics().map(|()| VmmData::Empty),
            VmmAction::Pause => {
                self.started(name)?.pause()?;
                log::info!("microVM paused");
                Ok(VmmData::Empty)
            }
            VmmAction::Resume => {
                self.started(name)?.resume();
                log::info!("microVM resumed");
                Ok(VmmData::Empty)
            }
            VmmAction::PutLogger(config) => {
                logger::configure(&config)?;
                self.logger = Some(config);
                Ok(VmmData::Empty)
            }
            VmmAction::CreateSnapshot(params) => self.create_snapshot(name, &params),
            VmmAction::LoadSnapshot(params) => self.load_snapshot(&params),
            VmmAction::PutMetrics(config) => {
                if let Some(writer) = &self.metrics {
                    return Err(ControllerError::MetricsAlreadyConfigured(
                        writer.config().metrics_path.display().to_string(),
                    ));
                }
                self.metrics = Some(MetricsWriter::open(&config, &self.instance_id)?);
                Ok(VmmData::Empty)
            }
        }
    }

    /// Boots the configured microVM.
    pub fn start(&mut self) -> Result<VmmData, ControllerError> {
        if self.machine.is_some() {
            return Err(ControllerError::AlreadyStarted("InstanceStart"));
        }
        let console = (self.console)();
        #[cfg(target_arch = "x86_64")]
        let payload = match &self.bare_code {
            Some(code) => Payload::BareCode(code),
            None => Payload::Linux,
        };
        #[cfg(not(target_arch = "x86_64"))]
        let payload = Payload::Linux;
        let machine = Machine::boot(&self.config, payload, console, self.boot_options)?;
        self.machine = Some(machine);
        log::info!("microVM started");
        Ok(VmmData::Empty)
    }

    fn started(&mut self, action: &'static str) -> Result<&mut Machine, ControllerError> {
        self.machine
            .as_mut()
            .ok_or(ControllerError::NotStarted(action))
    }

    /// Applies `change` to a copy of the configuration (before start only)
    /// and keeps it if `change` validates it.
    fn change_config(
        &mut self,
        action: &'static str,
        change: impl FnOnce(&mut VmConfig, &HostLimits) -> Result<(), ConfigError>,
    ) -> Result<VmmData, ControllerError> {
        if self.machine.is_some() {
            return Err(ControllerError::AlreadyStarted(action));
        }
        let mut candidate = self.config.clone();
        change(&mut candidate, &self.limits)?;
        self.config = candidate;
        self.boot_configured = true;
        Ok(VmmData::Empty)
    }

    fn create_snapshot(
        &mut self,
        action: &'static str,
        params: &SnapshotCreateParams,
    ) -> Result<VmmData, ControllerError> {
        let config = self.config.clone();
        let machine = self.started(action)?;
        if !machine.is_paused() {
            return Err(ControllerError::NotPaused(action));
        }
        if params.version.is_some() {
            log::warn!("snapshot/create: `version` is deprecated and ignored");
        }
        machine.create_snapshot(&config, params)?;
        Ok(VmmData::Empty)
    }

    /// Builds the microVM a snapshot saved. Everything is checked before
    /// anything starts; a failed load leaves the controller as it was.
    fn load_snapshot(&mut self, params: &SnapshotLoadParams) -> Result<VmmData, ControllerError> {
        if self.machine.is_some() {
            return Err(ControllerError::LoadAfterConfiguration(
                "the microVM is already started",
            ));
        }
        if self.boot_configured {
            return Err(ControllerError::LoadAfterConfiguration(
                "boot resources were configured",
            ));
        }
        let mut phases = Phases::new();
        let memory_path = params.memory_file().map_err(ControllerError::LoadRequest)?;
        let state = persist::read_state(&params.snapshot_path)?;
        state.check(&self.limits)?;
        let memory_file = persist::memory::open_for_restore(memory_path, state.memory_bytes())?;
        phases.mark("state file");
        let mut config = state.config.clone();
        params
            .apply_overrides(&mut config)
            .map_err(ControllerError::LoadRequest)?;
        let options = RestoreOptions {
            // Dirty pages are tracked if asked now or when it was configured.
            track_dirty_pages: params.tracks_dirty_pages()
                || config.machine_config.track_dirty_pages,
            clock_realtime: params.clock_realtime,
            resume: params.resume_vm,
        };
        config.machine_config.track_dirty_pages = options.track_dirty_pages;
        let machine = Machine::restore(
            &state,
            &config,
            &memory_file,
            options,
            (self.console)(),
            &mut phases,
        )?;
        self.machine = Some(machine);
        self.config = config;
        log::info!(
            "snapshot {} loaded in {:.1} ms ({}; {phases})",
            params.snapshot_path.display(),
            phases.total().as_secs_f64() * 1e3,
            if options.resume { "running" } else { "paused" }
        );
        Ok(VmmData::Empty)
    }

    fn patch_drive(
        &mut self,
        action: &'static str,
        update: crate::config::DriveUpdate,
    ) -> Result<VmmData, ControllerError> {
        let Some(index) = self
            .config
            .drives
            .iter()
            .position(|d| d.drive_id == update.drive_id)
        else {
            return Err(ControllerError::NotFound {
                kind: "drive",
                id: update.drive_id,
            });
        };
        let machine = self
            .machine
            .as_ref()
            .ok_or(ControllerError::NotStarted(action))?;
        let mut drive = self.config.drives[index].clone();
        if let Some(path) = update.path_on_host {
            drive.path_on_host = path;
            machine.replace_drive_file(&drive)?;
            log::info!(
                "drive {} now backed by {}",
                drive.drive_id,
                drive.path_on_host.display()
            );
            self.config.drives[index] = drive.clone();
        }
        if let Some(body) = update.rate_limiter {
            let change = RateLimiterUpdate::from(body);
            machine.update_drive_rate_limiter(&drive.drive_id, &change)?;
            let limits = limits_after(drive.rate_limiter, &change);
            self.config.drives[index].rate_limiter = limits;
            log::info!("drive {}: rate limiter now {limits:?}", drive.drive_id);
        }
        Ok(VmmData::Empty)
    }

    /// `PATCH /network-interfaces/{id}`: changes the rate limiters of a
    /// running interface.
    fn patch_network_interface(
        &mut self,
        action: &'static str,
        update: crate::config::NetworkInterfaceUpdate,
    ) -> Result<VmmData, ControllerError> {
        let Some(index) = self
            .config
            .network_interfaces
            .iter()
            .position(|n| n.iface_id == update.iface_id)
        else {
            return Err(ControllerError::NotFound {
                kind: "network interface",
                id: update.iface_id,
            });
        };
        let machine = self
            .machine
            .as_ref()
            .ok_or(ControllerError::NotStarted(action))?;
        let rx = RateLimiterUpdate::from_patch(update.rx_rate_limiter);
        let tx = RateLimiterUpdate::from_patch(update.tx_rate_limiter);
        machine.update_net_rate_limiters(&update.iface_id, &rx, &tx)?;
        let iface = &mut self.config.network_interfaces[index];
        iface.rx_rate_limiter = limits_after(iface.rx_rate_limiter, &rx);
        iface.tx_rate_limiter = limits_after(iface.tx_rate_limiter, &tx);
        log::info!(
            "network interface {}: rate limiters changed",
            update.iface_id
        );
        Ok(VmmData::Empty)
    }

    fn flush_metrics(&mut self) -> Result<(), ControllerError> {
        let devices = self
            .machine
            .as_ref()
            .map(Machine::device_metrics)
            .unwrap_or_default();
        let writer = self
            .metrics
            .as_mut()
            .ok_or(ControllerError::MetricsNotConfigured)?;
        writer.write(&devices)?;
        Ok(())
    }
}

/// The limits a device keeps after `change` (a PATCH) of `old`, as the
/// configuration stores them (for `GET /vm/config` and snapshots): none
/// when nothing limits any more.
fn limits_after(
    old: Option<RateLimiterConfig>,
    change: &RateLimiterUpdate,
) -> Option<RateLimiterConfig> {
    Some(old.unwrap_or_default().patched(change)).filter(RateLimiterConfig::is_limiting)
}
