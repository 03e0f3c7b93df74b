//! Snapshot and restore through the API on this machine's /dev/kvm, with a
//! tiny guest that prints `a` to `z` over and over: pause, `PUT
//! /snapshot/create`, `kill -9`, and `PUT /snapshot/load` in a new brique,
//! which must go on with the next letter; diff snapshots over a copy of
//! the full memory file; `--describe-snapshot`; and every refusal leaving
//! the VM as it was.
//!
//! Needs /dev/kvm; without it each test says SKIPPED loudly and passes.
#![cfg(target_arch = "x86_64")]
#![allow(clippy::unwrap_used)]

mod common;

use brique_tests::kvm_available;
use brique_tests::tiny_guest::{elf_kernel, letter_counter, next_letter, LETTER_SPIN};
use common::Brique;
use std::time::{Duration, Instant};

/// Starts a brique whose guest is the letter counter (with a data drive
/// the guest never drives, so its transport is saved unactivated).
fn start_counter(name: &str, track_dirty_pages: bool) -> Brique {
    start_counter_with_spin(name, track_dirty_pages, LETTER_SPIN)
}

fn start_counter_with_spin(name: &str, track_dirty_pages: bool, spin: u32) -> Brique {
    let mut vm = Brique::start(name, &[]);
    std::fs::write(
        vm.dir.join("counter.elf"),
        elf_kernel(&letter_counter(spin)),
    )
    .unwrap();
    let kernel = vm.path("counter.elf");
    let disk = vm.path("disk.img");
    vm.ok(
        "PUT",
        "/machine-config",
        &format!(
            r#"{{"vcpu_count": 1, "mem_size_mib": 32, "track_dirty_pages": {track_dirty_pages}}}"#
        ),
    );
    vm.ok(
        "PUT",
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{kernel}", "boot_args": "console=ttyS0"}}"#),
    );
    vm.ok(
        "PUT",
        "/drives/data",
        &format!(r#"{{"drive_id": "data", "path_on_host": "{disk}", "is_root_device": false}}"#),
    );
    vm.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    vm
}

fn console(vm: &Brique) -> Vec<u8> {
    std::fs::read(vm.dir.join("console.out")).unwrap_or_default()
}

/// Waits until the guest printed at least `count` letters in all.
fn wait_for_letters(vm: &Brique, count: usize) -> Vec<u8> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let printed = console(vm);
        if printed.len() >= count {
            return printed;
        }
        assert!(
            Instant::now() < deadline,
            "the guest printed {} letters, not {count}; stderr: {}",
            printed.len(),
            vm.stderr()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Pauses `vm` and says the last letter it printed (once the console is
/// still: the pause returned with every vCPU out of the guest).
fn pause(vm: &mut Brique) -> u8 {
    vm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let printed = console(vm);
    assert!(
        !vm.guest_runs(Duration::from_millis(200)),
        "paused guest printed"
    );
    *printed.last().expect("the guest printed before the pause")
}

/// Every letter follows the one before it in the a-z cycle.
fn assert_counts_in_order(letters: &[u8]) {
    for pair in letters.windows(2) {
        assert_eq!(
            pair[1],
            next_letter(pair[0]),
            "out of order: {:?}",
            String::from_utf8_lossy(letters)
        );
    }
}

/// A restored guest's letters go on from `last`, the letter printed
/// before the save, one after the other.
fn assert_goes_on_from(printed: &[u8], last: u8, context: &str) {
    assert_eq!(
        printed[0] as char,
        next_letter(last) as char,
        "{context}: the restored guest printed {:?} after {:?}",
        String::from_utf8_lossy(&printed[..printed.len().min(10)]),
        last as char
    );
    assert_counts_in_order(printed);
}

fn create(vm: &mut Brique, kind: &str, snapshot: &str, memory: &str) {
    vm.ok(
        "PUT",
        "/snapshot/create",
        &format!(
            r#"{{"snapshot_type": "{kind}", "snapshot_path": "{snapshot}", "mem_file_path": "{memory}"}}"#
        ),
    );
}

fn load_body(snapshot: &str, memory: &str, resume: bool) -> String {
    format!(
        r#"{{"snapshot_path": "{snapshot}", "mem_backend": {{"backend_type": "File", "backend_path": "{memory}"}}, "resume_vm": {resume}}}"#
    )
}

#[test]
fn a_restored_guest_goes_on_from_where_it_was_saved() {
    if !kvm_available() {
        return;
    }
    let mut source = start_counter("snap-source", false);
    wait_for_letters(&source, 30);
    let last = pause(&mut source);
    let snapshot = source.path("vm.snap");
    let memory = source.path("vm.mem");
    create(&mut source, "Full", &snapshot, &memory);
    assert_eq!(source.state(), "Paused", "a snapshot leaves the VM paused");
    // kill -9: the restore owes nothing to the first process.
    source.child.kill().unwrap();
    source.child.wait().unwrap();
    assert_eq!(
        std::fs::metadata(&memory).unwrap().len(),
        32 << 20,
        "the memory file is the guest's RAM"
    );

    let mut restored = Brique::start("snap-restored", &[]);
    assert_eq!(restored.state(), "Not started");
    restored.ok(
        "PUT",
        "/snapshot/load",
        &load_body(&snapshot, &memory, true),
    );
    assert_eq!(restored.state(), "Running");
    let printed = wait_for_letters(&restored, 30);
    assert_goes_on_from(&printed, last, "Full restore");
    // The configuration came with the snapshot.
    let config = restored.call("GET", "/vm/config", "");
    assert!(config.body.contains("\"mem_size_mib\":32"), "{config:?}");
    assert!(config.body.contains("\"drive_id\":\"data\""), "{config:?}");
    // And the restored VM pauses and resumes like any other.
    pause(&mut restored);
    restored.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert!(restored.guest_runs(Duration::from_secs(5)));
}

/// A guest that writes to a port without pause: the pause almost always
/// lands right after a port write exit, which KVM completes (RIP past the
/// `out`) only at the next KVM_RUN. Each restore must go on with the next
/// letter, never write the last one again.
#[test]
fn a_guest_saved_right_after_a_port_write_does_not_write_it_again() {
    if !kvm_available() {
        return;
    }
    let mut vm = start_counter_with_spin("snap-io-source", false, 1);
    // Every restored VM opens the source's drive: the source's directory stays.
    let mut killed = Vec::new();
    for round in 0..4 {
        wait_for_letters(&vm, 30);
        let last = pause(&mut vm);
        let snapshot = vm.path("vm.snap");
        let memory = vm.path("vm.mem");
        create(&mut vm, "Full", &snapshot, &memory);
        vm.child.kill().unwrap();
        vm.child.wait().unwrap();
        let mut restored = Brique::start(&format!("snap-io-{round}"), &[]);
        restored.ok(
            "PUT",
            "/snapshot/load",
            &load_body(&snapshot, &memory, true),
        );
        let printed = wait_for_letters(&restored, 30);
        assert_goes_on_from(&printed, last, &format!("round {round}"));
        killed.push(std::mem::replace(&mut vm, restored));
    }
}

#[test]
fn a_load_without_resume_comes_up_paused() {
    if !kvm_available() {
        return;
    }
    let mut source = start_counter("snap-paused-src", false);
    wait_for_letters(&source, 5);
    pause(&mut source);
    let (snapshot, memory) = (source.path("vm.snap"), source.path("vm.mem"));
    create(&mut source, "Full", &snapshot, &memory);
    let mut restored = Brique::start("snap-paused-dst", &[]);
    // The deprecated mem_file_path form.
    restored.ok(
        "PUT",
        "/snapshot/load",
        &format!(r#"{{"snapshot_path": "{snapshot}", "mem_file_path": "{memory}"}}"#),
    );
    assert_eq!(restored.state(), "Paused");
    assert!(!restored.guest_runs(Duration::from_millis(300)));
    restored.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert!(restored.guest_runs(Duration::from_secs(5)));
}

#[test]
fn a_diff_over_a_copy_of_the_full_memory_file_restores_the_later_state() {
    if !kvm_available() {
        return;
    }
    let mut source = start_counter("snap-diff-src", true);
    wait_for_letters(&source, 5);
    pause(&mut source);
    let (full_state, full_memory) = (source.path("full.snap"), source.path("full.mem"));
    create(&mut source, "Full", &full_state, &full_memory);
    // Run on, so that the guest is somewhere else at the diff.
    source.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    let before = console(&source).len();
    wait_for_letters(&source, before + 40);
    let last = pause(&mut source);
    let (diff_state, diff_memory) = (source.path("diff.snap"), source.path("diff.mem"));
    std::fs::copy(&full_memory, &diff_memory).unwrap();
    create(&mut source, "Diff", &diff_state, &diff_memory);
    source.child.kill().unwrap();
    source.child.wait().unwrap();

    let mut restored = Brique::start("snap-diff-dst", &[]);
    restored.ok(
        "PUT",
        "/snapshot/load",
        &load_body(&diff_state, &diff_memory, true),
    );
    let printed = wait_for_letters(&restored, 10);
    assert_goes_on_from(&printed, last, "the diff restores the later state");
}

#[test]
fn describe_snapshot_prints_the_format_version_and_the_vm_shape() {
    if !kvm_available() {
        return;
    }
    let mut source = start_counter("snap-describe", false);
    wait_for_letters(&source, 3);
    pause(&mut source);
    let (snapshot, memory) = (source.path("vm.snap"), source.path("vm.mem"));
    create(&mut source, "Full", &snapshot, &memory);
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_brique"))
        .args(["--describe-snapshot", &snapshot])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let text = String::from_utf8_lossy(&output.stdout);
    let description: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(description["format_version"], 1, "{text}");
    assert_eq!(description["arch"], "x86_64");
    assert_eq!(description["vcpu_count"], 1);
    assert_eq!(description["mem_size_mib"], 32);
    // A file that is no snapshot: a clear error, status 2.
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_brique"))
        .args(["--describe-snapshot", &source.path("counter.elf")])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&output.stderr).contains("not a brique snapshot"),
        "{output:?}"
    );
}

#[test]
fn refused_snapshot_requests_change_nothing() {
    if !kvm_available() {
        return;
    }
    let mut source = start_counter("snap-refusals", false);
    wait_for_letters(&source, 3);
    // Create while Running.
    let (snapshot, memory) = (source.path("vm.snap"), source.path("vm.mem"));
    source.refused(
        "PUT",
        "/snapshot/create",
        &format!(r#"{{"snapshot_path": "{snapshot}", "mem_file_path": "{memory}"}}"#),
        "Paused",
    );
    assert!(!std::path::Path::new(&snapshot).exists());
    assert_eq!(source.state(), "Running");
    pause(&mut source);
    // A Diff without dirty page tracking.
    source.refused(
        "PUT",
        "/snapshot/create",
        &format!(
            r#"{{"snapshot_type": "Diff", "snapshot_path": "{snapshot}", "mem_file_path": "{memory}"}}"#
        ),
        "track_dirty_pages",
    );
    // An unwritable snapshot path: refused, the VM stays paused and resumes.
    source.refused(
        "PUT",
        "/snapshot/create",
        &format!(r#"{{"snapshot_path": "/proc/brique/vm.snap", "mem_file_path": "{memory}"}}"#),
        "cannot write the snapshot file",
    );
    assert_eq!(source.state(), "Paused");
    create(&mut source, "Full", &snapshot, &memory);
    source.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert!(source.guest_runs(Duration::from_secs(5)));
    // A load into a process that already runs a VM.
    source.refused(
        "PUT",
        "/snapshot/load",
        &load_body(&snapshot, &memory, true),
        "fresh brique",
    );

    let dir = source.dir.clone();
    let bad = |name: &str, bytes: &[u8]| {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    };
    let good = std::fs::read(&snapshot).unwrap();
    let mut flipped = good.clone();
    let middle = flipped.len() / 2;
    flipped[middle] ^= 0x20;
    let mut future = good.clone();
    future[8] = 9;
    let cases = [
        (bad("flipped.snap", &flipped), memory.clone(), "corrupt"),
        (
            bad("truncated.snap", &good[..good.len() - 100]),
            memory.clone(),
            "truncated",
        ),
        (
            bad("foreign.snap", b"QEVM\0\0\0\x03 not ours"),
            memory.clone(),
            "wrong magic",
        ),
        (
            bad("future.snap", &future),
            memory.clone(),
            "format version 9",
        ),
        (
            snapshot.clone(),
            bad("short.mem", &vec![0u8; 1 << 20]),
            "memory file",
        ),
        (
            dir.join("missing.snap").display().to_string(),
            memory.clone(),
            "missing.snap",
        ),
    ];
    let mut fresh = Brique::start("snap-refusals-load", &[]);
    for (state, mem, needle) in &cases {
        fresh.refused(
            "PUT",
            "/snapshot/load",
            &load_body(state, mem, true),
            needle,
        );
        assert_eq!(fresh.state(), "Not started", "after {state}");
    }
    for (body, needle) in [
        (
            format!(
                r#"{{"snapshot_path": "{snapshot}", "mem_backend": {{"backend_type": "Uffd", "backend_path": "/tmp/uffd.sock"}}}}"#
            ),
            "Uffd",
        ),
        (
            format!(
                r#"{{"snapshot_path": "{snapshot}", "mem_file_path": "{memory}", "mem_backend": {{"backend_type": "File", "backend_path": "{memory}"}}}}"#
            ),
            "not both",
        ),
        (
            format!(r#"{{"snapshot_path": "{snapshot}"}}"#),
            "memory file",
        ),
        (
            format!(
                r#"{{"snapshot_path": "{snapshot}", "mem_file_path": "{memory}", "network_overrides": [{{"iface_id": "eth9", "host_dev_name": "tap9"}}]}}"#
            ),
            "has no interface",
        ),
    ] {
        fresh.refused("PUT", "/snapshot/load", &body, needle);
    }
    // After all that, the same process still loads the good snapshot.
    fresh.ok(
        "PUT",
        "/snapshot/load",
        &load_body(&snapshot, &memory, true),
    );
    assert!(fresh.guest_runs(Duration::from_secs(5)));
    // It runs from that memory file: a snapshot may not overwrite it.
    pause(&mut fresh);
    fresh.refused(
        "PUT",
        "/snapshot/create",
        &format!(r#"{{"snapshot_path": "{snapshot}.again", "mem_file_path": "{memory}"}}"#),
        "restored from and runs on",
    );
    fresh.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert!(fresh.guest_runs(Duration::from_secs(5)));

    // A load after configuring boot resources.
    let mut configured = Brique::start("snap-refusals-configured", &[]);
    configured.ok(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
    );
    configured.refused(
        "PUT",
        "/snapshot/load",
        &load_body(&snapshot, &memory, true),
        "before anything is configured",
    );
}
