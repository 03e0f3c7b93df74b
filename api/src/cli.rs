//! brique's command line: Firecracker's flags with their meaning, and
//! brique's few extensions. What a flag asks for is checked here, before
//! anything is started.

use brique_vmm::logger::{LogLevel, LoggerConfig};
use brique_vmm::metrics::MetricsConfig;
use clap::Parser;
use std::path::PathBuf;

/// Where the API is served when neither `--api-sock` nor `--no-api` is
/// given (Firecracker's is `/run/firecracker.socket`).
pub const DEFAULT_API_SOCK: &str = "/run/brique.socket";

/// The Firecracker API version brique follows, also in `--version`.
pub use brique_vmm::controller::FIRECRACKER_API_VERSION;

/// Largest API request body by default, in bytes (Firecracker's).
pub const DEFAULT_MAX_PAYLOAD: usize = crate::http::request::MAX_BODY_BYTES;

/// What `--version` prints: the first line reads as Firecracker's own
/// (`Firecracker v<API version>`), because launchers such as Kata take its
/// second word as the Firecracker version they talk to; brique's own
/// version follows on the same line.
pub fn version_line() -> String {
    format!(
        "Firecracker v{FIRECRACKER_API_VERSION} (brique {}: a brique VMM that follows \
         Firecracker's API v{FIRECRACKER_API_VERSION})",
        env!("CARGO_PKG_VERSION")
    )
}

/// brique: a small, fast, auditable KVM virtual machine monitor.
///
/// Runs one microVM and serves Firecracker's REST API on a Unix socket
/// (--api-sock, or /run/brique.socket). With --config-file it boots at once;
/// otherwise it waits to be configured (PUT /actions InstanceStart). The
/// guest's serial console is brique's stdin and stdout. Exit status: 0 when
/// the guest rebooted or powered off, 1 when it panicked, triple-faulted or a
/// vCPU failed, 2 when the VM could not be set up, 148 when a thread made a
/// system call its seccomp filter forbids.
#[derive(Debug, Parser)]
#[command(name = "brique", about, long_about, disable_version_flag = true)]
pub struct Args {
    /// Print the version (Firecracker's form: see the README) and exit.
    #[arg(long, short = 'V')]
    pub version: bool,

    /// Boot the VM described by this JSON file (Firecracker's config-file
    /// shape: boot-source, machine-config, drives, network-interfaces,
    /// entropy, logger, metrics).
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,

    /// Serve the REST control API on this Unix socket (must not exist).
    #[arg(long, value_name = "PATH")]
    pub api_sock: Option<PathBuf>,

    /// Serve no API: the microVM comes from --config-file alone.
    #[arg(long, requires = "config_file")]
    pub no_api: bool,

    /// Instance id reported by GET / (1 to 64 letters, digits and '-').
    #[arg(long, default_value = "anonymous-instance", value_parser = parse_instance_id)]
    pub id: String,

    /// Seconds between periodic metrics lines, once a metrics path is set
    /// (a brique extension).
    #[arg(long, value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    pub metrics_interval: u64,

    /// Print a snapshot state file's format version and its VM's shape
    /// (JSON), then exit.
    #[arg(long, value_name = "SNAPSHOT_FILE")]
    pub describe_snapshot: Option<PathBuf>,

    /// Print the snapshot state-file format version brique writes, then exit.
    #[arg(long)]
    pub snapshot_version: bool,

    /// Log verbosity: Off, Error, Warning, Info, Debug or Trace (PUT /logger
    /// can change it).
    #[arg(long, alias = "log-level", default_value = "warning", value_parser = parse_level)]
    pub level: LogLevel,

    /// Write logs to this file or FIFO instead of stderr.
    #[arg(long, value_name = "PATH")]
    pub log_path: Option<PathBuf>,

    /// Only log records of this module path (e.g. brique_vmm::machine).
    #[arg(long, value_name = "MODULE")]
    pub module: Option<String>,

