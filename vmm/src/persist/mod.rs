//! Snapshots: what a microVM's saved state is made of ([`MicrovmState`]),
//! the request bodies that create and load one (Firecracker's), the state
//! file ([`file`]) and the memory file ([`memory`]).
//!
//! Each component saves and restores its own `*State` beside its code (the
//! devices in `brique-devices`, vCPUs and VM under `arch`); this module
//! only gathers them. A restored machine is rebuilt from the paths and
//! names in the saved configuration, never from file descriptors.

pub mod file;
#[cfg(any(test, feature = "fuzzing"))]
pub mod fuzzing;
pub mod memory;

use crate::arch;
use crate::config::fields::null_is_default;
use crate::config::{self, Absent, ConfigError, HostLimits, VmConfig};
use brique_devices::serial::SerialConsoleState;
use brique_devices::virtio::block::BlockState;
use brique_devices::virtio::mmio::MmioTransportState;
use brique_devices::virtio::net::NetState;
use brique_devices::virtio::rng::EntropyState;
use brique_devices::virtio::vsock::VsockState;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Errors creating, reading or loading a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file could not be read or written.
    #[error("cannot {what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The state file does not start with brique's magic number.
    #[error("not a brique snapshot file (wrong magic number)")]
    NotASnapshot,
    /// The state file is in a format this brique does not read.
    #[error("snapshot format version {found}; this brique reads version {supported}")]
    Version { found: u32, supported: u32 },
    /// The state file is shorter (or longer) than its header says.
    #[error("the snapshot file is truncated or has trailing bytes ({len} bytes)")]
    Truncated { len: u64 },
    /// The state file is over the size limit.
    #[error("the snapshot file has {len} bytes, more than the {max} a state file may have")]
    TooLarge { len: u64, max: u64 },
    /// The checksum does not match the contents.
    #[error(
        "the snapshot file is corrupt: checksum {stored:#010x}, contents give {computed:#010x}"
    )]
    Checksum { stored: u32, computed: u32 },
    /// The state does not parse.
    #[error("the snapshot's state is malformed: {0}")]
    Malformed(String),
    /// The snapshot was taken on another architecture.
    #[error("the snapshot was taken on {found}; this host is {host}")]
    Architecture { found: String, host: &'static str },
    /// The state contradicts itself or does not fit this host.
    #[error("the snapshot does not fit: {0}")]
    Unfit(String),
    /// The memory file is smaller than the guest's memory.
    #[error("memory file {path} has {len} bytes, the guest's memory needs {needed}")]
    MemoryFileTooSmall {
        path: PathBuf,
        len: u64,
        needed: u64,
    },
    /// The saved configuration is invalid on this host.
    #[error("the snapshot's configuration: {0}")]
    Config(#[from] ConfigError),
}

/// Everything a snapshot saves but guest memory.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MicrovmState {
    /// The architecture it was taken on.
    pub arch: String,
    /// The brique that took it.
    pub brique_version: String,
    /// The configuration: shape, kernel, drive paths, tap names.
    pub config: VmConfig,
    /// Guest RAM ranges (guest address, bytes), in memory-file order.
    pub memory: Vec<(u64, u64)>,
    /// VM-wide KVM state.
    pub vm: arch::VmState,
    /// Each vCPU, by id.
    pub vcpus: Vec<arch::VcpuState>,
    /// Devices.
    pub devices: DevicesState,
}

/// Every device's state.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DevicesState {
    /// The serial console.
    pub serial: SerialConsoleState,
    /// Architecture-specific legacy devices (the i8042 on x86_64).
    pub legacy: arch::LegacyState,
    /// virtio devices, in attach order.
    pub virtio: Vec<VirtioDeviceState>,
}

/// One virtio device: where it sits, its transport and its own state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtioDeviceState {
    /// Its drive_id or iface_id.
    pub id: String,
    /// Its MMIO window.
    pub mmio_base: u64,
    /// Its interrupt line.
    pub irq: u32,
    /// The virtio-mmio transport and the queues.
    pub transport: MmioTransportState,
    /// The device model's own state.
    pub device: VirtioKindState,
}

/// A virtio device model's own state, by kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum VirtioKindState {
    /// virtio-blk.
    Block(BlockState),
    /// virtio-net.
    Net(NetState),
    /// virtio-rng.
    Entropy(EntropyState),
    /// virtio-vsock.
    Vsock(VsockState),
}

