//! `PUT /vsock` and the config file's `vsock` section: the guest's context
//! id and the Unix socket that proxies vsock connections.

use super::ConfigError;
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

/// The context ids a guest may have: the device's own bounds.
pub use brique_devices::virtio::vsock::device::{MAX_GUEST_CID, MIN_GUEST_CID};
/// Longest `uds_path` in bytes: a socket address holds 107 bytes and a NUL,
/// and guest connections go to `<uds_path>_<port>`, up to 11 bytes more.
pub const MAX_UDS_PATH_BYTES: usize = 107 - 11;

/// A virtio-vsock device with Firecracker's Unix-socket backend.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockDeviceConfig {
    /// Deprecated in Firecracker, accepted and kept for `GET /vm/config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vsock_id: Option<String>,
    /// The guest's context id, 3 to 2^32-1.
    pub guest_cid: u64,
    /// The socket brique listens on for host connections (`CONNECT <port>`);
    /// a guest connection to host port P goes to `<uds_path>_P`.
    pub uds_path: PathBuf,
}

impl VsockDeviceConfig {
    /// The context id is in range and `uds_path` is a socket path brique
    /// can create: short enough, in an existing directory, not taken.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !(MIN_GUEST_CID..=MAX_GUEST_CID).contains(&self.guest_cid) {
            return Err(ConfigError::InvalidGuestCid(self.guest_cid));
        }
        let bytes = self.uds_path.as_os_str().len();
        if bytes == 0 || bytes > MAX_UDS_PATH_BYTES {
            return Err(ConfigError::InvalidUdsPath {
                path: self.uds_path.clone(),
                why: "use 1 to 96 bytes (a socket address holds 107, and guest connections \
                      add _<port>)",
            });
        }
        if self.uds_path.symlink_metadata().is_ok() {
            return Err(ConfigError::InvalidUdsPath {
                path: self.uds_path.clone(),
                why: "the path already exists (remove it, or choose another)",
            });
        }
        let parent = match self.uds_path.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => std::path::Path::new("."),
        };
        if !parent.is_dir() {
            return Err(ConfigError::InvalidUdsPath {
                path: self.uds_path.clone(),
                why: "its directory does not exist",
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(guest_cid: u64, uds_path: &str) -> VsockDeviceConfig {
        VsockDeviceConfig {
            vsock_id: None,
            guest_cid,
            uds_path: uds_path.into(),
        }
    }

    #[test]
    fn firecracker_s_body_parses_with_or_without_the_deprecated_id() {
        let body = r#"{"vsock_id": "vsock0", "guest_cid": 3, "uds_path": "/tmp/v.sock"}"#;
        let parsed: VsockDeviceConfig = serde_json::from_str(body).unwrap();
        assert_eq!(parsed.vsock_id.as_deref(), Some("vsock0"));
        assert_eq!(parsed.guest_cid, 3);
        let bare: VsockDeviceConfig =
            serde_json::from_str(r#"{"guest_cid": 52, "uds_path": "/tmp/v.sock"}"#).unwrap();
        assert_eq!(bare.vsock_id, None);
        for bad in [
            r#"{"guest_cid": 3}"#,
            r#"{"uds_path": "/tmp/v.sock"}"#,
            r#"{"guest_cid": -1, "uds_path": "/tmp/v.sock"}"#,
            r#"{"guest_cid": 3, "uds_path": "/tmp/v.sock", "port": 5}"#,
        ] {
            assert!(
                serde_json::from_str::<VsockDeviceConfig>(bad).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn context_ids_and_socket_paths_are_checked() {
        let dir = std::env::temp_dir().join(format!("brique-vsock-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let free = dir.join("v.sock");
        let free = free.to_str().unwrap();
        assert!(config(3, free).validate().is_ok());
        assert!(config(MAX_GUEST_CID, free).validate().is_ok());
        for cid in [0, 1, 2, MAX_GUEST_CID + 1] {
            let err = config(cid, free).validate().unwrap_err().to_string();
            assert!(err.contains("guest_cid"), "{err}");
        }
        let taken = dir.join("taken");
        std::fs::write(&taken, b"").unwrap();
        let long = format!("/tmp/{}", "x".repeat(MAX_UDS_PATH_BYTES));
        for (path, needle) in [
            (taken.to_str().unwrap(), "already exists"),
            ("", "1 to 96 bytes"),
            (long.as_str(), "1 to 96 bytes"),
            ("/no/such/dir/v.sock", "directory does not exist"),
        ] {
            let err = config(3, path).validate().unwrap_err().to_string();
            assert!(err.contains(needle), "{path}: {err}");
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
