//! aarch64 vCPU registers as KVM names them (KVM_GET/SET_ONE_REG ids), and
//! the boot vCPU's entry state.

use super::{kvm_err, ArchError};
use kvm_bindings::{
    kvm_regs, user_pt_regs, PSR_MODE_EL1h, KVM_REG_ARM64, KVM_REG_ARM64_SYSREG, KVM_REG_ARM_CORE,
    KVM_REG_SIZE_U64, PSR_A_BIT, PSR_D_BIT, PSR_F_BIT, PSR_I_BIT,
};
use kvm_ioctls::VcpuFd;
use std::mem::offset_of;

/// The id of a 64-bit core register at byte `offset` of `struct kvm_regs`.
pub const fn core_reg(offset: usize) -> u64 {
    KVM_REG_ARM64 | KVM_REG_SIZE_U64 | KVM_REG_ARM_CORE as u64 | (offset / 4) as u64
}

/// PC.
pub const PC: u64 = core_reg(offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, pc));
/// PSTATE.
pub const PSTATE: u64 = core_reg(offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, pstate));
/// General register `n` (X0 to X30).
pub const fn x(n: usize) -> u64 {
    core_reg(offset_of!(kvm_regs, regs) + offset_of!(user_pt_regs, regs) + 8 * n)
}

/// The id of system register (op0, op1, CRn, CRm, op2).
pub const fn sys_reg(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    KVM_REG_ARM64
        | KVM_REG_SIZE_U64
        | KVM_REG_ARM64_SYSREG as u64
        | (op0 << 14)
        | (op1 << 11)
        | (crn << 7)
        | (crm << 3)
        | op2
}

/// MPIDR_EL1: the vCPU's affinity, as the device tree names it.
pub const MPIDR_EL1: u64 = sys_reg(3, 0, 0, 0, 5);

/// EL1h with debug, SError, IRQ and FIQ masked: how the kernel is entered.
pub const BOOT_PSTATE: u64 = (PSR_MODE_EL1h | PSR_A_BIT | PSR_F_BIT | PSR_I_BIT | PSR_D_BIT) as u64;

/// Writes a 64-bit register.
pub fn set(vcpu: &VcpuFd, id: u64, value: u64) -> Result<(), ArchError> {
    vcpu.set_one_reg(id, &value.to_le_bytes())
        .map(|_| ())
        .map_err(kvm_err("KVM_SET_ONE_REG"))
}

/// Reads a 64-bit register.
pub fn get(vcpu: &VcpuFd, id: u64) -> Result<u64, ArchError> {
    let mut bytes = [0u8; 8];
    vcpu.get_one_reg(id, &mut bytes)
        .map_err(kvm_err("KVM_GET_ONE_REG"))?;
    Ok(u64::from_le_bytes(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn register_ids_are_kvms() {
        // As the kernel's documentation and QEMU name them.
        assert_eq!(PC, 0x6030_0000_0010_0040);
        assert_eq!(PSTATE, 0x6030_0000_0010_0042);
        assert_eq!(x(0), 0x6030_0000_0010_0000);
        assert_eq!(x(1), 0x6030_0000_0010_0002);
        assert_eq!(MPIDR_EL1, 0x6030_0000_0013_c005);
        assert_eq!(BOOT_PSTATE, 0x3c5);
    }
}
