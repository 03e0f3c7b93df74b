//! The VM configuration model, shared by `--config-file` and (later) the API.
//!
//! Field names and shapes follow Firecracker's config file and REST bodies,
//! so that existing orchestrators work unchanged. Unknown fields are errors:
//! a typo must never be silently ignored.

pub(crate) mod fields;
mod file;
mod vsock;

pub use fields::Absent;
pub use file::ConfigFile;
pub use vsock::VsockDeviceConfig;

use brique_devices::rate_limiter::RateLimiterConfig;
use fields::null_is_default;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// Most vCPUs a brique VM can have.
pub const MAX_VCPUS: u8 = 32;
/// Smallest guest memory brique accepts, in MiB.
pub const MIN_MEM_MIB: usize = 16;
/// Smallest MTU of an interface (IPv4's minimum).
pub const MIN_MTU: u16 = 68;

/// Errors in a VM configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The config file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The JSON is malformed or has unknown or mistyped fields.
    #[error("invalid config JSON: {0}")]
    Json(#[from] serde_json::Error),
    /// `boot-source` is missing.
    #[error("the configuration has no boot-source")]
    NoBootSource,
    /// The kernel image cannot be opened.
    #[error("kernel image {path}: {source}")]
    Kernel {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The initrd cannot be opened.
    #[error("initrd {path}: {source}")]
    Initrd {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A drive's backing file cannot be opened.
    #[error("drive {id}: cannot open {path}: {source}")]
    Drive {
        id: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// vcpu_count is out of range.
    #[error("vcpu_count must be between 1 and {MAX_VCPUS}, got {0}")]
    VcpuCount(u8),
    /// SMT needs an even number of vCPUs.
    #[error("with smt enabled vcpu_count must be 1 or even, got {0}")]
    SmtVcpuCount(u8),
    /// mem_size_mib is too small.
    #[error("mem_size_mib must be at least {MIN_MEM_MIB}, got {0}")]
    MemTooSmall(usize),
    /// mem_size_mib exceeds what the host or the architecture can give.
    #[error("mem_size_mib {requested} is too large: at most {limit} MiB ({why})")]
    MemTooLarge {
        requested: usize,
        limit: usize,
        why: &'static str,
    },
    /// Two drives or interfaces share an id.
    #[error("duplicate {kind} id {id:?}")]
    DuplicateId { kind: &'static str, id: String },
    /// More than one drive is the root device.
    #[error("more than one drive has is_root_device set")]
    SeveralRootDevices,
    /// An id is empty or has characters outside [A-Za-z0-9_-].
    #[error("invalid {kind} id {id:?}: use 1-64 characters from A-Z a-z 0-9 _ -")]
    InvalidId { kind: &'static str, id: String },
    /// A tap device name is not a valid interface name.
    #[error("invalid host_dev_name {0:?}: use 1-15 characters, no '/' or whitespace")]
    InvalidTapName(String),
    /// A MAC address is malformed.
    #[error("invalid guest_mac {0:?}: expected six hex octets like 06:00:ac:10:00:02")]
    InvalidMac(String),
    /// An MTU outside what an Ethernet tap and virtio-net allow.
    #[error("network interface {id}: mtu {mtu} is out of range: use 68 to 65535")]
    InvalidMtu { id: String, mtu: u16 },
    /// Guest memory is not a whole number of the huge pages asked for.
    #[error("with huge_pages \"2M\", mem_size_mib must be a multiple of 2, got {0}")]
    MemNotHugePageMultiple(usize),
    /// A vsock context id outside 3..=2^32-1.
    #[error("vsock guest_cid {0} is out of range: use 3 to 4294967295")]
    InvalidGuestCid(u64),
    /// A vsock socket path brique cannot create.
    #[error("vsock uds_path {path:?}: {why}")]
    InvalidUdsPath { path: PathBuf, why: &'static str },
}

/// `boot-source`: the guest kernel, initrd and command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootSourceConfig {
    /// Host path of the kernel (x86_64: ELF vmlinux or bzImage).
    pub kernel_image_path: PathBuf,
    /// Host path of an initrd/initramfs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<PathBuf>,
    /// Kernel command line; brique's default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
}

/// `machine-config`: vCPUs and memory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfig {
    /// Number of vCPUs, 1 to 32.
    pub vcpu_count: u8,
    /// Guest memory in MiB.
    pub mem_size_mib: usize,
    /// Simultaneous multithreading: two threads per core in the guest's topology.
    #[serde(default, deserialize_with = "null_is_default")]
    pub smt: bool,
    /// Track dirty pages (for diff snapshots).
    #[serde(default, deserialize_with = "null_is_default")]
    pub track_dirty_pages: bool,
    /// What backs guest memory.
    #[serde(default, deserialize_with = "null_is_default")]
    pub huge_pages: HugePages,
    /// CPU templates: brique has none; only `"None"` or null.
    #[serde(default, deserialize_with = "fields::cpu_template", skip_serializing)]
    pub cpu_template: Absent,
    /// The GDB server: brique has none; only null.
    #[serde(
        default,
        deserialize_with = "fields::gdb_socket_path",
        skip_serializing
    )]
    pub gdb_socket_path: Absent,
}

impl Default for MachineConfig {
    fn default() -> Self {
        Self {
            vcpu_count: 1,
            mem_size_mib: 128,
            smt: false,
            track_dirty_pages: false,
            huge_pages: HugePages::None,
            cpu_template: Absent,
            gdb_socket_path: Absent,
        }
    }
}

/// `huge_pages`: the pages behind guest memory, as Firecracker names them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum HugePages {
    /// Ordinary anonymous memory, which brique asks the kernel to back
    /// with transparent huge pages where it can.
    #[default]
    None,
    /// The same as `None` in brique (which always asks for transparent
    /// huge pages).
    Transparent,
    /// 2 MiB huge pages from the host's hugetlbfs pool, reserved when the
    /// VM starts (a start fails if the pool is short).
    #[serde(rename = "2M")]
    Hugetlbfs2M,
}

/// `PATCH /machine-config`: the fields to change.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachineConfigUpdate {
    /// New vCPU count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vcpu_count: Option<u8>,
    /// New memory size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem_size_mib: Option<usize>,
    /// New SMT setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub smt: Option<bool>,
    /// New dirty page tracking setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub track_dirty_pages: Option<bool>,
    /// New huge pages setting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub huge_pages: Option<HugePages>,
    /// CPU templates: only `"None"` or null.
    #[serde(default, deserialize_with = "fields::cpu_template", skip_serializing)]
    pub cpu_template: Absent,
}

