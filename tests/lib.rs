//! Helpers for brique's end-to-end tests: run shell cases inside the
//! nested-KVM test host (`resources/testhost.sh`) and read back what each
//! case's guest printed and how brique exited.

pub mod api_client;
pub mod console;
pub mod tiny_guest;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

/// The repository root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// One test host at a time: two TCG machines on two cores only slow each
/// other down past their timeouts.
static TEST_HOST: Mutex<()> = Mutex::new(());

/// What one `boot_case` printed and how brique ended.
#[derive(Debug, Clone)]
pub struct Case {
    /// Case name.
    pub name: String,
    /// brique's exit status.
    pub exit: i32,
    /// The guest console (brique's stdout), one entry per line.
    pub console: Vec<String>,
    /// brique's stderr lines.
    pub stderr: Vec<String>,
    /// Where the whole test host console is kept (under `target/`).
    pub console_log: PathBuf,
}

impl Case {
    /// Whether some console line is exactly `text` (what the guest printed,
    /// not the kernel echoing its command line).
    pub fn console_line(&self, text: &str) -> bool {
        self.console.iter().any(|line| line.trim() == text)
    }

    /// Whether some console line contains `text`.
    pub fn console_has(&self, text: &str) -> bool {
        self.console.iter().any(|line| line.contains(text))
    }
}

/// A finished test host run.
#[derive(Debug)]
pub struct HostRun {
    /// testhost.sh's exit status (the script's).
    pub status: i32,
    /// The whole test host console.
    pub console: String,
    /// Where that console is kept (under `target/`).
    pub console_log: PathBuf,
}

impl HostRun {
    /// The case called `name`; panics with the console when it is missing.
    pub fn case(&self, name: &str) -> Case {
        let mut console = Vec::new();
        let mut stderr = Vec::new();
        let out_prefix = format!("[{name}] ");
        let err_prefix = format!("[{name}:stderr] ");
        let end = format!("BRIQUE_CASE {name} exit=");
        let timeout = format!("BRIQUE_CASE_TIMEOUT {name}:");
        let mut in_timeout_report = false;
        for line in self.console.lines() {
            let line = line.trim_end_matches('\r');
            // A hung case's report (and its thread list) goes with its stderr.
            if line.starts_with(&timeout) || (in_timeout_report && line.starts_with("  ")) {
                in_timeout_report = true;
                stderr.push(line.to_owned());
                continue;
            }
            in_timeout_report = false;
            if let Some(rest) = line.strip_prefix(&out_prefix) {
                console.push(rest.to_owned());
            } else if let Some(rest) = line.strip_prefix(&err_prefix) {
                stderr.push(rest.to_owned());
            } else if let Some(status) = line.strip_prefix(&end) {
                let exit = status.trim().parse().unwrap_or(-1);
                return Case {
                    name: name.to_owned(),
                    exit,
                    console,
                    stderr,
                    console_log: self.console_log.clone(),
                };
            }
        }
        panic!(
            "case {name} did not finish (test host console kept in {}):\n{}",
            self.console_log.display(),
            self.console
        );
    }
}

/// How long one test host run may take: the longest e2e case needs ~1 min.
const HOST_TIMEOUT_SECS: u64 = 420;

/// Which test host a case runs in: both give the same paths and variables
/// (`$GUEST_KERNEL` is the guest kernel of either), so a script runs on both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostArch {
    /// The x86_64 test host (nested KVM under QEMU's x86 software CPU).
    X86_64,
    /// The arm64 test host (nested KVM under QEMU's arm64 software CPU).
    Aarch64,
}

impl HostArch {
    fn testhost_args(self) -> &'static [&'static str] {
        match self {
            Self::X86_64 => &[],
            Self::Aarch64 => &["--arch", "aarch64"],
        }
    }
}

