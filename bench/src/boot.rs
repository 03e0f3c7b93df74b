//! Boot benchmark: time from spawning the VMM to the guest init's marker on
//! the serial console, and the VMM's own memory at that moment, for brique
//! and for QEMU's microvm machine, booting the same kernel and initramfs.

use crate::smaps;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
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

/// What is booted, by both VMMs.
#[derive(Debug, Clone)]
pub struct BootSetup {
    /// Guest kernel (ELF vmlinux).
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
}

/// One boot's figures.
#[derive(Debug, Clone, Copy)]
pub struct BootSample {
    /// Spawn to init marker.
    pub time_to_init: Duration,
    /// VMM memory at that moment.
    pub memory: smaps::VmmMemory,
}

/// Kernel command line both VMMs pass; the guest's init then does `setup.guest_action`.
pub fn boot_args(setup: &BootSetup) -> String {
    format!(
        "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd \
         brique_action={}",
        setup.guest_action
    )
}

/// The brique command for `setup`.
pub fn brique_command(brique: &PathBuf, setup: &BootSetup) -> Result<Command, BootBenchError> {
    let config = setup.scratch.join("brique-bench-vm.json");
    let json = format!(
        r#"{{"boot-source": {{"kernel_image_path": {:?}, "initrd_path": {:?}, "boot_args": {:?}}},
            "machine-config": {{"vcpu_count": {}, "mem_size_mib": {}}}}}"#,
        setup.kernel,
        setup.initrd,
        boot_args(setup),
        setup.vcpus,
        setup.mem_mib
    );
    std::fs::write(&config, json).map_err(|source| BootBenchError::WriteConfig {
        path: config.clone(),
        source,
    })?;
    let mut command = Command::new(brique);
    command.arg("--config-file").arg(config);
    Ok(command)
}

/// The QEMU microvm command for `setup`: same kernel, initrd, command line,
/// vCPUs and memory; KVM; serial console on stdout; an i8042 like brique's
/// (the guest's `reboot=k` resets through it, which ends QEMU under
/// -no-reboot; without it the guest's reboot never ends QEMU); no other
/// devices.
pub fn qemu_command(qemu: &PathBuf, datadir: Option<&PathBuf>, setup: &BootSetup) -> Command {
    let mut command = Command::new(qemu);
    if let Some(datadir) = datadir {
        command.arg("-L").arg(datadir);
    }
    command
        .args(["-M", "microvm,x-option-roms=off,rtc=off,acpi=off"])
        .args(["-device", "i8042"])
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
        .args(["-append", &boot_args(setup)]);
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
        .stderr(Stdio::null());
    let start = Instant::now();
    let mut running = Running {
        child: command
            .spawn()
            .map_err(|source| BootBenchError::Spawn { vmm, source })?,
    };
    let (received, _reader) = forward_console(&mut running.child);

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
    Ok(BootSample {
        time_to_init,
        memory,
    })
}
