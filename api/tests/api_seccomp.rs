//! Seccomp: every brique thread runs under a filter by default, none with
//! --no-seccomp, and a system call a filter forbids ends brique with status
//! 148 and one line naming the thread and the call. A guest runs (tiny
//! guest on this machine's /dev/kvm) while the threads are inspected; without
//! /dev/kvm those tests say SKIPPED loudly.

// Test helpers outside #[test] functions fail loudly too.
#![allow(clippy::unwrap_used)]

mod common;

use brique_tests::kvm_available;
use common::Brique;
use std::collections::BTreeMap;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// Each thread's name and the `Seccomp:` mode /proc shows for it.
fn seccomp_mode_by_thread(pid: u32) -> BTreeMap<String, String> {
    let mut modes = BTreeMap::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task")).unwrap() {
        let task = task.unwrap().path();
        let Ok(name) = std::fs::read_to_string(task.join("comm")) else {
            continue;
        };
        let Ok(status) = std::fs::read_to_string(task.join("status")) else {
            continue;
        };
        let mode = status
            .lines()
            .find_map(|line| line.strip_prefix("Seccomp:"))
            .unwrap_or("missing")
            .trim()
            .to_owned();
        modes.insert(name.trim().to_owned(), mode);
    }
    modes
}

#[test]
fn every_thread_of_a_running_microvm_is_under_a_seccomp_filter() {
    if !kvm_available() {
        return;
    }
    let mut vm = Brique::start("seccomp-on", &[]);
    vm.start_tiny_guest();
    assert!(vm.guest_runs(Duration::from_secs(10)), "{}", vm.stderr());
    let modes = seccomp_mode_by_thread(vm.child.id());
    for thread in [
        "brique",
        "brique-api",
        "brique-vcpu0",
        "brique-devices",
        "brique-signals",
    ] {
        assert_eq!(
            modes.get(thread).map(String::as_str),
            Some("2"),
            "{thread} in {modes:?}"
        );
    }
    assert!(modes.values().all(|mode| mode == "2"), "{modes:?}");
    // The filters let the whole API lifecycle through.
    vm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    vm.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert!(vm.guest_runs(Duration::from_secs(10)), "{}", vm.stderr());
    assert!(vm.child.try_wait().unwrap().is_none(), "{}", vm.stderr());
}

#[test]
fn no_seccomp_leaves_every_thread_unfiltered() {
    if !kvm_available() {
        return;
    }
    let mut vm = Brique::start("seccomp-off", &["--no-seccomp"]);
    vm.start_tiny_guest();
    assert!(vm.guest_runs(Duration::from_secs(10)), "{}", vm.stderr());
    let modes = seccomp_mode_by_thread(vm.child.id());
    assert!(modes.contains_key("brique-vcpu0"), "{modes:?}");
    assert!(modes.values().all(|mode| mode == "0"), "{modes:?}");
}

/// A filter allowing everything but `forbidden`, which traps.
fn all_but(forbidden: &str) -> String {
    format!(
        r#"{{"mismatch_action": "allow", "match_action": "trap",
            "filter": [{{"syscall": "{forbidden}"}}]}}"#
    )
}

#[test]
fn a_system_call_the_filter_forbids_ends_brique_with_148_naming_thread_and_call() {
    let dir = std::env::temp_dir().join(format!("brique-seccomp-narrow-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Firecracker's three keys: the API thread may not accept connections.
    let filter = dir.join("filter.json");
    std::fs::write(
        &filter,
        format!(
            r#"{{"vmm": {}, "vcpu": {}, "api": {}}}"#,
            all_but("execve"),
            all_but("execve"),
            all_but("accept4")
        ),
    )
    .unwrap();
    let sock = dir.join("api.sock");
    let mut child = Command::new(env!("CARGO_BIN_EXE_brique"))
        .arg("--api-sock")
        .arg(&sock)
        .arg("--seccomp-filter")
        .arg(&filter)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("stderr.out")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut connected = None;
    while connected.is_none() && Instant::now() < deadline {
        connected = std::os::unix::net::UnixStream::connect(&sock).ok();
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(connected.is_some(), "the API socket never appeared");
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("brique still runs after its API thread called accept4");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let stderr = std::fs::read_to_string(dir.join("stderr.out")).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(status.code(), Some(148), "{stderr}");
    assert!(
        stderr.contains("seccomp: thread brique-api (api filter) made system call accept4 ("),
        "{stderr}"
    );
    // Then where: the thread's return addresses, the offending call's first
    // (in libc), brique's own code below it.
    let frames: Vec<&str> = stderr
        .lines()
        .skip_while(|l| !l.contains("seccomp"))
        .skip(1)
        .collect();
    assert!(frames.len() >= 3, "a backtrace follows: {stderr}");
    assert!(
        frames.iter().all(|frame| frame.contains("[0x")),
        "one address per line: {stderr}"
    );
    assert!(
        frames.iter().any(|frame| frame.contains("brique")),
        "brique's own frames: {stderr}"
    );
}
