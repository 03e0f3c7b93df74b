//! Address-range dispatch of guest port I/O and MMIO accesses to devices.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

/// A device that answers guest accesses within the range it is registered at.
pub trait BusDevice: Send {
    /// A guest read of `data.len()` bytes at `offset` from the device's base.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// A guest write of `data` at `offset` from the device's base.
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// Errors when registering a device range.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum BusError {
    /// The new range is empty or wraps around the address space.
    #[error("invalid bus range: base {base:#x}, length {len:#x}")]
    InvalidRange { base: u64, len: u64 },
    /// The new range overlaps one already registered.
    #[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
    Overlap { base: u64, len: u64 },
}

/// A shared device on a bus.
pub type SharedBusDevice = Arc<Mutex<dyn BusDevice>>;

#[derive(Clone)]
struct BusEntry {
    len: u64,
    device: SharedBusDevice,
}

/// A set of non-overlapping address ranges, each served by one device.
#[derive(Clone, Default)]
pub struct Bus {
    entries: BTreeMap<u64, BusEntry>,
}

impl std::fmt::Debug for Bus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.entries.iter().map(|(base, e)| (*base, e.len)))
            .finish()
    }
}

impl Bus {
    /// An empty bus.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `device` for `[base, base + len)`.
    pub fn insert(&mut self, device: SharedBusDevice, base: u64, len: u64) -> Result<(), BusError> {
        let end = base
            .checked_add(len)
            .filter(|_| len > 0)
            .ok_or(BusError::InvalidRange { base, len })?;
        let overlaps_previous = self
            .entries
            .range(..end)
            .next_back()
            .is_some_and(|(other_base, other)| other_base + other.len > base);
        if overlaps_previous {
            return Err(BusError::Overlap { base, len });
        }
        self.entries.insert(base, BusEntry { len, device });
        Ok(())
    }

    /// The device serving `addr`, and `addr`'s offset within its range.
    fn resolve(&self, addr: u64) -> Option<(&BusEntry, u64)> {
        let (base, entry) = self.entries.range(..=addr).next_back()?;
        let offset = addr - base;
        (offset < entry.len).then_some((entry, offset))
    }

    /// Dispatches a read; returns false (and leaves `data` alone) when no
    /// device serves `addr`.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.resolve(addr) {
            Some((entry, offset)) => {
                lock_device(&entry.device).read(offset, data);
                true
            }
            None => false,
        }
    }

    /// Dispatches a write; returns false when no device serves `addr`.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.resolve(addr) {
            Some((entry, offset)) => {
                lock_device(&entry.device).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device, recovering it if another vCPU thread panicked while
/// holding it: device state stays consistent per access.
fn lock_device(device: &SharedBusDevice) -> std::sync::MutexGuard<'_, dyn BusDevice + 'static> {
    device
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Recorder {
        writes: Vec<(u64, Vec<u8>)>,
    }

    impl BusDevice for Recorder {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(offset as u8);
        }
        fn write(&mut self, offset: u64, data: &[u8]) {
            self.writes.push((offset, data.to_vec()));
        }
    }

    #[test]
    fn dispatches_by_range_with_offsets() {
        let a = Arc::new(Mutex::new(Recorder::default()));
        let b = Arc::new(Mutex::new(Recorder::default()));
        let mut bus = Bus::new();
        bus.insert(a.clone(), 0x3f8, 8).unwrap();
        bus.insert(b.clone(), 0x60, 5).unwrap();

        assert!(bus.write(0x3f9, &[7]));
        assert!(bus.write(0x64, &[0xfe]));
        assert!(!bus.write(0x400, &[1]));
        assert!(!bus.write(0x65, &[1]));

        let mut data = [0u8; 1];
        assert!(bus.read(0x3fd, &mut data));
        assert_eq!(data, [5]);
        let mut untouched = [0xaau8; 2];
        assert!(!bus.read(0x3f7, &mut untouched));
        assert_eq!(untouched, [0xaa, 0xaa]);

        assert_eq!(a.lock().unwrap().writes, vec![(1, vec![7])]);
        assert_eq!(b.lock().unwrap().writes, vec![(4, vec![0xfe])]);
    }

    #[test]
    fn rejects_overlaps_and_bad_ranges() {
        let dev = || Arc::new(Mutex::new(Recorder::default())) as SharedBusDevice;
        let mut bus = Bus::new();
        bus.insert(dev(), 0x100, 0x10).unwrap();
        assert_eq!(
            bus.insert(dev(), 0x10f, 1),
            Err(BusError::Overlap {
                base: 0x10f,
                len: 1
            })
        );
        assert_eq!(
            bus.insert(dev(), 0xf8, 0x9),
            Err(BusError::Overlap {
                base: 0xf8,
                len: 0x9
            })
        );
        assert_eq!(
            bus.insert(dev(), 0x200, 0),
            Err(BusError::InvalidRange {
                base: 0x200,
                len: 0
            })
        );
        assert_eq!(
            bus.insert(dev(), u64::MAX, 2),
            Err(BusError::InvalidRange {
                base: u64::MAX,
                len: 2
            })
        );
        bus.insert(dev(), 0xf8, 0x8).unwrap();
        bus.insert(dev(), 0x110, 0x8).unwrap();
    }
}