impl MachineConfig {
    /// This configuration with `update`'s fields applied.
    pub fn updated(&self, update: &MachineConfigUpdate) -> Self {
        Self {
            vcpu_count: update.vcpu_count.unwrap_or(self.vcpu_count),
            mem_size_mib: update.mem_size_mib.unwrap_or(self.mem_size_mib),
            smt: update.smt.unwrap_or(self.smt),
            track_dirty_pages: update.track_dirty_pages.unwrap_or(self.track_dirty_pages),
            huge_pages: update.huge_pages.unwrap_or(self.huge_pages),
            cpu_template: Absent,
            gdb_socket_path: Absent,
        }
    }
}

/// `PATCH /drives/{id}`: a new backing file for a drive (the guest sees the
/// new size) and a change of its rate limiter, at runtime.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveUpdate {
    /// The drive to change.
    pub drive_id: String,
    /// Its new backing file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path_on_host: Option<PathBuf>,
    /// Its rate limiter's change (PATCH meaning: an absent or null bucket
    /// stays, a bucket of size or refill_time 0 goes, another replaces it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

/// `PATCH /network-interfaces/{id}`: a change of the interface's rate
/// limiters at runtime (PATCH meaning, as for drives).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceUpdate {
    /// The interface to change.
    pub iface_id: String,
    /// Its receive limiter's change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Its transmit limiter's change.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// Block device caching, as Firecracker names it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum CacheType {
    /// Flush requests are acknowledged without reaching the disk.
    #[default]
    Unsafe,
    /// Flush requests reach the disk (`fdatasync`).
    Writeback,
}

/// One entry of `drives`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DriveConfig {
    /// Unique id; also the virtio-blk serial the guest reads.
    pub drive_id: String,
    /// Host file backing the drive.
    pub path_on_host: PathBuf,
    /// Make this the guest's root device (`root=/dev/vda`).
    pub is_root_device: bool,
    /// Expose the drive read-only.
    #[serde(default, deserialize_with = "null_is_default")]
    pub is_read_only: bool,
    /// Root partition by PARTUUID instead of the whole device.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partuuid: Option<String>,
    /// Flush semantics.
    #[serde(default, deserialize_with = "null_is_default")]
    pub cache_type: CacheType,
    /// Firecracker's I/O engine choice. brique has no io_uring engine yet:
    /// `Async` is served synchronously, which brique logs and shows by
    /// keeping `Sync` here (see [`DriveConfig::effective_io_engine`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub io_engine: Option<IoEngine>,
    /// Bytes and requests per refill period (no limit when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
    /// A vhost-user backend's socket: brique has none; only null.
    #[serde(
        default,
        deserialize_with = "fields::vhost_user_socket",
        skip_serializing
    )]
    pub socket: Absent,
}

