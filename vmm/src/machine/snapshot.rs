//! Taking a snapshot of a paused machine: every component's `*State`
//! gathered into one [`MicrovmState`], written to the state file, and guest
//! memory (all of it, or the pages dirtied since the last snapshot) to the
//! memory file.

use super::{Machine, MachineError};
use crate::arch;
use crate::config::VmConfig;
use crate::persist::{
    file, memory, DevicesState, MicrovmState, SnapshotCreateParams, SnapshotError, SnapshotType,
};

impl Machine {
    /// Writes a snapshot of the paused machine, configured as `config`.
    /// The device event loop holds off while guest memory is written. On
    /// error nothing is left at the state file's path, the pages a diff
    /// would have written stay dirty for the next one, and the machine
    /// stays paused as it was.
    pub fn create_snapshot(
        &self,
        config: &VmConfig,
        params: &SnapshotCreateParams,
    ) -> Result<(), MachineError> {
        if !self.paused {
            return Err(MachineError::VcpuRequest(
                "the microVM must be paused to be snapshotted".into(),
            ));
        }
        let diff = params.snapshot_type == SnapshotType::Diff;
        if diff && !self.vm.tracks_dirty_pages() {
            return Err(SnapshotError::Unfit(
                "a Diff snapshot needs dirty page tracking: set track_dirty_pages in \
                 machine-config (or at snapshot load)"
                    .into(),
            )
            .into());
        }
        if self.vm.runs_from(&params.mem_file_path) {
            return Err(SnapshotError::Unfit(format!(
                "{} is the memory file this microVM was restored from and runs on: \
                 write the snapshot's memory elsewhere",
                params.mem_file_path.display()
            ))
            .into());
        }
        // Devices first: while their locks are held the device event loop
        // neither changes them nor raises interrupts, so the interrupt
        // controllers and vCPUs saved next agree with them.
        self.devices.save_then(|virtio| {
            let vcpus = self.save_vcpus()?;
            let vm = arch::save_vm(self.vm.fd(), &self.irqchip, &vcpus)?;
            let serial = self
                .serial
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .save();
            let legacy = self.legacy.save();
            let state = MicrovmState {
                arch: arch::ARCH_NAME.to_owned(),
                brique_version: env!("CARGO_PKG_VERSION").to_owned(),
                config: config.clone(),
                memory: arch::ram_ranges(memory::total_size(self.vm.memory())),
                vm,
                vcpus,
                devices: DevicesState {
                    serial,
                    legacy,
                    virtio,
                },
            };
            let payload = serde_json::to_vec(&state)
                .map_err(|err| SnapshotError::Malformed(err.to_string()))?;
            file::write(&params.snapshot_path, &payload)?;
            let pages = if self.vm.tracks_dirty_pages() {
                // A full snapshot also starts the dirty log over.
                let dirty = self.vm.take_dirty_pages()?;
                if diff {
                    memory::Pages::Dirty(dirty)
                } else {
                    memory::Pages::All
                }
            } else {
                self.vm.clear_device_dirty_pages();
                memory::Pages::All
            };
            let written = memory::write(
                self.vm.memory(),
                &params.mem_file_path,
                &pages,
                self.vm.ram_is_anonymous(),
            );
            if let Err(err) = written {
                let _ = std::fs::remove_file(&params.snapshot_path);
                if let memory::Pages::Dirty(bitmaps) = &pages {
                    self.vm.mark_dirty(bitmaps);
                }
                return Err(err.into());
            }
            log::info!(
                "snapshot written: {} and {}",
                params.snapshot_path.display(),
                params.mem_file_path.display()
            );
            Ok(())
        })
    }
}
