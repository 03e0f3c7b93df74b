//! The in-kernel GICv3 (GICv2 cannot be created on the hosts we run on; a
//! host without GICv3 gets a clear error): its creation once every vCPU
//! exists, and its saved state: distributor, each vCPU's redistributor and
//! CPU interface, line levels, with the LPI pending tables flushed first.

use super::layout::{gic_redist_size, GIC_DIST_BASE, GIC_REDIST_BASE};
use super::ArchError;
use kvm_bindings::{
    kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
    KVM_DEV_ARM_VGIC_CTRL_INIT, KVM_DEV_ARM_VGIC_GRP_ADDR, KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS,
    KVM_DEV_ARM_VGIC_GRP_CTRL, KVM_DEV_ARM_VGIC_GRP_DIST_REGS, KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO,
    KVM_DEV_ARM_VGIC_GRP_NR_IRQS, KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
    KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT, KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES,
    KVM_VGIC_V3_ADDR_TYPE_DIST, KVM_VGIC_V3_ADDR_TYPE_REDIST,
};
use kvm_ioctls::{DeviceFd, VmFd};
use serde::{Deserialize, Serialize};

/// Interrupt lines: 32 private (SGIs, PPIs) and 96 shared (SPIs).
pub const GIC_NR_IRQS: u32 = 128;
/// The first shared line.
pub const SPI_BASE: u32 = 32;

/// The created GICv3.
#[derive(Debug)]
pub struct Gic {
    device: DeviceFd,
    vcpu_count: u8,
}