/// Firecracker's `io_engine` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IoEngine {
    /// Synchronous I/O.
    Sync,
    /// io_uring in Firecracker; served synchronously by brique.
    Async,
}

/// One entry of `network-interfaces`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetworkInterfaceConfig {
    /// Unique id.
    pub iface_id: String,
    /// Host tap device name.
    pub host_dev_name: String,
    /// Guest MAC address, `xx:xx:xx:xx:xx:xx`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest_mac: Option<String>,
    /// The MTU offered to the guest (VIRTIO_NET_F_MTU), as Firecracker
    /// does: the tap's own MTU is the host's to set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Bytes and frames the guest may receive per refill period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rx_rate_limiter: Option<RateLimiterConfig>,
    /// Bytes and frames the guest may send per refill period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tx_rate_limiter: Option<RateLimiterConfig>,
}

/// A whole VM configuration, as in a Firecracker config file.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// The kernel to boot.
    #[serde(
        rename = "boot-source",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub boot_source: Option<BootSourceConfig>,
    /// vCPUs and memory.
    #[serde(
        rename = "machine-config",
        default,
        deserialize_with = "null_is_default"
    )]
    pub machine_config: MachineConfig,
    /// Block devices.
    #[serde(default, deserialize_with = "null_is_default")]
    pub drives: Vec<DriveConfig>,
    /// Network interfaces.
    #[serde(
        rename = "network-interfaces",
        default,
        deserialize_with = "null_is_default"
    )]
    pub network_interfaces: Vec<NetworkInterfaceConfig>,
    /// The entropy device (virtio-rng), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyConfig>,
    /// The vsock device, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockDeviceConfig>,
}

/// `PUT /entropy` and the `entropy` section: a virtio-rng device fed from
/// the host's `getrandom`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EntropyConfig {
    /// Limits on the bytes (`bandwidth`) and requests (`ops`) it serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_limiter: Option<RateLimiterConfig>,
}

impl VmConfig {
    /// The microVM part of a config file's JSON (no validation against the
    /// host); see [`ConfigFile`] for the whole file.
    pub fn from_json(json: &str) -> Result<Self, ConfigError> {
        Ok(ConfigFile::from_json(json)?.vm_config())
    }

    /// How many virtio devices this configuration makes: drives,
    /// interfaces, entropy and vsock.
    pub fn virtio_device_count(&self) -> usize {
        self.drives.len()
            + self.network_interfaces.len()
            + usize::from(self.entropy.is_some())
            + usize::from(self.vsock.is_some())
    }

    /// Checks everything that can be checked before building the VM:
    /// ranges, ids, and that the files it names can be opened.
    pub fn validate(&self, limits: &HostLimits) -> Result<(), ConfigError> {
        self.machine_config.validate(limits)?;
        self.boot_source
            .as_ref()
            .ok_or(ConfigError::NoBootSource)?
            .validate()?;
        self.validate_drives()?;
        self.validate_network_interfaces()?;
        self.vsock
            .as_ref()
            .map_or(Ok(()), VsockDeviceConfig::validate)
    }

    /// Drive ids are valid and unique, at most one is the root device, and
    /// every backing file opens (read-write unless read-only).
    pub fn validate_drives(&self) -> Result<(), ConfigError> {
        check_ids("drive", self.drives.iter().map(|d| d.drive_id.as_str()))?;
        if self.drives.iter().filter(|d| d.is_root_device).count() > 1 {
            return Err(ConfigError::SeveralRootDevices);
        }
        self.drives.iter().try_for_each(DriveConfig::validate)
    }

    /// Interface ids are valid and unique, MACs well formed.
    pub fn validate_network_interfaces(&self) -> Result<(), ConfigError> {
        check_ids(
            "network interface",
            self.network_interfaces.iter().map(|n| n.iface_id.as_str()),
        )?;
        for iface in &self.network_interfaces {
            if let Some(mac) = &iface.guest_mac {
                parse_mac(mac)?;
            }
            let name_ok = (1..=15).contains(&iface.host_dev_name.len())
                && !iface.host_dev_name.contains(['/', '\0'])
                && !iface.host_dev_name.chars().any(char::is_whitespace);
            if !name_ok {
                return Err(ConfigError::InvalidTapName(iface.host_dev_name.clone()));
            }
            if let Some(mtu) = iface.mtu.filter(|mtu| *mtu < MIN_MTU) {
                return Err(ConfigError::InvalidMtu {
                    id: iface.iface_id.clone(),
                    mtu,
                });
            }
        }
        Ok(())
    }
}

