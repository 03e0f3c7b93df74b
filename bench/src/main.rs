//! `brique-bench`: brique measured against QEMU's microvm machine (on arm64
//! hosts, for `boot`: its virt machine) in the same run, on the same host,
//! booting the same guest. Prints figures for both and the ratios
//! brique/QEMU (below 1 means brique is better).
//!
//! `brique-bench boot` runs where KVM can boot Linux: inside the test host
//! (`resources/bench-boot.sh` does that; `--arch aarch64`: the arm64 test
//! host, with a static arm64 build of this program). `brique-bench api` runs on any
//! /dev/kvm (`resources/bench-api.sh`). `brique-bench snapshot` runs in
//! the test host too (`resources/bench-snapshot.sh`). `brique-bench
//! confinement` runs on this machine's /dev/kvm (`resources/bench-confinement.sh`).

mod api;
mod boot;
mod confinement;
mod smaps;
mod snapshot;
mod stability;
mod stats;

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Debug, Parser)]
#[command(name = "brique-bench", version, about)]
struct Args {
    #[command(subcommand)]
    command: Bench,
}

/// The two VMMs compared.
#[derive(Debug, clap::Args)]
struct Vmms {
    /// The brique binary.
    #[arg(long)]
    brique: PathBuf,
    /// The QEMU binary: qemu-system-x86_64 (microvm machine), or on arm64
    /// hosts qemu-system-aarch64 (virt machine).
    #[arg(long)]
    qemu: PathBuf,
    /// QEMU's firmware directory (-L).
    #[arg(long)]
    qemu_datadir: Option<PathBuf>,
}

/// The guest both VMMs boot.
#[derive(Debug, clap::Args)]
struct Guest {
    /// Guest kernel (ELF vmlinux or bzImage; arm64: Image).
    #[arg(long)]
    kernel: PathBuf,
    /// Guest initramfs.
    #[arg(long)]
    initrd: PathBuf,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 128)]
    mem_mib: u32,
    /// Guest vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
}

impl Guest {
    /// What both VMMs boot: this guest, waited for `timeout_secs` each,
    /// whose init then does `guest_action`.
    fn setup(self, timeout_secs: u64, guest_action: &'static str) -> boot::BootSetup {
        boot::BootSetup {
            kernel: self.kernel,
            initrd: self.initrd,
            mem_mib: self.mem_mib,
            vcpus: self.vcpus,
            timeout: Duration::from_secs(timeout_secs),
            scratch: std::env::temp_dir(),
            guest_action,
            guest_run: None,
            arch: boot::Arch::host(),
        }
    }
}

/// Prints a benchmark's error; the exit status says it failed.
fn report<E: std::fmt::Display>(result: Result<(), E>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("brique-bench: {err}");
            ExitCode::FAILURE
        }
    }
}

#[derive(Debug, Subcommand)]
enum Bench {
    /// Time to guest init and VMM memory overhead, brique vs QEMU microvm
    /// (arm64: QEMU virt).
    Boot {
        /// Boots per VMM.
        #[arg(long, default_value_t = 5)]
        runs: u32,
        #[command(flatten)]
        vmms: Vmms,
        #[command(flatten)]
        guest: Guest,
        /// Seconds to wait for each boot.
        #[arg(long, default_value_t = 180)]
        timeout: u64,
    },
    /// Many short boots (init, then reboot) with each VMM, interleaved:
    /// counts clean boots, triple faults, panics and hangs.
    Stability {
        /// Boots per VMM.
        #[arg(long, default_value_t = 100)]
        runs: u32,
        #[command(flatten)]
        vmms: Vmms,
        #[command(flatten)]
        guest: Guest,
        /// Seconds a boot may take before it counts as a hang.
        #[arg(long, default_value_t = 120)]
        timeout: u64,
        /// Where the KVM trace of the test host can be read after a
        /// failed boot (tracefs `trace` file), printed with the failure.
        #[arg(long)]
        kvm_trace: Option<PathBuf>,
    },
    /// Control API round-trip latency (p50, p99), brique's REST API vs QEMU's QMP.
    Api {
        /// Measured round trips per operation (plus 10% warm-up).
        #[arg(long, default_value_t = 1000)]
        iterations: usize,
        #[command(flatten)]
        vmms: Vmms,
    },
    /// Snapshot create and restore (load request to the guest running
    /// again), brique vs QEMU microvm's migration to a file.
    Snapshot(snapshot::Options),
    /// What seccomp and the jailer cost: brique started without filters,
    /// with them, and jailed, on this machine's /dev/kvm (tiny guest).
    Confinement(confinement::Options),
}

