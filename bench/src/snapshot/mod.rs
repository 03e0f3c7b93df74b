//! Snapshot benchmark: save a running guest and restore it in a fresh VMM
//! process, brique (`PUT /snapshot/create`, `PUT /snapshot/load`) against
//! QEMU's microvm machine (QMP `stop` + `migrate` to a file, then a new QEMU
//! with `-incoming defer`, `migrate-incoming` and `cont`), on the same
//! kernel and initramfs, for guests of several sizes.
//!
//! The guest's init first fills part of its tmpfs with non-zero data (the
//! "touched" memory of a size), then prints `SNAPBENCH_COUNT=<n>` every
//! [`COUNT_PERIOD_MS`] on its serial console. Measured for each VMM, size
//! and run:
//! - create: the save request alone, the guest already paused (brique: `PUT
//!   /snapshot/create` Full; QEMU: `migrate` to the MIGRATION `completed`
//!   event);
//! - the files written: apparent size (`stat`) and allocated size (`du`,
//!   blocks), state and memory together;
//! - restore: from sending the load request (brique: `PUT /snapshot/load`
//!   with `resume_vm`; QEMU: `migrate-incoming`, then `cont` once it
//!   completed) to the first counter line the restored guest prints; the
//!   guest sleeps between lines, so up to [`COUNT_PERIOD_MS`] of it is the
//!   guest's own wait, alike for both (the period is short to keep that
//!   wait, which is no VMM's work, from blurring the measure). Also from
//!   the restoring process's
//!   spawn, and that process's RSS at that line.
//!
//! Also the restoring VMM's page faults from the guest running again to
//! its first count (brique's memory comes lazily from the file; QEMU has
//! read it all in before `cont`).
//!
//! A restored guest must go on counting from where it was saved (the first
//! line's number follows the last one printed before the save, the next
//! ones follow in order): anything else fails the run, with the VMM's
//! console and stderr. A failed boot of the guest to be saved is retried
//! once, loudly (booting is measured elsewhere). `--qemu-mapped-ram` gives
//! QEMU's file the layout of brique's (RAM at fixed offsets, sparse).
//!
//! Both VMMs boot the guest with the boot benchmark's commands
//! (`boot::brique_command`, `boot::qemu_command`), the counter as the
//! guest's `brique_run`. Here: the options and the guest; `brique` and
//! `qemu` save and restore with each VMM; `vmm` watches a VMM process
//! (console, counts, evidence); `qmp` is the QMP client; `report` holds
//! the samples and prints them.

mod brique;
mod qemu;
mod qmp;
mod report;
mod vmm;

use crate::boot;
use report::Samples;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long the guest sleeps between two counts (busybox `usleep`).
const COUNT_PERIOD_MS: u32 = 10;

/// What the guest prints before each count.
const COUNTER: &str = "SNAPBENCH_COUNT=";

/// Options of `brique-bench snapshot`.
#[derive(Debug, clap::Args)]
pub struct Options {
    /// Save+restore cycles per VMM and guest size (medians are printed).
    #[arg(long, default_value_t = 3)]
    runs: u32,
    #[command(flatten)]
    vmms: crate::Vmms,
    /// Guest kernel (ELF vmlinux or bzImage).
    #[arg(long)]
    kernel: PathBuf,
    /// Guest initramfs (its init runs `brique_run` from the command line).
    #[arg(long)]
    initrd: PathBuf,
    /// Guest vCPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// A guest size, MIB or MIB:TOUCHED_MIB (the guest first writes
    /// TOUCHED_MIB of non-zero data into its tmpfs); repeat for several.
    /// The first and the last sizes are compared.
    #[arg(long = "size", value_parser = parse_size, default_values = ["128", "2048:100"])]
    sizes: Vec<GuestSize>,
    /// Seconds any one step may take (boot and fill, save, restore).
    #[arg(long, default_value_t = 180)]
    timeout: u64,
    /// Save QEMU's migration stream with the `mapped-ram` capability: RAM
    /// at fixed offsets of a sparse file, zero pages as holes, like
    /// brique's memory file (default: QEMU's ordinary stream).
    #[arg(long)]
    qemu_mapped_ram: bool,
    /// Folder for the snapshot files and sockets (default: the temp dir).
    #[arg(long)]
    scratch: Option<PathBuf>,
}

/// A guest's memory, and how much of it the guest fills before counting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestSize {
    /// Guest RAM, MiB.
    pub mem_mib: u32,
    /// Non-zero data the guest writes into its tmpfs first, MiB.
    pub touch_mib: u32,
}

impl fmt::Display for GuestSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} MiB", self.mem_mib)?;
        if self.touch_mib > 0 {
            write!(f, " ({} MiB touched)", self.touch_mib)?;
        }
        Ok(())
    }
}

fn parse_size(text: &str) -> std::result::Result<GuestSize, String> {
    let (mem, touch) = text.split_once(':').unwrap_or((text, "0"));
    let number = |s: &str| {
        s.trim()
            .parse::<u32>()
            .map_err(|_| format!("{text:?}: expected MIB or MIB:TOUCHED_MIB"))
    };
    let size = GuestSize {
        mem_mib: number(mem)?,
        touch_mib: number(touch)?,
    };
    if size.mem_mib == 0 || size.touch_mib >= size.mem_mib / 2 {
        return Err(format!(
            "{text:?}: the guest needs memory, and its tmpfs holds at most half of it"
        ));
    }
    Ok(size)
}