impl BootSourceConfig {
    /// The kernel and initrd can be opened.
    pub fn validate(&self) -> Result<(), ConfigError> {
        std::fs::File::open(&self.kernel_image_path).map_err(|source| ConfigError::Kernel {
            path: self.kernel_image_path.clone(),
            source,
        })?;
        if let Some(initrd) = &self.initrd_path {
            std::fs::File::open(initrd).map_err(|source| ConfigError::Initrd {
                path: initrd.clone(),
                source,
            })?;
        }
        Ok(())
    }
}

impl DriveConfig {
    /// brique serves `Async` with its synchronous engine until it has an
    /// io_uring one: this says so in the log and records `Sync`, the engine
    /// that serves the drive, so that `GET /vm/config` shows it too.
    pub fn settle_io_engine(&mut self) {
        if self.io_engine == Some(IoEngine::Async) {
            log::warn!(
                "drive {}: io_engine Async is served by brique's synchronous engine \
                 (brique has no io_uring engine yet); GET /vm/config shows Sync",
                self.drive_id
            );
            self.io_engine = Some(IoEngine::Sync);
        }
    }

    /// The backing file opens with the drive's access mode.
    pub fn validate(&self) -> Result<(), ConfigError> {
        std::fs::OpenOptions::new()
            .read(true)
            .write(!self.is_read_only)
            .open(&self.path_on_host)
            .map(drop)
            .map_err(|source| ConfigError::Drive {
                id: self.drive_id.clone(),
                path: self.path_on_host.clone(),
                source,
            })
    }
}

impl MachineConfig {
    /// Checks vCPU count, SMT and memory size against `limits`.
    pub fn validate(&self, limits: &HostLimits) -> Result<(), ConfigError> {
        if self.vcpu_count == 0 || self.vcpu_count > MAX_VCPUS {
            return Err(ConfigError::VcpuCount(self.vcpu_count));
        }
        if self.smt && self.vcpu_count > 1 && self.vcpu_count % 2 != 0 {
            return Err(ConfigError::SmtVcpuCount(self.vcpu_count));
        }
        if self.mem_size_mib < MIN_MEM_MIB {
            return Err(ConfigError::MemTooSmall(self.mem_size_mib));
        }
        if self.huge_pages == HugePages::Hugetlbfs2M && self.mem_size_mib % 2 != 0 {
            return Err(ConfigError::MemNotHugePageMultiple(self.mem_size_mib));
        }
        for (limit, why) in [
            (limits.host_mem_mib, "the host's physical memory"),
            (limits.arch_max_mem_mib, "the guest physical address space"),
        ] {
            if self.mem_size_mib > limit {
                return Err(ConfigError::MemTooLarge {
                    requested: self.mem_size_mib,
                    limit,
                    why,
                });
            }
        }
        Ok(())
    }
}

/// What the host allows a VM to have.
#[derive(Debug, Clone, Copy)]
pub struct HostLimits {
    /// Physical memory of the host, in MiB.
    pub host_mem_mib: usize,
    /// Largest guest memory the architecture's layout can place, in MiB.
    pub arch_max_mem_mib: usize,
}

impl HostLimits {
    /// The limits of this host.
    pub fn of_this_host() -> Self {
        Self {
            host_mem_mib: host_memory_mib(),
            arch_max_mem_mib: crate::arch::MAX_GUEST_MEM_MIB,
        }
    }
}

fn host_memory_mib() -> usize {
    // SAFETY: sysconf only reads system configuration values.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    // SAFETY: as above.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    match (usize::try_from(pages), usize::try_from(page_size)) {
        (Ok(pages), Ok(page_size)) => pages.saturating_mul(page_size) >> 20,
        _ => usize::MAX,
    }
}

fn check_ids<'a>(
    kind: &'static str,
    ids: impl Iterator<Item = &'a str>,
) -> Result<(), ConfigError> {
    let mut seen = std::collections::HashSet::new();
    for id in ids {
        let valid = (1..=64).contains(&id.len())
            && id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if !valid {
            return Err(ConfigError::InvalidId {
                kind,
                id: id.to_owned(),
            });
        }
        if !seen.insert(id) {
            return Err(ConfigError::DuplicateId {
                kind,
                id: id.to_owned(),
            });
        }
    }
    Ok(())
}

