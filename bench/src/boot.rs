//! Boot benchmark: time from spawning the VMM to the guest init's marker on
//! the serial console, and the VMM's own memory at that moment, for brique
//! and for QEMU's microvm machine, booting the same kernel and initramfs.
//! brique also runs with `--boot-timer`: the guest's init writes to the
//! boot timer device first thing, and brique logs the time since it
//! started (`Guest-boot-time = ...`), which the benchmark reports too.

use crate::smaps;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The line the guest init prints once userspace runs.
pub const INIT_MARKER: &str = "BRIQUE_GUEST_INIT_OK";

/// Errors of one boot measurement.
#[derive(Debug, thiserror::Error)]
pub enum BootBenchError {
    /// The VMM could not be started.
    #[error("cannot start {vmm}: {source}")]
    Spawn {
        vmm: &'static str,
        source: std::io::Error,
    },
    /// The guest did not reach init in time.
    #[error("{vmm}: no {INIT_MARKER} within {timeout:?}; last console lines:\n{tail}")]
    Timeout {
        vmm: &'static str,
        timeout: Duration,
        tail: String,
    },
    /// Reading the VMM's memory map failed.
    #[error("cannot read /proc/{pid}/smaps: {source}")]
    Smaps { pid: u32, source: std::io::Error },
    /// A config file could not be written.
    #[error("cannot write {path}: {source}")]
    WriteConfig {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The architecture the benchmarks run on, which picks QEMU's machine (the
/// peer) and the guest's command line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arch {
    /// QEMU's `microvm` machine is the peer; the guest kernel is a vmlinux
    /// or a bzImage.
    X86_64,
    /// QEMU's `virt` machine (GICv3) is the peer; the guest kernel is an
    /// arm64 Image.
    Aarch64,
}

impl Arch {
    /// The architecture this program was built for: the one whose KVM it
    /// measures.
    pub fn host() -> Self {
        if cfg!(target_arch = "aarch64") {
            Self::Aarch64
        } else {
            Self::X86_64
        }
    }

    /// QEMU as the reports name it: the peer machine.
    pub fn peer_name(self) -> &'static str {
        match self {
            Self::X86_64 => "qemu microvm",
            Self::Aarch64 => "qemu virt",
        }
    }
}

/// What is booted, by both VMMs.
#[derive(Debug, Clone)]
pub struct BootSetup {
    /// Guest kernel (ELF vmlinux or bzImage; arm64: Image).
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initrd: PathBuf,
    /// Guest memory in MiB.
    pub mem_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Per-VMM wait for the init marker.
    pub timeout: Duration,
    /// Scratch directory for config files.
    pub scratch: PathBuf,
    /// What the guest init does after its marker (`brique_action`):
    /// `hold` to measure a running guest, `reboot` to end the VMM.
    pub guest_action: &'static str,
    /// A shell command the guest init runs after its marker, before its
    /// action (`brique_run`); it must not contain double quotes.
    pub guest_run: Option<String>,
    /// Which KVM, and so which QEMU machine and guest console.
    pub arch: Arch,
}

/// One boot's figures.
#[derive(Debug, Clone, Copy)]
pub struct BootSample {
    /// Spawn to init marker.
    pub time_to_init: Duration,
    /// VMM memory at that moment.
    pub memory: smaps::VmmMemory,
    /// What the VMM's boot timer logged (brique with `--boot-timer`).
    pub boot_timer: Option<Duration>,
}

/// The line brique's boot timer logs, as Firecracker's does.
const BOOT_TIMER_LINE: &str = "Guest-boot-time = ";

/// The boot time in a `Guest-boot-time = <us> us ...` log line.
pub fn boot_timer_value(line: &str) -> Option<Duration> {
    let rest = &line[line.find(BOOT_TIMER_LINE)? + BOOT_TIMER_LINE.len()..];
    let micros: u64 = rest.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_micros(micros))
}

