//! `brique`: one process, one microVM.

mod stop_signal;

use brique_api::http::server::{self, Server};
use brique_vmm::controller::{self, Controller, RequestReceiver};
use brique_vmm::logger::LogLevel;
use brique_vmm::seccomp::{self, FilterKind, Filters};
use brique_vmm::threads::{self, ThreadKind};
use brique_vmm::{ConsoleIo, VmConfig};
use clap::Parser;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// Exit status for a bad command line or configuration, or a VM that could
/// not be built (the guest never ran).
const EXIT_SETUP_FAILED: u8 = 2;

/// brique: a small, fast, auditable KVM virtual machine monitor.
///
/// Runs one microVM. With --config-file it boots at once; with --api-sock it
/// serves a Firecracker-compatible REST API on that Unix socket (configure,
/// then PUT /actions InstanceStart), and with both it boots and serves. The
/// guest's serial console is brique's stdin and stdout. Exit status: 0 when
/// the guest rebooted or powered off, 1 when it panicked, triple-faulted or a
/// vCPU failed, 2 when the VM could not be set up, 148 when a thread made a
/// system call its seccomp filter forbids.
#[derive(Debug, Parser)]
#[command(name = "brique", version, about, long_about)]
struct Args {
    /// Boot the VM described by this JSON file (Firecracker's config-file
    /// shape: boot-source, machine-config, drives, network-interfaces).
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,

    /// Serve the REST control API on this Unix socket (must not exist).
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,

    /// Instance id reported by GET /.
    #[arg(long, default_value = "anonymous-instance")]
    id: String,

    /// Seconds between periodic metrics lines (once PUT /metrics set a path).
    #[arg(long, value_name = "SECONDS", default_value_t = 60,
          value_parser = clap::value_parser!(u64).range(1..))]
    metrics_interval: u64,

    /// Print a snapshot state file's format version and its VM's shape
    /// (JSON), then exit.
    #[arg(long, value_name = "SNAPSHOT_FILE")]
    describe_snapshot: Option<PathBuf>,

    /// Log verbosity, on stderr (PUT /logger can change it).
    #[arg(long, default_value = "warning", value_parser = parse_level)]
    log_level: LogLevel,

    /// Run without seccomp filters (every thread otherwise runs under its
    /// kind's filter; a forbidden system call ends brique with status 148).
    #[arg(long, conflicts_with = "seccomp_filter")]
    no_seccomp: bool,

    /// When the jailer started (CLOCK_MONOTONIC, microseconds): the time to
    /// API socket ready goes to the api.process_startup_time_us metric.
    #[arg(long, value_name = "US")]
    start_time_us: Option<u64>,

    /// The jailer's CPU time when it started (microseconds).
    #[arg(long, value_name = "US")]
    start_time_cpu_us: Option<u64>,

    /// The jailer parent's CPU time when it forked brique's process into a
    /// new PID namespace (microseconds).
    #[arg(long, value_name = "US")]
    parent_cpu_time_us: Option<u64>,

    /// Use the seccomp filters of this JSON file (seccompiler's format, one
    /// filter per thread kind: vmm, api, vcpu, and optionally devices and
    /// signals, which otherwise take the vmm one) instead of brique's own.
    #[arg(long, value_name = "FILE")]
    seccomp_filter: Option<PathBuf>,
}

/// The jailer-to-API-ready times, when a jailer gave its start times.
fn record_startup_time(args: &Args) {
    let api = &brique_vmm::metrics::METRICS.api;
    if let Some(start) = args.start_time_us {
        let now = clock_us(libc::CLOCK_MONOTONIC);
        api.process_startup_time_us.add(now.saturating_sub(start));
    }
    if let Some(start_cpu) = args.start_time_cpu_us {
        // After a fork into a new PID namespace this process's CPU clock
        // restarted from 0: the parent's share is added.
        let cpu = clock_us(libc::CLOCK_PROCESS_CPUTIME_ID) + args.parent_cpu_time_us.unwrap_or(0);
        api.process_startup_time_cpu_us
            .add(cpu.saturating_sub(start_cpu));
    }
}