/// Parses `xx:xx:xx:xx:xx:xx`.
pub fn parse_mac(text: &str) -> Result<[u8; 6], ConfigError> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for octet in &mut mac {
        let part = parts
            .next()
            .filter(|p| p.len() == 2)
            .ok_or_else(|| ConfigError::InvalidMac(text.to_owned()))?;
        *octet =
            u8::from_str_radix(part, 16).map_err(|_| ConfigError::InvalidMac(text.to_owned()))?;
    }
    if parts.next().is_some() {
        return Err(ConfigError::InvalidMac(text.to_owned()));
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    const LIMITS: HostLimits = HostLimits {
        host_mem_mib: 4096,
        arch_max_mem_mib: 1 << 20,
    };

    fn kernel_file() -> tempfile_path::TempPath {
        tempfile_path::TempPath::with_content(b"\x7fELF")
    }

    /// A file that is removed when dropped (no extra crate for one test helper).
    mod tempfile_path {
        pub struct TempPath(pub std::path::PathBuf);
        impl TempPath {
            pub fn with_content(content: &[u8]) -> Self {
                use std::sync::atomic::{AtomicUsize, Ordering};
                static NEXT: AtomicUsize = AtomicUsize::new(0);
                let path = std::env::temp_dir().join(format!(
                    "brique-config-test-{}-{}",
                    std::process::id(),
                    NEXT.fetch_add(1, Ordering::Relaxed)
                ));
                std::fs::write(&path, content).unwrap();
                Self(path)
            }
        }
        impl Drop for TempPath {
            fn drop(&mut self) {
                let _ = std::fs::remove_file(&self.0);
            }
        }
    }

    fn config_json(kernel: &Path, machine: &str) -> String {
        // The kernel file stands in for the drive's backing file too.
        format!(
            r#"{{
                "boot-source": {{"kernel_image_path": {kernel:?}, "boot_args": "console=ttyS0"}},
                "machine-config": {machine},
                "drives": [{{"drive_id": "rootfs", "path_on_host": {kernel:?},
                             "is_root_device": true, "is_read_only": false}}],
                "network-interfaces": [{{"iface_id": "eth0", "host_dev_name": "tap0",
                                         "guest_mac": "06:00:ac:10:00:02"}}]
            }}"#
        )
    }

    #[test]
    fn parses_firecracker_config_file_shape() {
        let kernel = kernel_file();
        let json = config_json(
            &kernel.0,
            r#"{"vcpu_count": 2, "mem_size_mib": 256, "smt": false}"#,
        );
        let config = VmConfig::from_json(&json).unwrap();
        assert_eq!(config.machine_config.vcpu_count, 2);
        assert_eq!(config.machine_config.mem_size_mib, 256);
        assert_eq!(config.drives[0].drive_id, "rootfs");
        assert_eq!(config.drives[0].cache_type, CacheType::Unsafe);
        assert_eq!(config.network_interfaces[0].host_dev_name, "tap0");
        assert_eq!(
            config.boot_source.as_ref().unwrap().boot_args.as_deref(),
            Some("console=ttyS0")
        );
        config.validate(&LIMITS).unwrap();
    }

    #[test]
    fn unknown_fields_are_errors_at_every_level() {
        for json in [
            r#"{"boot-source": {"kernel_image_path": "/k", "bootargs": "x"}}"#,
            r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "cpus": 2}}"#,
            r#"{"machine_config": {"vcpu_count": 1, "mem_size_mib": 128}}"#,
            r#"{"drives": [{"drive_id": "a", "path_on_host": "/a", "is_root_device": false, "ro": true}]}"#,
        ] {
            let err = VmConfig::from_json(json).unwrap_err().to_string();
            assert!(err.contains("unknown field"), "{json}: {err}");
        }
    }

    #[test]
    fn bad_json_and_wrong_types_are_errors() {
        assert!(VmConfig::from_json("{").is_err());
        assert!(VmConfig::from_json(
            r#"{"machine-config": {"vcpu_count": "2", "mem_size_mib": 1}}"#
        )
        .is_err());
        assert!(VmConfig::from_json(
            r#"{"machine-config": {"vcpu_count": 300, "mem_size_mib": 1}}"#
        )
        .is_err());
    }

    #[test]
    fn machine_limits_are_enforced() {
        let check = |vcpu_count, mem_size_mib, smt| {
            MachineConfig {
                vcpu_count,
                mem_size_mib,
                smt,
                ..MachineConfig::default()
            }
            .validate(&LIMITS)
        };
        assert!(matches!(
            check(0, 128, false),
            Err(ConfigError::VcpuCount(0))
        ));
        assert!(matches!(
            check(33, 128, false),
            Err(ConfigError::VcpuCount(33))
        ));
        assert!(matches!(
            check(3, 128, true),
            Err(ConfigError::SmtVcpuCount(3))
        ));
        assert!(matches!(
            check(1, 8, false),
            Err(ConfigError::MemTooSmall(8))
        ));
        assert!(matches!(
            check(1, 8192, false),
            Err(ConfigError::MemTooLarge { limit: 4096, .. })
        ));
        check(32, 4096, false).unwrap();
        check(1, 16, true).unwrap();
        check(4, 128, true).unwrap();
    }

    #[test]
    fn missing_kernel_and_initrd_are_reported_with_their_path() {
        let json = r#"{"boot-source": {"kernel_image_path": "/nonexistent/vmlinux"}}"#;
        let err = VmConfig::from_json(json)
            .unwrap()
            .validate(&LIMITS)
            .unwrap_err();
        assert!(err.to_string().contains("/nonexistent/vmlinux"), "{err}");

        let kernel = kernel_file();
        let json = format!(
            r#"{{"boot-source": {{"kernel_image_path": {:?}, "initrd_path": "/nonexistent/initrd"}}}}"#,
            kernel.0
        );
        let err = VmConfig::from_json(&json)
            .unwrap()
            .validate(&LIMITS)
            .unwrap_err();
        assert!(matches!(err, ConfigError::Initrd { .. }), "{err}");
        assert!(matches!(
            VmConfig::default().validate(&LIMITS),
            Err(ConfigError::NoBootSource)
        ));
    }

    #[test]
    fn missing_drive_file_is_reported_with_its_id() {
        let kernel = kernel_file();
        let mut config = VmConfig::from_json(&config_json(
            &kernel.0,
            r#"{"vcpu_count": 1, "mem_size_mib": 128}"#,
        ))
        .unwrap();
        config.drives[0].path_on_host = "/nonexistent/disk.img".into();
        let err = config.validate(&LIMITS).unwrap_err();
        assert!(matches!(err, ConfigError::Drive { .. }), "{err}");
        assert!(err.to_string().contains("drive rootfs"), "{err}");
    }

    #[test]
    fn ids_and_macs_are_checked() {
        let kernel = kernel_file();
        let mut config = VmConfig::from_json(&config_json(
            &kernel.0,
            r#"{"vcpu_count": 1, "mem_size_mib": 128}"#,
        ))
        .unwrap();
        config.drives.push(config.drives[0].clone());
        assert!(matches!(
            config.validate(&LIMITS),
            Err(ConfigError::DuplicateId { .. })
        ));
        config.drives[1].drive_id = "data/../x".into();
        assert!(matches!(
            config.validate(&LIMITS),
            Err(ConfigError::InvalidId { .. })
        ));
        config.drives.pop();
        config.network_interfaces[0].guest_mac = Some("06:00:ac:10:00".into());
        assert!(matches!(
            config.validate(&LIMITS),
            Err(ConfigError::InvalidMac(_))
        ));
        assert_eq!(
            parse_mac("06:00:AC:10:00:ff").unwrap(),
            [6, 0, 0xac, 0x10, 0, 0xff]
        );
        assert!(parse_mac("06:00:ac:10:00:02:03").is_err());
        assert!(parse_mac("0g:00:ac:10:00:02").is_err());
    }

    #[test]
    fn an_async_io_engine_is_accepted_and_shown_as_the_sync_one_that_serves_it() {
        let mut drive: DriveConfig = serde_json::from_str(
            r#"{"drive_id": "d", "path_on_host": "/x", "is_root_device": false, "io_engine": "Async"}"#,
        )
        .unwrap();
        assert_eq!(drive.io_engine, Some(IoEngine::Async));
        drive.settle_io_engine();
        assert!(serde_json::to_string(&drive)
            .unwrap()
            .contains(r#""io_engine":"Sync""#));
        assert!(serde_json::from_str::<DriveConfig>(
            r#"{"drive_id": "d", "path_on_host": "/x", "is_root_device": false, "io_engine": "Turbo"}"#
        )
        .is_err());
    }
}
