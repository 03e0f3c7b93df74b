//! Process-wide counters (API requests, vCPU exits, errors) and the writer
//! that appends them, with the devices' I/O counters, as one JSON line per
//! flush to the metrics file or FIFO an orchestrator configured.
//!
//! Values are cumulative since brique started; a reader wanting rates
//! subtracts consecutive lines.

use brique_devices::virtio::block::BlockCounters;
use brique_devices::virtio::net::NetCounters;
use brique_devices::virtio::rng::EntropyCounters;
use brique_devices::virtio::vsock::VsockCounters;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A monotonically increasing counter.
#[derive(Debug, Default)]
pub struct Counter(AtomicU64);

impl Counter {
    /// A counter at zero.
    pub const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    /// Adds one.
    pub fn inc(&self) {
        self.add(1);
    }

    /// Adds `n`.
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    /// The current value.
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

impl Serialize for Counter {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_u64(self.get())
    }
}

/// Control API counters.
#[derive(Debug, Default, Serialize)]
pub struct ApiMetrics {
    /// Requests answered (any status).
    pub requests: Counter,
    /// Requests answered with a 4xx or 5xx status.
    pub errors: Counter,
    /// Connections closed for malformed HTTP, oversized requests or idling.
    pub connections_dropped: Counter,
    /// Microseconds from the jailer's start (`--start-time-us`) to the API
    /// socket's being ready; 0 when brique was not started by a jailer.
    pub process_startup_time_us: Counter,
    /// CPU time spent in that span (jailer and brique), in microseconds.
    pub process_startup_time_cpu_us: Counter,
}

/// vCPU exit counters, all vCPUs together.
#[derive(Debug, Default, Serialize)]
pub struct VcpuMetrics {
    /// Port reads.
    pub exit_io_in: Counter,
    /// Port writes.
    pub exit_io_out: Counter,
    /// MMIO reads.
    pub exit_mmio_read: Counter,
    /// MMIO writes.
    pub exit_mmio_write: Counter,
    /// vCPUs that stopped on an error (not a guest reboot or power-off).
    pub failures: Counter,
}

/// Every process-wide counter.
#[derive(Debug, Default, Serialize)]
pub struct Metrics {
    /// Control API.
    pub api: ApiMetrics,
    /// vCPUs.
    pub vcpu: VcpuMetrics,
}

impl Metrics {
    const fn new() -> Self {
        Self {
            api: ApiMetrics {
                requests: Counter::new(),
                errors: Counter::new(),
                connections_dropped: Counter::new(),
                process_startup_time_us: Counter::new(),
                process_startup_time_cpu_us: Counter::new(),
            },
            vcpu: VcpuMetrics {
                exit_io_in: Counter::new(),
                exit_io_out: Counter::new(),
                exit_mmio_read: Counter::new(),
                exit_mmio_write: Counter::new(),
                failures: Counter::new(),
            },
        }
    }
}

/// The process's counters.
pub static METRICS: Metrics = Metrics::new();

/// The devices' counters at one instant, by drive and interface id.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct DeviceMetrics {
    /// Block devices by drive_id.
    pub block: BTreeMap<String, BlockCounters>,
    /// Network interfaces by iface_id.
    pub net: BTreeMap<String, NetCounters>,
    /// The entropy device, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub entropy: Option<EntropyCounters>,
    /// The vsock device, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vsock: Option<VsockCounters>,
}

/// One line of the metrics file.
#[derive(Debug, Serialize)]
struct MetricsLine<'a> {
    utc_timestamp_ms: u128,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    properties: Option<&'a BTreeMap<String, String>>,
    #[serde(flatten)]
    process: &'a Metrics,
    #[serde(flatten)]
    devices: &'a DeviceMetrics,
}

/// Errors of the metrics writer.
#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    /// The metrics path cannot be opened.
    #[error("cannot open metrics file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
    /// A line could not be written.
    #[error("cannot write metrics: {0}")]
    Write(std::io::Error),
}

/// Opens a file or FIFO that log or metrics lines are appended to: created
/// if missing, non-blocking (a FIFO nobody reads never stalls brique; read
/// access lets a FIFO open without a reader).
pub(crate) fn open_sink(path: &Path) -> std::io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
}