fn main() -> ExitCode {
    match Args::parse().command {
        Bench::Stability {
            runs,
            vmms,
            guest,
            timeout,
            kvm_trace,
        } => report(run_stability(
            runs,
            &vmms,
            &guest.setup(timeout, "reboot"),
            kvm_trace.as_ref(),
        )),
        Bench::Api { iterations, vmms } => report(run_api(iterations, &vmms)),
        Bench::Snapshot(options) => report(snapshot::run(&options)),
        Bench::Confinement(options) => report(confinement::run(&options)),
        Bench::Boot {
            runs,
            vmms,
            guest,
            timeout,
        } => report(run_boot(runs, &vmms, &guest.setup(timeout, "hold"))),
    }
}

fn run_stability(
    runs: u32,
    vmms: &Vmms,
    setup: &boot::BootSetup,
    kvm_trace: Option<&PathBuf>,
) -> Result<(), boot::BootBenchError> {
    use stability::{boot_once, Outcome, Tally};
    let peer = setup.arch.peer_name();
    let mut brique = Tally::default();
    let mut qemu = Tally::default();
    println!(
        "stability benchmark: {runs} boots each, interleaved, {} vCPU(s), {} MiB, kernel {}",
        setup.vcpus,
        setup.mem_mib,
        setup.kernel.display()
    );
    for run in 1..=runs {
        for (name, tally) in [("brique", &mut brique), ("qemu", &mut qemu)] {
            let command = if name == "brique" {
                boot::brique_command(&vmms.brique, setup, None)?
            } else {
                boot::qemu_command(&vmms.qemu, vmms.qemu_datadir.as_ref(), setup)
            };
            let result = boot_once(command, setup)
                .map_err(|source| boot::BootBenchError::Spawn { vmm: name, source })?;
            // One line per boot as it ends: a test host that freezes shows how far it got.
            println!(
                "boot {run}/{runs} {name}: {} in {:.1} s{}",
                result.outcome.name(),
                result.wall.as_secs_f64(),
                result
                    .time_to_init
                    .map(|t| format!(" (init at {:.1} s)", t.as_secs_f64()))
                    .unwrap_or_default()
            );
            if result.outcome != Outcome::Clean {
                println!("{}", result.evidence);
                if let Some(trace) = kvm_trace {
                    print_kvm_trace(trace);
                }
            }
            tally.add(&result);
        }
    }
    println!("\nstability: {runs} boots each");
    for outcome in [
        Outcome::Clean,
        Outcome::TripleFault,
        Outcome::Panic,
        Outcome::Hang,
        Outcome::Other,
    ] {
        println!(
            "  {:<34} brique {:4} | {peer} {:4}",
            outcome.name(),
            brique.count(outcome),
            qemu.count(outcome)
        );
    }
    print_metric(
        "wall time per boot (s)",
        peer,
        &brique.wall_secs,
        &qemu.wall_secs,
    );
    print_metric(
        "time to guest init (s)",
        peer,
        &brique.init_secs,
        &qemu.init_secs,
    );
    println!(
        "STABILITY brique clean={}/{} qemu clean={}/{}",
        brique.count(Outcome::Clean),
        brique.total(),
        qemu.count(Outcome::Clean),
        qemu.total()
    );
    Ok(())
}

/// Prints the tail of the test host's KVM trace (and clears it).
fn print_kvm_trace(trace: &std::path::Path) {
    match std::fs::read_to_string(trace) {
        Ok(text) => {
            let lines: Vec<&str> = text.lines().filter(|l| !l.starts_with('#')).collect();
            let from = lines.len().saturating_sub(40);
            println!("  KVM trace (last {} events):", lines.len() - from);
            for line in &lines[from..] {
                println!("    {line}");
            }
            let _ = std::fs::write(trace, "");
        }
        Err(err) => println!("  (no KVM trace: {err})"),
    }
}

