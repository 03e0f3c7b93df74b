//! The QEMU side of the snapshot benchmark: boot the counting guest as the
//! boot benchmark does (`boot::qemu_command`) with a QMP socket, `stop` it
//! and `migrate` it to a file, then restore it in a new QEMU started with
//! `-incoming defer`: `migrate-incoming`, then `cont`.

use super::qmp::Qmp;
use super::report::{file_sizes, Sample};
use super::vmm::{boot_counting, sample_after_resume, Saved, Vmm};
use super::{GuestSize, Options, Result, Scratch};
use crate::boot;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// QEMU as the boot benchmark runs it, booting `setup`, with a QMP socket
/// at `qmp`.
fn qemu_command(options: &Options, setup: &boot::BootSetup, qmp: &Path) -> Command {
    let mut command = boot::qemu_command(
        &options.vmms.qemu,
        options.vmms.qemu_datadir.as_ref(),
        setup,
    );
    command
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()));
    command
}

fn qmp_start(vmm: &mut Vmm, path: &Path, options: &Options, timeout: Duration) -> Result<Qmp> {
    Qmp::start(path, options.qemu_mapped_ram, timeout)
        .map_err(|err| vmm.failed(format!("QMP: {err}")))
}

/// One save and restore of a guest of `size` with QEMU, its files in `dir`.
pub fn measure(options: &Options, size: GuestSize, dir: &Path) -> Result<Sample> {
    let timeout = Duration::from_secs(options.timeout);
    let setup = options.boot_setup(size, dir);
    let mut scratch = Scratch { paths: Vec::new() };
    let source_qmp = scratch.path(dir, "qemu-source.qmp");
    let source_err = scratch.path(dir, "qemu-source.stderr");
    let command = || -> Result<Command> {
        let _ = std::fs::remove_file(&source_qmp);
        Ok(qemu_command(options, &setup, &source_qmp))
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
    let mut command = qemu_command(options, &setup, &restore_qmp);
    command.args(["-incoming", "defer"]);
    let spawned = Instant::now();
    let mut restored = Vmm::spawn("qemu (restored)", command, restore_err)?;
    let mut qmp = qmp_start(&mut restored, &restore_qmp, options, timeout)?;
    let start = Instant::now();
    qmp.execute("migrate-incoming", &format!("{{\"uri\": {uri:?}}}"))
        .and_then(|_| qmp.wait_migration())
        .and_then(|()| qmp.execute("cont", ""))
        .map_err(|err| restored.failed(format!("QMP: {err}")))?;
    let saved = Saved {
        create,
        files,
        last,
        boot_retried,
    };
    sample_after_resume(&mut restored, saved, spawned, start, timeout)
}
