//! Snapshot benchmark: save a running guest and restore it in a fresh VMM
//! process, brique (`PUT /snapshot/create`, `PUT /snapshot/load`) against
//! QEMU's microvm machine (QMP `stop` + `migrate` to a file, then a new QEMU
//! with `-incoming defer`, `migrate-incoming` and `cont`), on the same
//! kernel and initramfs, for guests of several sizes.
//!
//! The guest's init first fills part of its tmpfs with non-zero data (the
//! "touched" memory of a size), then prints `SNAPBENCH_COUNT=<n>` every
//! 100 ms on its serial console. Measured for each VMM, size and run:
//! - create: the save request alone, the guest already paused (brique: `PUT
//!   /snapshot/create` Full; QEMU: `migrate` to the MIGRATION `completed`
//!   event);
//! - the files written: apparent size (`stat`) and allocated size (`du`,
//!   blocks), state and memory together;
//! - restore: from sending the load request (brique: `PUT /snapshot/load`
//!   with `resume_vm`; QEMU: `migrate-incoming`, then `cont` once it
//!   completed) to the first counter line the restored guest prints; the
//!   guest sleeps 100 ms between lines, so up to that much of it is the
//!   guest's own wait, alike for both. Also from the restoring process's
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

use crate::boot::{self, forward_console};
use crate::stats;
use brique_tests::api_client::ApiClient;
use std::fmt;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
    format!("{fill}n=0; while true; do echo {COUNTER}$n; n=$((n+1)); usleep 100000; done")
}

/// The kernel command line both VMMs pass (the boot benchmark's, holding).
fn kernel_args(options: &Options, size: GuestSize) -> String {
    let setup = boot::BootSetup {
        kernel: options.kernel.clone(),
        initrd: options.initrd.clone(),
        mem_mib: size.mem_mib,
        vcpus: options.vcpus,
        timeout: Duration::from_secs(options.timeout),
        scratch: PathBuf::new(),
        guest_action: "hold",
    };
    format!(
        "{} brique_run=\"{}\"",
        boot::boot_args(&setup),
        guest_run(size)
    )
}

/// A running VMM whose serial console (stdout) is read line by line.
struct Vmm {
    name: &'static str,
    child: Child,
    lines: Receiver<(Instant, String)>,
    _reader: JoinHandle<()>,
    stderr: PathBuf,
    /// The last console lines, for the evidence of a failure.
    tail: Vec<String>,
    /// The highest count printed so far.
    last_count: Option<u64>,
}