/// Declares one test per test host for an end-to-end case `fn case(arch:
/// HostArch)`: `on_test_hosts!(case on X86_64, Aarch64)` makes the tests
/// `case::X86_64` and `case::Aarch64` (each skipped, loudly, with
/// BRIQUE_SKIP_E2E).
#[macro_export]
macro_rules! on_test_hosts {
    ($case:ident on $($arch:ident),+) => {
        mod $case {
            $(
                #[test]
                #[allow(non_snake_case)]
                fn $arch() {
                    if !$crate::skip_e2e() {
                        super::$case($crate::HostArch::$arch);
                    }
                }
            )+
        }
    };
}

/// Runs `script` (POSIX sh, with `boot_case` from guest-lib.sh available)
/// in the x86_64 test host, with `files` (name, content) beside it.
pub fn run_in_test_host(script: &str, files: &[(&str, &[u8])]) -> HostRun {
    run_in_test_host_on(HostArch::X86_64, script, files)
}

/// Runs `script` in the test host of `arch`, with `files` beside it.
pub fn run_in_test_host_on(arch: HostArch, script: &str, files: &[(&str, &[u8])]) -> HostRun {
    let _guard = TEST_HOST.lock().unwrap_or_else(|p| p.into_inner());
    let root = repo_root();
    let dir = std::env::temp_dir().join(format!(
        "brique-e2e-{}-{:?}",
        std::process::id(),
        std::thread::current().id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create case dir");
    std::fs::copy(root.join("tests/guest-lib.sh"), dir.join("guest-lib.sh")).expect("copy lib");
    std::fs::write(dir.join("case.sh"), format!(". ./guest-lib.sh\n{script}\n"))
        .expect("write case");
    for (name, content) in files {
        std::fs::write(dir.join(name), content).expect("write file");
    }
    // A test host that stops answering is stopped after HOST_TIMEOUT_SECS
    // and tried once more, loudly, with its hang report (resources/
    // testhost.sh), so that the evidence reaches the run's summary; every
    // assertion still applies to the run that finished. The freezes it was
    // first for (the test host's timer interrupt lost by its QEMU) are
    // fixed in the QEMU that runs it (see
    // two_vcpus_contending_for_kernel_locks_keep_running in tests/e2e.rs).
    let mut attempt = 1;
    let (status, console, console_log) = loop {
        let console_log = console_log_path(&root, attempt);
        let output = Command::new(root.join("resources/testhost.sh"))
            .args(arch.testhost_args())
            .arg("--timeout")
            .arg(HOST_TIMEOUT_SECS.to_string())
            .arg("--log")
            .arg(&console_log)
            .arg("--with")
            .arg(&dir)
            .args(["--", "sh", "case.sh"])
            .output()
            .expect("run resources/testhost.sh");
        let console = String::from_utf8_lossy(&output.stdout).into_owned();
        let status = output.status.code().unwrap_or(-1);
        if status == 124 && attempt == 1 {
            let tail: Vec<&str> = console.lines().rev().take(15).collect();
            let hang_report = hang_report_path(&console_log);
            let report = std::fs::read_to_string(&hang_report).unwrap_or_else(|err| {
                format!("(no hang report in {}: {err})", hang_report.display())
            });
            let warning = format!(
                "*** WARNING: the test host hung (timeout after {HOST_TIMEOUT_SECS} s) in {}; \
                 retrying once. Console kept in {}; last lines:\n{}\n{}\n",
                std::thread::current().name().unwrap_or("a test"),
                console_log.display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n"),
                report.trim_end()
            );
            eprintln!("\n{warning}");
            record_retry(&root, &warning);
            attempt += 1;
            continue;
        }
        if status >= 124 || !console.contains("BRIQUE_TESTHOST_READY kvm=yes") {
            let _ = std::fs::remove_dir_all(&dir);
            panic!(
                "the test host did not run (status {status}, attempt {attempt}; console kept in {}):\n{console}\n{}",
                console_log.display(),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        break (status, console, console_log);
    };
    let _ = std::fs::remove_dir_all(&dir);
    HostRun {
        status,
        console,
        console_log,
    }
}

/// Where resources/testhost.sh writes what a hung test host's QEMU was doing.
fn hang_report_path(console_log: &Path) -> PathBuf {
    let mut path = console_log.as_os_str().to_owned();
    path.push(".hang");
    PathBuf::from(path)
}

/// Where the console of this test's test host run (`attempt`) is kept:
/// `target/testhost-logs/<test binary>.<test name>-<attempt>.log`, named
/// in failures.
fn console_log_path(root: &Path, attempt: u32) -> PathBuf {
    let dir = root.join("target/testhost-logs");
    if let Err(err) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {err}", dir.display());
    }
    let test: String = std::thread::current()
        .name()
        .unwrap_or("test")
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '-'
            }
        })
        .collect();
    // The test binary is target/debug/deps/<name>-<hash>.
    let binary = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.file_stem().map(|s| s.to_string_lossy().into_owned()))
        .map(|stem| stem.split('-').next().unwrap_or_default().to_owned())
        .unwrap_or_default();
    dir.join(format!("{binary}.{test}-{attempt}.log"))
}