fn gic_err(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> ArchError {
    move |source| ArchError::Kvm { what, source }
}

impl Gic {
    /// Creates the GICv3 for `vcpu_count` vCPUs (which must all exist):
    /// its addresses, its line count, then KVM's initialisation.
    pub fn create(vm: &VmFd, vcpu_count: u8) -> Result<Self, ArchError> {
        let mut request = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_ARM_VGIC_V3,
            fd: 0,
            flags: 0,
        };
        let device = vm.create_device(&mut request).map_err(|source| {
            if source.errno() == libc::ENODEV {
                ArchError::NoGicV3
            } else {
                ArchError::Kvm {
                    what: "KVM_CREATE_DEVICE (GICv3)",
                    source,
                }
            }
        })?;
        let gic = Self { device, vcpu_count };
        let dist = GIC_DIST_BASE;
        let redist = GIC_REDIST_BASE;
        gic.set_u64(
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            KVM_VGIC_V3_ADDR_TYPE_DIST.into(),
            dist,
        )?;
        gic.set_u64(
            KVM_DEV_ARM_VGIC_GRP_ADDR,
            KVM_VGIC_V3_ADDR_TYPE_REDIST.into(),
            redist,
        )?;
        gic.set_u32(KVM_DEV_ARM_VGIC_GRP_NR_IRQS, 0, GIC_NR_IRQS)?;
        gic.set_attr(
            KVM_DEV_ARM_VGIC_GRP_CTRL,
            KVM_DEV_ARM_VGIC_CTRL_INIT.into(),
            0,
        )
        .map_err(gic_err("GICv3 init"))?;
        debug_assert!(gic_redist_size(vcpu_count) > 0);
        Ok(gic)
    }

    fn set_attr(&self, group: u32, attr: u64, addr: u64) -> Result<(), kvm_ioctls::Error> {
        self.device.set_device_attr(&kvm_device_attr {
            flags: 0,
            group,
            attr,
            addr,
        })
    }

    fn set_u32(&self, group: u32, attr: u64, value: u32) -> Result<(), ArchError> {
        let addr = &value as *const u32 as u64;
        self.set_attr(group, attr, addr)
            .map_err(gic_err("GICv3 register write"))
    }

    fn set_u64(&self, group: u32, attr: u64, value: u64) -> Result<(), ArchError> {
        let addr = &value as *const u64 as u64;
        self.set_attr(group, attr, addr)
            .map_err(gic_err("GICv3 register write"))
    }

    fn get<T: Default + Copy>(&self, group: u32, attr: u64) -> Result<T, kvm_ioctls::Error> {
        let mut value = T::default();
        let mut request = kvm_device_attr {
            flags: 0,
            group,
            attr,
            addr: &mut value as *mut T as u64,
        };
        // SAFETY: `addr` points at a `T` that lives across the call, of the
        // size KVM writes for this group (u32 registers, u64 system registers).
        unsafe { self.device.get_device_attr(&mut request) }?;
        Ok(value)
    }

    /// The GIC's state. The vCPUs must be paused.
    pub fn save(&self, mpidrs: &[u64]) -> Result<GicState, ArchError> {
        // LPI pending bits go to guest memory (the tables live there); a
        // GIC without an ITS has none, which KVM may refuse to flush.
        if let Err(err) = self.set_attr(
            KVM_DEV_ARM_VGIC_GRP_CTRL,
            KVM_DEV_ARM_VGIC_SAVE_PENDING_TABLES.into(),
            0,
        ) {
            log::debug!("GICv3 pending tables not flushed: {err}");
        }
        let mut dist = Vec::new();
        for offset in dist_offsets() {
            let value: u32 = self
                .get(KVM_DEV_ARM_VGIC_GRP_DIST_REGS, offset.into())
                .map_err(gic_err("GICv3 distributor read"))?;
            dist.push(GicReg { offset, value });
        }
        let mut vcpus = Vec::with_capacity(mpidrs.len());
        for &mpidr in mpidrs {
            let affinity = affinity(mpidr);
            let mut redist = Vec::new();
            for offset in REDIST_OFFSETS.iter().copied().chain(sgi_frame_offsets()) {
                let value: u32 = self
                    .get(
                        KVM_DEV_ARM_VGIC_GRP_REDIST_REGS,
                        affinity | u64::from(offset),
                    )
                    .map_err(gic_err("GICv3 redistributor read"))?;
                redist.push(GicReg { offset, value });
            }
            let mut icc = Vec::new();
            for &sysreg in ICC_SYSREGS {
                // Priority registers past the ones KVM implements read
                // as errors: they are not saved.
                if let Ok(value) =
                    self.get::<u64>(KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS, affinity | sysreg)
                {
                    icc.push(GicSysReg { sysreg, value });
                }
            }
            vcpus.push(VcpuGicState { mpidr, redist, icc });
        }
        let mut line_levels = Vec::new();
        for first in (SPI_BASE..GIC_NR_IRQS).step_by(32) {
            let attr = (0 << KVM_DEV_ARM_VGIC_LINE_LEVEL_INFO_SHIFT) | u64::from(first);
            let value: u32 = self
                .get(KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO, attr)
                .map_err(gic_err("GICv3 line level read"))?;
            line_levels.push(GicReg {
                offset: first,
                value,
            });
        }
        Ok(GicState {
            dist,
            vcpus,
            line_levels,
        })
    }

    /// Puts a saved state into this (new) GIC. The enable, pending and
    /// active sets are cleared whole, then set to the saved bits.
    pub fn restore(&self, state: &GicState) -> Result<(), ArchError> {
        if state.vcpus.len() != usize::from(self.vcpu_count) {
            return Err(ArchError::SavedState(format!(
                "GIC state for {} vCPUs, this VM has {}",
                state.vcpus.len(),
                self.vcpu_count
            )));
        }
        let allowed: Vec<u32> = dist_offsets().collect();
        for reg in &state.dist {
            if !allowed.contains(&reg.offset) {
                return Err(ArchError::SavedState(format!(
                    "GIC distributor register {:#x}",
                    reg.offset
                )));
            }
        }
        for reg in &state.dist {
            if let Some(clear) = clear_register(reg.offset) {
                self.set_u32(KVM_DEV_ARM_VGIC_GRP_DIST_REGS, clear.into(), u32::MAX)?;
            }
            self.set_u32(KVM_DEV_ARM_VGIC_GRP_DIST_REGS, reg.offset.into(), reg.value)?;
        }
        let redist_allowed: Vec<u32> = REDIST_OFFSETS
            .iter()
            .copied()
            .chain(sgi_frame_offsets())
            .collect();
        for vcpu in &state.vcpus {
            let affinity = affinity(vcpu.mpidr);
            for reg in &vcpu.redist {
                if !redist_allowed.contains(&reg.offset) {
                    return Err(ArchError::SavedState(format!(
                        "GIC redistributor register {:#x}",
                        reg.offset
                    )));
                }
                let group = KVM_DEV_ARM_VGIC_GRP_REDIST_REGS;
                if let Some(clear) = clear_register(reg.offset) {
                    self.set_u32(group, affinity | u64::from(clear), u32::MAX)?;
                }
                self.set_u32(group, affinity | u64::from(reg.offset), reg.value)?;
            }
            for reg in &vcpu.icc {
                if !ICC_SYSREGS.contains(&reg.sysreg) {
                    return Err(ArchError::SavedState(format!(
                        "GIC CPU interface register {:#x}",
                        reg.sysreg
                    )));
                }
                self.set_u64(
                    KVM_DEV_ARM_VGIC_GRP_CPU_SYSREGS,
                    affinity | reg.sysreg,
                    reg.value,
                )?;
            }
        }
        for level in &state.line_levels {
            if level.offset < SPI_BASE || level.offset >= GIC_NR_IRQS || level.offset % 32 != 0 {
                return Err(ArchError::SavedState(format!(
                    "GIC line levels at {}",
                    level.offset
                )));
            }
            self.set_u32(
                KVM_DEV_ARM_VGIC_GRP_LEVEL_INFO,
                u64::from(level.offset),
                level.value,
            )?;
        }
        Ok(())
    }
}

