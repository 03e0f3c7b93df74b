//! `brique`: one process, one microVM.

mod logger;

use brique_vmm::{ConsoleIo, ExitReason, Machine, Payload, VmConfig};
use clap::Parser;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::process::ExitCode;

/// Exit status for a bad command line or configuration, or a VM that could
/// not be built (the guest never ran).
const EXIT_SETUP_FAILED: u8 = 2;

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum LogLevel {
    Off,
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl From<LogLevel> for log::LevelFilter {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Off => Self::Off,
            LogLevel::Error => Self::Error,
            LogLevel::Warn => Self::Warn,
            LogLevel::Info => Self::Info,
            LogLevel::Debug => Self::Debug,
            LogLevel::Trace => Self::Trace,
        }
    }
}

/// brique: a small, fast, auditable KVM virtual machine monitor.
///
/// Boots one Linux microVM. The guest's serial console is brique's stdin and
/// stdout. Exit status: 0 when the guest rebooted or powered off, 1 when it
/// panicked, triple-faulted or a vCPU failed, 2 when the VM could not be set up.
#[derive(Debug, Parser)]
#[command(name = "brique", version, about, long_about)]
struct Args {
    /// Boot the VM described by this JSON file (Firecracker's config-file
    /// shape: boot-source, machine-config, drives, network-interfaces).
    #[arg(long, value_name = "FILE")]
    config_file: Option<PathBuf>,

    /// Unix socket path of the REST control API.
    #[arg(long, value_name = "PATH")]
    api_sock: Option<PathBuf>,

    /// Log verbosity, on stderr.
    #[arg(long, value_enum, default_value = "warn", ignore_case = true)]
    log_level: LogLevel,
}

fn main() -> ExitCode {
    let args = Args::parse();
    logger::init(args.log_level.into());

    if let Some(sock) = &args.api_sock {
        eprintln!(
            "brique: --api-sock {}: the control API server is not available in this build",
            sock.display()
        );
        return ExitCode::from(EXIT_SETUP_FAILED);
    }
    let Some(config_path) = args.config_file else {
        eprintln!("brique: nothing to boot: pass --config-file FILE (see --help)");
        return ExitCode::from(EXIT_SETUP_FAILED);
    };
    let config = match VmConfig::from_file(&config_path) {
        Ok(config) => config,
        Err(err) => {
            eprintln!("brique: {err}");
            return ExitCode::from(EXIT_SETUP_FAILED);
        }
    };

    let terminal = brique_vmm::console::RawTerminal::enter();
    let console = ConsoleIo {
        output: Box::new(std::io::stdout()),
        input: Some(std::io::stdin().as_raw_fd()),
    };
    let machine = match Machine::boot(&config, Payload::Linux, console) {
        Ok(machine) => machine,
        Err(err) => {
            drop(terminal);
            eprintln!("brique: {err}");
            return ExitCode::from(EXIT_SETUP_FAILED);
        }
    };
    log::info!("microVM started");
    let reason: ExitReason = machine.wait_for_exit();
    drop(terminal);
    if reason.is_clean() {
        log::info!("{reason}");
    } else {
        eprintln!("brique: {reason}");
    }
    ExitCode::from(reason.exit_code() as u8)
}