/// Where retries of a hung test host are recorded, so that the test
/// command can print them even for tests that passed (cargo test hides a
/// passing test's output).
pub const RETRY_LOG: &str = "target/brique-testhost-retries.log";

fn record_retry(root: &std::path::Path, warning: &str) {
    use std::io::Write;
    let appended = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(root.join(RETRY_LOG))
        .and_then(|mut log| log.write_all(warning.as_bytes()));
    if let Err(err) = appended {
        eprintln!("cannot record the retry in {RETRY_LOG}: {err}");
    }
}

/// Says loudly why e2e tests are skipped, if they must be: only when
/// BRIQUE_SKIP_E2E is set (the README test command never sets it).
pub fn skip_e2e() -> bool {
    if std::env::var_os("BRIQUE_SKIP_E2E").is_some() {
        eprintln!("\n*** SKIPPED: end-to-end test (BRIQUE_SKIP_E2E is set) ***\n");
        return true;
    }
    false
}

/// A statically linked build of `name` (brique, brique-jailer), as a jail
/// needs: `resources/build-static.sh` builds them (the test command runs it
/// first); `BRIQUE_STATIC_DIR` names another directory. Says SKIPPED loudly
/// when missing.
pub fn static_binary(name: &str) -> Option<PathBuf> {
    let dir = std::env::var_os("BRIQUE_STATIC_DIR").map_or_else(
        || {
            repo_root().join(format!(
                "target/static/{}-unknown-linux-gnu/debug",
                std::env::consts::ARCH
            ))
        },
        PathBuf::from,
    );
    let path = dir.join(name);
    if path.is_file() {
        Some(path)
    } else {
        eprintln!(
            "\n*** SKIPPED: no static {name} at {} (resources/build-static.sh builds it) ***\n",
            path.display()
        );
        None
    }
}

/// Whether /dev/kvm can be used; says SKIPPED loudly when not.
pub fn kvm_available() -> bool {
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        eprintln!("\n*** SKIPPED: /dev/kvm is not available on this machine ***\n");
    }
    ok
}

#[cfg(test)]
mod retry_log_tests {
    #[test]
    fn retries_are_appended_for_the_test_command_to_print() {
        let root = std::env::temp_dir().join(format!("brique-retry-log-{}", std::process::id()));
        std::fs::create_dir_all(root.join("target")).unwrap();
        super::record_retry(&root, "*** WARNING: first\n");
        super::record_retry(&root, "*** WARNING: second\n");
        let log = std::fs::read_to_string(root.join(super::RETRY_LOG)).unwrap();
        assert_eq!(log, "*** WARNING: first\n*** WARNING: second\n");
        std::fs::remove_dir_all(&root).unwrap();
    }
}
