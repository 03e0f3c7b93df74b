//! Stability benchmark: many short boots of the same guest with brique and
//! with QEMU microvm, counting how each ended. The guest's init prints its
//! marker and reboots, which ends either VMM; anything else is a failure,
//! sorted by what the console and the VMM's exit tell.

use crate::boot::{forward_console, BootSetup, INIT_MARKER};
use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// The line the guest init prints just before it reboots.
pub const REBOOT_MARKER: &str = "BRIQUE_GUEST_REBOOTING";

/// How one boot ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Outcome {
    /// Init reached, the guest rebooted, the VMM exited 0.
    Clean,
    /// The guest reset before its init asked for it (brique: "triple
    /// fault" on stderr; QEMU with -no-reboot exits as for any reset).
    TripleFault,
    /// The guest kernel panicked.
    Panic,
    /// The VMM did not exit within the time limit and was killed.
    Hang,
    /// Any other end (a VMM error, an unexpected exit status).
    Other,
}

impl Outcome {
    /// Short name for the summary.
    pub fn name(self) -> &'static str {
        match self {
            Self::Clean => "init reached, clean exit",
            Self::TripleFault => "triple fault / unexpected reset",
            Self::Panic => "guest panic",
            Self::Hang => "hang (killed)",
            Self::Other => "other failure",
        }
    }
}

/// What the console and the exit of one boot showed.
#[derive(Debug, Clone, Default)]
pub struct Observed {
    /// The init marker was printed.
    pub init_reached: bool,
    /// The reboot marker was printed.
    pub rebooting: bool,
    /// A kernel panic line was printed.
    pub panicked: bool,
    /// The VMM said "triple fault" on stderr.
    pub triple_fault_reported: bool,
    /// The VMM's exit status; `None` when it was killed after the limit.
    pub exit_code: Option<i32>,
}

/// Sorts one boot by what was observed.
pub fn classify(seen: &Observed) -> Outcome {
    match seen.exit_code {
        None => Outcome::Hang,
        Some(_) if seen.panicked => Outcome::Panic,
        Some(_) if seen.triple_fault_reported => Outcome::TripleFault,
        Some(0) if seen.init_reached && seen.rebooting => Outcome::Clean,
        // A reset the guest did not ask for: QEMU (-no-reboot) exits 0 on
        // a triple fault as on any reset.
        Some(0) if !seen.rebooting => Outcome::TripleFault,
        Some(_) => Outcome::Other,
    }
}

/// One boot's result.
#[derive(Debug, Clone)]
pub struct BootResult {
    /// How it ended.
    pub outcome: Outcome,
    /// Spawn to exit (or to the kill).
    pub wall: Duration,
    /// Spawn to the init marker, if it came.
    pub time_to_init: Option<Duration>,
    /// The last console lines and the VMM's stderr, for failures.
    pub evidence: String,
}

/// Boots once with `command` and waits for the VMM to end (at most
/// `setup.timeout`, then it is killed).
pub fn boot_once(mut command: Command, setup: &BootSetup) -> std::io::Result<BootResult> {
    command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let start = Instant::now();
    let mut child = command.spawn()?;
    let (lines, reader) = forward_console(&mut child);
    let stderr = child.stderr.take();
    let stderr_reader = std::thread::spawn(move || {
        let mut text = String::new();
        if let Some(mut stderr) = stderr {
            let _ = stderr.read_to_string(&mut text);
        }
        text
    });

    let status = wait_with_limit(&mut child, setup.timeout)?;
    let wall = start.elapsed();
    if status.is_none() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = reader.join();
    let stderr = stderr_reader.join().unwrap_or_default();

    let mut seen = Observed {
        exit_code: status.map(|s| s.code().unwrap_or(-1)),
        triple_fault_reported: stderr.contains("triple fault"),
        ..Observed::default()
    };
    let mut time_to_init = None;
    let mut tail: Vec<String> = Vec::new();
    for (at, line) in lines.try_iter() {
        if line.contains(INIT_MARKER) {
            seen.init_reached = true;
            time_to_init.get_or_insert(at - start);
        }
        seen.rebooting |= line.contains(REBOOT_MARKER);
        seen.panicked |= line.contains("Kernel panic");
        tail.push(line);
        if tail.len() > 25 {
            tail.remove(0);
        }
    }
    let outcome = classify(&seen);
    let evidence = if outcome == Outcome::Clean {
        String::new()
    } else {
        format!(
            "  exit: {:?}\n  last console lines:\n    {}\n  stderr:\n    {}",
            seen.exit_code,
            tail.join("\n    "),
            stderr.trim_end().replace('\n', "\n    ")
        )
    };
    Ok(BootResult {
        outcome,
        wall,
        time_to_init,
        evidence,
    })
}