    /// Put each record's level in the log line.
    #[arg(long)]
    pub show_level: bool,

    /// Put each record's source file and line in the log line.
    #[arg(long)]
    pub show_log_origin: bool,

    /// Write metrics lines to this file or FIFO (as PUT /metrics does).
    #[arg(long, value_name = "PATH")]
    pub metrics_path: Option<PathBuf>,

    /// Add the boot-timer device: the guest's write of the boot-done value
    /// logs the time since InstanceStart.
    #[arg(long)]
    pub boot_timer: bool,

    /// Largest API request body, in bytes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_PAYLOAD,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=(64 << 20)))]
    pub http_api_max_payload_size: usize,

    /// MMDS's data store limit: brique has no MMDS, so this is refused.
    #[arg(long, value_name = "BYTES", hide = true)]
    pub mmds_size_limit: Option<String>,

    /// MMDS's initial contents: brique has no MMDS, so this is refused.
    #[arg(long, value_name = "FILE", hide = true)]
    pub metadata: Option<PathBuf>,

    /// Accepted for Firecracker's launchers: brique has no PCI and puts its
    /// devices on virtio-mmio (it says so in the log).
    #[arg(long)]
    pub enable_pci: bool,

    /// Run without seccomp filters (every thread otherwise runs under its
    /// kind's filter; a forbidden system call ends brique with status 148).
    #[arg(long, conflicts_with = "seccomp_filter")]
    pub no_seccomp: bool,

    /// Use the seccomp filters of this JSON file (seccompiler's format, one
    /// filter per thread kind: vmm, api, vcpu, and optionally devices and
    /// signals, which otherwise take the vmm one) instead of brique's own.
    #[arg(long, value_name = "FILE")]
    pub seccomp_filter: Option<PathBuf>,

    /// When the jailer started (CLOCK_MONOTONIC, microseconds): the time to
    /// API socket ready goes to the api.process_startup_time_us metric.
    #[arg(long, value_name = "US")]
    pub start_time_us: Option<u64>,

    /// The jailer's CPU time when it started (microseconds).
    #[arg(long, value_name = "US")]
    pub start_time_cpu_us: Option<u64>,

    /// The jailer parent's CPU time when it forked brique's process into a
    /// new PID namespace (microseconds).
    #[arg(long, value_name = "US")]
    pub parent_cpu_time_us: Option<u64>,
}

/// Flags that ask for something brique does not have.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag of a Firecracker feature brique lacks.
    #[error("{flag}: {feature} is not supported by brique")]
    Unsupported {
        flag: &'static str,
        feature: &'static str,
    },
}

impl Args {
    /// Refuses the flags of features brique lacks, naming the feature.
    pub fn check_supported(&self) -> Result<(), CliError> {
        let mmds = "MMDS (the microVM metadata service)";
        if self.mmds_size_limit.is_some() {
            return Err(CliError::Unsupported {
                flag: "--mmds-size-limit",
                feature: mmds,
            });
        }
        if self.metadata.is_some() {
            return Err(CliError::Unsupported {
                flag: "--metadata",
                feature: mmds,
            });
        }
        Ok(())
    }

    /// Where the API is served: `--api-sock`, the default socket, or
    /// nowhere with `--no-api`.
    pub fn api_socket(&self) -> Option<PathBuf> {
        if self.no_api {
            return None;
        }
        Some(
            self.api_sock
                .clone()
                .unwrap_or_else(|| PathBuf::from(DEFAULT_API_SOCK)),
        )
    }

    /// The logger settings the flags give: the level always, the other
    /// fields only where a flag set them (the rest keep their defaults).
    pub fn logger_config(&self) -> LoggerConfig {
        LoggerConfig {
            log_path: self.log_path.clone(),
            level: Some(self.level),
            show_level: self.show_level.then_some(true),
            show_log_origin: self.show_log_origin.then_some(true),
            module: self.module.clone(),
        }
    }

