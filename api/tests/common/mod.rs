//! A brique process serving its API socket in a scratch directory, with
//! the tiny dot-printing guest ready to boot, for the API tests.

#![allow(dead_code)]
// Test support: a failed setup step should fail the test loudly.
#![allow(clippy::unwrap_used)]

use brique_tests::api_client::{ApiClient, ApiResponse};
use brique_tests::tiny_guest::{elf_kernel, DOT_PRINTER};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `brique --api-sock`.
pub struct Brique {
    pub dir: PathBuf,
    pub sock: PathBuf,
    pub child: Child,
    pub client: ApiClient,
}

impl Brique {
    /// Starts brique in a fresh directory with `extra` arguments.
    pub fn start(name: &str, extra: &[&str]) -> Self {
        Self::start_limited(name, extra, None)
    }

    /// Starts brique allowed at most `max_fds` open descriptors (if given).
    pub fn start_limited(name: &str, extra: &[&str], max_fds: Option<u64>) -> Self {
        let dir = std::env::temp_dir().join(format!("brique-api-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("tiny.elf"), elf_kernel(DOT_PRINTER)).unwrap();
        std::fs::write(dir.join("disk.img"), vec![0u8; 1 << 20]).unwrap();
        std::fs::write(dir.join("bigger.img"), vec![0u8; 4 << 20]).unwrap();
        let sock = dir.join("api.sock");
        let mut command = Command::new(env!("CARGO_BIN_EXE_brique"));
        if let Some(limit) = max_fds {
            use std::os::unix::process::CommandExt;
            // SAFETY: the closure runs in the forked child before exec and
            // only calls setrlimit, which is async-signal-safe.
            unsafe {
                command.pre_exec(move || {
                    let rlimit = libc::rlimit {
                        rlim_cur: limit,
                        rlim_max: limit,
                    };
                    if libc::setrlimit(libc::RLIMIT_NOFILE, &rlimit) == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                });
            }
        }
        let child = command
            .arg("--api-sock")
            .arg(&sock)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join("console.out")).unwrap())
            .stderr(std::fs::File::create(dir.join("stderr.out")).unwrap())
            .spawn()
            .unwrap();
        let client = ApiClient::connect(&sock, Duration::from_secs(10)).unwrap();
        Self {
            dir,
            sock,
            child,
            client,
        }
    }

    pub fn path(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    pub fn call(&mut self, method: &str, path: &str, body: &str) -> ApiResponse {
        self.client.request(method, path, body).unwrap()
    }

    /// Sends a request that must succeed with 204.
    pub fn ok(&mut self, method: &str, path: &str, body: &str) {
        let response = self.call(method, path, body);
        assert_eq!(response.status, 204, "{method} {path} {body}: {response:?}");
    }

    /// Sends a request that must be refused with 400 and a fault message
    /// containing `needle`.
    pub fn refused(&mut self, method: &str, path: &str, body: &str, needle: &str) {
        let response = self.call(method, path, body);
        assert_eq!(response.status, 400, "{method} {path} {body}: {response:?}");
        assert!(response.body.contains("fault_message"), "{response:?}");
        assert!(
            response.body.contains(needle),
            "{method} {path} {body}: {}",
            response.body
        );
    }

    /// Configures the tiny guest (1 vCPU, 32 MiB, one data drive).
    pub fn configure_tiny_guest(&mut self) {
        let kernel = self.path("tiny.elf");
        let disk = self.path("disk.img");
        self.ok(
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 32}"#,
        );
        self.ok(
            "PUT",
            "/boot-source",
            &format!(r#"{{"kernel_image_path": "{kernel}", "boot_args": "console=ttyS0"}}"#),
        );
        self.ok(
            "PUT",
            "/drives/data",
            &format!(
                r#"{{"drive_id": "data", "path_on_host": "{disk}", "is_root_device": false}}"#
            ),
        );
    }

    pub fn start_tiny_guest(&mut self) {
        self.configure_tiny_guest();
        self.ok("PUT", "/actions", r#"{"action_type": "InstanceStart"}"#);
    }

    /// Bytes the guest printed so far.
    pub fn console_len(&self) -> u64 {
        std::fs::metadata(self.dir.join("console.out")).map_or(0, |m| m.len())
    }

    /// Whether the guest keeps printing (within `within`).
    pub fn guest_runs(&self, within: Duration) -> bool {
        let before = self.console_len();
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
            if self.console_len() > before {
                return true;
            }
        }
        false
    }

    pub fn state(&mut self) -> String {
        let info: serde_json::Value =
            serde_json::from_str(&self.call("GET", "/", "").body).unwrap();
        info["state"].as_str().unwrap_or("").to_owned()
    }

    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.join("stderr.out")).unwrap_or_default()
    }

    pub fn sock(&self) -> &Path {
        &self.sock
    }
}

impl Drop for Brique {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