impl Drop for Vmm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn parse_count(line: &str) -> Option<u64> {
    let at = line.find(COUNTER)?;
    let digits: String = line[at + COUNTER.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

impl Vmm {
    fn spawn(name: &'static str, mut command: Command, stderr: PathBuf) -> Result<Self> {
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
    fn failed(&mut self, what: impl Into<String>) -> SnapshotBenchError {
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
    fn wait_count(&mut self, after: Option<u64>, timeout: Duration) -> Result<(Instant, u64)> {
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
    fn drain(&mut self, quiet: Duration) {
        while let Ok((_, line)) = self.lines.recv_timeout(quiet) {
            self.keep(line);
        }
    }

    /// Checks that the next `more` counts follow `from` one by one.
    fn expect_counting_on(&mut self, from: u64, more: u64, timeout: Duration) -> Result<()> {
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
    fn faults(&self) -> u64 {
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
    fn rss_kib(&self) -> u64 {
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

/// Apparent and allocated bytes of the files one save wrote.
#[derive(Debug, Clone, Copy, Default)]
struct FileSizes {
    apparent: u64,
    allocated: u64,
}

fn file_sizes(paths: &[&Path]) -> Result<FileSizes> {
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
struct Sample {
    create: Duration,
    files: FileSizes,
    /// Load request to the first new count.
    restore: Duration,
    /// Load request to the VMM saying the guest runs again (brique: the
    /// load's response; QEMU: the reply to `cont`).
    resumed: Duration,
    /// Spawn of the restoring process to the first new count.
    restore_from_spawn: Duration,
    /// The restoring process's RSS at its first count, KiB.
    rss_kib: u64,
    /// Page faults of the restoring process (KVM's faults on guest memory
    /// count there) from the guest running again to its first count.
    first_run_faults: u64,
    /// Last count before the save, first after the restore.
    counts: (u64, u64),
    /// The boot of the guest to be saved failed once (and was retried).
    boot_retried: bool,
}

/// Scratch paths of one VMM's run, removed when done.
struct Scratch {
    paths: Vec<PathBuf>,
}

impl Scratch {
    fn path(&mut self, dir: &Path, name: &str) -> PathBuf {
        let path = dir.join(name);
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

fn api_call(
    vmm: &mut Vmm,
    api: &mut ApiClient,
    method: &str,
    path: &str,
    body: &str,
) -> Result<()> {
    match api.request(method, path, body) {
        Ok(response) if response.status == 204 || response.status == 200 => Ok(()),
        Ok(response) => Err(vmm.failed(format!(
            "{method} {path} {body}: {} {}",
            response.status, response.body
        ))),
        Err(err) => Err(vmm.failed(format!("{method} {path}: {err}"))),
    }
}

fn api_connect(vmm: &mut Vmm, sock: &Path, timeout: Duration) -> Result<ApiClient> {
    let mut api = match ApiClient::connect(sock, Duration::from_secs(20)) {
        Ok(api) => api,
        Err(err) => return Err(vmm.failed(format!("connect to {}: {err}", sock.display()))),
    };
    // A save of a large guest may take longer than the client's default.
    api.stream()
        .set_read_timeout(Some(timeout))
        .map_err(io("API socket"))?;
    Ok(api)
}

fn measure_brique(options: &Options, size: GuestSize, dir: &Path) -> Result<Sample> {
    let timeout = Duration::from_secs(options.timeout);
    let mut scratch = Scratch { paths: Vec::new() };
    let config = scratch.path(dir, "brique-vm.json");
    let json = format!(
        r#"{{"boot-source": {{"kernel_image_path": {:?}, "initrd_path": {:?}, "boot_args": {:?}}},
            "machine-config": {{"vcpu_count": {}, "mem_size_mib": {}}}}}"#,
        options.kernel,
        options.initrd,
        kernel_args(options, size),
        options.vcpus,
        size.mem_mib
    );
    std::fs::write(&config, json).map_err(io(format!("{}", config.display())))?;
    let source_sock = scratch.path(dir, "brique-source.sock");
    let command = || {
        // A killed brique leaves its socket behind.
        let _ = std::fs::remove_file(&source_sock);
        let mut command = Command::new(&options.vmms.brique);
        command
            .arg("--config-file")
            .arg(&config)
            .arg("--api-sock")
            .arg(&source_sock);
        command
    };
    let source_err = scratch.path(dir, "brique-source.stderr");
    let (mut source, boot_retried) = boot_counting("brique", command, &source_err, timeout)?;
    let mut api = api_connect(&mut source, &source_sock, timeout)?;
    api_call(
        &mut source,
        &mut api,
        "PATCH",
        "/vm",
        r#"{"state": "Paused"}"#,
    )?;
    source.drain(Duration::from_millis(300));
    let Some(last) = source.last_count else {
        return Err(source.failed("no count before the pause"));
    };
    let state = scratch.path(dir, "brique.snap");
    let memory = scratch.path(dir, "brique.mem");
    let body = format!(
        r#"{{"snapshot_type": "Full", "snapshot_path": {state:?}, "mem_file_path": {memory:?}}}"#
    );
    let start = Instant::now();
    api_call(&mut source, &mut api, "PUT", "/snapshot/create", &body)?;
    let create = start.elapsed();
    let files = file_sizes(&[&state, &memory])?;
    drop(api);
    drop(source);

    let restore_sock = scratch.path(dir, "brique-restore.sock");
    let restore_err = scratch.path(dir, "brique-restore.stderr");
    let mut command = Command::new(&options.vmms.brique);
    command.arg("--api-sock").arg(&restore_sock);
    let spawned = Instant::now();
    let mut restored = Vmm::spawn("brique (restored)", command, restore_err)?;
    let mut api = api_connect(&mut restored, &restore_sock, timeout)?;
    let body = format!(
        r#"{{"snapshot_path": {state:?}, "mem_backend": {{"backend_type": "File", "backend_path": {memory:?}}}, "resume_vm": true}}"#
    );
    let start = Instant::now();
    api_call(&mut restored, &mut api, "PUT", "/snapshot/load", &body)?;
    let resumed = start.elapsed();
    let faults_at_resume = restored.faults();
    let (at, first) = restored.wait_count(None, timeout)?;
    let first_run_faults = restored.faults().saturating_sub(faults_at_resume);
    let rss_kib = restored.rss_kib();
    check_first_count(&mut restored, last, first)?;
    restored.expect_counting_on(first, 2, Duration::from_secs(10))?;
    Ok(Sample {
        create,
        files,
        restore: at.duration_since(start),
        resumed,
        restore_from_spawn: at.duration_since(spawned),
        rss_kib,
        first_run_faults,
        counts: (last, first),
        boot_retried,
    })
}

/// Starts the VMM to be saved and waits until its guest counts. Booting is
/// not what is measured, so a boot that fails (the nested test host
/// sometimes loses one) is tried once more, loudly; says if it was.
fn boot_counting(
    name: &'static str,
    command: impl Fn() -> Command,
    stderr: &Path,
    timeout: Duration,
) -> Result<(Vmm, bool)> {
    let mut vmm = Vmm::spawn(name, command(), stderr.to_owned())?;
    // Counting for a few lines already.
    let Err(err) = vmm.wait_count(Some(2), timeout) else {
        return Ok((vmm, false));
    };
    println!("{name}: the boot of the guest to save failed, once more; it failed with: {err}");
    drop(vmm);
    let mut vmm = Vmm::spawn(name, command(), stderr.to_owned())?;
    vmm.wait_count(Some(2), timeout)?;
    Ok((vmm, true))
}

/// The restored guest's first count must follow the last one saved: the
/// next, or the one after when the save came in the middle of a line.
fn check_first_count(vmm: &mut Vmm, last: u64, first: u64) -> Result<()> {
    if first == last + 1 || first == last + 2 {
        Ok(())
    } else {
        Err(vmm.failed(format!(
            "the restored guest's first count is {first}, the last saved was {last}"
        )))
    }
}

/// A QMP connection that keeps the events it reads.
struct Qmp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    events: Vec<String>,
}

/// The string value of `"key": "value"` in a QMP line.
fn json_string(line: &str, key: &str) -> Option<String> {
    let quoted = format!("\"{key}\"");
    let rest = line[line.find(&quoted)? + quoted.len()..].trim_start();
    let rest = rest.strip_prefix(':')?.trim_start().strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_owned())
}

impl Qmp {
    fn connect(path: &Path, timeout: Duration) -> std::io::Result<Self> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(err) if Instant::now() >= deadline => return Err(err),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        stream.set_read_timeout(Some(timeout))?;
        let mut qmp = Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            events: Vec::new(),
        };
        qmp.read_line()?; // the greeting
        Ok(qmp)
    }

    fn read_line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "QMP closed",
            ));
        }
        Ok(line)
    }

    /// Runs a command; its reply (`Err` with the reply if it is an error).
    fn execute(&mut self, command: &str, arguments: &str) -> std::io::Result<String> {
        let request = if arguments.is_empty() {
            format!("{{\"execute\": \"{command}\"}}")
        } else {
            format!("{{\"execute\": \"{command}\", \"arguments\": {arguments}}}")
        };
        writeln!(self.writer, "{request}")?;
        loop {
            let line = self.read_line()?;
            if line.contains("\"event\"") {
                self.events.push(line);
            } else if line.contains("\"error\"") {
                return Err(std::io::Error::other(format!("{request}: {}", line.trim())));
            } else {
                return Ok(line);
            }
        }
    }

    /// Waits for the MIGRATION event that says `completed`.
    fn wait_migration(&mut self) -> std::io::Result<()> {
        let mut seen = std::mem::take(&mut self.events).into_iter();
        loop {
            let line = match seen.next() {
                Some(line) => line,
                None => self.read_line()?,
            };
            if json_string(&line, "event").as_deref() != Some("MIGRATION") {
                continue;
            }
            match json_string(&line, "status").as_deref() {
                Some("completed") => return Ok(()),
                Some("failed" | "cancelled") => {
                    return Err(std::io::Error::other(format!("migration {}", line.trim())))
                }
                _ => {}
            }
        }
    }

    /// Connects, leaves negotiation mode and turns migration events on
    /// (and `mapped-ram` if asked).
    fn start(path: &Path, mapped_ram: bool, timeout: Duration) -> std::io::Result<Self> {
        let mut qmp = Self::connect(path, timeout)?;
        qmp.execute("qmp_capabilities", "")?;
        qmp.execute(
            "migrate-set-capabilities",
            &format!(
                r#"{{"capabilities": [{{"capability": "events", "state": true}},
                    {{"capability": "mapped-ram", "state": {mapped_ram}}}]}}"#
            ),
        )?;
        Ok(qmp)
    }
}

