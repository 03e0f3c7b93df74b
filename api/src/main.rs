//! `brique`: one process, one microVM.

mod stop_signal;

use brique_api::cli::{self, Args};
use brique_api::http::server::{self, Server};
use brique_vmm::config::ConfigFile;
use brique_vmm::controller::{self, Controller, RequestReceiver, VmmAction};
use brique_vmm::seccomp::{self, FilterKind, Filters};
use brique_vmm::threads::{self, ThreadKind};
use brique_vmm::ConsoleIo;
use clap::Parser;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

/// Exit status for a bad command line or configuration, or a VM that could
/// not be built (the guest never ran).
const EXIT_SETUP_FAILED: u8 = 2;

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
    u64::try_from(brique_devices::clock::now(clock).as_micros()).unwrap_or(u64::MAX)
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

fn main() -> ExitCode {
    let args = Args::parse();
    if args.version {
        println!("{}", cli::version_line());
        return ExitCode::SUCCESS;
    }
    if args.snapshot_version {
        println!("v{}.0.0", brique_vmm::persist::file::FORMAT_VERSION);
        return ExitCode::SUCCESS;
    }
    brique_vmm::logger::init(args.level.into());
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
    args.check_supported().map_err(|err| err.to_string())?;
    brique_vmm::logger::configure(&args.logger_config()).map_err(|err| err.to_string())?;
    if args.enable_pci {
        log::warn!(
            "--enable-pci: brique has no PCI; its devices are on virtio-mmio, announced on \
             the kernel command line"
        );
    }
    let file = match &args.config_file {
        Some(path) => ConfigFile::from_file(path).map_err(|err| err.to_string())?,
        None => ConfigFile::default(),
    };
    seccomp::configure(seccomp_filters(args)?).map_err(|err| err.to_string())?;
    // Descriptors the VMM thread needs come before the first client can take any.
    let stop = stop_signal::install().map_err(|err| format!("signal handlers: {err}"))?;
    let (handle, requests) = RequestReceiver::channel().map_err(|err| err.to_string())?;
    let api_socket = args.api_socket();
    let _socket = match &api_socket {
        Some(path) => {
            let listener = server::bind(path).map_err(|err| err.to_string())?;
            let socket = SocketFile(path);
            let handle = handle.clone();
            let server = Server::new(listener, move |request| {
                brique_api::handle_request(&handle, &request)
            })
            .map_err(|err| err.to_string())?
            .with_max_body(args.http_api_max_payload_size);
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
    // The VMM thread's filter is in force before the first request or boot.
    seccomp::confine_current_thread(FilterKind::Vmm).map_err(|err| err.to_string())?;
    let mut controller = Controller::new(file.vm_config(), console, args.id.clone())
        .with_boot_timer(args.boot_timer);
    let process_settings = [
        file.logger.clone().map(VmmAction::PutLogger),
        args.metrics_config().map(VmmAction::PutMetrics),
        file.metrics.clone().map(VmmAction::PutMetrics),
    ];
    for action in process_settings.into_iter().flatten() {
        controller.handle(action).map_err(|err| err.to_string())?;
    }
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
