//! What confinement costs: brique without seccomp, with its seccomp filters
//! (the default), jailed by brique-jailer (filters on; the jailer execs
//! brique), and jailed in a new PID namespace (`--new-pid-ns`: the jailer
//! starts brique as a child and ends), started again and again on this
//! machine's /dev/kvm with the tiny guest, interleaved. Two spans each
//! time: process start to API socket ready, and the InstanceStart request
//! to the guest's first console output (its "init"). Each variant's cost is
//! what it adds to the one before: the filters to brique without them, the
//! jail to brique with the same filters, unjailed, and the PID namespace to
//! the same jail without it.
//! The jails share one chroot base, as a host's microVMs do (only the first
//! jail on a host makes `<base>/<exec name>`).

use crate::stats::summarize;
use brique_tests::api_client::ApiClient;
use brique_tests::tiny_guest::{elf_kernel, DOT_PRINTER};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Errors of the confinement benchmark.
#[derive(Debug, thiserror::Error)]
pub enum ConfinementError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Failed(String),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ConfinementError {
    let what = what.into();
    move |source| ConfinementError::Io { what, source }
}

/// How brique is started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Variant {
    NoSeccomp,
    Seccomp,
    Jailed,
    JailedNewPidNs,
}

impl Variant {
    fn label(self) -> &'static str {
        match self {
            Variant::NoSeccomp => "brique --no-seccomp",
            Variant::Seccomp => "brique (seccomp filters)",
            Variant::Jailed => "brique-jailer + brique (filters)",
            Variant::JailedNewPidNs => "the same jail, --new-pid-ns",
        }
    }

    /// Started by brique-jailer, with paths inside the jail.
    fn jailed(self) -> bool {
        matches!(self, Variant::Jailed | Variant::JailedNewPidNs)
    }
}

/// One start: its two spans, in milliseconds.
struct Sample {
    socket_ready_ms: f64,
    boot_ms: f64,
}

/// Kills the process (and its jail's) and removes the jail when dropped.
struct Started {
    child: Option<Child>,
    pid_file: Option<PathBuf>,
    jail_dir: Option<PathBuf>,
}

impl Drop for Started {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        if let Some(pid) = self
            .pid_file
            .as_ref()
            .and_then(|file| std::fs::read_to_string(file).ok())
            .and_then(|text| text.trim().parse::<libc::pid_t>().ok())
        {
            // SAFETY: kill sends a signal to the jailed brique we started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        if let Some(jail_dir) = &self.jail_dir {
            let _ = std::fs::remove_dir_all(jail_dir);
        }
    }
}

/// Where the binaries are.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Starts per variant.
    #[arg(long, default_value_t = 30)]
    pub runs: u32,
    /// The brique binary (for the unjailed variants).
    #[arg(long)]
    pub brique: PathBuf,
    /// A statically linked brique and the jailer, for the jailed variant
    /// (skipped without them, or when not root).
    #[arg(long)]
    pub static_brique: Option<PathBuf>,
    #[arg(long)]
    pub jailer: Option<PathBuf>,
}