/// A clock's value in microseconds.
fn clock_us(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the struct we pass.
    unsafe { libc::clock_gettime(clock, &mut now) };
    u64::try_from(now.tv_sec).unwrap_or_default() * 1_000_000
        + u64::try_from(now.tv_nsec).unwrap_or_default() / 1_000
}

/// The seccomp filters the command line asks for.
fn seccomp_filters(args: &Args) -> Result<Option<Filters>, String> {
    if args.no_seccomp {
        return Ok(None);
    }
    let filters = match &args.seccomp_filter {
        Some(path) => Filters::from_json_file(path),
        None => Filters::builtin(),
    };
    filters.map(Some).map_err(|err| err.to_string())
}

fn parse_level(text: &str) -> Result<LogLevel, String> {
    text.parse()
}

fn main() -> ExitCode {
    let args = Args::parse();
    brique_vmm::logger::init(args.log_level.into());
    match run(&args) {
        Ok(code) => code,
        Err(message) => {
            eprintln!("brique: {message}");
            ExitCode::from(EXIT_SETUP_FAILED)
        }
    }
}

/// Removes the API socket when brique ends.
struct SocketFile<'a>(&'a Path);

impl Drop for SocketFile<'_> {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.0);
    }
}

/// `--describe-snapshot`: the description as JSON on stdout.
fn describe_snapshot(path: &Path) -> Result<ExitCode, String> {
    let state = brique_vmm::persist::read_state(path)
        .map_err(|err| format!("{}: {err}", path.display()))?;
    let text = serde_json::to_string_pretty(&state.describe()).map_err(|err| err.to_string())?;
    println!("{text}");
    Ok(ExitCode::SUCCESS)
}

fn run(args: &Args) -> Result<ExitCode, String> {
    if let Some(path) = &args.describe_snapshot {
        return describe_snapshot(path);
    }
    if args.config_file.is_none() && args.api_sock.is_none() {
        return Err(
            "nothing to do: pass --config-file FILE and/or --api-sock PATH (see --help)".into(),
        );
    }
    let config = match &args.config_file {
        Some(path) => VmConfig::from_file(path).map_err(|err| err.to_string())?,
        None => VmConfig::default(),
    };
    seccomp::configure(seccomp_filters(args)?).map_err(|err| err.to_string())?;
    let (handle, requests) = RequestReceiver::channel().map_err(|err| err.to_string())?;
    let _socket = match &args.api_sock {
        Some(path) => {
            let listener = server::bind(path).map_err(|err| err.to_string())?;
            let socket = SocketFile(path);
            let handle = handle.clone();
            let server = Server::new(listener, move |request| {
                brique_api::handle_request(&handle, &request)
            })
            .map_err(|err| err.to_string())?;
            threads::spawn(ThreadKind::Api, move || {
                let err = server.run();
                log::error!("API server stopped: {err}");
            })
            .map_err(|err| format!("cannot start the API thread: {err}"))?;
            record_startup_time(args);
            Some(socket)
        }
        None => None,
    };
    drop(handle);

    let console = Box::new(|| ConsoleIo {
        output: Box::new(std::io::stdout()),
        input: Some(std::io::stdin().as_raw_fd()),
    });
    let stop = stop_signal::install().map_err(|err| format!("signal handlers: {err}"))?;
    // The VMM thread's filter is in force before the first request or boot.
    seccomp::confine_current_thread(FilterKind::Vmm).map_err(|err| err.to_string())?;
    let mut controller = Controller::new(config, console, args.id.clone());
    let terminal = brique_vmm::console::RawTerminal::enter();
    if args.config_file.is_some() {
        if let Err(err) = controller.start() {
            drop(terminal);
            return Err(err.to_string());
        }
    }
    let served = controller::serve(
        controller,
        requests,
        Duration::from_secs(args.metrics_interval),
        Some(stop),
    );
    drop(terminal);
    let reason = served.map_err(|err| err.to_string())?;
    if reason.is_clean() {
        log::info!("{reason}");
    } else {
        eprintln!("brique: {reason}");
    }
    Ok(ExitCode::from(reason.exit_code() as u8))
}