/// QEMU microvm as the boot benchmark runs it (`boot::qemu_command`), with
/// this benchmark's command line and a QMP socket.
fn qemu_command(options: &Options, size: GuestSize, qmp: &Path) -> Command {
    let mut command = Command::new(&options.vmms.qemu);
    if let Some(datadir) = &options.vmms.qemu_datadir {
        command.arg("-L").arg(datadir);
    }
    command
        .args(["-M", "microvm,x-option-roms=off,rtc=off,acpi=off"])
        .args(["-device", "i8042"])
        .args(["-accel", "kvm", "-cpu", "host"])
        .args(["-m", &size.mem_mib.to_string()])
        .args(["-smp", &options.vcpus.to_string()])
        .args([
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-serial", "stdio"])
        .arg("-kernel")
        .arg(&options.kernel)
        .arg("-initrd")
        .arg(&options.initrd)
        .args(["-append", &kernel_args(options, size)])
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()));
    command
}

fn qmp_start(vmm: &mut Vmm, path: &Path, options: &Options, timeout: Duration) -> Result<Qmp> {
    Qmp::start(path, options.qemu_mapped_ram, timeout)
        .map_err(|err| vmm.failed(format!("QMP: {err}")))
}

fn measure_qemu(options: &Options, size: GuestSize, dir: &Path) -> Result<Sample> {
    let timeout = Duration::from_secs(options.timeout);
    let mut scratch = Scratch { paths: Vec::new() };
    let source_qmp = scratch.path(dir, "qemu-source.qmp");
    let source_err = scratch.path(dir, "qemu-source.stderr");
    let command = || {
        let _ = std::fs::remove_file(&source_qmp);
        qemu_command(options, size, &source_qmp)
    };
    let (mut source, boot_retried) = boot_counting("qemu", command, &source_err, timeout)?;
    let mut qmp = qmp_start(&mut source, &source_qmp, options, timeout)?;
    qmp.execute("stop", "")
        .map_err(|err| source.failed(format!("QMP: {err}")))?;
    source.drain(Duration::from_millis(300));
    let Some(last) = source.last_count else {
        return Err(source.failed("no count before the stop"));
    };
    let file = scratch.path(dir, "qemu.migration");
    let uri = format!("file:{}", file.display());
    let start = Instant::now();
    qmp.execute("migrate", &format!("{{\"uri\": {uri:?}}}"))
        .and_then(|_| qmp.wait_migration())
        .map_err(|err| source.failed(format!("QMP: {err}")))?;
    let create = start.elapsed();
    let files = file_sizes(&[&file])?;
    drop(qmp);
    drop(source);

    let restore_qmp = scratch.path(dir, "qemu-restore.qmp");
    let restore_err = scratch.path(dir, "qemu-restore.stderr");
    let mut command = qemu_command(options, size, &restore_qmp);
    command.args(["-incoming", "defer"]);
    let spawned = Instant::now();
    let mut restored = Vmm::spawn("qemu (restored)", command, restore_err)?;
    let mut qmp = qmp_start(&mut restored, &restore_qmp, options, timeout)?;
    let start = Instant::now();
    qmp.execute("migrate-incoming", &format!("{{\"uri\": {uri:?}}}"))
        .and_then(|_| qmp.wait_migration())
        .and_then(|()| qmp.execute("cont", ""))
        .map_err(|err| restored.failed(format!("QMP: {err}")))?;
    let resumed = start.elapsed();
    let faults_at_resume = restored.faults();
    let (at, first) = restored.wait_count(None, timeout)?;
    let first_run_faults = restored.faults().saturating_sub(faults_at_resume);
    let rss_kib = restored.rss_kib();
    check_first_count(&mut restored, last, first)?;
    restored.expect_counting_on(first, 2, Duration::from_secs(10))?;
    Ok(Sample {
        create,
        files,
        restore: at.duration_since(start),
        resumed,
        restore_from_spawn: at.duration_since(spawned),
        rss_kib,
        first_run_faults,
        counts: (last, first),
        boot_retried,
    })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

fn ms(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

fn print_sample(run: u32, runs: u32, size: GuestSize, vmm: &str, s: &Sample) {
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
struct Samples(Vec<Sample>);

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
            let b = measure_brique(options, size, dir)?;
            print_sample(run, runs, size, "brique", &b);
            brique[index].0.push(b);
            let q = measure_qemu(options, size, dir)?;
            print_sample(run, runs, size, "qemu microvm", &q);
            qemu[index].0.push(q);
        }
    }

    println!(
        "\nsnapshot benchmark: medians of {runs} run(s); ratio brique/QEMU, below 1 is better"
    );
    println!(
        "  {:<50} {:>12} {:>14} {:>8}",
        "", "brique", "qemu microvm", "ratio"
    );
    for (index, size) in options.sizes.iter().enumerate() {
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
        "  boots of the guest to save that failed and were retried: brique {}, qemu microvm {}",
        retried(&brique),
        retried(&qemu)
    );
    if options.sizes.len() > 1 {
        let (small, large) = (0, options.sizes.len() - 1);
        let growth =
            |samples: &[Samples]| samples[large].median(restore) / samples[small].median(restore);
        println!(
            "  restore {} / {}: brique {:.3} (goal <= 1.5), qemu microvm {:.3}",
            options.sizes[large].mem_mib,
            options.sizes[small].mem_mib,
            growth(&brique),
            growth(&qemu)
        );
    }
    for (index, size) in options.sizes.iter().enumerate() {
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
    fn counts_and_qmp_fields_are_read_from_their_lines() {
        assert_eq!(parse_count("SNAPBENCH_COUNT=42\r"), Some(42));
        assert_eq!(parse_count("NT=42"), None);
        let event = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "MIGRATION", "data": {"status": "completed"}}"#;
        assert_eq!(json_string(event, "event").as_deref(), Some("MIGRATION"));
        assert_eq!(json_string(event, "status").as_deref(), Some("completed"));
        assert_eq!(json_string(event, "missing"), None);
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
