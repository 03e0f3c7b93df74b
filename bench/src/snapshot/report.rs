//! What one save and restore measured, and how the benchmark prints it:
//! a line per sample, then the medians per VMM and guest size, the ratios
//! brique/QEMU and how restore grows with the guest's size.

use super::{io, GuestSize, Result};
use crate::stats;
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::time::Duration;

/// Apparent and allocated bytes of the files one save wrote.
#[derive(Debug, Clone, Copy, Default)]
pub struct FileSizes {
    apparent: u64,
    allocated: u64,
}

/// The sizes of the files `paths`, added up.
pub fn file_sizes(paths: &[&Path]) -> Result<FileSizes> {
    let mut sizes = FileSizes::default();
    for path in paths {
        let meta = std::fs::metadata(path).map_err(io(format!("{}", path.display())))?;
        sizes.apparent += meta.len();
        sizes.allocated += meta.blocks() * 512;
    }
    Ok(sizes)
}

/// One save and restore.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub create: Duration,
    pub files: FileSizes,
    /// Load request to the first new count.
    pub restore: Duration,
    /// Load request to the VMM saying the guest runs again (brique: the
    /// load's response; QEMU: the reply to `cont`).
    pub resumed: Duration,
    /// Spawn of the restoring process to the first new count.
    pub restore_from_spawn: Duration,
    /// The restoring process's RSS at its first count, KiB.
    pub rss_kib: u64,
    /// Page faults of the restoring process (KVM's faults on guest memory
    /// count there) from the guest running again to its first count.
    pub first_run_faults: u64,
    /// Last count before the save, first after the restore.
    pub counts: (u64, u64),
    /// The boot of the guest to be saved failed once (and was retried).
    pub boot_retried: bool,
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// Prints one sample as it comes.
pub fn print_sample(run: u32, runs: u32, size: GuestSize, vmm: &str, s: &Sample) {
    println!(
        "run {run}/{runs} {size} {vmm}: create {:.0} ms, files {:.1} MiB ({:.1} MiB allocated), \
         restore {:.0} ms (running at {:.0} ms; {:.0} ms from spawn), RSS {:.1} MiB, {} faults in the first run, counts {} -> {}{}",
        ms(s.create),
        mib(s.files.apparent),
        mib(s.files.allocated),
        ms(s.restore),
        ms(s.resumed),
        ms(s.restore_from_spawn),
        s.rss_kib as f64 / 1024.0,
        s.first_run_faults,
        s.counts.0,
        s.counts.1,
        if s.boot_retried {
            " (its boot was retried)"
        } else {
            ""
        }
    );
}

/// The samples of one VMM at one size.
#[derive(Debug, Default)]
pub struct Samples(pub Vec<Sample>);

impl Samples {
    fn median(&self, value: impl Fn(&Sample) -> f64) -> f64 {
        let values: Vec<f64> = self.0.iter().map(value).collect();
        stats::summarize(&values).map_or(f64::NAN, |s| s.median)
    }
}

/// The figures compared, with their unit and how a sample gives them.
type Figure = (&'static str, fn(&Sample) -> f64);

const FIGURES: [Figure; 8] = [
    ("create (ms)", |s| ms(s.create)),
    ("state+memory files, apparent (MiB)", |s| {
        mib(s.files.apparent)
    }),
    ("state+memory files, allocated (MiB)", |s| {
        mib(s.files.allocated)
    }),
    ("restore: load request -> first count (ms)", |s| {
        ms(s.restore)
    }),
    ("restore: load request -> VMM says running (ms)", |s| {
        ms(s.resumed)
    }),
    ("restore: process spawn -> first count (ms)", |s| {
        ms(s.restore_from_spawn)
    }),
    ("restored VMM RSS at first count (MiB)", |s| {
        s.rss_kib as f64 / 1024.0
    }),
    ("VMM page faults, running -> first count", |s| {
        s.first_run_faults as f64
    }),
];

/// Prints the summary of `runs` runs: per guest size (`sizes`, in the
/// order of the samples), brique's and QEMU's (`peer`) medians and their
/// ratios, the retried boots, how restore grows from the first size to
/// the last, and one `SNAPSHOT` line per size.
pub fn print_summary(
    runs: u32,
    sizes: &[GuestSize],
    peer: &str,
    brique: &[Samples],
    qemu: &[Samples],
) {
    println!(
        "\nsnapshot benchmark: medians of {runs} run(s); ratio brique/QEMU, below 1 is better"
    );
    println!("  {:<50} {:>12} {:>14} {:>8}", "", "brique", peer, "ratio");
    for (index, size) in sizes.iter().enumerate() {
        println!("  guest {size}:");
        for (name, value) in FIGURES {
            let (b, q) = (brique[index].median(value), qemu[index].median(value));
            println!("    {name:<48} {b:>12.1} {q:>14.1} {:>8.3}", b / q);
        }
    }
    let restore = |s: &Sample| ms(s.restore);
    let retried = |samples: &[Samples]| -> usize {
        samples
            .iter()
            .flat_map(|s| &s.0)
            .filter(|s| s.boot_retried)
            .count()
    };
    println!(
        "  boots of the guest to save that failed and were retried: brique {}, {peer} {}",
        retried(brique),
        retried(qemu)
    );
    if sizes.len() > 1 {
        let (small, large) = (0, sizes.len() - 1);
        let growth =
            |samples: &[Samples]| samples[large].median(restore) / samples[small].median(restore);
        println!(
            "  restore {} / {}: brique {:.3} (goal <= 1.5), {peer} {:.3}",
            sizes[large].mem_mib,
            sizes[small].mem_mib,
            growth(brique),
            growth(qemu)
        );
    }
    for (index, size) in sizes.iter().enumerate() {
        println!(
            "SNAPSHOT size={} brique_create_ms={:.1} qemu_create_ms={:.1} brique_restore_ms={:.1} \
             qemu_restore_ms={:.1} restore_ratio={:.3} (goal <= 0.2)",
            size.mem_mib,
            brique[index].median(|s| ms(s.create)),
            qemu[index].median(|s| ms(s.create)),
            brique[index].median(restore),
            qemu[index].median(restore),
            brique[index].median(restore) / qemu[index].median(restore)
        );
    }
}
