//! Guest CPUID: what KVM supports on this host, normalized for one vCPU.
//!
//! Each vCPU gets its own APIC id and a consistent topology (threads per
//! core from `smt`, all vCPUs in one package), the hypervisor bit, and no
//! features the VMM does not emulate (nested virtualization, thermal and
//! power management, debug store, architectural PMU).

use kvm_bindings::kvm_cpuid_entry2;

/// Where one vCPU sits in the guest's CPU topology.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Topology {
    /// This vCPU's index, which is also its APIC id.
    pub vcpu_id: u8,
    /// vCPUs in the VM (all in one package).
    pub vcpu_count: u8,
    /// 2 with SMT, else 1.
    pub threads_per_core: u8,
}

impl Topology {
    fn cores(&self) -> u8 {
        (self.vcpu_count / self.threads_per_core).max(1)
    }

    /// APIC-id bits that select the thread within a core.
    fn thread_shift(&self) -> u32 {
        bits_for(self.threads_per_core)
    }

    /// APIC-id bits that select the logical CPU within the package.
    fn package_shift(&self) -> u32 {
        self.thread_shift() + bits_for(self.cores())
    }
}

/// Bits needed to count `n` distinct ids (ceil(log2(n))).
fn bits_for(n: u8) -> u32 {
    if n <= 1 {
        0
    } else {
        u32::from(n - 1).ilog2() + 1
    }
}

/// The host CPU vendor as CPUID leaf 0 names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vendor {
    /// GenuineIntel.
    Intel,
    /// AuthenticAMD (or HygonGenuine, which follows AMD's leaves).
    Amd,
    /// Anything else: only vendor-neutral leaves are touched.
    Other,
}

/// Reads the vendor string from leaf 0.
pub fn vendor(entries: &[kvm_cpuid_entry2]) -> Vendor {
    let Some(leaf0) = entries.iter().find(|e| e.function == 0) else {
        return Vendor::Other;
    };
    let mut name = [0u8; 12];
    name[0..4].copy_from_slice(&leaf0.ebx.to_le_bytes());
    name[4..8].copy_from_slice(&leaf0.edx.to_le_bytes());
    name[8..12].copy_from_slice(&leaf0.ecx.to_le_bytes());
    match &name {
        b"GenuineIntel" => Vendor::Intel,
        b"AuthenticAMD" | b"HygonGenuine" => Vendor::Amd,
        _ => Vendor::Other,
    }
}

mod bits {
    // Leaf 0x1 ECX.
    pub const MONITOR: u32 = 1 << 3;
    pub const DS_CPL: u32 = 1 << 4;
    pub const VMX: u32 = 1 << 5;
    pub const SMX: u32 = 1 << 6;
    pub const EST: u32 = 1 << 7;
    pub const TM2: u32 = 1 << 8;
    pub const PDCM: u32 = 1 << 15;
    pub const HYPERVISOR: u32 = 1 << 31;
    // Leaf 0x1 EDX.
    pub const DS: u32 = 1 << 21;
    pub const ACPI: u32 = 1 << 22;
    pub const HTT: u32 = 1 << 28;
    pub const TM: u32 = 1 << 29;
    pub const PBE: u32 = 1 << 31;
    // Leaf 0x6 EAX: APIC timer always running.
    pub const ARAT: u32 = 1 << 2;
    // Leaf 0x8000_0001 ECX.
    pub const CMP_LEGACY: u32 = 1 << 1;
    pub const SVM: u32 = 1 << 2;
}

