//! A vCPU's saved state on aarch64: its MP state (running or powered off
//! by PSCI) and every register KVM lists for it (KVM_GET_REG_LIST: core,
//! FP/SIMD, system registers, the architected timer's, PSCI's version).

use super::regs;
use super::{kvm_err, ArchError, VcpuTemplate};
use kvm_bindings::{kvm_mp_state, RegList, KVM_REG_SIZE_MASK};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// Registers a vCPU has at most: kvm-bindings' bound for KVM_GET_REG_LIST
/// (KVM lists about 250 here, 450 on some hosts).
const MAX_REGS: usize = 500;
/// The largest register brique saves, in bytes (FP/SIMD: 128 bits; SVE,
/// with larger ones, is not enabled).
const MAX_REG_BYTES: usize = 16;

/// One register: KVM's id and its value (little-endian, the id's size).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedReg {
    /// KVM_REG_ARM64 id (its size is in the id).
    pub id: u64,
    /// The value's bytes.
    pub value: Vec<u8>,
}

/// Everything KVM holds of one aarch64 vCPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuState {
    /// Runnable or stopped (powered off through PSCI).
    pub mp_state: kvm_mp_state,
    /// MPIDR_EL1 (also among `regs`), for the GIC's per-vCPU state.
    pub mpidr: u64,
    /// Every register KVM lists.
    pub regs: Vec<SavedReg>,
}

/// The size in bytes of register `id`.
fn reg_size(id: u64) -> usize {
    1 << ((id & KVM_REG_SIZE_MASK) >> 52)
}

/// Reads vCPU `vcpu`'s whole state. The vCPU must be out of KVM_RUN.
pub fn save_vcpu(vcpu: &VcpuFd, _template: &VcpuTemplate) -> Result<VcpuState, ArchError> {
    let mp_state = vcpu.get_mp_state().map_err(kvm_err("KVM_GET_MP_STATE"))?;
    let mut list = RegList::new(MAX_REGS).map_err(ArchError::Fam)?;
    vcpu.get_reg_list(&mut list)
        .map_err(kvm_err("KVM_GET_REG_LIST"))?;
    let mut saved = Vec::with_capacity(list.as_slice().len());
    for &id in list.as_slice() {
        let size = reg_size(id);
        if size > MAX_REG_BYTES {
            return Err(ArchError::SavedState(format!(
                "register {id:#x} has {size} bytes (SVE is not supported)"
            )));
        }
        let mut value = vec![0u8; size];
        vcpu.get_one_reg(id, &mut value)
            .map_err(kvm_err("KVM_GET_ONE_REG"))?;
        saved.push(SavedReg { id, value });
    }
    Ok(VcpuState {
        mp_state,
        mpidr: regs::get(vcpu, regs::MPIDR_EL1)?,
        regs: saved,
    })
}

/// Checks what can be checked of a saved state before any vCPU changes.
pub fn check_vcpu_state(state: &VcpuState) -> Result<(), ArchError> {
    if state.regs.len() > MAX_REGS {
        return Err(ArchError::SavedState(format!(
            "{} registers",
            state.regs.len()
        )));
    }
    for reg in &state.regs {
        if reg.value.len() != reg_size(reg.id) || reg.value.len() > MAX_REG_BYTES {
            return Err(ArchError::SavedState(format!(
                "register {:#x} saved with {} bytes",
                reg.id,
                reg.value.len()
            )));
        }
    }
    Ok(())
}

/// Puts a saved state into a vCPU set up by `init_vcpu`: every register,
/// then the MP state.
pub fn restore_vcpu(
    vcpu: &VcpuFd,
    state: &VcpuState,
    _template: &VcpuTemplate,
) -> Result<(), ArchError> {
    check_vcpu_state(state)?;
    for reg in &state.regs {
        vcpu.set_one_reg(reg.id, &reg.value).map_err(|source| {
            ArchError::SavedState(format!("KVM refused register {:#x}: {source}", reg.id))
        })?;
    }
    vcpu.set_mp_state(state.mp_state)
        .map_err(kvm_err("KVM_SET_MP_STATE"))
}

/// Called when a vCPU parks in a pause (aarch64 has no kvmclock to tell).
pub fn vcpu_paused(_vcpu: &VcpuFd) {}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A plausible saved vCPU, for tests of what contains one.
    pub(crate) fn sample() -> VcpuState {
        VcpuState {
            mp_state: kvm_mp_state { mp_state: 0 },
            mpidr: 0x8000_0000,
            regs: vec![
                SavedReg {
                    id: regs::PC,
                    value: 0x8020_0000u64.to_le_bytes().to_vec(),
                },
                SavedReg {
                    id: regs::MPIDR_EL1,
                    value: 0x8000_0000u64.to_le_bytes().to_vec(),
                },
            ],
        }
    }

    #[test]
    fn a_vcpu_state_round_trips_and_sizes_are_checked() {
        let state = sample();
        let json = serde_json::to_string(&state).unwrap();
        let back: VcpuState = serde_json::from_str(&json).unwrap();
        assert_eq!(back, state);
        check_vcpu_state(&back).unwrap();
        assert_eq!(reg_size(regs::PC), 8);
        let mut wrong = state;
        wrong.regs[0].value.push(0);
        assert!(check_vcpu_state(&wrong).is_err());
    }
}
