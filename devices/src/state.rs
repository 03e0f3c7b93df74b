//! Saved device state: what a device's `*State` struct may fail on when it
//! is restored. Saved state comes from a file and is hostile input: every
//! restore checks it before any device or guest byte changes.

/// A saved device state that cannot be restored.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StateError {
    /// A field has a value the device can never be in.
    #[error("{device}: invalid saved state: {detail}")]
    Invalid {
        /// The device (e.g. "virtio-blk", "serial").
        device: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// The saved device does not match the one built from the
    /// configuration (another disk size, another device type).
    #[error("{device}: the saved state does not match this device: {detail}")]
    Mismatch {
        /// The device.
        device: &'static str,
        /// What differs.
        detail: String,
    },
}

impl StateError {
    /// An [`StateError::Invalid`] for `device`.
    pub fn invalid(device: &'static str, detail: impl Into<String>) -> Self {
        Self::Invalid {
            device,
            detail: detail.into(),
        }
    }

    /// A [`StateError::Mismatch`] for `device`.
    pub fn mismatch(device: &'static str, detail: impl Into<String>) -> Self {
        Self::Mismatch {
            device,
            detail: detail.into(),
        }
    }
}