impl MicrovmState {
    /// Parses a state file's bytes (magic, version and checksum checked).
    pub fn from_file_bytes(bytes: &[u8]) -> Result<Self, SnapshotError> {
        let payload = file::decode(bytes)?;
        serde_json::from_slice(payload).map_err(|err| SnapshotError::Malformed(err.to_string()))
    }

    /// The state file's bytes.
    pub fn to_file_bytes(&self) -> Result<Vec<u8>, SnapshotError> {
        let payload =
            serde_json::to_vec(self).map_err(|err| SnapshotError::Malformed(err.to_string()))?;
        Ok(file::encode(&payload))
    }

    /// Checks that the state is whole and fits this host: architecture,
    /// configuration, memory layout, one state per vCPU, one device per
    /// drive and interface. The devices and vCPUs check their own parts
    /// when they are restored.
    pub fn check(&self, limits: &HostLimits) -> Result<(), SnapshotError> {
        if self.arch != arch::ARCH_NAME {
            return Err(SnapshotError::Architecture {
                found: self.arch.clone(),
                host: arch::ARCH_NAME,
            });
        }
        let machine = &self.config.machine_config;
        machine.validate(limits)?;
        let expected_memory = arch::ram_ranges((machine.mem_size_mib as u64) << 20);
        if self.memory != expected_memory {
            return Err(SnapshotError::Unfit(format!(
                "memory ranges {:x?} do not match {} MiB",
                self.memory, machine.mem_size_mib
            )));
        }
        if self.vcpus.len() != usize::from(machine.vcpu_count) {
            return Err(SnapshotError::Unfit(format!(
                "{} vCPU states for {} vCPUs",
                self.vcpus.len(),
                machine.vcpu_count
            )));
        }
        let devices = self.config.virtio_device_count();
        if self.devices.virtio.len() != devices {
            return Err(SnapshotError::Unfit(format!(
                "{} virtio device states for the {devices} virtio devices of its configuration",
                self.devices.virtio.len()
            )));
        }
        Ok(())
    }

    /// Bytes the memory file must hold.
    pub fn memory_bytes(&self) -> u64 {
        self.memory.iter().map(|(_, len)| len).sum()
    }

    /// What `--describe-snapshot` prints.
    pub fn describe(&self) -> SnapshotDescription {
        SnapshotDescription {
            format_version: file::FORMAT_VERSION,
            arch: self.arch.clone(),
            brique_version: self.brique_version.clone(),
            vcpu_count: self.config.machine_config.vcpu_count,
            mem_size_mib: self.config.machine_config.mem_size_mib,
            drives: self
                .config
                .drives
                .iter()
                .map(|d| format!("{} ({})", d.drive_id, d.path_on_host.display()))
                .collect(),
            network_interfaces: self
                .config
                .network_interfaces
                .iter()
                .map(|n| format!("{} ({})", n.iface_id, n.host_dev_name))
                .collect(),
        }
    }
}

/// A snapshot's format version and the shape of its VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SnapshotDescription {
    /// The state file's format version.
    pub format_version: u32,
    /// Architecture.
    pub arch: String,
    /// The brique that took it.
    pub brique_version: String,
    /// vCPUs.
    pub vcpu_count: u8,
    /// Guest memory.
    pub mem_size_mib: usize,
    /// Drives and their files.
    pub drives: Vec<String>,
    /// Interfaces and their taps.
    pub network_interfaces: Vec<String>,
}

/// Reads, checks and parses the state file at `path`.
pub fn read_state(path: &std::path::Path) -> Result<MicrovmState, SnapshotError> {
    MicrovmState::from_file_bytes(&file::read(path)?)
}

/// `PUT /snapshot/create`'s `snapshot_type`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum SnapshotType {
    /// All of guest memory.
    #[default]
    Full,
    /// Only the pages dirtied since the last snapshot.
    Diff,
}

/// `PUT /snapshot/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotCreateParams {
    /// Full (default) or Diff.
    #[serde(default, deserialize_with = "null_is_default")]
    pub snapshot_type: SnapshotType,
    /// Where the state file goes.
    pub snapshot_path: PathBuf,
    /// Where the memory file goes.
    pub mem_file_path: PathBuf,
    /// Deprecated in Firecracker (the format version to write); accepted
    /// and ignored: brique writes its one format.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
}

/// `mem_backend.backend_type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MemoryBackendType {
    /// A memory file, mapped privately.
    File,
    /// A userfaultfd page server (not supported by brique).
    Uffd,
}