/// Errors of the snapshot benchmark.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotBenchError {
    /// A file, process or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// A VMM misbehaved: refused a request, stopped, or its guest did not
    /// go on as it should; with the evidence.
    #[error("{vmm}: {what}\n{evidence}")]
    Vmm {
        vmm: &'static str,
        what: String,
        evidence: String,
    },
    /// A VMM's command could not be made (its config file written).
    #[error(transparent)]
    Command(#[from] boot::BootBenchError),
}

type Result<T> = std::result::Result<T, SnapshotBenchError>;

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SnapshotBenchError {
    let what = what.into();
    move |source| SnapshotBenchError::Io { what, source }
}

/// The guest's shell command: fill, then count.
fn guest_run(size: GuestSize) -> String {
    let fill = if size.touch_mib == 0 {
        String::new()
    } else {
        // 1 MiB of random bytes written over and over: non-zero pages that
        // neither VMM can skip, without generating 100 MiB of randomness.
        format!(
            "dd if=/dev/urandom of=/tmp/seed bs=1048576 count=1 2>/dev/null; \
             i=0; while [ $i -lt {} ]; do cat /tmp/seed; i=$((i+1)); done > /tmp/fill; \
             echo SNAPBENCH_FILLED $(du -k /tmp/fill); ",
            size.touch_mib
        )
    };
    let period_us = COUNT_PERIOD_MS * 1000;
    format!("{fill}n=0; while true; do echo {COUNTER}$n; n=$((n+1)); usleep {period_us}; done")
}

impl Options {
    /// What both VMMs boot for a guest of `size`: the boot benchmark's
    /// guest, holding after its init, running `guest_run(size)` first.
    fn boot_setup(&self, size: GuestSize, dir: &Path) -> boot::BootSetup {
        boot::BootSetup {
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            mem_mib: size.mem_mib,
            vcpus: self.vcpus,
            timeout: Duration::from_secs(self.timeout),
            scratch: dir.to_owned(),
            guest_action: "hold",
            guest_run: Some(guest_run(size)),
            arch: boot::Arch::host(),
        }
    }
}

/// Scratch paths of one VMM's run, removed when done.
struct Scratch {
    paths: Vec<PathBuf>,
}

impl Scratch {
    /// `dir`/`name`, removed now and when done.
    fn path(&mut self, dir: &Path, name: &str) -> PathBuf {
        self.add(dir.join(name))
    }

    /// `path`, removed now and when done.
    fn add(&mut self, path: PathBuf) -> PathBuf {
        let _ = std::fs::remove_file(&path);
        self.paths.push(path.clone());
        path
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        for path in &self.paths {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// Runs the benchmark and prints the per-run lines and the summary.
pub fn run(options: &Options) -> Result<()> {
    let dir = options
        .scratch
        .clone()
        .unwrap_or_else(std::env::temp_dir)
        .join(format!("brique-bench-snapshot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(io(format!("{}", dir.display())))?;
    let result = run_in(options, &dir);
    let _ = std::fs::remove_dir_all(&dir);
    result
}

fn run_in(options: &Options, dir: &Path) -> Result<()> {
    let runs = options.runs;
    let peer = boot::Arch::host().peer_name();
    println!(
        "snapshot benchmark: {runs} run(s) per VMM and size, {} vCPU(s), sizes: {}; \
         QEMU's file: {}; kernel {}",
        options.vcpus,
        options
            .sizes
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", "),
        if options.qemu_mapped_ram {
            "mapped-ram"
        } else {
            "migration stream"
        },
        options.kernel.display()
    );
    let mut brique: Vec<Samples> = options.sizes.iter().map(|_| Samples::default()).collect();
    let mut qemu: Vec<Samples> = options.sizes.iter().map(|_| Samples::default()).collect();
    // Interleaved, so that drift in the host affects both VMMs and sizes alike.
    for run in 1..=runs {
        for (index, &size) in options.sizes.iter().enumerate() {
            let b = brique::measure(options, size, dir)?;
            report::print_sample(run, runs, size, "brique", &b);
            brique[index].0.push(b);
            let q = qemu::measure(options, size, dir)?;
            report::print_sample(run, runs, size, peer, &q);
            qemu[index].0.push(q);
        }
    }
    report::print_summary(runs, &options.sizes, peer, &brique, &qemu);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_touched_memory() {
        assert_eq!(
            parse_size("128"),
            Ok(GuestSize {
                mem_mib: 128,
                touch_mib: 0
            })
        );
        assert_eq!(
            parse_size("2048:100"),
            Ok(GuestSize {
                mem_mib: 2048,
                touch_mib: 100
            })
        );
        assert!(parse_size("128:100").is_err(), "tmpfs holds half the RAM");
        assert!(parse_size("big").is_err());
    }

    #[test]
    fn the_guest_command_fills_only_when_asked() {
        let plain = guest_run(GuestSize {
            mem_mib: 128,
            touch_mib: 0,
        });
        assert!(plain.starts_with("n=0;") && !plain.contains('"'));
        let filled = guest_run(GuestSize {
            mem_mib: 2048,
            touch_mib: 100,
        });
        assert!(filled.contains("-lt 100") && !filled.contains('"'));
    }
}