pub fn run(options: &Options) -> Result<(), ConfinementError> {
    let scratch = std::env::temp_dir().join(format!("brique-bench-confine-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(io("scratch directory"))?;
    let kernel = elf_kernel(DOT_PRINTER);
    let mut variants = vec![Variant::NoSeccomp, Variant::Seccomp];
    // SAFETY: geteuid has no arguments and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    match (&options.static_brique, &options.jailer, root) {
        (Some(_), Some(_), true) => variants.extend([Variant::Jailed, Variant::JailedNewPidNs]),
        _ => println!("(jailed variants skipped: they need root, --static-brique and --jailer)"),
    }
    let mut samples: Vec<Vec<Sample>> = variants.iter().map(|_| Vec::new()).collect();
    for run in 0..options.runs {
        for (index, variant) in variants.iter().enumerate() {
            let dir = scratch.join(format!("{run}-{index}"));
            let jail = JailSpot {
                base: scratch.join("jails"),
                id: format!("bench-{run}"),
            };
            let sample = start_once(*variant, options, &dir, &jail, &kernel)?;
            samples[index].push(sample);
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
    let _ = std::fs::remove_dir_all(&scratch);
    print_report(&variants, &samples, options.runs);
    Ok(())
}

/// Where a jailed start's jail goes: `<base>/<exec name>/<id>`.
struct JailSpot {
    base: PathBuf,
    id: String,
}

fn start_once(
    variant: Variant,
    options: &Options,
    dir: &Path,
    jail: &JailSpot,
    kernel: &[u8],
) -> Result<Sample, ConfinementError> {
    std::fs::create_dir_all(dir).map_err(io("run directory"))?;
    let console = dir.join("console.out");
    let output = || -> Result<std::fs::File, ConfinementError> {
        std::fs::File::create(&console).map_err(io("console file"))
    };
    let started_at = Instant::now();
    let (started, root) = match variant {
        Variant::NoSeccomp | Variant::Seccomp => {
            let mut command = Command::new(&options.brique);
            command.arg("--api-sock").arg(dir.join("api.sock"));
            if variant == Variant::NoSeccomp {
                command.arg("--no-seccomp");
            }
            let child = command
                .stdin(Stdio::null())
                .stdout(output()?)
                .stderr(Stdio::null())
                .spawn()
                .map_err(io("start brique"))?;
            let started = Started {
                child: Some(child),
                pid_file: None,
                jail_dir: None,
            };
            (started, dir.to_path_buf())
        }
        Variant::Jailed | Variant::JailedNewPidNs => {
            let (Some(brique), Some(jailer)) = (&options.static_brique, &options.jailer) else {
                return Err(ConfinementError::Failed(
                    "no static brique or jailer".into(),
                ));
            };
            let name = brique
                .file_name()
                .and_then(|name| name.to_str())
                .unwrap_or("brique")
                .to_owned();
            let jail_dir = jail.base.join(&name).join(&jail.id);
            let mut command = Command::new(jailer);
            command
                .arg("--id")
                .arg(&jail.id)
                .args(["--uid", "123", "--gid", "123"])
                .arg("--exec-file")
                .arg(brique)
                .arg("--chroot-base-dir")
                .arg(&jail.base)
                .stdin(Stdio::null())
                .stdout(output()?)
                .stderr(Stdio::null());
            let new_pid_ns = variant == Variant::JailedNewPidNs;
            if new_pid_ns {
                command.arg("--new-pid-ns");
            }
            command.args(["--", "--api-sock", "/api.sock"]);
            let started = if new_pid_ns {
                // The jailer ends once brique runs, as PID 1 of its
                // namespace; brique's pid is in the jail's pid file.
                let status = command.status().map_err(io("start brique-jailer"))?;
                if !status.success() {
                    return Err(ConfinementError::Failed(format!("brique-jailer: {status}")));
                }
                Started {
                    child: None,
                    pid_file: Some(jail_dir.join(format!("root/{name}.pid"))),
                    jail_dir: Some(jail_dir.clone()),
                }
            } else {
                // The jailer becomes brique.
                let child = command.spawn().map_err(io("start brique-jailer"))?;
                Started {
                    child: Some(child),
                    pid_file: None,
                    jail_dir: Some(jail_dir.clone()),
                }
            };
            (started, jail_dir.join("root"))
        }
    };
    let socket = root.join("api.sock");
    let mut client = loop {
        if let Ok(client) = ApiClient::connect(&socket, Duration::ZERO) {
            break client;
        }
        if started_at.elapsed() > Duration::from_secs(10) {
            return Err(ConfinementError::Failed(format!(
                "{}: no API socket within 10 s",
                variant.label()
            )));
        }
        std::thread::sleep(Duration::from_micros(100));
    };
    let socket_ready_ms = started_at.elapsed().as_secs_f64() * 1e3;
    std::fs::write(root.join("tiny.elf"), kernel).map_err(io("tiny guest"))?;
    let kernel_path = match variant.jailed() {
        true => "/tiny.elf".to_owned(),
        false => root.join("tiny.elf").display().to_string(),
    };
    for (method, path, body) in [
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 32}"#.to_owned(),
        ),
        (
            "PUT",
            "/boot-source",
            format!(r#"{{"kernel_image_path": "{kernel_path}"}}"#),
        ),
    ] {
        request(&mut client, method, path, &body)?;
    }
    let boot_at = Instant::now();
    request(
        &mut client,
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
    )?;
    while std::fs::metadata(&console).map_or(0, |meta| meta.len()) == 0 {
        if boot_at.elapsed() > Duration::from_secs(10) {
            return Err(ConfinementError::Failed(format!(
                "{}: no guest output within 10 s",
                variant.label()
            )));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
    let boot_ms = boot_at.elapsed().as_secs_f64() * 1e3;
    drop(started);
    Ok(Sample {
        socket_ready_ms,
        boot_ms,
    })
}

fn request(
    client: &mut ApiClient,
    method: &str,
    path: &str,
    body: &str,
) -> Result<(), ConfinementError> {
    let answer = client
        .request(method, path, body)
        .map_err(io(format!("{method} {path}")))?;
    if answer.status != 204 {
        return Err(ConfinementError::Failed(format!(
            "{method} {path}: {answer:?}"
        )));
    }
    Ok(())
}

fn print_report(variants: &[Variant], samples: &[Vec<Sample>], runs: u32) {
    println!();
    println!("confinement benchmark: medians of {runs} starts each, interleaved (ms; min-max)");
    let median = |values: Vec<f64>| summarize(&values);
    let medians: Vec<Option<(f64, f64)>> = samples
        .iter()
        .map(|runs| {
            let socket = median(runs.iter().map(|s| s.socket_ready_ms).collect())?;
            let boot = median(runs.iter().map(|s| s.boot_ms).collect())?;
            Some((socket.median, boot.median))
        })
        .collect();
    println!(
        "  {:<36} {:>22} {:>22}",
        "", "start -> API socket", "InstanceStart -> init"
    );
    for (index, variant) in variants.iter().enumerate() {
        let socket = median(samples[index].iter().map(|s| s.socket_ready_ms).collect());
        let boot = median(samples[index].iter().map(|s| s.boot_ms).collect());
        let show = |summary: Option<crate::stats::Summary>| {
            summary.map_or("-".to_owned(), |s| {
                format!("{:.2} ({:.2}-{:.2})", s.median, s.min, s.max)
            })
        };
        println!(
            "  {:<36} {:>22} {:>22}",
            variant.label(),
            show(socket),
            show(boot)
        );
        // What this variant adds to the one before it.
        let before = index.checked_sub(1).and_then(|before| medians[before]);
        if let (Some((before_socket, before_boot)), Some((socket, boot))) = (before, medians[index])
        {
            println!(
                "CONFINEMENT variant=\"{}\" over=\"{}\" socket_added_ms={:.3} init_added_ms={:.3} (goal < 1 ms)",
                variant.label(),
                variants[index - 1].label(),
                socket - before_socket,
                boot - before_boot
            );
        }
    }
}