/// The affinity part of a register attribute for the vCPU with `mpidr`
/// (Aff3.Aff2.Aff1.Aff0 in bits 63:32).
fn affinity(mpidr: u64) -> u64 {
    let aff0_2 = mpidr & 0x00ff_ffff;
    let aff3 = (mpidr >> 32) & 0xff;
    ((aff3 << 24) | aff0_2) << 32
}

/// One 32-bit GIC register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GicReg {
    /// Its offset (for line levels: the first line of the 32).
    pub offset: u32,
    /// Its value.
    pub value: u32,
}

/// One CPU interface system register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GicSysReg {
    /// KVM's encoding (op0, op1, CRn, CRm, op2).
    pub sysreg: u64,
    /// Its value.
    pub value: u64,
}

/// One vCPU's part of the GIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuGicState {
    /// The vCPU's MPIDR_EL1.
    pub mpidr: u64,
    /// Its redistributor's registers.
    pub redist: Vec<GicReg>,
    /// Its CPU interface's registers.
    pub icc: Vec<GicSysReg>,
}

/// The whole GIC.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GicState {
    /// Distributor registers.
    pub dist: Vec<GicReg>,
    /// Each vCPU's redistributor and CPU interface.
    pub vcpus: Vec<VcpuGicState>,
    /// Line levels of the shared interrupts, 32 lines a word.
    pub line_levels: Vec<GicReg>,
}

// GICv3 distributor register offsets (GIC architecture specification).
const GICD_CTLR: u32 = 0x0000;
const GICD_IGROUPR: u32 = 0x0080;
const GICD_ISENABLER: u32 = 0x0100;
const GICD_ISPENDR: u32 = 0x0200;
const GICD_ISACTIVER: u32 = 0x0300;
const GICD_IPRIORITYR: u32 = 0x0400;
const GICD_ICFGR: u32 = 0x0c00;
const GICD_IGRPMODR: u32 = 0x0d00;
const GICD_IROUTER: u32 = 0x6000;

/// The "set" registers whose "clear" twin is 0x80 above.
const SET_REGISTERS: [u32; 3] = [GICD_ISENABLER, GICD_ISPENDR, GICD_ISACTIVER];

/// For an ISENABLER/ISPENDR/ISACTIVER word (distributor or SGI frame), the
/// ICENABLER/ICPENDR/ICACTIVER word that clears it.
fn clear_register(offset: u32) -> Option<u32> {
    let frame = offset & !0xffff;
    let in_frame = offset & 0xffff;
    SET_REGISTERS
        .iter()
        .find(|&&base| (base..base + 0x80).contains(&in_frame))
        .map(|_| frame | (in_frame + 0x80))
}

/// Distributor registers saved, for the shared lines (the private ones are
/// the redistributors'): one bit, two bits, eight bits or 64 bits a line.
fn dist_offsets() -> impl Iterator<Item = u32> {
    let spis = SPI_BASE..GIC_NR_IRQS;
    let words = |base: u32, bits: u32| {
        let per_word = 32 / bits;
        (SPI_BASE / per_word..GIC_NR_IRQS / per_word).map(move |word| base + 4 * word)
    };
    std::iter::once(GICD_CTLR)
        .chain(words(GICD_IGROUPR, 1))
        .chain(words(GICD_IGRPMODR, 1))
        .chain(words(GICD_ICFGR, 2))
        .chain(words(GICD_IPRIORITYR, 8))
        .chain(spis.flat_map(|line| {
            let at = GICD_IROUTER + 8 * line;
            [at, at + 4]
        }))
        .chain(words(GICD_ISENABLER, 1))
        .chain(words(GICD_ISPENDR, 1))
        .chain(words(GICD_ISACTIVER, 1))
}

/// Redistributor RD frame registers saved.
const REDIST_OFFSETS: &[u32] = &[
    0x0000, // GICR_CTLR
];

/// SGI frame registers (private lines 0-31), in restore order.
fn sgi_frame_offsets() -> impl Iterator<Item = u32> {
    const SGI: u32 = 0x1_0000;
    [
        SGI + GICD_IGROUPR,
        SGI + GICD_IGRPMODR,
        SGI + GICD_ICFGR,
        SGI + GICD_ICFGR + 4,
    ]
    .into_iter()
    .chain((0..8).map(|word| SGI + GICD_IPRIORITYR + 4 * word))
    .chain([
        SGI + GICD_ISENABLER,
        SGI + GICD_ISPENDR,
        SGI + GICD_ISACTIVER,
    ])
}