/// `PUT /metrics`, the `metrics` section of a config file and
/// `--metrics-path`: where metrics lines go and what they carry besides
/// the counters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    /// File or FIFO the metrics lines are appended to.
    pub metrics_path: PathBuf,
    /// Put the instance id (`--id`) in every line, as `"id"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub emit_id: Option<bool>,
    /// Operator-defined pairs put in every line, as `"properties"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub properties: Option<BTreeMap<String, String>>,
}

/// Appends metrics lines to a file or FIFO.
#[derive(Debug)]
pub struct MetricsWriter {
    file: File,
    config: MetricsConfig,
    /// The instance id, when `emit_id` asked for it.
    id: Option<String>,
}

impl MetricsWriter {
    /// Opens (creating a regular file if missing) the configured path for
    /// appending. Non-blocking, so that a FIFO nobody reads never stalls
    /// the VMM. `instance_id` goes in each line if `emit_id` is set.
    pub fn open(config: &MetricsConfig, instance_id: &str) -> Result<Self, MetricsError> {
        let path = &config.metrics_path;
        let file = open_sink(path).map_err(|source| MetricsError::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            file,
            config: config.clone(),
            id: (config.emit_id == Some(true)).then(|| instance_id.to_owned()),
        })
    }

    /// What it was configured with.
    pub fn config(&self) -> &MetricsConfig {
        &self.config
    }

    /// Writes one line: the process counters and `devices`.
    pub fn write(&mut self, devices: &DeviceMetrics) -> Result<(), MetricsError> {
        let line = MetricsLine {
            utc_timestamp_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
            id: self.id.as_deref(),
            properties: self.config.properties.as_ref(),
            process: &METRICS,
            devices,
        };
        let mut bytes = serde_json::to_vec(&line)
            .map_err(|err| MetricsError::Write(std::io::Error::other(err)))?;
        bytes.push(b'\n');
        self.file.write_all(&bytes).map_err(MetricsError::Write)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_flush_appends_one_json_line_with_every_group() {
        let path = std::env::temp_dir().join(format!("brique-metrics-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let config = MetricsConfig {
            metrics_path: path.clone(),
            emit_id: None,
            properties: None,
        };
        let mut writer = MetricsWriter::open(&config, "vm-7").unwrap();
        let mut devices = DeviceMetrics::default();
        devices.block.insert(
            "rootfs".into(),
            BlockCounters {
                read_bytes: 4096,
                ..Default::default()
            },
        );
        devices.net.insert("eth0".into(), NetCounters::default());
        METRICS.api.requests.inc();
        writer.write(&devices).unwrap();
        METRICS.api.requests.inc();
        writer.write(&devices).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        for line in &lines {
            for key in ["utc_timestamp_ms", "api", "vcpu", "block", "net"] {
                assert!(line.get(key).is_some(), "{key} missing in {line}");
            }
            assert_eq!(line["block"]["rootfs"]["read_bytes"], 4096);
        }
        assert!(lines[0].get("id").is_none() && lines[0].get("properties").is_none());
        let requests = |i: usize| lines[i]["api"]["requests"].as_u64().unwrap();
        assert!(requests(1) > requests(0), "cumulative counters grow");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_path_in_a_missing_directory_is_a_clear_error() {
        let config = MetricsConfig {
            metrics_path: "/nonexistent-dir/metrics".into(),
            emit_id: None,
            properties: None,
        };
        let err = MetricsWriter::open(&config, "i").unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent-dir/metrics"),
            "{err}"
        );
    }

    #[test]
    fn emit_id_and_properties_go_in_every_line() {
        let path = std::env::temp_dir().join(format!("brique-metrics-id-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let config: MetricsConfig = serde_json::from_value(serde_json::json!({
            "metrics_path": path,
            "emit_id": true,
            "properties": {"host": "rack-12", "tenant": "acme"},
        }))
        .unwrap();
        let mut writer = MetricsWriter::open(&config, "vm-7").unwrap();
        writer.write(&DeviceMetrics::default()).unwrap();
        let line: serde_json::Value =
            serde_json::from_str(std::fs::read_to_string(&path).unwrap().trim()).unwrap();
        assert_eq!(line["id"], "vm-7");
        assert_eq!(line["properties"]["tenant"], "acme");
        assert_eq!(writer.config(), &config);
        std::fs::remove_file(&path).unwrap();
        let unknown = serde_json::json!({"metrics_path": "/m", "colour": 1});
        assert!(serde_json::from_value::<MetricsConfig>(unknown).is_err());
    }
}
