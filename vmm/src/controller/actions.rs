//! What the control plane can ask of the VMM, and what it gets back. Both
//! sides of the API thread / VMM thread channel speak these types.

use crate::config::{
    BootSourceConfig, DriveConfig, DriveUpdate, EntropyConfig, MachineConfig, MachineConfigUpdate,
    NetworkInterfaceConfig, NetworkInterfaceUpdate, VmConfig, VsockDeviceConfig,
};
use crate::logger::LoggerConfig;
pub use crate::metrics::MetricsConfig;
use crate::persist::{SnapshotCreateParams, SnapshotLoadParams};
use serde::{Deserialize, Serialize};

/// One request to the VMM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmAction {
    /// `GET /`.
    GetInstanceInfo,
    /// `GET /version`.
    GetVersion,
    /// `GET /machine-config`.
    GetMachineConfig,
    /// `PUT /machine-config` (before start).
    PutMachineConfig(MachineConfig),
    /// `PATCH /machine-config` (before start).
    PatchMachineConfig(MachineConfigUpdate),
    /// `PUT /boot-source` (before start).
    PutBootSource(BootSourceConfig),
    /// `PUT /drives/{id}` (before start): add or replace a drive.
    PutDrive(DriveConfig),
    /// `PATCH /drives/{id}` (after start): swap the backing file.
    PatchDrive(DriveUpdate),
    /// `PUT /network-interfaces/{id}` (before start).
    PutNetworkInterface(NetworkInterfaceConfig),
    /// `PUT /entropy` (before InstanceStart).
    PutEntropy(EntropyConfig),
    /// `PUT /vsock` (before InstanceStart).
    PutVsock(VsockDeviceConfig),
    /// `PATCH /network-interfaces/{id}` (after start).
    PatchNetworkInterface(NetworkInterfaceUpdate),
    /// `PUT /actions` `InstanceStart`.
    InstanceStart,
    /// `PUT /actions` `SendCtrlAltDel`.
    SendCtrlAltDel,
    /// `PUT /actions` `FlushMetrics`.
    FlushMetrics,
    /// `PATCH /vm` `Paused`.
    Pause,
    /// `PATCH /vm` `Resumed`.
    Resume,
    /// `GET /vm/config`.
    GetFullConfig,
    /// `PUT /logger`.
    PutLogger(LoggerConfig),
    /// `PUT /metrics`.
    PutMetrics(MetricsConfig),
    /// `PUT /snapshot/create` (paused).
    CreateSnapshot(SnapshotCreateParams),
    /// `PUT /snapshot/load` (fresh process, nothing configured).
    LoadSnapshot(SnapshotLoadParams),
}

impl VmmAction {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::GetInstanceInfo => "GetInstanceInfo",
            Self::GetVersion => "GetVersion",
            Self::GetMachineConfig => "GetMachineConfig",
            Self::PutMachineConfig(_) => "PutMachineConfig",
            Self::PatchMachineConfig(_) => "PatchMachineConfig",
            Self::PutBootSource(_) => "PutBootSource",
            Self::PutDrive(_) => "PutDrive",
            Self::PatchDrive(_) => "PatchDrive",
            Self::PutNetworkInterface(_) => "PutNetworkInterface",
            Self::PutEntropy(_) => "PutEntropy",
            Self::PutVsock(_) => "PutVsock",
            Self::PatchNetworkInterface(_) => "PatchNetworkInterface",
            Self::InstanceStart => "InstanceStart",
            Self::SendCtrlAltDel => "SendCtrlAltDel",
            Self::FlushMetrics => "FlushMetrics",
            Self::Pause => "Pause",
            Self::Resume => "Resume",
            Self::GetFullConfig => "GetFullConfig",
            Self::PutLogger(_) => "PutLogger",
            Self::PutMetrics(_) => "PutMetrics",
            Self::CreateSnapshot(_) => "CreateSnapshot",
            Self::LoadSnapshot(_) => "LoadSnapshot",
        }
    }
}

/// The microVM's lifecycle state, as `GET /` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum InstanceState {
    /// Configuring; `InstanceStart` not yet done.
    #[serde(rename = "Not started")]
    NotStarted,
    /// vCPUs running.
    Running,
    /// vCPUs paused.
    Paused,
}

/// `GET /`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceInfo {
    /// The instance id.
    pub id: String,
    /// Lifecycle state.
    pub state: InstanceState,
    /// brique's version.
    pub vmm_version: String,
    /// "brique".
    pub app_name: String,
}

/// `GET /version`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// Named so for Firecracker SDKs: the Firecracker API version brique
    /// implements.
    pub firecracker_version: String,
    /// brique's own version (an extension).
    pub brique_version: String,
}

/// `GET /vm/config`: the configuration in config-file shape, plus the
/// logger and metrics settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FullVmConfig {
    /// Boot source, machine config, drives, network interfaces.
    #[serde(flatten)]
    pub vm: VmConfig,
    /// Logger settings, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logger: Option<LoggerConfig>,
    /// Metrics settings, when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<MetricsConfig>,
}

/// What a successful action returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmmData {
    /// Nothing (HTTP 204).
    Empty,
    /// `GET /`.
    InstanceInfo(InstanceInfo),
    /// `GET /version`.
    Version(VersionInfo),
    /// `GET /machine-config`.
    MachineConfig(MachineConfig),
    /// `GET /vm/config`.
    FullConfig(Box<FullVmConfig>),
}