fn run_api(iterations: usize, vmms: &Vmms) -> Result<(), api::ApiBenchError> {
    let scratch = std::env::temp_dir().join(format!("brique-bench-api-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|source| api::ApiBenchError::Io {
        what: "scratch directory".into(),
        source,
    })?;
    let b = api::measure_brique(&vmms.brique, &scratch, iterations);
    let q = api::measure_qemu(&vmms.qemu, vmms.qemu_datadir.as_ref(), &scratch, iterations);
    let _ = std::fs::remove_dir_all(&scratch);
    let (b, q) = (b?, q?);
    println!(
        "\napi benchmark: {iterations} round trips each, one kept-open connection, tiny guest on /dev/kvm"
    );
    println!("(brique REST over its Unix socket vs QEMU microvm QMP; ratio brique/QEMU, below 1 is better)");
    for (name, brique_us, qemu_us) in [
        (
            "query: GET /machine-config vs query-status",
            &b.query,
            &q.query,
        ),
        (
            "pause+resume: PATCH /vm x2 vs stop+cont",
            &b.pause_resume,
            &q.pause_resume,
        ),
    ] {
        for p in [50.0, 99.0] {
            let (Some(bv), Some(qv)) = (
                stats::percentile(brique_us, p),
                stats::percentile(qemu_us, p),
            ) else {
                continue;
            };
            println!(
                "  {name} p{p:.0}: brique {bv:.0} us | qemu {qv:.0} us | ratio {:.3}",
                bv / qv
            );
        }
    }
    Ok(())
}

fn run_boot(runs: u32, vmms: &Vmms, setup: &boot::BootSetup) -> Result<(), boot::BootBenchError> {
    let (brique, qemu, qemu_datadir) = (&vmms.brique, &vmms.qemu, vmms.qemu_datadir.as_ref());
    let peer = setup.arch.peer_name();
    let mut brique_samples = Vec::new();
    let mut qemu_samples = Vec::new();
    // Interleaved, so that drift in the host affects both alike.
    for run in 1..=runs {
        let b = boot::measure("brique", boot::brique_command(brique, setup, None)?, setup)?;
        let q = boot::measure("qemu", boot::qemu_command(qemu, qemu_datadir, setup), setup)?;
        println!(
            "run {run}/{runs}: brique {:.0} ms, {} KiB overhead | {peer} {:.0} ms, {} KiB overhead",
            b.time_to_init.as_secs_f64() * 1e3,
            b.memory.overhead_kib(),
            q.time_to_init.as_secs_f64() * 1e3,
            q.memory.overhead_kib(),
        );
        brique_samples.push(b);
        qemu_samples.push(q);
    }
    let times = |samples: &[boot::BootSample]| -> Vec<f64> {
        samples
            .iter()
            .map(|s| s.time_to_init.as_secs_f64() * 1e3)
            .collect()
    };
    let overheads = |samples: &[boot::BootSample]| -> Vec<f64> {
        samples
            .iter()
            .map(|s| s.memory.overhead_kib() as f64 / 1024.0)
            .collect()
    };
    println!(
        "\nboot benchmark: {runs} runs each, {} vCPU(s), {} MiB, kernel {}",
        setup.vcpus,
        setup.mem_mib,
        setup.kernel.display()
    );
    print_metric(
        "time to guest init (ms)",
        peer,
        &times(&brique_samples),
        &times(&qemu_samples),
    );
    print_metric(
        "VMM memory overhead (MiB, RSS minus guest RAM)",
        peer,
        &overheads(&brique_samples),
        &overheads(&qemu_samples),
    );
    let timed: Vec<f64> = brique_samples
        .iter()
        .filter_map(|s| s.boot_timer)
        .map(|d| d.as_secs_f64() * 1e3)
        .collect();
    match stats::summarize(&timed) {
        Some(s) => println!(
            "brique's boot timer (--boot-timer, the guest's first write in init), {} of {runs} runs:\n  \
             median {:9.1} ms (min {:9.1}, max {:9.1})",
            timed.len(),
            s.median,
            s.min,
            s.max
        ),
        None => println!("brique's boot timer: no Guest-boot-time line in any run"),
    }
    Ok(())
}

/// Prints one figure's medians, minima and maxima for brique and for QEMU
/// (`peer`, as the reports name it) and the ratio of the medians.
fn print_metric(name: &str, peer: &str, brique: &[f64], qemu: &[f64]) {
    let (Some(b), Some(q)) = (stats::summarize(brique), stats::summarize(qemu)) else {
        return;
    };
    println!("{name}:");
    for (vmm, s) in [("brique", b), (peer, q)] {
        println!(
            "  {vmm:<12} median {:9.1}  (min {:9.1}, max {:9.1})",
            s.median, s.min, s.max
        );
    }
    println!("  ratio brique/qemu (medians): {:.3}", b.median / q.median);
}
