//! Control API round-trip latency, brique vs QEMU's QMP, on this machine's
//! /dev/kvm with a tiny guest: a read-only query (brique `GET
//! /machine-config`, QEMU `query-status`) and pause+resume (brique `PATCH
//! /vm` Paused then Resumed, QEMU `stop` then `cont`), each over one
//! kept-open connection, after a warm-up.

use brique_tests::api_client::ApiClient;
use brique_tests::tiny_guest::{elf_kernel, DOT_PRINTER};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Errors of the API benchmark.
#[derive(Debug, thiserror::Error)]
pub enum ApiBenchError {
    /// A process could not be started or reached.
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    /// A request was refused.
    #[error("{0}")]
    Refused(String),
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> ApiBenchError + '_ {
    move |source| ApiBenchError::Io {
        what: what.to_owned(),
        source,
    }
}

/// Latencies in microseconds of the two operations.
#[derive(Debug, Default)]
pub struct Latencies {
    /// The read-only query.
    pub query: Vec<f64>,
    /// Pause then resume.
    pub pause_resume: Vec<f64>,
}

/// Kills the child when dropped.
struct Guard(Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The two measured operations.
#[derive(Debug, Clone, Copy)]
enum Operation {
    Query,
    PauseResume,
}

/// Times `iterations` rounds of both operations (after 10% warm-up rounds).
fn sample(
    iterations: usize,
    mut run: impl FnMut(Operation) -> Result<(), ApiBenchError>,
) -> Result<Latencies, ApiBenchError> {
    let mut latencies = Latencies::default();
    for round in 0..iterations + iterations / 10 {
        let start = Instant::now();
        run(Operation::Query)?;
        let query = start.elapsed().as_secs_f64() * 1e6;
        let start = Instant::now();
        run(Operation::PauseResume)?;
        let pause_resume = start.elapsed().as_secs_f64() * 1e6;
        if round >= iterations / 10 {
            latencies.query.push(query);
            latencies.pause_resume.push(pause_resume);
        }
    }
    Ok(latencies)
}

/// Measures brique: `iterations` of each operation.
pub fn measure_brique(
    brique: &Path,
    scratch: &Path,
    iterations: usize,
) -> Result<Latencies, ApiBenchError> {
    let kernel = scratch.join("tiny.elf");
    std::fs::write(&kernel, elf_kernel(DOT_PRINTER)).map_err(io("write the tiny guest"))?;
    let sock = scratch.join("brique-api.sock");
    let _ = std::fs::remove_file(&sock);
    let child = Command::new(brique)
        .arg("--api-sock")
        .arg(&sock)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .map_err(io("start brique"))?;
    let _guard = Guard(child);
    let mut client =
        ApiClient::connect(&sock, Duration::from_secs(10)).map_err(io("connect to brique"))?;
    let mut call = |method: &str, path: &str, body: &str, want: u16| -> Result<(), ApiBenchError> {
        let response = client
            .request(method, path, body)
            .map_err(io("API request"))?;
        if response.status != want {
            return Err(ApiBenchError::Refused(format!(
                "{method} {path}: {response:?}"
            )));
        }
        Ok(())
    };
    call(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
        204,
    )?;
    call(
        "PUT",
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{}"}}"#, kernel.display()),
        204,
    )?;
    call(
        "PUT",
        "/actions",
        r#"{"action_type": "InstanceStart"}"#,
        204,
    )?;
    let latencies = sample(iterations, |operation| match operation {
        Operation::Query => call("GET", "/machine-config", "", 200),
        Operation::PauseResume => {
            call("PATCH", "/vm", r#"{"state": "Paused"}"#, 204)?;
            call("PATCH", "/vm", r#"{"state": "Resumed"}"#, 204)
        }
    })?;
    let _ = std::fs::remove_file(&sock);
    Ok(latencies)
}

/// A QMP connection.
struct Qmp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
}

impl Qmp {
    fn connect(path: &Path) -> Result<Self, ApiBenchError> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(err) if Instant::now() >= deadline => return Err(io("connect to QMP")(err)),
                Err(_) => std::thread::sleep(Duration::from_millis(20)),
            }
        };
        let reader = BufReader::new(stream.try_clone().map_err(io("QMP socket"))?);
        let mut qmp = Self {
            writer: stream,
            reader,
        };
        qmp.read_reply()?; // greeting
        qmp.execute("qmp_capabilities")?;
        Ok(qmp)
    }

    fn read_reply(&mut self) -> Result<String, ApiBenchError> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line).map_err(io("QMP read"))? == 0 {
                return Err(ApiBenchError::Refused("QMP closed".into()));
            }
            // Asynchronous events (STOP, RESUME) are not replies.
            if !line.contains("\"event\"") {
                return Ok(line);
            }
        }
    }

    fn execute(&mut self, command: &str) -> Result<(), ApiBenchError> {
        writeln!(self.writer, "{{\"execute\": \"{command}\"}}").map_err(io("QMP write"))?;
        let reply = self.read_reply()?;
        if reply.contains("\"error\"") {
            return Err(ApiBenchError::Refused(format!("QMP {command}: {reply}")));
        }
        Ok(())
    }
}

/// Measures QEMU microvm with KVM: `iterations` of each operation.
pub fn measure_qemu(
    qemu: &Path,
    datadir: Option<&PathBuf>,
    scratch: &Path,
    iterations: usize,
) -> Result<Latencies, ApiBenchError> {
    let sock = scratch.join("qemu-qmp.sock");
    let _ = std::fs::remove_file(&sock);
    let mut command = Command::new(qemu);
    command.args([
        "-M",
        "microvm",
        "-accel",
        "kvm",
        "-m",
        "32",
        "-nodefaults",
        "-no-user-config",
    ]);
    command.args(["-display", "none", "-no-reboot", "-qmp"]);
    command.arg(format!("unix:{},server=on,wait=off", sock.display()));
    if let Some(dir) = datadir {
        command.arg("-L").arg(dir);
    }
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(io("start qemu"))?;
    let _guard = Guard(child);
    let mut qmp = Qmp::connect(&sock)?;
    let latencies = sample(iterations, |operation| match operation {
        Operation::Query => qmp.execute("query-status"),
        Operation::PauseResume => {
            qmp.execute("stop")?;
            qmp.execute("cont")
        }
    })?;
    let _ = std::fs::remove_file(&sock);
    Ok(latencies)
}
