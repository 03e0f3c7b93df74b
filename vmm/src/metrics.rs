//! Process-wide counters (API requests, vCPU exits, errors) and the writer
//! that appends them, with the devices' I/O counters, as one JSON line per
//! flush to the metrics file or FIFO an orchestrator configured.
//!
//! Values are cumulative since brique started; a reader wanting rates
//! subtracts consecutive lines.

use brique_devices::virtio::block::BlockCounters;
use brique_devices::virtio::net::NetCounters;
use serde::Serialize;
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
}

/// One line of the metrics file.
#[derive(Debug, Serialize)]
struct MetricsLine<'a> {
    utc_timestamp_ms: u128,
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

/// Appends metrics lines to a file or FIFO.
#[derive(Debug)]
pub struct MetricsWriter {
    file: File,
    path: PathBuf,
}

impl MetricsWriter {
    /// Opens (creating a regular file if missing) `path` for appending.
    /// Non-blocking, so that a FIFO nobody reads never stalls the VMM.
    pub fn open(path: &Path) -> Result<Self, MetricsError> {
        let file = open_sink(path).map_err(|source| MetricsError::Open {
            path: path.to_owned(),
            source,
        })?;
        Ok(Self {
            file,
            path: path.to_owned(),
        })
    }

    /// Where lines go.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Writes one line: the process counters and `devices`.
    pub fn write(&mut self, devices: &DeviceMetrics) -> Result<(), MetricsError> {
        let line = MetricsLine {
            utc_timestamp_ms: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default()
                .as_millis(),
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
        let mut writer = MetricsWriter::open(&path).unwrap();
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
        let requests = |i: usize| lines[i]["api"]["requests"].as_u64().unwrap();
        assert!(requests(1) > requests(0), "cumulative counters grow");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn a_path_in_a_missing_directory_is_a_clear_error() {
        let err = MetricsWriter::open(Path::new("/nonexistent-dir/metrics")).unwrap_err();
        assert!(
            err.to_string().contains("/nonexistent-dir/metrics"),
            "{err}"
        );
    }
}