    /// The metrics settings `--metrics-path` gives.
    pub fn metrics_config(&self) -> Option<MetricsConfig> {
        self.metrics_path.as_ref().map(|path| MetricsConfig {
            metrics_path: path.clone(),
            emit_id: None,
            properties: None,
        })
    }
}

fn parse_level(text: &str) -> Result<LogLevel, String> {
    text.parse()
}

/// Firecracker's rule for instance ids: 1 to 64 characters, letters,
/// digits and '-'.
fn parse_instance_id(text: &str) -> Result<String, String> {
    let valid = (1..=64).contains(&text.len())
        && text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    if valid {
        Ok(text.to_owned())
    } else {
        Err(format!(
            "invalid instance id {text:?}: use 1 to 64 letters, digits and '-'"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Args, String> {
        Args::try_parse_from(std::iter::once("brique").chain(args.iter().copied()))
            .map_err(|err| err.to_string())
    }

    #[test]
    fn every_firecracker_flag_parses() {
        let args = parse(&[
            "--api-sock",
            "/run/x.sock",
            "--id",
            "vm-1",
            "--config-file",
            "/c.json",
            "--log-path",
            "/l",
            "--level",
            "Debug",
            "--module",
            "brique_vmm",
            "--show-level",
            "--show-log-origin",
            "--metrics-path",
            "/m",
            "--boot-timer",
            "--http-api-max-payload-size",
            "102400",
            "--enable-pci",
            "--no-seccomp",
            "--start-time-us",
            "1",
            "--start-time-cpu-us",
            "2",
            "--parent-cpu-time-us",
            "3",
        ])
        .unwrap();
        assert_eq!(args.api_socket(), Some(PathBuf::from("/run/x.sock")));
        assert_eq!(args.level, LogLevel::Debug);
        assert_eq!(args.http_api_max_payload_size, 102400);
        let logger = args.logger_config();
        assert_eq!(logger.show_level, Some(true));
        assert_eq!(logger.module.as_deref(), Some("brique_vmm"));
        assert_eq!(
            args.metrics_config().map(|m| m.metrics_path),
            Some(PathBuf::from("/m"))
        );
        assert!(args.check_supported().is_ok());
    }

    #[test]
    fn the_api_is_served_on_the_default_socket_unless_no_api() {
        assert_eq!(
            parse(&[]).unwrap().api_socket(),
            Some(PathBuf::from(DEFAULT_API_SOCK))
        );
        let args = parse(&["--no-api", "--config-file", "/c.json"]).unwrap();
        assert_eq!(args.api_socket(), None);
        let err = parse(&["--no-api"]).unwrap_err();
        assert!(err.contains("--config-file"), "{err}");
    }

    #[test]
    fn mmds_flags_are_refused_by_name_and_bad_values_by_clap() {
        let err = parse(&["--mmds-size-limit", "4096"])
            .unwrap()
            .check_supported()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("MMDS") && err.contains("--mmds-size-limit"),
            "{err}"
        );
        for bad in [
            &["--id", "has space"][..],
            &["--id", ""],
            &["--level", "loud"],
            &["--http-api-max-payload-size", "0"],
            &["--start-time-us", "soon"],
        ] {
            assert!(parse(bad).is_err(), "{bad:?} was accepted");
        }
        assert_eq!(
            parse(&["--log-level", "info"]).unwrap().level,
            LogLevel::Info
        );
    }

    #[test]
    fn the_version_line_reads_as_firecracker_s_for_launchers() {
        let line = version_line();
        let words: Vec<&str> = line.split(' ').collect();
        assert_eq!(words[0], "Firecracker");
        let version = words[1].strip_prefix('v').unwrap();
        assert_eq!(version.split('.').count(), 3, "{line}");
        assert!(
            version.split('.').all(|n| n.parse::<u32>().is_ok()),
            "{line}"
        );
        assert!(line.contains(&format!("brique {}", env!("CARGO_PKG_VERSION"))));
        assert_eq!(line.lines().count(), 1);
    }
}