/// The kernel command line with the guest's console on `console`; the
/// same for both VMMs but for the console (QEMU's `virt` has a PL011,
/// `ttyAMA0`, where brique has a 16550A, `ttyS0`). The guest's init then
/// runs `setup.guest_run` and does `setup.guest_action`.
fn kernel_args(setup: &BootSetup, console: &str) -> String {
    let mut args = match setup.arch {
        Arch::X86_64 => format!(
            "console={console} reboot=k panic=1 i8042.noaux i8042.nomux i8042.nopnp \
             i8042.dumbkbd brique_action={}",
            setup.guest_action
        ),
        Arch::Aarch64 => format!(
            "console={console} reboot=k panic=1 brique_action={}",
            setup.guest_action
        ),
    };
    // Experiments (bench-stability.sh --guest-args) add kernel parameters.
    if let Ok(extra) = std::env::var("BRIQUE_BENCH_GUEST_ARGS") {
        if !extra.trim().is_empty() {
            args.push(' ');
            args.push_str(extra.trim());
        }
    }
    if let Some(run) = &setup.guest_run {
        args.push_str(&format!(" brique_run=\"{run}\""));
    }
    args
}

/// Where `brique_command` writes brique's config file.
pub fn brique_config(setup: &BootSetup) -> PathBuf {
    setup.scratch.join("brique-bench-vm.json")
}

/// The brique command for `setup` (its config written in `setup.scratch`),
/// serving its API on `api_sock`, or on no socket at all.
pub fn brique_command(
    brique: &PathBuf,
    setup: &BootSetup,
    api_sock: Option<&Path>,
) -> Result<Command, BootBenchError> {
    let config = brique_config(setup);
    let json = format!(
        r#"{{"boot-source": {{"kernel_image_path": {:?}, "initrd_path": {:?}, "boot_args": {:?}}},
            "machine-config": {{"vcpu_count": {}, "mem_size_mib": {}}}}}"#,
        setup.kernel,
        setup.initrd,
        format!(
            "{} brique_boot_timer={:#x}",
            kernel_args(setup, "ttyS0"),
            brique_vmm::arch::BOOT_TIMER_START
        ),
        setup.vcpus,
        setup.mem_mib
    );
    std::fs::write(&config, json).map_err(|source| BootBenchError::WriteConfig {
        path: config.clone(),
        source,
    })?;
    let mut command = Command::new(brique);
    match api_sock {
        Some(sock) => command.arg("--api-sock").arg(sock),
        None => command.arg("--no-api"),
    };
    command
        .arg("--boot-timer")
        // The timer's line is logged at Info.
        .args(["--level", "Info"])
        .arg("--config-file")
        .arg(config);
    Ok(command)
}

/// The QEMU command for `setup`: same kernel, initrd, command line, vCPUs
/// and memory; KVM with the host's CPU; serial console on stdout; no other
/// devices than the machine's own.
///
/// x86_64: the microvm machine with an i8042 like brique's (the guest's
/// `reboot=k` resets through it, which ends QEMU under -no-reboot; without
/// it the guest's reboot never ends QEMU). aarch64: the virt machine with a
/// GICv3 (as brique's; KVM in the test host has no GICv2), its PL011 as the
/// console, the kernel entered directly (no firmware).
pub fn qemu_command(qemu: &PathBuf, datadir: Option<&PathBuf>, setup: &BootSetup) -> Command {
    let mut command = Command::new(qemu);
    if let Some(datadir) = datadir {
        command.arg("-L").arg(datadir);
    }
    let console = match setup.arch {
        Arch::X86_64 => {
            command
                .args(["-M", "microvm,x-option-roms=off,rtc=off,acpi=off"])
                .args(["-device", "i8042"]);
            "ttyS0"
        }
        Arch::Aarch64 => {
            command.args(["-M", "virt,gic-version=3"]);
            "ttyAMA0"
        }
    };
    command
        .args(["-accel", "kvm", "-cpu", "host"])
        .args(["-m", &setup.mem_mib.to_string()])
        .args(["-smp", &setup.vcpus.to_string()])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(&setup.kernel)
        .arg("-initrd")
        .arg(&setup.initrd)
        .args(["-append", &kernel_args(setup, console)]);
    command
}