/// Normalizes `entries` (from KVM_GET_SUPPORTED_CPUID) for the vCPU `topo`.
pub fn normalize(entries: &mut [kvm_cpuid_entry2], topo: Topology) {
    let vendor = vendor(entries);
    let vcpu_id = u32::from(topo.vcpu_id);
    let thread_shift = topo.thread_shift();
    let package_shift = topo.package_shift();
    let logical_per_package = 1u32 << package_shift;

    for entry in entries.iter_mut() {
        match entry.function {
            0x1 => {
                entry.ebx = (vcpu_id << 24) | ((logical_per_package & 0xff) << 16) | (8 << 8);
                entry.ecx &= !(bits::MONITOR
                    | bits::DS_CPL
                    | bits::VMX
                    | bits::SMX
                    | bits::EST
                    | bits::TM2
                    | bits::PDCM);
                entry.ecx |= bits::HYPERVISOR;
                entry.edx &= !(bits::DS | bits::ACPI | bits::TM | bits::PBE);
                if topo.vcpu_count > 1 {
                    entry.edx |= bits::HTT;
                } else {
                    entry.edx &= !bits::HTT;
                }
            }
            0x4 if vendor == Vendor::Intel => {
                let cache_level = (entry.eax >> 5) & 0x7;
                let sharing = match cache_level {
                    0 => 0,
                    1 | 2 => (1u32 << thread_shift) - 1,
                    _ => logical_per_package - 1,
                };
                let cores_ids = (logical_per_package >> thread_shift).max(1) - 1;
                entry.eax = (entry.eax & 0x3fff) | (sharing << 14) | (cores_ids << 26);
            }
            0x6 => {
                entry.eax &= bits::ARAT;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            0xa => {
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            0xb => {
                let (shift, count, level_type) = match entry.index {
                    0 => (thread_shift, u32::from(topo.threads_per_core), 1),
                    1 => (package_shift, u32::from(topo.vcpu_count), 2),
                    _ => (0, 0, 0),
                };
                entry.eax = shift;
                entry.ebx = count;
                entry.ecx = (level_type << 8) | (entry.index & 0xff);
                entry.edx = vcpu_id;
            }
            0x8000_0001 => {
                entry.ecx &= !bits::SVM;
                if vendor == Vendor::Amd && topo.vcpu_count > 1 {
                    entry.ecx |= bits::CMP_LEGACY;
                } else {
                    entry.ecx &= !bits::CMP_LEGACY;
                }
            }
            0x8000_0008 if vendor == Vendor::Amd => {
                entry.ecx = (package_shift << 12) | (u32::from(topo.vcpu_count) - 1);
            }
            0x8000_001e if vendor == Vendor::Amd => {
                let core_id = vcpu_id >> thread_shift;
                entry.eax = vcpu_id;
                entry.ebx = ((u32::from(topo.threads_per_core) - 1) << 8) | core_id;
                entry.ecx = 0;
                entry.edx = 0;
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: 0xffff_ffff,
            ebx: 0xffff_ffff,
            ecx: 0xffff_ffff,
            edx: 0xffff_ffff,
            ..Default::default()
        }
    }

    fn vendor_leaf(name: &[u8; 12]) -> kvm_cpuid_entry2 {
        let word = |i: usize| u32::from_le_bytes(name[i..i + 4].try_into().unwrap());
        kvm_cpuid_entry2 {
            function: 0,
            eax: 0xd,
            ebx: word(0),
            edx: word(4),
            ecx: word(8),
            ..Default::default()
        }
    }

    fn find(entries: &[kvm_cpuid_entry2], function: u32, index: u32) -> kvm_cpuid_entry2 {
        *entries
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn bits_for_counts() {
        assert_eq!([1, 2, 3, 4, 5, 32].map(bits_for), [0, 1, 2, 2, 3, 5]);
    }

    #[test]
    fn leaf1_has_apic_id_count_and_hypervisor_bit() {
        let mut entries = vec![vendor_leaf(b"GenuineIntel"), leaf(1, 0)];
        normalize(
            &mut entries,
            Topology {
                vcpu_id: 3,
                vcpu_count: 4,
                threads_per_core: 1,
            },
        );
        let l1 = find(&entries, 1, 0);
        assert_eq!(l1.ebx >> 24, 3);
        assert_eq!((l1.ebx >> 16) & 0xff, 4);
        assert_ne!(l1.ecx & bits::HYPERVISOR, 0);
        assert_eq!(l1.ecx & (bits::VMX | bits::MONITOR | bits::PDCM), 0);
        assert_ne!(l1.edx & bits::HTT, 0);
        assert_eq!(l1.edx & (bits::ACPI | bits::DS), 0);

        let mut single = vec![vendor_leaf(b"GenuineIntel"), leaf(1, 0)];
        normalize(
            &mut single,
            Topology {
                vcpu_id: 0,
                vcpu_count: 1,
                threads_per_core: 1,
            },
        );
        assert_eq!(find(&single, 1, 0).edx & bits::HTT, 0);
    }

    #[test]
    fn extended_topology_with_smt() {
        let mut entries = vec![
            vendor_leaf(b"GenuineIntel"),
            leaf(0xb, 0),
            leaf(0xb, 1),
            leaf(0xb, 2),
        ];
        normalize(
            &mut entries,
            Topology {
                vcpu_id: 5,
                vcpu_count: 6,
                threads_per_core: 2,
            },
        );
        let smt = find(&entries, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (1, 2, 0x100, 5));
        let core = find(&entries, 0xb, 1);
        // 3 cores need 2 bits on top of the thread bit.
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (3, 6, 0x201, 5));
        let end = find(&entries, 0xb, 2);
        assert_eq!((end.eax, end.ebx, end.ecx), (0, 0, 2));
    }

    #[test]
    fn intel_cache_sharing() {
        let mut l1d = leaf(4, 0);
        l1d.eax = 1 << 5 | 0x1; // level 1, data cache
        let mut l3 = leaf(4, 3);
        l3.eax = 3 << 5 | 0x3;
        let mut entries = vec![vendor_leaf(b"GenuineIntel"), l1d, l3];
        normalize(
            &mut entries,
            Topology {
                vcpu_id: 0,
                vcpu_count: 4,
                threads_per_core: 2,
            },
        );
        let l1d = find(&entries, 4, 0);
        assert_eq!((l1d.eax >> 14) & 0xfff, 1, "two threads share L1");
        assert_eq!(l1d.eax >> 26, 1, "two cores");
        assert_eq!(
            (find(&entries, 4, 3).eax >> 14) & 0xfff,
            3,
            "package shares L3"
        );
    }

    #[test]
    fn amd_topology_and_no_nested_svm() {
        let mut entries = vec![
            vendor_leaf(b"AuthenticAMD"),
            leaf(0x8000_0001, 0),
            leaf(0x8000_0008, 0),
            leaf(0x8000_001e, 0),
        ];
        normalize(
            &mut entries,
            Topology {
                vcpu_id: 3,
                vcpu_count: 4,
                threads_per_core: 2,
            },
        );
        assert_eq!(find(&entries, 0x8000_0001, 0).ecx & bits::SVM, 0);
        assert_eq!(find(&entries, 0x8000_0008, 0).ecx, (2 << 12) | 3);
        let topo = find(&entries, 0x8000_001e, 0);
        assert_eq!((topo.eax, topo.ebx, topo.ecx), (3, (1 << 8) | 1, 0));
    }

    #[test]
    fn pmu_and_power_leaves_are_hidden() {
        let mut entries = vec![vendor_leaf(b"GenuineIntel"), leaf(0x6, 0), leaf(0xa, 0)];
        normalize(
            &mut entries,
            Topology {
                vcpu_id: 0,
                vcpu_count: 1,
                threads_per_core: 1,
            },
        );
        assert_eq!(find(&entries, 0x6, 0).eax, bits::ARAT);
        let pmu = find(&entries, 0xa, 0);
        assert_eq!((pmu.eax, pmu.ebx, pmu.ecx, pmu.edx), (0, 0, 0, 0));
        assert_eq!(vendor(&entries), Vendor::Intel);
    }
}
