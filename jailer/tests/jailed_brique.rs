//! brique-jailer on this machine: a jailed brique, as uid/gid 123 in its
//! own mount and PID namespaces, boots the tiny guest and serves its API on
//! a socket inside the jail, every thread under seccomp, with no descriptor
//! of the jailer's parent open. Bad input leaves nothing behind. Needs root
//! and /dev/kvm; without them the tests say SKIPPED loudly. (The cgroup
//! memory limit is checked in the test host, whose cgroup v2 has the memory
//! controller: `tests/e2e_jailer.rs`.)

#![allow(clippy::unwrap_used)]

use brique_tests::api_client::ApiClient;
use brique_tests::tiny_guest::{elf_kernel, DOT_PRINTER};
use brique_tests::{kvm_available, static_binary};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn is_root() -> bool {
    // SAFETY: geteuid has no arguments and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn can_jail() -> bool {
    if !is_root() {
        eprintln!("\n*** SKIPPED: brique-jailer tests need root ***\n");
        return false;
    }
    kvm_available()
}

struct Base(PathBuf);

impl Base {
    fn new(name: &str) -> Base {
        let dir = std::env::temp_dir().join(format!("brique-jail-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Base(dir)
    }
}

impl Drop for Base {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn jailer(args: &[&str]) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_brique-jailer"));
    command.args(args);
    command
}

fn status_field(pid: u32, task: &str, field: &str) -> String {
    let status = std::fs::read_to_string(format!("/proc/{pid}/task/{task}/status")).unwrap();
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .unwrap_or_default()
        .trim()
        .to_owned()
}

fn wait_for(path: &Path, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if path.exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn a_jailed_brique_boots_a_guest_as_uid_123_behind_namespaces_and_seccomp() {
    if !can_jail() {
        return;
    }
    let Some(brique) = static_binary("brique") else {
        return;
    };
    let base = Base::new("boot");
    let base_dir = base.0.display().to_string();
    // A descriptor the jailer inherits without close-on-exec: brique must
    // not have it.
    let leak_path = base.0.join("inherited-marker");
    let leak = std::fs::File::create(&leak_path).unwrap();
    let leak_fd = std::os::fd::AsRawFd::as_raw_fd(&leak);
    let mut command = jailer(&[
        "--id",
        "jailed-1",
        "--exec-file",
        brique.to_str().unwrap(),
        "--uid",
        "123",
        "--gid",
        "123",
        "--chroot-base-dir",
        &base_dir,
        "--new-pid-ns",
        "--",
        "--api-sock",
        "/api.sock",
    ]);
    // SAFETY: the closure runs in the forked child before exec and only
    // calls fcntl, which is async-signal-safe.
    unsafe {
        command.pre_exec(move || {
            libc::fcntl(leak_fd, libc::F_SETFD, 0);
            Ok(())
        });
    }
    // brique keeps the jailer's stdio: a file, not a pipe to wait on.
    let stderr_path = base.0.join("stderr.out");
    let status = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&stderr_path).unwrap())
        .status()
        .unwrap();
    let stderr = || std::fs::read_to_string(&stderr_path).unwrap_or_default();
    // With --new-pid-ns the jailer's parent ends once it wrote the pid file.
    assert!(status.success(), "{}", stderr());
    let root = base.0.join("brique/jailed-1/root");
    let pid: u32 = std::fs::read_to_string(root.join("brique.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let _kill = KillOnDrop(pid);
    assert!(
        wait_for(&root.join("api.sock"), Duration::from_secs(10)),
        "no API socket in the jail: {}",
        stderr()
    );

    // The guest's files are put into the jail, as orchestrators do.
    std::fs::write(root.join("tiny.elf"), elf_kernel(DOT_PRINTER)).unwrap();
    let mut client = ApiClient::connect(&root.join("api.sock"), Duration::from_secs(10)).unwrap();
    for (method, path, body) in [
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
        ),
        (
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path": "/tiny.elf"}"#,
        ),
        ("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#),
    ] {
        let answer = client.request(method, path, body).unwrap();
        assert_eq!(answer.status, 204, "{method} {path}: {answer:?}");
    }
    let info = client.request("GET", "/", "").unwrap();
    assert!(info.body.contains(r#""id":"jailed-1""#), "{}", info.body);
    assert!(info.body.contains("Running"), "{}", info.body);

    // Identity, seccomp on every thread, namespaces, descriptors.
    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|task| task.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(tasks.len() >= 4, "threads: {tasks:?}");
    for task in &tasks {
        assert_eq!(status_field(pid, task, "Uid:"), "123\t123\t123\t123");
        assert_eq!(status_field(pid, task, "Gid:"), "123\t123\t123\t123");
        assert_eq!(status_field(pid, task, "Seccomp:"), "2", "thread {task}");
        assert_eq!(status_field(pid, task, "Groups:"), "");
    }
    for ns in ["mnt", "pid"] {
        let ours = std::fs::read_link(format!("/proc/self/ns/{ns}")).unwrap();
        let theirs = std::fs::read_link(format!("/proc/{pid}/ns/{ns}")).unwrap();
        assert_ne!(ours, theirs, "{ns} namespace");
    }
    assert_eq!(
        status_field(pid, &pid.to_string(), "NSpid:")
            .split_whitespace()
            .last(),
        Some("1")
    );
    let fds: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|fd| std::fs::read_link(fd.ok()?.path()).ok())
        .map(|target| target.display().to_string())
        .collect();
    assert!(
        !fds.iter().any(|target| target.contains("inherited-marker")),
        "inherited descriptor open in brique: {fds:?}"
    );
    // The jail's / is its root: the host's files are out of reach.
    let brique_root = PathBuf::from(format!("/proc/{pid}/root"));
    assert!(
        brique_root.join("api.sock").exists(),
        "the jail is brique's /"
    );
    // Its device nodes are in its own /dev, not on the host's disk.
    for node in ["dev/kvm", "dev/net/tun", "dev/urandom"] {
        assert!(brique_root.join(node).exists(), "/{node} in the jail");
        assert!(!root.join(node).exists(), "{node} on the host's disk");
    }
    let jail_mounts = std::fs::read_to_string(format!("/proc/{pid}/mounts")).unwrap();
    assert!(
        jail_mounts
            .lines()
            .any(|mount| mount.starts_with("tmpfs /dev tmpfs ") && mount.contains("nosuid")),
        "the jail's /dev: {jail_mounts}"
    );
    for host_dir in ["etc", "usr", "proc", "tmp"] {
        assert!(
            !brique_root.join(host_dir).exists(),
            "/{host_dir} in the jail"
        );
    }
    drop(leak);
}

struct KillOnDrop(u32);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        // SAFETY: kill sends a signal to the pid we started.
        unsafe { libc::kill(self.0 as libc::pid_t, libc::SIGKILL) };
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn refused(output: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(stderr.starts_with("brique-jailer: "), "{stderr}");
    assert!(stderr.contains(needle), "{needle:?} in {stderr}");
}

#[test]
fn bad_input_gets_one_line_and_leaves_nothing_behind() {
    if !is_root() {
        eprintln!("\n*** SKIPPED: brique-jailer tests need root ***\n");
        return;
    }
    let Some(brique) = static_binary("brique") else {
        return;
    };
    let base = Base::new("bad");
    let base_dir = base.0.display().to_string();
    let brique = brique.to_str().unwrap();
    let run = |id: &str, exec: &str, extra: &[&str]| {
        let mut args = vec![
            "--id",
            id,
            "--exec-file",
            exec,
            "--uid",
            "123",
            "--gid",
            "123",
            "--chroot-base-dir",
            &base_dir,
        ];
        args.extend_from_slice(extra);
        jailer(&args).output().unwrap()
    };
    refused(&run("bad/id", brique, &[]), "invalid --id");
    refused(
        &run("ok", "/nonexistent/brique", &[]),
        "is not an existing regular file",
    );
    refused(
        &run("ok", brique, &["--cgroup", "memory.max"]),
        "expected FILE=VALUE",
    );
    refused(
        &run("ok", brique, &["--resource-limit", "cores=1"]),
        "expected fsize=N or no-file=N",
    );
    assert_eq!(
        std::fs::read_dir(&base.0).unwrap().count(),
        0,
        "nothing made for bad arguments"
    );
    // An unknown cgroup file is refused and the jail removed again.
    if cgroup_v2_offers("cpu") {
        refused(
            &run("cg", brique, &["--cgroup", "cpu.nonsense=1"]),
            "unknown cgroup file cpu.nonsense",
        );
        assert!(!base.0.join("brique/cg").exists(), "jail removed");
    }
    // An existing jail is refused and left as it was.
    let existing = base.0.join("brique/taken");
    std::fs::create_dir_all(existing.join("root")).unwrap();
    std::fs::write(existing.join("root/keep"), "x").unwrap();
    refused(
        &run("taken", brique, &[]),
        "a jail for this id already exists",
    );
    assert!(existing.join("root/keep").exists());
}

/// Whether the cgroup v2 mount's root offers `controller`.
fn cgroup_v2_offers(controller: &str) -> bool {
    let Ok(mounts) = std::fs::read_to_string("/proc/mounts") else {
        return false;
    };
    let Some(mount) = mounts.lines().find_map(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        (fields.get(2) == Some(&"cgroup2")).then(|| fields[1].to_owned())
    }) else {
        return false;
    };
    std::fs::read_to_string(Path::new(&mount).join("cgroup.controllers"))
        .is_ok_and(|text| text.split_whitespace().any(|name| name == controller))
}
