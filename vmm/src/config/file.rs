//! A whole Firecracker config file (`--config-file`): the microVM's
//! configuration, plus the logger and metrics sections, which configure
//! the process rather than the microVM, and the sections of features
//! brique lacks, accepted only when they ask for nothing.

use super::fields::{self, null_is_default, Absent};
use super::{BootSourceConfig, ConfigError, DriveConfig, MachineConfig, NetworkInterfaceConfig};
use super::{EntropyConfig, VmConfig, VsockDeviceConfig};
use crate::logger::LoggerConfig;
use crate::metrics::MetricsConfig;
use serde::Deserialize;
use std::path::Path;

/// Every section of Firecracker's config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    #[serde(rename = "boot-source", default)]
    boot_source: Option<BootSourceConfig>,
    #[serde(
        rename = "machine-config",
        default,
        deserialize_with = "null_is_default"
    )]
    machine_config: MachineConfig,
    #[serde(default, deserialize_with = "null_is_default")]
    drives: Vec<DriveConfig>,
    #[serde(
        rename = "network-interfaces",
        default,
        deserialize_with = "null_is_default"
    )]
    network_interfaces: Vec<NetworkInterfaceConfig>,
    #[serde(default)]
    entropy: Option<EntropyConfig>,
    #[serde(default)]
    vsock: Option<VsockDeviceConfig>,
    /// Where logs go, applied as `PUT /logger` is.
    #[serde(default)]
    pub logger: Option<LoggerConfig>,
    /// Where metrics go, applied as `PUT /metrics` is.
    #[serde(default)]
    pub metrics: Option<MetricsConfig>,
    // Sections of features brique lacks: never read, only checked.
    #[serde(rename = "balloon", default, deserialize_with = "fields::balloon")]
    _balloon: Absent,
    #[serde(
        rename = "cpu-config",
        default,
        deserialize_with = "fields::cpu_config"
    )]
    _cpu_config: Absent,
    #[serde(
        rename = "mmds-config",
        default,
        deserialize_with = "fields::mmds_config"
    )]
    _mmds_config: Absent,
    #[serde(rename = "pmem", default, deserialize_with = "fields::pmem")]
    _pmem: Absent,
    #[serde(
        rename = "memory-hotplug",
        default,
        deserialize_with = "fields::memory_hotplug"
    )]
    _memory_hotplug: Absent,
}

impl ConfigFile {
    /// Parses a config file's JSON (no validation against the host).
    pub fn from_json(json: &str) -> Result<Self, ConfigError> {
        Ok(serde_json::from_str(json)?)
    }

    /// Reads and parses a config file.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let json = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::from_json(&json)
    }

    /// The microVM's part of the file (boot source, machine, devices).
    pub fn vm_config(&self) -> VmConfig {
        let mut drives = self.drives.clone();
        drives.iter_mut().for_each(DriveConfig::settle_io_engine);
        VmConfig {
            boot_source: self.boot_source.clone(),
            machine_config: self.machine_config.clone(),
            drives,
            network_interfaces: self.network_interfaces.clone(),
            entropy: self.entropy.clone(),
            vsock: self.vsock.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_section_of_firecracker_s_file_is_accepted_when_it_asks_for_nothing() {
        let json = r#"{
            "boot-source": {"kernel_image_path": "/k", "boot_args": "console=ttyS0", "initrd_path": null},
            "drives": [{"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true,
                        "partuuid": null, "is_read_only": false, "cache_type": "Unsafe",
                        "io_engine": "Sync", "rate_limiter": null, "socket": null}],
            "machine-config": {"vcpu_count": 2, "mem_size_mib": 1024, "smt": false,
                               "track_dirty_pages": false, "huge_pages": "None",
                               "cpu_template": "None"},
            "cpu-config": null,
            "balloon": null,
            "network-interfaces": [{"iface_id": "eth0", "guest_mac": "06:00:AC:10:00:02",
                                    "host_dev_name": "tap0", "mtu": null,
                                    "rx_rate_limiter": null,
                                    "tx_rate_limiter": {"bandwidth": {"size": 10485760,
                                                      "refill_time": 1000}, "ops": null}}],
            "vsock": null,
            "logger": {"log_path": "/tmp/fc.log", "level": "Info", "show_level": true,
                       "show_log_origin": false},
            "metrics": {"metrics_path": "/tmp/fc.metrics", "emit_id": true},
            "mmds-config": null,
            "entropy": null,
            "pmem": [],
            "memory-hotplug": null
        }"#;
        let file = ConfigFile::from_json(json).unwrap();
        let vm = file.vm_config();
        assert_eq!(vm.machine_config.vcpu_count, 2);
        assert_eq!(vm.drives[0].drive_id, "rootfs");
        assert_eq!(vm.network_interfaces[0].host_dev_name, "tap0");
        let tx = vm.network_interfaces[0].tx_rate_limiter.unwrap();
        assert_eq!(tx.bandwidth.map(|b| b.size), Some(10 << 20));
        assert_eq!(
            file.logger.as_ref().and_then(|l| l.log_path.as_deref()),
            Some(Path::new("/tmp/fc.log"))
        );
        assert_eq!(file.metrics.as_ref().and_then(|m| m.emit_id), Some(true));
    }

    #[test]
    fn the_vsock_section_configures_the_vsock_device() {
        let json = r#"{"vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock", "vsock_id": null}}"#;
        let vsock = ConfigFile::from_json(json).unwrap().vm_config().vsock;
        assert_eq!(vsock.as_ref().map(|v| v.guest_cid), Some(3));
        assert_eq!(
            vsock.map(|v| v.uds_path),
            Some(std::path::PathBuf::from("/tmp/v.sock"))
        );
        let err = ConfigFile::from_json(r#"{"vsock": {"guest_cid": 3}}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("uds_path"), "{err}");
    }

    #[test]
    fn a_section_of_a_feature_brique_lacks_is_refused_by_name() {
        for (json, named) in [
            (
                r#"{"balloon": {"amount_mib": 64, "deflate_on_oom": true}}"#,
                "balloon",
            ),
            (
                r#"{"mmds-config": {"network_interfaces": ["eth0"]}}"#,
                "MMDS",
            ),
            (
                r#"{"cpu-config": {"cpuid_modifiers": []}}"#,
                "CPU templates",
            ),
            (r#"{"pmem": [{"id": "p", "path_on_host": "/p"}]}"#, "pmem"),
            (
                r#"{"memory-hotplug": {"total_size_mib": 1024}}"#,
                "memory hotplug",
            ),
            (
                r#"{"machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "cpu_template": "C3"}}"#,
                "CPU templates",
            ),
            (
                r#"{"drives": [{"drive_id": "d", "is_root_device": false, "socket": "/s"}]}"#,
                "vhost-user",
            ),
        ] {
            let err = ConfigFile::from_json(json).unwrap_err().to_string();
            assert!(err.contains(named), "{json}: {err}");
        }
        let err = ConfigFile::from_json(r#"{"colour": 1}"#)
            .unwrap_err()
            .to_string();
        assert!(err.contains("colour"), "{err}");
    }

    #[test]
    fn null_sections_and_fields_mean_their_defaults() {
        let file = ConfigFile::from_json(
            r#"{"machine-config": null, "drives": null, "network-interfaces": null, "logger": null}"#,
        )
        .unwrap();
        let vm = file.vm_config();
        assert_eq!(vm.machine_config, MachineConfig::default());
        assert!(vm.drives.is_empty() && vm.network_interfaces.is_empty());
        assert!(file.logger.is_none());
    }
}
