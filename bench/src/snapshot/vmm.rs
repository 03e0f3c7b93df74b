//! A VMM process under watch: its serial console read line by line, the
//! guest's counter followed, its page faults and memory read from /proc,
//! and the evidence gathered when it fails.

use super::report::{FileSizes, Sample};
use super::{io, Result, SnapshotBenchError, COUNTER};
use crate::boot::forward_console;
use brique_tests::console::leading_count;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running VMM whose serial console (stdout) is read line by line.
pub struct Vmm {
    name: &'static str,
    child: Child,
    lines: Receiver<(Instant, String)>,
    _reader: JoinHandle<()>,
    stderr: PathBuf,
    /// The last console lines, for the evidence of a failure.
    tail: Vec<String>,
    /// The highest count printed so far.
    pub last_count: Option<u64>,
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The count of a console line holding `COUNTER`, read as the e2e tests
/// read theirs (a kernel message may follow it before the newline).
fn parse_count(line: &str) -> Option<u64> {
    let at = line.find(COUNTER)?;
    leading_count(&line[at + COUNTER.len()..])
}

impl Vmm {
    /// Starts `command` with its stdout as the console and its stderr
    /// into the file `stderr`.
    pub fn spawn(name: &'static str, mut command: Command, stderr: PathBuf) -> Result<Self> {
        let errors = std::fs::File::create(&stderr).map_err(io(format!("{}", stderr.display())))?;
        command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(errors);
        let mut child = command.spawn().map_err(io(format!("start {name}")))?;
        let (lines, reader) = forward_console(&mut child);
        Ok(Self {
            name,
            child,
            lines,
            _reader: reader,
            stderr,
            tail: Vec::new(),
            last_count: None,
        })
    }

    /// A failure of this VMM, with its console tail and stderr.
    pub fn failed(&mut self, what: impl Into<String>) -> SnapshotBenchError {
        // Whatever the console still holds.
        while let Ok((_, line)) = self.lines.try_recv() {
            self.keep(line);
        }
        let status = match self.child.try_wait() {
            Ok(Some(status)) => format!("exited: {status}"),
            _ => "still running".to_owned(),
        };
        let stderr = std::fs::read_to_string(&self.stderr).unwrap_or_default();
        let stderr_tail: Vec<&str> = stderr.lines().rev().take(30).collect();
        let stderr_tail: Vec<&str> = stderr_tail.into_iter().rev().collect();
        SnapshotBenchError::Vmm {
            vmm: self.name,
            what: what.into(),
            evidence: format!(
                "  process: {status}\n  last console lines:\n    {}\n  stderr (last lines):\n    {}",
                self.tail.join("\n    "),
                stderr_tail.join("\n    ")
            ),
        }
    }

    fn keep(&mut self, line: String) -> Option<u64> {
        let count = parse_count(&line);
        if let Some(n) = count {
            self.last_count = Some(self.last_count.map_or(n, |last| last.max(n)));
        }
        self.tail.push(line);
        if self.tail.len() > 25 {
            self.tail.remove(0);
        }
        count
    }

