//! The brique side of the snapshot benchmark: boot the counting guest,
//! pause it and `PUT /snapshot/create` (Full), then restore it in a new
//! brique with `PUT /snapshot/load` and `resume_vm`.

use super::report::{file_sizes, Sample};
use super::vmm::{boot_counting, sample_after_resume, Saved, Vmm};
use super::{io, GuestSize, Options, Result, Scratch};
use crate::boot;
use brique_tests::api_client::ApiClient;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

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

/// One save and restore of a guest of `size` with brique, its files in `dir`.
pub fn measure(options: &Options, size: GuestSize, dir: &Path) -> Result<Sample> {
    let timeout = Duration::from_secs(options.timeout);
    let setup = options.boot_setup(size, dir);
    let mut scratch = Scratch { paths: Vec::new() };
    scratch.add(boot::brique_config(&setup));
    let source_sock = scratch.path(dir, "brique-source.sock");
    let command = || -> Result<Command> {
        // A killed brique leaves its socket behind.
        let _ = std::fs::remove_file(&source_sock);
        Ok(boot::brique_command(
            &options.vmms.brique,
            &setup,
            Some(&source_sock),
        )?)
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
    // Debug: brique logs where the load's time went, printed below.
    command
        .arg("--api-sock")
        .arg(&restore_sock)
        .args(["--level", "Debug"]);
    let spawned = Instant::now();
    let mut restored = Vmm::spawn("brique (restored)", command, restore_err.clone())?;
    let mut api = api_connect(&mut restored, &restore_sock, timeout)?;
    let body = format!(
        r#"{{"snapshot_path": {state:?}, "mem_backend": {{"backend_type": "File", "backend_path": {memory:?}}}, "resume_vm": true}}"#
    );
    let start = Instant::now();
    api_call(&mut restored, &mut api, "PUT", "/snapshot/load", &body)?;
    let saved = Saved {
        create,
        files,
        last,
        boot_retried,
    };
    let sample = sample_after_resume(&mut restored, saved, spawned, start, timeout)?;
    print_load_phases(&restore_err);
    Ok(sample)
}

/// The restored brique's own account of its load: how long each step
/// took and how much of the memory file it mapped ahead.
fn print_load_phases(stderr: &Path) {
    let log = std::fs::read_to_string(stderr).unwrap_or_default();
    for line in log.lines().filter(|line| {
        [
            "loaded in",
            "saved pages mapped ahead",
            "vCPU state restored in",
        ]
        .iter()
        .any(|what| line.contains(what))
    }) {
        println!("  brique: {}", line.trim());
    }
}