/// KVM's encoding of a CPU interface system register.
const fn icc(op0: u64, op1: u64, crn: u64, crm: u64, op2: u64) -> u64 {
    (op0 << 14) | (op1 << 11) | (crn << 7) | (crm << 3) | op2
}

/// CPU interface registers saved, in restore order (SRE and CTLR first).
const ICC_SYSREGS: &[u64] = &[
    icc(3, 0, 12, 12, 5), // ICC_SRE_EL1
    icc(3, 0, 12, 12, 4), // ICC_CTLR_EL1
    icc(3, 0, 4, 6, 0),   // ICC_PMR_EL1
    icc(3, 0, 12, 8, 3),  // ICC_BPR0_EL1
    icc(3, 0, 12, 12, 3), // ICC_BPR1_EL1
    icc(3, 0, 12, 8, 4),  // ICC_AP0R0_EL1
    icc(3, 0, 12, 8, 5),  // ICC_AP0R1_EL1
    icc(3, 0, 12, 8, 6),  // ICC_AP0R2_EL1
    icc(3, 0, 12, 8, 7),  // ICC_AP0R3_EL1
    icc(3, 0, 12, 9, 0),  // ICC_AP1R0_EL1
    icc(3, 0, 12, 9, 1),  // ICC_AP1R1_EL1
    icc(3, 0, 12, 9, 2),  // ICC_AP1R2_EL1
    icc(3, 0, 12, 9, 3),  // ICC_AP1R3_EL1
    icc(3, 0, 12, 12, 6), // ICC_IGRPEN0_EL1
    icc(3, 0, 12, 12, 7), // ICC_IGRPEN1_EL1
];

#[cfg(test)]
mod tests {
    use super::*;

    const GICD_ICENABLER: u32 = 0x0180;
    const GICD_ICPENDR: u32 = 0x0280;
    const GICD_ICACTIVER: u32 = 0x0380;

    #[test]
    fn affinity_goes_to_the_top_half_aff3_packed_next_to_aff2() {
        assert_eq!(affinity(0x8000_0000), 0);
        assert_eq!(affinity(0x8000_0103), 0x0000_0103 << 32);
        assert_eq!(affinity(0x0000_0012_0001_0203), 0x1201_0203 << 32);
    }

    #[test]
    fn set_registers_are_cleared_by_their_twins_in_either_frame() {
        assert_eq!(clear_register(GICD_ISENABLER + 4), Some(GICD_ICENABLER + 4));
        assert_eq!(clear_register(GICD_ISPENDR), Some(GICD_ICPENDR));
        assert_eq!(
            clear_register(0x1_0000 + GICD_ISACTIVER),
            Some(0x1_0000 + GICD_ICACTIVER)
        );
        assert_eq!(clear_register(GICD_IPRIORITYR), None);
        assert_eq!(clear_register(GICD_CTLR), None);
    }

    #[test]
    fn only_shared_lines_are_saved_from_the_distributor() {
        let offsets: Vec<u32> = dist_offsets().collect();
        assert!(offsets.contains(&(GICD_ISENABLER + 4)), "lines 32-63");
        assert!(!offsets.contains(&GICD_ISENABLER), "lines 0-31 are private");
        assert!(offsets.contains(&(GICD_IPRIORITYR + 32)));
        assert!(!offsets.contains(&(GICD_IPRIORITYR + 28)));
        assert!(offsets.contains(&(GICD_IROUTER + 8 * 127 + 4)));
        assert_eq!(
            offsets.iter().filter(|&&o| o >= GICD_IROUTER).count(),
            2 * 96
        );
        // The set registers come last: lines are configured, then enabled.
        assert_eq!(*offsets.last().unwrap(), GICD_ISACTIVER + 12);
    }

    #[test]
    fn a_gic_state_round_trips_through_json() {
        let state = GicState {
            dist: vec![GicReg {
                offset: GICD_CTLR,
                value: 0x12,
            }],
            vcpus: vec![VcpuGicState {
                mpidr: 0x8000_0000,
                redist: vec![GicReg {
                    offset: 0x1_0100,
                    value: 0xffff,
                }],
                icc: vec![GicSysReg {
                    sysreg: ICC_SYSREGS[0],
                    value: 7,
                }],
            }],
            line_levels: vec![GicReg {
                offset: 32,
                value: 0,
            }],
        };
        let json = serde_json::to_string(&state).unwrap();
        assert_eq!(serde_json::from_str::<GicState>(&json).unwrap(), state);
    }
}
