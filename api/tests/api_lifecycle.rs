//! The API driving a real microVM on this machine's /dev/kvm (a tiny
//! dot-printing guest): configure, start, pause, resume, runtime drive swap,
//! state-dependent refusals that change nothing, metrics and the logger.
//! Without /dev/kvm the tests that need a started VM say SKIPPED loudly.

// Test helpers outside #[test] functions fail loudly too.
#![allow(clippy::unwrap_used)]

mod common;

use brique_tests::kvm_available;
use common::Brique;
use std::time::Duration;

fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|err| panic!("{err}: {text}"))
}

#[test]
fn pre_boot_configuration_and_refusals_change_nothing() {
    let mut vm = Brique::start("preboot", &[]);
    assert_eq!(vm.state(), "Not started");
    vm.configure_tiny_guest();
    let before = vm.call("GET", "/vm/config", "").body;

    // Runtime-only requests before start: 400 with the reason.
    for (method, path, body) in [
        ("PATCH", "/vm", r#"{"state": "Paused"}"#),
        ("PATCH", "/vm", r#"{"state": "Resumed"}"#),
        ("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#),
        (
            "PATCH",
            "/drives/data",
            r#"{"drive_id": "data", "path_on_host": "/tmp"}"#,
        ),
    ] {
        let response = vm.call(method, path, body);
        assert_eq!(response.status, 400, "{path}: {response:?}");
        assert!(
            json(&response.body)["fault_message"]
                .as_str()
                .unwrap()
                .contains("not started"),
            "{response:?}"
        );
    }
    // Invalid changes: refused, configuration untouched.
    for (method, path, body, needle) in [
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 0, "mem_size_mib": 32}"#,
            "vcpu_count",
        ),
        (
            "PATCH",
            "/machine-config",
            r#"{"mem_size_mib": 99999999}"#,
            "too large",
        ),
        (
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path": "/no/kernel"}"#,
            "/no/kernel",
        ),
        (
            "PUT",
            "/drives/other",
            r#"{"drive_id": "other", "path_on_host": "/no/disk", "is_root_device": false}"#,
            "/no/disk",
        ),
        (
            "PUT",
            "/network-interfaces/eth0",
            r#"{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "zz"}"#,
            "guest_mac",
        ),
        (
            "PUT",
            "/metrics",
            r#"{"metrics_path": "/no/dir/metrics"}"#,
            "/no/dir",
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type": "FlushMetrics"}"#,
            "not configured",
        ),
    ] {
        vm.refused(method, path, body, needle);
    }
    assert_eq!(
        vm.call("GET", "/vm/config", "").body,
        before,
        "nothing changed"
    );

    // Valid changes show in GET /machine-config and GET /vm/config.
    vm.ok("PATCH", "/machine-config", r#"{"vcpu_count": 2}"#);
    let machine = json(&vm.call("GET", "/machine-config", "").body);
    assert_eq!(
        (
            machine["vcpu_count"].as_u64(),
            machine["mem_size_mib"].as_u64()
        ),
        (Some(2), Some(32))
    );
    let tap =
        r#"{"iface_id": "eth0", "host_dev_name": "tap-brq0", "guest_mac": "06:00:00:00:00:01"}"#;
    vm.ok("PUT", "/network-interfaces/eth0", tap);
    let config = json(&vm.call("GET", "/vm/config", "").body);
    assert_eq!(config["network-interfaces"][0]["host_dev_name"], "tap-brq0");
    assert_eq!(config["drives"][0]["drive_id"], "data");
    assert_eq!(config["boot-source"]["boot_args"], "console=ttyS0");
    assert_eq!(vm.state(), "Not started");
}

#[test]
fn start_pause_resume_swap_drive_and_metrics() {
    if !kvm_available() {
        return;
    }
    let mut vm = Brique::start("lifecycle", &["--metrics-interval", "1"]);
    let metrics = vm.path("metrics.json");
    vm.ok(
        "PUT",
        "/metrics",
        &format!(r#"{{"metrics_path": "{metrics}"}}"#),
    );
    let again = vm.call(
        "PUT",
        "/metrics",
        &format!(r#"{{"metrics_path": "{metrics}"}}"#),
    );
    assert_eq!(again.status, 400, "metrics can be set once");
    let log = vm.path("brique.log");
    vm.ok(
        "PUT",
        "/logger",
        &format!(r#"{{"log_path": "{log}", "level": "Info", "show_level": true}}"#),
    );

    // A failed start changes nothing: the same VM starts once fixed.
    vm.ok(
        "PUT",
        "/boot-source",
        &format!(r#"{{"kernel_image_path": "{}"}}"#, vm.path("disk.img")),
    );
    let failed = vm.call("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(failed.status, 400, "{failed:?}");
    assert_eq!(vm.state(), "Not started");

    vm.start_tiny_guest();
    assert_eq!(vm.state(), "Running");
    assert!(vm.guest_runs(Duration::from_secs(5)), "the guest prints");
    let again = vm.call("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    assert_eq!(again.status, 400);
    assert!(again.body.contains("already running"), "{}", again.body);

    // Pre-boot-only requests are refused now, with the reason.
    let late = vm.call(
        "PUT",
        "/machine-config",
        r#"{"vcpu_count": 2, "mem_size_mib": 64}"#,
    );
    assert_eq!(late.status, 400);
    assert!(late.body.contains("before InstanceStart"), "{}", late.body);
    assert_eq!(
        json(&vm.call("GET", "/machine-config", "").body)["vcpu_count"],
        1
    );

    // Pause: the guest stops printing; resume: it prints again.
    vm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    assert_eq!(vm.state(), "Paused");
    let paused_at = vm.console_len();
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(vm.console_len(), paused_at, "no guest output while paused");
    vm.ok("PATCH", "/vm", r#"{"state": "Paused"}"#);
    vm.ok("PATCH", "/vm", r#"{"state": "Resumed"}"#);
    assert_eq!(vm.state(), "Running");
    assert!(
        vm.guest_runs(Duration::from_secs(5)),
        "the guest prints after resume"
    );

    // Runtime drive swap: a missing file is refused and changes nothing; a
    // real one is used and shows in /vm/config.
    let bad = vm.call(
        "PATCH",
        "/drives/data",
        r#"{"drive_id": "data", "path_on_host": "/no/such.img"}"#,
    );
    assert_eq!(bad.status, 400);
    assert!(bad.body.contains("/no/such.img"), "{}", bad.body);
    let missing = vm.call(
        "PATCH",
        "/drives/nope",
        r#"{"drive_id": "nope", "path_on_host": "/tmp"}"#,
    );
    assert_eq!(missing.status, 400);
    let config = json(&vm.call("GET", "/vm/config", "").body);
    assert_eq!(config["drives"][0]["path_on_host"], vm.path("disk.img"));
    let bigger = vm.path("bigger.img");
    vm.ok(
        "PATCH",
        "/drives/data",
        &format!(r#"{{"drive_id": "data", "path_on_host": "{bigger}"}}"#),
    );
    let config = json(&vm.call("GET", "/vm/config", "").body);
    assert_eq!(config["drives"][0]["path_on_host"], bigger.as_str());
    assert_eq!(config["metrics"]["metrics_path"], metrics.as_str());

    vm.ok("PUT", "/actions", r#"{"action_type": "SendCtrlAltDel"}"#);
    let no_iface = vm.call(
        "PATCH",
        "/network-interfaces/eth9",
        r#"{"iface_id": "eth9"}"#,
    );
    assert_eq!(no_iface.status, 400);
    assert!(no_iface.body.contains("eth9"), "{}", no_iface.body);

    // Metrics: one line per flush, periodic ones too (interval 1 s).
    let lines = |path: &str| -> Vec<serde_json::Value> {
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .lines()
            .map(json)
            .collect()
    };
    let before = lines(&metrics).len();
    vm.ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
    let flushed = lines(&metrics);
    assert_eq!(flushed.len(), before + 1, "FlushMetrics writes one line");
    let last = flushed.last().unwrap();
    assert!(last["api"]["requests"].as_u64().unwrap() >= 20, "{last}");
    assert!(last["api"]["errors"].as_u64().unwrap() >= 5, "{last}");
    assert!(last["vcpu"]["exit_io_out"].as_u64().unwrap() > 0, "{last}");
    assert!(last["block"]["data"].is_object(), "{last}");
    std::thread::sleep(Duration::from_millis(2500));
    assert!(
        lines(&metrics).len() >= before + 3,
        "periodic lines every second"
    );

    let log = std::fs::read_to_string(&log).unwrap();
    assert!(
        log.contains("INFO") && log.contains("microVM paused"),
        "{log}"
    );
    assert!(
        vm.guest_runs(Duration::from_secs(5)),
        "still running at the end"
    );
}

#[test]
fn sigterm_stops_in_order_with_a_last_metrics_line_and_no_socket_left() {
    let running = kvm_available();
    let mut vm = Brique::start("sigterm", &[]);
    let metrics = vm.path("metrics.json");
    vm.ok(
        "PUT",
        "/metrics",
        &format!(r#"{{"metrics_path": "{metrics}"}}"#),
    );
    if running {
        vm.start_tiny_guest();
        assert!(vm.guest_runs(Duration::from_secs(5)));
    }
    let lines_before = std::fs::read_to_string(&metrics).unwrap().lines().count();
    let pid = vm.child.id() as libc::pid_t;
    // SAFETY: kill(2) on our own child process, which has not been waited for.
    let sent = unsafe { libc::kill(pid, libc::SIGTERM) };
    assert_eq!(sent, 0);
    let status = vm.child.wait().unwrap();
    assert_eq!(status.code(), Some(0), "{}", vm.stderr());
    assert!(!vm.sock().exists(), "the API socket is removed");
    let lines_after = std::fs::read_to_string(&metrics).unwrap().lines().count();
    assert_eq!(lines_after, lines_before + 1, "a last metrics line");
}