    /// Waits for a counter line whose count passes `after` (any count when
    /// `None`): when it came, and its count.
    pub fn wait_count(&mut self, after: Option<u64>, timeout: Duration) -> Result<(Instant, u64)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, line)) => {
                    if let Some(n) = self.keep(line) {
                        if after.is_none_or(|after| n > after) {
                            return Ok((at, n));
                        }
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    return Err(self.failed(format!(
                        "no {COUNTER} line{} within {timeout:?}",
                        after.map(|n| format!(" after {n}")).unwrap_or_default()
                    )))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(self.failed("the console closed (the VMM ended)"))
                }
            }
        }
    }

    /// Reads what the console prints until it is quiet for `quiet`.
    pub fn drain(&mut self, quiet: Duration) {
        while let Ok((_, line)) = self.lines.recv_timeout(quiet) {
            self.keep(line);
        }
    }

    /// Checks that the next `more` counts follow `from` one by one.
    pub fn expect_counting_on(&mut self, from: u64, more: u64, timeout: Duration) -> Result<()> {
        for expected in from + 1..=from + more {
            let (_, n) = self.wait_count(Some(expected - 1), timeout)?;
            if n != expected {
                return Err(self.failed(format!(
                    "the restored guest counted {n} where {expected} was due"
                )));
            }
        }
        Ok(())
    }

    /// The process's page faults so far, minor and major.
    pub fn faults(&self) -> u64 {
        let stat =
            std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap_or_default();
        // After the command name: state is field 3, minflt 10, majflt 12.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().collect())
            .unwrap_or_default();
        let field =
            |n: usize| -> u64 { fields.get(n - 3).and_then(|v| v.parse().ok()).unwrap_or(0) };
        field(10) + field(12)
    }

    /// The process's resident memory (VmRSS), KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse().ok())
            .unwrap_or(0)
    }
}

/// Starts the VMM to be saved and waits until its guest counts. Booting is
/// not what is measured, so a boot that fails (the nested test host
/// sometimes loses one) is tried once more, loudly; says if it was.
pub fn boot_counting(
    name: &'static str,
    command: impl Fn() -> Result<Command>,
    stderr: &Path,
    timeout: Duration,
) -> Result<(Vmm, bool)> {
    let mut vmm = Vmm::spawn(name, command()?, stderr.to_owned())?;
    // Counting for a few lines already.
    let Err(err) = vmm.wait_count(Some(2), timeout) else {
        return Ok((vmm, false));
    };
    println!("{name}: the boot of the guest to save failed, once more; it failed with: {err}");
    drop(vmm);
    let mut vmm = Vmm::spawn(name, command()?, stderr.to_owned())?;
    vmm.wait_count(Some(2), timeout)?;
    Ok((vmm, true))
}

/// The restored guest's first count must follow the last one saved: the
/// next, or the one after when the save came in the middle of a line.
pub fn check_first_count(vmm: &mut Vmm, last: u64, first: u64) -> Result<()> {
    if first == last + 1 || first == last + 2 {
        Ok(())
    } else {
        Err(vmm.failed(format!(
            "the restored guest's first count is {first}, the last saved was {last}"
        )))
    }
}

/// What the saving half of a round measured.
pub struct Saved {
    pub create: Duration,
    pub files: FileSizes,
    /// The last count before the save.
    pub last: u64,
    pub boot_retried: bool,
}

/// Called right after `restored` was told to run its guest again (`start`:
/// when that request went out; `spawned`: when the restoring process
/// started): follows the guest to its first count, checks that count goes
/// on from `saved.last` and that the guest keeps counting, and makes the
/// round's sample.
pub fn sample_after_resume(
    restored: &mut Vmm,
    saved: Saved,
    spawned: Instant,
    start: Instant,
    timeout: Duration,
) -> Result<Sample> {
    let resumed = start.elapsed();
    let faults_at_resume = restored.faults();
    let (at, first) = restored.wait_count(None, timeout)?;
    let first_run_faults = restored.faults().saturating_sub(faults_at_resume);
    let rss_kib = restored.rss_kib();
    check_first_count(restored, saved.last, first)?;
    restored.expect_counting_on(first, 2, Duration::from_secs(10))?;
    Ok(Sample {
        create: saved.create,
        files: saved.files,
        restore: at.duration_since(start),
        resumed,
        restore_from_spawn: at.duration_since(spawned),
        rss_kib,
        first_run_faults,
        counts: (saved.last, first),
        boot_retried: saved.boot_retried,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_read_from_their_lines() {
        assert_eq!(parse_count("SNAPBENCH_COUNT=42\r"), Some(42));
        assert_eq!(parse_count("NT=42"), None);
    }
}
