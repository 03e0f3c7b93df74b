//! The `brique` command line: flags, and one clear line on stderr with exit
//! status 2 for every configuration error, before any VM exists.
#![allow(clippy::unwrap_used)]

use std::path::PathBuf;
use std::process::{Command, Output};

fn brique(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_brique"))
        .args(args)
        .output()
        .expect("run brique")
}

struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("brique-cli-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn file(&self, name: &str, content: &str) -> String {
        let path = self.0.join(name);
        std::fs::write(&path, content).unwrap();
        path.to_string_lossy().into_owned()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Asserts exit status 2 and a single stderr line containing `needle`.
fn assert_config_error(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("brique: "), "{stderr}");
    assert!(stderr.contains(needle), "expected {needle:?} in {stderr}");
}

#[test]
fn version_and_help() {
    let version = brique(&["--version"]);
    assert!(version.status.success());
    let line = String::from_utf8_lossy(&version.stdout).trim().to_owned();
    // Kata reads the second word of the first line as Firecracker's version.
    assert!(line.starts_with("Firecracker v1."), "{line}");
    assert!(
        line.contains(&format!("(brique {}", env!("CARGO_PKG_VERSION"))),
        "{line}"
    );
    let snapshot = brique(&["--snapshot-version"]);
    assert_eq!(String::from_utf8_lossy(&snapshot.stdout).trim(), "v1.0.0");
    let help = brique(&["--help"]);
    assert!(help.status.success());
    let text = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--config-file",
        "--api-sock",
        "--no-api",
        "--level",
        "--log-path",
        "--module",
        "--show-level",
        "--show-log-origin",
        "--metrics-path",
        "--boot-timer",
        "--http-api-max-payload-size",
        "--enable-pci",
        "--version",
        "--snapshot-version",
    ] {
        assert!(text.contains(flag), "{flag} missing from --help");
    }
}

#[test]
fn bad_flags_are_refused() {
    let output = brique(&["--log-level", "loud"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&output.stderr).contains("loud"));
    assert_eq!(brique(&["--no-such-flag"]).status.code(), Some(2));
}

#[test]
fn no_api_needs_a_config_file_and_mmds_flags_name_the_missing_feature() {
    for (args, needle) in [
        (&["--no-api"][..], "--config-file"),
        (&["--id", "bad id"], "invalid instance id"),
    ] {
        let output = brique(args);
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
    }
    assert_config_error(
        &brique(&["--mmds-size-limit", "1024"]),
        "MMDS (the microVM metadata service) is not supported",
    );
    assert_config_error(&brique(&["--metadata", "/m.json"]), "--metadata: MMDS");
}

#[test]
fn missing_config_file() {
    assert_config_error(
        &brique(&["--no-api", "--config-file", "/nonexistent/vm.json"]),
        "/nonexistent/vm.json",
    );
}

#[test]
fn malformed_json() {
    let dir = TempDir::new("json");
    let config = dir.file("vm.json", r#"{"boot-source": {"kernel_image_path": "/k""#);
    assert_config_error(
        &brique(&["--no-api", "--config-file", &config]),
        "invalid config JSON",
    );
}

#[test]
fn unknown_field() {
    let dir = TempDir::new("unknown");
    let config = dir.file(
        "vm.json",
        r#"{"boot-source": {"kernel_image_path": "/k"}, "machine-config": {"vcpu_count": 1, "mem_size_mib": 128, "vcpus": 2}}"#,
    );
    assert_config_error(
        &brique(&["--no-api", "--config-file", &config]),
        "unknown field `vcpus`",
    );
}

fn machine_config(dir: &TempDir, kernel: &str, machine: &str) -> String {
    dir.file(
        "vm.json",
        &format!(
            r#"{{"boot-source": {{"kernel_image_path": "{kernel}"}}, "machine-config": {machine}}}"#
        ),
    )
}

#[test]
fn missing_kernel() {
    let dir = TempDir::new("kernel");
    let config = machine_config(
        &dir,
        "/nonexistent/vmlinux",
        r#"{"vcpu_count": 1, "mem_size_mib": 128}"#,
    );
    assert_config_error(
        &brique(&["--no-api", "--config-file", &config]),
        "kernel image /nonexistent/vmlinux",
    );
}

#[test]
fn zero_vcpus() {
    let dir = TempDir::new("vcpus");
    let kernel = dir.file("vmlinux", "not a kernel");
    let config = machine_config(&dir, &kernel, r#"{"vcpu_count": 0, "mem_size_mib": 128}"#);
    assert_config_error(
        &brique(&["--no-api", "--config-file", &config]),
        "vcpu_count must be between 1 and 32, got 0",
    );
}

#[test]
fn too_much_memory() {
    let dir = TempDir::new("memory");
    let kernel = dir.file("vmlinux", "not a kernel");
    let config = machine_config(
        &dir,
        &kernel,
        r#"{"vcpu_count": 1, "mem_size_mib": 100000000}"#,
    );
    assert_config_error(
        &brique(&["--no-api", "--config-file", &config]),
        "mem_size_mib 100000000 is too large",
    );
}

#[test]
fn an_api_socket_path_that_exists_is_refused() {
    let dir = TempDir::new("sock");
    let taken = dir.file("taken.sock", "");
    assert_config_error(&brique(&["--api-sock", &taken]), "already exists");
    let missing_dir = format!("{}/no/such/dir/api.sock", dir.0.display());
    assert_config_error(&brique(&["--api-sock", &missing_dir]), "api.sock");
}

#[test]
fn missing_drive_file() {
    let dir = TempDir::new("drive");
    let kernel = dir.file("vmlinux", "not a kernel");
    let config = dir.file(
        "vm.json",
        &format!(
            r#"{{"boot-source": {{"kernel_image_path": "{kernel}"}},
                "machine-config": {{"vcpu_count": 1, "mem_size_mib": 128}},
                "drives": [{{"drive_id": "data", "path_on_host": "/nonexistent/d.img", "is_root_device": false}}]}}"#
        ),
    );
    assert_config_error(
        &brique(&["--no-api", "--config-file", &config]),
        "drive data: cannot open /nonexistent/d.img",
    );
}

#[test]
fn an_unreadable_or_invalid_seccomp_filter_file_is_a_setup_error() {
    let dir = TempDir::new("seccomp-file");
    let sock = dir.0.join("api.sock").to_string_lossy().into_owned();
    let missing = brique(&[
        "--api-sock",
        &sock,
        "--seccomp-filter",
        "/nonexistent/f.json",
    ]);
    assert_config_error(
        &missing,
        "cannot read the seccomp filter file /nonexistent/f.json",
    );
    let invalid = dir.file("filter.json", r#"{"vmm": 3}"#);
    let output = brique(&["--api-sock", &sock, "--seccomp-filter", &invalid]);
    assert_config_error(&output, "is not a valid seccompiler JSON filter");
    assert!(!dir.0.join("api.sock").exists(), "no socket left behind");
    let both = brique(&[
        "--api-sock",
        &sock,
        "--no-seccomp",
        "--seccomp-filter",
        &invalid,
    ]);
    assert_eq!(both.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&both.stderr).contains("cannot be used with"));
}
