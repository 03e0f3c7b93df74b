//! Model-specific registers a vCPU starts with.

use kvm_bindings::{kvm_msr_entry, Msrs};

/// MSR indices (Intel SDM vol. 4; AMD uses the same for these).
pub mod index {
    pub const IA32_TSC: u32 = 0x10;
    pub const IA32_SYSENTER_CS: u32 = 0x174;
    pub const IA32_SYSENTER_ESP: u32 = 0x175;
    pub const IA32_SYSENTER_EIP: u32 = 0x176;
    pub const IA32_MISC_ENABLE: u32 = 0x1a0;
    pub const MTRR_DEF_TYPE: u32 = 0x2ff;
    pub const STAR: u32 = 0xc000_0081;
    pub const LSTAR: u32 = 0xc000_0082;
    pub const CSTAR: u32 = 0xc000_0083;
    pub const SYSCALL_MASK: u32 = 0xc000_0084;
    pub const KERNEL_GS_BASE: u32 = 0xc000_0102;
}

/// IA32_MISC_ENABLE: fast string operations enabled.
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRdefType: MTRRs enabled, default memory type write-back.
const MTRR_ENABLE_WRITEBACK: u64 = (1 << 11) | 0x6;

/// The boot MSR values, limited to those KVM can save/restore (`supported`).
pub fn boot_msrs(supported: &[u32]) -> Vec<kvm_msr_entry> {
    use index::*;
    [
        (IA32_SYSENTER_CS, 0),
        (IA32_SYSENTER_ESP, 0),
        (IA32_SYSENTER_EIP, 0),
        (STAR, 0),
        (CSTAR, 0),
        (KERNEL_GS_BASE, 0),
        (SYSCALL_MASK, 0),
        (LSTAR, 0),
        (IA32_TSC, 0),
        (IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MTRR_DEF_TYPE, MTRR_ENABLE_WRITEBACK),
    ]
    .into_iter()
    .filter(|(index, _)| supported.contains(index))
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect()
}

/// Wraps entries for KVM_SET_MSRS.
pub fn to_kvm_msrs(entries: &[kvm_msr_entry]) -> Result<Msrs, vmm_sys_util::fam::Error> {
    Msrs::from_entries(entries)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_supported_msrs_are_set() {
        let entries = boot_msrs(&[index::LSTAR, index::MTRR_DEF_TYPE, 0x1234]);
        let got: Vec<(u32, u64)> = entries.iter().map(|e| (e.index, e.data)).collect();
        assert_eq!(got, vec![(index::LSTAR, 0), (index::MTRR_DEF_TYPE, 0x806)]);
        assert_eq!(to_kvm_msrs(&entries).unwrap().as_slice().len(), 2);
    }
}
