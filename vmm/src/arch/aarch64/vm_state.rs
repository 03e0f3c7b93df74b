//! The VM-wide state KVM holds on aarch64: the GICv3 (the architected
//! timer's registers are each vCPU's).

use super::gic::{Gic, GicState};
use super::vcpu_state::VcpuState;
use super::ArchError;
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

/// The interrupt controller's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmState {
    /// The GICv3.
    pub gic: GicState,
}

/// Reads the VM's state (its vCPUs paused and saved as `vcpus`).
pub fn save_vm(_vm: &VmFd, gic: &Gic, vcpus: &[VcpuState]) -> Result<VmState, ArchError> {
    let mpidrs: Vec<u64> = vcpus.iter().map(|vcpu| vcpu.mpidr).collect();
    Ok(VmState {
        gic: gic.save(&mpidrs)?,
    })
}

/// Puts a saved state into a new VM. aarch64 has no kvmclock:
/// `clock_realtime` (an x86_64 option) is refused.
pub fn restore_vm(
    _vm: &VmFd,
    gic: &Gic,
    state: &VmState,
    clock_realtime: bool,
) -> Result<(), ArchError> {
    if clock_realtime {
        return Err(ArchError::SavedState(
            "clock_realtime is an x86_64 option; aarch64 guests read the PL031 clock".into(),
        ));
    }
    gic.restore(&state.gic)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A plausible saved VM, for tests of what contains one.
    pub(crate) fn sample() -> VmState {
        VmState {
            gic: GicState {
                dist: Vec::new(),
                vcpus: Vec::new(),
                line_levels: Vec::new(),
            },
        }
    }
}