/// Forwards the VMM's console (its stdout), line by line with the time each
/// line came, until it closes; the thread's handle says when all lines are in.
pub fn forward_console(child: &mut Child) -> (mpsc::Receiver<(Instant, String)>, JoinHandle<()>) {
    let stdout = child.stdout.take();
    let (lines, received) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        let Some(stdout) = stdout else { return };
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if lines.send((Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    (received, reader)
}

struct Running {
    child: Child,
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Boots once with `command`, measuring time to init and memory.
pub fn measure(
    vmm: &'static str,
    mut command: Command,
    setup: &BootSetup,
) -> Result<BootSample, BootBenchError> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut running = Running {
        child: command
            .spawn()
            .map_err(|source| BootBenchError::Spawn { vmm, source })?,
    };
    let (received, _reader) = forward_console(&mut running.child);
    let boot_timer = watch_boot_timer(&mut running.child);

    let mut tail: Vec<String> = Vec::new();
    let time_to_init = loop {
        let left = setup.timeout.saturating_sub(start.elapsed());
        match received.recv_timeout(left) {
            Ok((_, line)) if line.contains(INIT_MARKER) => break start.elapsed(),
            Ok((_, line)) => {
                tail.push(line);
                if tail.len() > 20 {
                    tail.remove(0);
                }
            }
            Err(_) => {
                return Err(BootBenchError::Timeout {
                    vmm,
                    timeout: setup.timeout,
                    tail: tail.join("\n"),
                })
            }
        }
    };

    let pid = running.child.id();
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))
        .map_err(|source| BootBenchError::Smaps { pid, source })?;
    let memory = smaps::vmm_memory(&smaps::parse(&text), u64::from(setup.mem_mib) * 1024);
    // The timer's line was logged before the marker was printed; its reader
    // may be a moment behind.
    let boot_timer = boot_timer.recv_timeout(Duration::from_secs(1)).ok();
    Ok(BootSample {
        time_to_init,
        memory,
        boot_timer,
    })
}

/// Reads the VMM's stderr until it closes; sends the first boot timer value.
fn watch_boot_timer(child: &mut Child) -> mpsc::Receiver<Duration> {
    let stderr = child.stderr.take();
    let (found, receiver) = mpsc::channel();
    std::thread::spawn(move || {
        let Some(stderr) = stderr else { return };
        let mut sent = false;
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if let (false, Some(value)) = (sent, boot_timer_value(&line)) {
                sent = found.send(value).is_ok();
            }
        }
    });
    receiver
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup(arch: Arch, guest_run: Option<&str>) -> BootSetup {
        BootSetup {
            kernel: PathBuf::from("/k"),
            initrd: PathBuf::from("/i"),
            mem_mib: 128,
            vcpus: 2,
            timeout: Duration::from_secs(1),
            scratch: std::env::temp_dir(),
            guest_action: "hold",
            guest_run: guest_run.map(str::to_owned),
            arch,
        }
    }

    fn args(command: &Command) -> Vec<String> {
        command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned())
            .collect()
    }

    #[test]
    fn the_boot_timer_line_gives_its_microseconds() {
        let line = "2026-12-02T10:00:00.000 [brique:INFO] Guest-boot-time =  81234 us 81 ms, 50000 CPU us 50 CPU ms";
        assert_eq!(boot_timer_value(line), Some(Duration::from_micros(81_234)));
        assert_eq!(boot_timer_value("Guest-boot-time = soon"), None);
        assert_eq!(boot_timer_value("something else"), None);
    }

    #[test]
    fn the_command_line_is_the_same_but_for_the_console() {
        let x86 = setup(Arch::X86_64, None);
        assert_eq!(
            kernel_args(&x86, "ttyS0"),
            "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.nopnp \
             i8042.dumbkbd brique_action=hold"
        );
        let arm = setup(Arch::Aarch64, Some("echo hi"));
        assert_eq!(
            kernel_args(&arm, "ttyAMA0"),
            "console=ttyAMA0 reboot=k panic=1 brique_action=hold brique_run=\"echo hi\""
        );
    }

    #[test]
    fn qemu_boots_microvm_on_x86_64_and_virt_on_aarch64() {
        let x86 = args(&qemu_command(
            &PathBuf::from("qemu"),
            None,
            &setup(Arch::X86_64, None),
        ));
        assert_eq!(
            x86[..6],
            [
                "-M",
                "microvm,x-option-roms=off,rtc=off,acpi=off",
                "-device",
                "i8042",
                "-accel",
                "kvm"
            ]
        );
        assert!(x86.last().is_some_and(|a| a.starts_with("console=ttyS0 ")));
        let arm = args(&qemu_command(
            &PathBuf::from("qemu"),
            Some(&PathBuf::from("/share")),
            &setup(Arch::Aarch64, None),
        ));
        assert_eq!(
            arm[..8],
            [
                "-L",
                "/share",
                "-M",
                "virt,gic-version=3",
                "-accel",
                "kvm",
                "-cpu",
                "host"
            ]
        );
        assert!(arm.iter().any(|a| a == "-smp") && arm.iter().any(|a| a == "128"));
        assert!(arm
            .last()
            .is_some_and(|a| a.starts_with("console=ttyAMA0 ") && !a.contains("i8042")));
    }
}
