//! Firecracker's command-line flags and config-file sections, on a running
//! brique (no guest is booted: none of this needs /dev/kvm).
#![allow(clippy::unwrap_used)]

mod common;

use brique_tests::api_client::ApiClient;
use brique_tests::kvm_available;
use common::Brique;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

const DEFAULT_SOCKET: &str = "/run/brique.socket";

#[test]
fn without_api_sock_brique_serves_the_default_socket_and_takes_firecracker_s_flags() {
    if Path::new(DEFAULT_SOCKET).exists() {
        panic!("{DEFAULT_SOCKET} exists already: another brique serves it, or one was killed");
    }
    let dir = std::env::temp_dir().join(format!("brique-fcflags-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let log = dir.join("brique.log");
    let metrics = dir.join("brique.metrics");
    let mut child = Command::new(env!("CARGO_BIN_EXE_brique"))
        .args([
            "--id",
            "fc-flags-1",
            "--level",
            "Info",
            "--show-level",
            "--show-log-origin",
        ])
        .arg("--log-path")
        .arg(&log)
        .arg("--metrics-path")
        .arg(&metrics)
        .args(["--enable-pci", "--boot-timer", "--start-time-us", "1"])
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    let mut client =
        ApiClient::connect(Path::new(DEFAULT_SOCKET), Duration::from_secs(10)).unwrap();
    let info = client.request("GET", "/", "").unwrap();
    assert_eq!(info.status, 200, "{info:?}");
    assert!(info.body.contains(r#""id":"fc-flags-1""#), "{}", info.body);
    let flushed = client
        .request("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#)
        .unwrap();
    assert_eq!(flushed.status, 204, "{flushed:?}");
    let config = client.request("GET", "/vm/config", "").unwrap();
    assert!(config.body.contains("brique.metrics"), "{}", config.body);
    // SAFETY: kill only sends a signal to the child started above.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(
        !Path::new(DEFAULT_SOCKET).exists(),
        "the socket is removed at exit"
    );
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(
        log_text.contains("--enable-pci: brique has no PCI"),
        "{log_text}"
    );
    assert!(log_text.contains(":WARN:"), "levels shown: {log_text}");
    assert!(log_text.contains("main.rs:"), "origins shown: {log_text}");
    let metrics_text = std::fs::read_to_string(&metrics).unwrap();
    let line: serde_json::Value =
        serde_json::from_str(metrics_text.lines().next().unwrap()).unwrap();
    assert!(
        line["api"]["process_startup_time_us"].as_u64().unwrap() > 0,
        "{line}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_payload_limit_flag_sets_the_largest_request_body() {
    let mut brique = Brique::start("payload-limit", &["--http-api-max-payload-size", "100"]);
    let body = format!(r#"{{"level": "Info", "module": "{}"}}"#, "m".repeat(150));
    let response = brique.call("PUT", "/logger", &body);
    assert_eq!(response.status, 413, "{response:?}");
    assert!(response.body.contains("limit of 100"), "{response:?}");
    let mut brique = Brique::start(
        "payload-limit-big",
        &["--http-api-max-payload-size", "200000"],
    );
    let drive = format!(
        r#"{{"drive_id": "d", "path_on_host": "{}", "is_root_device": false, "partuuid": "{}"}}"#,
        brique.path("disk.img"),
        "p".repeat(60_000)
    );
    let response = brique.call("PUT", "/drives/d", &drive);
    assert_eq!(response.status, 204, "{response:?}");
}

#[test]
fn a_config_file_with_every_firecracker_section_boots_with_its_logger_and_metrics() {
    if !kvm_available() {
        return;
    }
    let name = "every-section";
    // Brique::start puts the tiny guest here before brique starts.
    let vm_dir = std::env::temp_dir().join(format!("brique-api-{name}-{}", std::process::id()));
    let dir = std::env::temp_dir().join(format!("brique-fcfile-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("vm.json");
    let log = dir.join("vm.log");
    let metrics = dir.join("vm.metrics");
    std::fs::write(
        &config,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "initrd_path": null,
                                  "boot_args": "console=ttyS0"}},
                "drives": [], "machine-config": {{"vcpu_count": 1,
                "mem_size_mib": 32, "smt": null, "track_dirty_pages": false,
                "huge_pages": "None", "cpu_template": "None"}},
                "network-interfaces": null, "balloon": null, "vsock": null,
                "cpu-config": null, "mmds-config": null, "entropy": null, "pmem": [],
                "memory-hotplug": null,
                "logger": {{"log_path": "{}", "level": "Info", "show_level": false}},
                "metrics": {{"metrics_path": "{}", "emit_id": true,
                             "properties": {{"rack": "r12"}}}}}}"#,
            vm_dir.join("tiny.elf").display(),
            log.display(),
            metrics.display()
        ),
    )
    .unwrap();
    let mut brique = Brique::start(
        name,
        &[
            "--id",
            "sections-1",
            "--config-file",
            config.to_str().unwrap(),
        ],
    );
    assert!(brique.guest_runs(Duration::from_secs(10)), "the guest runs");
    brique.ok("PUT", "/actions", r#"{"action_type": "FlushMetrics"}"#);
    let full = brique.call("GET", "/vm/config", "");
    assert!(full.body.contains(r#""emit_id":true"#), "{}", full.body);
    assert!(full.body.contains("vm.log"), "{}", full.body);
    let line: serde_json::Value = serde_json::from_str(
        std::fs::read_to_string(&metrics)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    assert_eq!(line["id"], "sections-1");
    assert_eq!(line["properties"]["rack"], "r12");
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(log_text.contains("microVM started"), "{log_text}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_drive_s_rate_limiter_is_set_with_put_changed_with_patch_and_shown_by_vm_config() {
    if !kvm_available() {
        return;
    }
    let mut brique = Brique::start("rate-limiter-patch", &[]);
    brique.configure_tiny_guest();
    let disk = brique.path("disk.img");
    brique.ok(
        "PUT",
        "/drives/data",
        &format!(
            r#"{{"drive_id": "data", "path_on_host": "{disk}", "is_root_device": false,
                "rate_limiter": {{"bandwidth": {{"size": 10485760, "refill_time": 1000}}}}}}"#
        ),
    );
    brique.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    let limits = |brique: &mut Brique| {
        let config: serde_json::Value =
            serde_json::from_str(&brique.call("GET", "/vm/config", "").body).unwrap();
        config["drives"][0]["rate_limiter"].clone()
    };
    assert_eq!(limits(&mut brique)["bandwidth"]["size"], 10485760);
    // An ops bucket is added; the absent bandwidth bucket stays.
    brique.ok(
        "PATCH",
        "/drives/data",
        r#"{"drive_id": "data", "rate_limiter": {"ops": {"size": 100, "refill_time": 1000}}}"#,
    );
    let after = limits(&mut brique);
    assert_eq!(after["bandwidth"]["size"], 10485760, "{after}");
    assert_eq!(after["ops"]["size"], 100, "{after}");
    // Size 0 removes a bucket; with none left, no limiter is shown.
    brique.ok(
        "PATCH",
        "/drives/data",
        r#"{"drive_id": "data", "rate_limiter": {"bandwidth": {"size": 0, "refill_time": 0},
            "ops": {"size": 0, "refill_time": 1000}}}"#,
    );
    assert!(limits(&mut brique).is_null());
    brique.refused(
        "PATCH",
        "/drives/data",
        r#"{"drive_id": "data", "rate_limiter": {"ops": {"size": 1}}}"#,
        "refill_time",
    );
}
