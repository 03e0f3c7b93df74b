//! `PUT /vsock`, the config file's `vsock` section and `vsock_override`
//! through the API: refusals, the configuration shown back, the socket
//! bound at InstanceStart, and a snapshot restored onto another socket.
//! The guest side (connections, 64 MiB each way) is tests/e2e_vsock.rs.
//!
//! Booting needs /dev/kvm; without it those parts say SKIPPED loudly.
#![allow(clippy::unwrap_used)]

mod common;

use brique_tests::kvm_available;
use common::Brique;
use std::os::unix::fs::FileTypeExt;
use std::path::Path;

fn is_socket(path: &str) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_socket())
}

#[test]
fn put_vsock_is_checked_shown_in_the_config_and_bound_at_start() {
    let mut vm = Brique::start("vsock-put", &[]);
    let uds = vm.path("v.sock");
    let taken = vm.path("tiny.elf");
    for (body, needle) in [
        (
            format!(r#"{{"guest_cid": 2, "uds_path": "{uds}"}}"#),
            "guest_cid",
        ),
        (
            format!(r#"{{"guest_cid": 4294967296, "uds_path": "{uds}"}}"#),
            "guest_cid",
        ),
        (
            format!(r#"{{"guest_cid": 3, "uds_path": "{taken}"}}"#),
            "already exists",
        ),
        (
            r#"{"guest_cid": 3, "uds_path": "/no/such/dir/v.sock"}"#.to_owned(),
            "directory",
        ),
        (r#"{"guest_cid": 3}"#.to_owned(), "uds_path"),
        (
            format!(r#"{{"guest_cid": 3, "uds_path": "{uds}", "port": 1}}"#),
            "port",
        ),
    ] {
        vm.refused("PUT", "/vsock", &body, needle);
    }
    let config = vm.call("GET", "/vm/config", "");
    assert!(!config.body.contains("vsock"), "{config:?}");

    vm.ok(
        "PUT",
        "/vsock",
        &format!(r#"{{"vsock_id": "vsock0", "guest_cid": 3, "uds_path": "{uds}"}}"#),
    );
    // A second PUT replaces the first, as Firecracker's does.
    vm.ok(
        "PUT",
        "/vsock",
        &format!(r#"{{"guest_cid": 52, "uds_path": "{uds}"}}"#),
    );
    let config = vm.call("GET", "/vm/config", "");
    assert!(
        config
            .body
            .contains(&format!(r#""vsock":{{"guest_cid":52,"uds_path":"{uds}"}}"#)),
        "{config:?}"
    );
    assert!(
        !Path::new(&uds).exists(),
        "nothing is bound before the start"
    );
    if !kvm_available() {
        eprintln!("*** SKIPPED: the vsock socket bound at InstanceStart needs /dev/kvm ***");
        return;
    }
    vm.start_tiny_guest();
    assert!(is_socket(&uds), "InstanceStart binds {uds}");
    vm.refused(
        "PUT",
        "/vsock",
        &format!(r#"{{"guest_cid": 3, "uds_path": "{}"}}"#, vm.path("w.sock")),
        "InstanceStart",
    );
    let metrics_config = vm.call("GET", "/vm/config", "");
    assert!(metrics_config.body.contains("\"guest_cid\":52"));
}

#[test]
fn a_snapshot_with_vsock_and_entropy_restores_onto_the_override_socket() {
    if !kvm_available() {
        eprintln!("*** SKIPPED: a snapshot with a vsock device needs /dev/kvm ***");
        return;
    }
    let mut source = Brique::start("vsock-snap", &[]);
    let uds = source.path("v.sock");
    source.ok(
        "PUT",
        "/vsock",
        &format!(r#"{{"guest_cid": 7, "uds_path": "{uds}"}}"#),
    );
    // With the entropy device too: every kind of optional device is saved.
    source.ok("PUT", "/entropy", "{}");
    source.start_tiny_guest();
    source.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let snapshot = source.path("vm.snap");
    let memory = source.path("vm.mem");
    source.ok(
        "PUT",
        "/snapshot/create",
        &format!(r#"{{"snapshot_path": "{snapshot}", "mem_file_path": "{memory}"}}"#),
    );
    source.child.kill().unwrap();
    source.child.wait().unwrap();
    assert!(
        is_socket(&uds),
        "the killed brique's socket is left, as Firecracker's"
    );

    let load = |extra: &str| {
        format!(
            r#"{{"snapshot_path": "{snapshot}", "mem_backend": {{"backend_type": "File", "backend_path": "{memory}"}}, "resume_vm": true{extra}}}"#
        )
    };
    // The saved socket path is taken: the load says so and changes nothing.
    let mut restored = Brique::start("vsock-restored", &[]);
    restored.refused("PUT", "/snapshot/load", &load(""), "already exists");
    assert_eq!(restored.state(), "Not started");
    let moved = restored.path("moved.sock");
    restored.ok(
        "PUT",
        "/snapshot/load",
        &load(&format!(r#", "vsock_override": {{"uds_path": "{moved}"}}"#)),
    );
    assert_eq!(restored.state(), "Running");
    assert!(is_socket(&moved), "the restored device listens on {moved}");
    let config = restored.call("GET", "/vm/config", "");
    assert!(
        config.body.contains(&format!(r#""uds_path":"{moved}""#))
            && config.body.contains("\"guest_cid\":7")
            && config.body.contains(r#""entropy":{}"#),
        "{config:?}"
    );

    // An override for a snapshot without vsock is refused.
    let mut plain = Brique::start("vsock-plain", &[]);
    plain.start_tiny_guest();
    plain.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    let plain_snapshot = plain.path("vm.snap");
    let plain_memory = plain.path("vm.mem");
    plain.ok(
        "PUT",
        "/snapshot/create",
        &format!(r#"{{"snapshot_path": "{plain_snapshot}", "mem_file_path": "{plain_memory}"}}"#),
    );
    let mut fresh = Brique::start("vsock-fresh", &[]);
    fresh.refused(
        "PUT",
        "/snapshot/load",
        &format!(
            r#"{{"snapshot_path": "{plain_snapshot}", "mem_file_path": "{plain_memory}", "vsock_override": {{"uds_path": "{}"}}}}"#,
            fresh.path("x.sock")
        ),
        "no vsock",
    );
}