fn wait_with_limit(
    child: &mut std::process::Child,
    limit: Duration,
) -> std::io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Outcome counts and times of one VMM's boots.
#[derive(Debug, Default)]
pub struct Tally {
    /// Boots per outcome.
    pub outcomes: BTreeMap<Outcome, u32>,
    /// Wall time of every boot, seconds.
    pub wall_secs: Vec<f64>,
    /// Time to init of the boots that reached it, seconds.
    pub init_secs: Vec<f64>,
}

impl Tally {
    /// Adds one boot.
    pub fn add(&mut self, result: &BootResult) {
        *self.outcomes.entry(result.outcome).or_default() += 1;
        self.wall_secs.push(result.wall.as_secs_f64());
        if let Some(init) = result.time_to_init {
            self.init_secs.push(init.as_secs_f64());
        }
    }

    /// Boots of `outcome`.
    pub fn count(&self, outcome: Outcome) -> u32 {
        self.outcomes.get(&outcome).copied().unwrap_or(0)
    }

    /// Boots counted.
    pub fn total(&self) -> u32 {
        self.outcomes.values().sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(init: bool, rebooting: bool, exit: Option<i32>) -> Observed {
        Observed {
            init_reached: init,
            rebooting,
            exit_code: exit,
            ..Observed::default()
        }
    }

    #[test]
    fn a_guest_that_reached_init_and_rebooted_is_clean() {
        assert_eq!(classify(&seen(true, true, Some(0))), Outcome::Clean);
    }

    #[test]
    fn a_reset_before_the_guest_asked_is_a_triple_fault() {
        // QEMU -no-reboot: exit 0 without the reboot marker.
        assert_eq!(classify(&seen(false, false, Some(0))), Outcome::TripleFault);
        assert_eq!(classify(&seen(true, false, Some(0))), Outcome::TripleFault);
        // brique: exit 1 and says so.
        let mut brique = seen(false, false, Some(1));
        brique.triple_fault_reported = true;
        assert_eq!(classify(&brique), Outcome::TripleFault);
    }

    #[test]
    fn panics_hangs_and_other_ends_are_told_apart() {
        let mut panic = seen(true, false, Some(1));
        panic.panicked = true;
        assert_eq!(classify(&panic), Outcome::Panic);
        assert_eq!(classify(&seen(true, false, None)), Outcome::Hang);
        assert_eq!(classify(&seen(false, false, Some(2))), Outcome::Other);
        assert_eq!(classify(&seen(true, true, Some(1))), Outcome::Other);
    }

    #[test]
    fn tally_counts_outcomes_and_keeps_times() {
        let mut tally = Tally::default();
        for outcome in [Outcome::Clean, Outcome::Clean, Outcome::Hang] {
            tally.add(&BootResult {
                outcome,
                wall: Duration::from_secs(2),
                time_to_init: (outcome == Outcome::Clean).then_some(Duration::from_secs(1)),
                evidence: String::new(),
            });
        }
        assert_eq!(tally.count(Outcome::Clean), 2);
        assert_eq!(tally.count(Outcome::Hang), 1);
        assert_eq!(tally.count(Outcome::TripleFault), 0);
        assert_eq!(tally.total(), 3);
        assert_eq!(tally.init_secs, vec![1.0, 1.0]);
    }
}