/// `mem_backend`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemoryBackend {
    /// File or Uffd.
    pub backend_type: MemoryBackendType,
    /// The memory file (or the page server's socket).
    pub backend_path: PathBuf,
}

/// One `network_overrides` entry: the tap an interface uses after the load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkOverride {
    /// The interface.
    pub iface_id: String,
    /// Its new tap.
    pub host_dev_name: String,
}

/// `vsock_override`: the socket the vsock device listens on after the load.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockOverride {
    /// Its new `uds_path`.
    pub uds_path: PathBuf,
}

/// `PUT /snapshot/load`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SnapshotLoadParams {
    /// The state file.
    pub snapshot_path: PathBuf,
    /// The memory file (deprecated form of `mem_backend`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_file_path: Option<PathBuf>,
    /// The memory backend.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_backend: Option<MemoryBackend>,
    /// Track dirty pages from now on (for diff snapshots of the restored VM).
    #[serde(default, deserialize_with = "null_is_default")]
    pub track_dirty_pages: bool,
    /// Deprecated name of `track_dirty_pages`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enable_diff_snapshots: Option<bool>,
    /// Resume the VM once loaded (otherwise it stays Paused).
    #[serde(default, deserialize_with = "null_is_default")]
    pub resume_vm: bool,
    /// Taps to use instead of the saved ones.
    #[serde(
        default,
        deserialize_with = "null_is_default",
        skip_serializing_if = "Vec::is_empty"
    )]
    pub network_overrides: Vec<NetworkOverride>,
    /// The vsock socket to use instead of the saved one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_override: Option<VsockOverride>,
    /// Advance the guest's clock by the wall time since the snapshot
    /// (x86_64; default: the clock goes on from where it stopped).
    #[serde(default, deserialize_with = "null_is_default")]
    pub clock_realtime: bool,
    /// Restoring into huge pages: brique has none; only "None" or null.
    #[serde(
        default,
        deserialize_with = "config::fields::snapshot_huge_pages",
        skip_serializing
    )]
    pub huge_pages: Absent,
}

impl SnapshotLoadParams {
    /// The memory file, from exactly one of `mem_file_path` and
    /// `mem_backend` (File).
    pub fn memory_file(&self) -> Result<&std::path::Path, String> {
        match (&self.mem_file_path, &self.mem_backend) {
            (Some(path), None) => Ok(path),
            (None, Some(backend)) => match backend.backend_type {
                MemoryBackendType::File => Ok(&backend.backend_path),
                MemoryBackendType::Uffd => Err(
                    "the Uffd memory backend is not supported by brique: use backend_type File \
                     (the file is mapped lazily, copy on write)"
                        .to_owned(),
                ),
            },
            (Some(_), Some(_)) => {
                Err("give either mem_file_path or mem_backend, not both".to_owned())
            }
            (None, None) => Err("give the memory file: mem_backend (or mem_file_path)".to_owned()),
        }
    }

    /// Whether dirty pages are tracked after the load (either name).
    pub fn tracks_dirty_pages(&self) -> bool {
        self.track_dirty_pages || self.enable_diff_snapshots == Some(true)
    }

    /// `config` with the network and vsock overrides applied; each must
    /// name a device the snapshot has.
    pub fn apply_overrides(&self, config: &mut VmConfig) -> Result<(), String> {
        self.apply_network_overrides(config)?;
        if let Some(VsockOverride { uds_path }) = &self.vsock_override {
            let vsock = config
                .vsock
                .as_mut()
                .ok_or("vsock_override: the snapshot has no vsock device")?;
            vsock.uds_path = uds_path.clone();
        }
        if let Some(vsock) = &config.vsock {
            vsock.validate().map_err(|err| err.to_string())?;
        }
        Ok(())
    }

    /// `config` with the network overrides applied; an override must name
    /// an interface the snapshot has.
    pub fn apply_network_overrides(&self, config: &mut VmConfig) -> Result<(), String> {
        for NetworkOverride {
            iface_id,
            host_dev_name,
        } in &self.network_overrides
        {
            let iface = config
                .network_interfaces
                .iter_mut()
                .find(|n| &n.iface_id == iface_id)
                .ok_or_else(|| {
                    format!("network_overrides: the snapshot has no interface {iface_id:?}")
                })?;
            iface.host_dev_name = host_dev_name.clone();
        }
        config
            .validate_network_interfaces()
            .map_err(|err| format!("network_overrides: {err}"))
    }
}

#[cfg(test)]
pub(crate) mod tests;
