//! A vCPU's saved state on x86_64 and how it is read from and put back
//! into KVM: MP state, registers, FPU/XSAVE, XCRs, debug registers, LAPIC,
//! pending events, CPUID, MSRs and the TSC frequency.

use super::msr::index;
use super::{kvm_err, ArchError, VcpuTemplate};
use crate::phases::Phases;
use kvm_bindings::{
    kvm_cpuid_entry2, kvm_debugregs, kvm_lapic_state, kvm_mp_state, kvm_msr_entry, kvm_regs,
    kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave, CpuId, Msrs, Xsave, KVM_MAX_CPUID_ENTRIES,
    KVM_MAX_MSR_ENTRIES,
};
use kvm_ioctls::VcpuFd;
use serde::{Deserialize, Serialize};

/// IA32_TSC_DEADLINE: relative to the TSC, so restored after it.
const IA32_TSC_DEADLINE: u32 = 0x6e0;
/// 32-bit words of the legacy 4 KiB `kvm_xsave` region.
const XSAVE_LEGACY_WORDS: usize = 1024;
/// A saved TSC frequency within this many kHz of the host's is the same
/// frequency (KVM's own tolerance is 250 ppm).
const TSC_KHZ_TOLERANCE_PPM: u64 = 250;

/// One model-specific register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SavedMsr {
    /// MSR index.
    pub index: u32,
    /// Its value.
    pub data: u64,
}

/// Everything KVM holds of one x86_64 vCPU.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VcpuState {
    /// Runnable, halted, waiting for INIT/SIPI...
    pub mp_state: kvm_mp_state,
    /// General registers.
    pub regs: kvm_regs,
    /// Segment and control registers.
    pub sregs: kvm_sregs,
    /// The XSAVE area (KVM_GET_XSAVE2 where the host has it), 32-bit words.
    pub xsave: Vec<u32>,
    /// Extended control registers.
    pub xcrs: kvm_xcrs,
    /// Debug registers.
    pub debug_regs: kvm_debugregs,
    /// The local APIC's registers.
    pub lapic: kvm_lapic_state,
    /// Pending exceptions, interrupts, NMIs, SMIs.
    pub vcpu_events: kvm_vcpu_events,
    /// The CPUID the guest sees.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// Every MSR KVM can save, IA32_TSC_DEADLINE last.
    pub msrs: Vec<SavedMsr>,
    /// The guest's TSC frequency, when KVM tells it.
    pub tsc_khz: Option<u32>,
}

/// Reads vCPU `vcpu`'s whole state. The vCPU must be out of KVM_RUN.
pub fn save_vcpu(vcpu: &VcpuFd, template: &VcpuTemplate) -> Result<VcpuState, ArchError> {
    // First: KVM_GET_MP_STATE also flushes what the LAPIC has pending.
    let mp_state = vcpu.get_mp_state().map_err(kvm_err("KVM_GET_MP_STATE"))?;
    let regs = vcpu.get_regs().map_err(kvm_err("KVM_GET_REGS"))?;
    let sregs = vcpu.get_sregs().map_err(kvm_err("KVM_GET_SREGS"))?;
    let xsave = save_xsave(vcpu, template.xsave2_size)?;
    let xcrs = vcpu.get_xcrs().map_err(kvm_err("KVM_GET_XCRS"))?;
    let debug_regs = vcpu
        .get_debug_regs()
        .map_err(kvm_err("KVM_GET_DEBUGREGS"))?;
    let lapic = vcpu.get_lapic().map_err(kvm_err("KVM_GET_LAPIC"))?;
    let tsc_khz = vcpu.get_tsc_khz().ok();
    let cpuid = vcpu
        .get_cpuid2(KVM_MAX_CPUID_ENTRIES)
        .map_err(kvm_err("KVM_GET_CPUID2"))?
        .as_slice()
        .to_vec();
    let msrs = save_msrs(vcpu, &template.msr_indices)?;
    let vcpu_events = vcpu
        .get_vcpu_events()
        .map_err(kvm_err("KVM_GET_VCPU_EVENTS"))?;
    Ok(VcpuState {
        mp_state,
        regs,
        sregs,
        xsave,
        xcrs,
        debug_regs,
        lapic,
        vcpu_events,
        cpuid,
        msrs,
        tsc_khz,
    })
}

fn save_xsave(vcpu: &VcpuFd, xsave2_size: usize) -> Result<Vec<u32>, ArchError> {
    if xsave2_size == 0 {
        let xsave = vcpu.get_xsave().map_err(kvm_err("KVM_GET_XSAVE"))?;
        return Ok(xsave.region.to_vec());
    }
    let mut xsave = xsave_buffer(xsave2_size)?;
    // SAFETY: the buffer holds `xsave2_size` bytes, the size KVM gave for
    // KVM_CAP_XSAVE2 on this VM, and no XSTATE feature is enabled since.
    unsafe { vcpu.get_xsave2(&mut xsave) }.map_err(kvm_err("KVM_GET_XSAVE2"))?;
    let mut words = xsave.as_fam_struct_ref().xsave.region.to_vec();
    words.extend_from_slice(xsave.as_slice());
    Ok(words)
}

/// An XSAVE buffer of `size` bytes (the KVM_CAP_XSAVE2 size).
fn xsave_buffer(size: usize) -> Result<Xsave, ArchError> {
    let extra_words = size
        .saturating_sub(std::mem::size_of::<kvm_xsave>())
        .div_ceil(std::mem::size_of::<u32>());
    Xsave::new(extra_words).map_err(ArchError::Fam)
}

/// Reads every MSR of `indices` that this vCPU has. KVM_GET_MSRS stops at
/// the first MSR it cannot read; that one is left out and the rest read on.
fn save_msrs(vcpu: &VcpuFd, indices: &[u32]) -> Result<Vec<SavedMsr>, ArchError> {
    let mut saved = Vec::with_capacity(indices.len());
    let mut rest = indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(KVM_MAX_MSR_ENTRIES)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry {
                index,
                ..Default::default()
            })
            .collect();
        let mut msrs = Msrs::from_entries(&entries).map_err(ArchError::Fam)?;
        let read = vcpu.get_msrs(&mut msrs).map_err(kvm_err("KVM_GET_MSRS"))?;
        saved.extend(msrs.as_slice()[..read].iter().map(|entry| SavedMsr {
            index: entry.index,
            data: entry.data,
        }));
        if read < chunk.len() {
            log::debug!("MSR {:#x} cannot be read: not saved", chunk[read]);
        }
        rest = &rest[(read + 1).min(chunk.len())..];
    }
    // The TSC deadline counts in TSC ticks: it goes back after IA32_TSC.
    saved.sort_by_key(|msr| (msr.index == IA32_TSC_DEADLINE, msr.index != index::IA32_TSC));
    Ok(saved)
}

/// Checks what can be checked of a saved state before any vCPU changes.
pub fn check_vcpu_state(state: &VcpuState, template: &VcpuTemplate) -> Result<(), ArchError> {
    let host_words = template.xsave2_size.div_ceil(4).max(XSAVE_LEGACY_WORDS);
    if state.xsave.len() < XSAVE_LEGACY_WORDS || state.xsave.len() > host_words {
        return Err(ArchError::SavedState(format!(
            "an XSAVE area of {} bytes; this host's is {} bytes",
            state.xsave.len() * 4,
            host_words * 4
        )));
    }
    if state.cpuid.is_empty() || state.cpuid.len() > KVM_MAX_CPUID_ENTRIES {
        return Err(ArchError::SavedState(format!(
            "{} CPUID entries (1 to {KVM_MAX_CPUID_ENTRIES})",
            state.cpuid.len()
        )));
    }
    if state.msrs.len() > 4 * KVM_MAX_MSR_ENTRIES {
        return Err(ArchError::SavedState(format!("{} MSRs", state.msrs.len())));
    }
    Ok(())
}

/// Puts a saved state into a new vCPU, in the order KVM needs: TSC
/// frequency, CPUID, MP state, registers, XSAVE, XCRs, debug registers,
/// LAPIC, MSRs (TSC before TSC deadline), pending events; then tells the
/// guest's kvmclock that it was paused.
pub fn restore_vcpu(
    vcpu: &VcpuFd,
    state: &VcpuState,
    template: &VcpuTemplate,
) -> Result<(), ArchError> {
    check_vcpu_state(state, template)?;
    let mut phases = Phases::new();
    if let Some(saved_khz) = state.tsc_khz {
        restore_tsc_khz(vcpu, saved_khz)?;
    }
    phases.mark("TSC frequency");
    let cpuid = CpuId::from_entries(&state.cpuid).map_err(ArchError::Fam)?;
    vcpu.set_cpuid2(&cpuid).map_err(kvm_err("KVM_SET_CPUID2"))?;
    phases.mark("CPUID");
    vcpu.set_mp_state(state.mp_state)
        .map_err(kvm_err("KVM_SET_MP_STATE"))?;
    vcpu.set_regs(&state.regs)
        .map_err(kvm_err("KVM_SET_REGS"))?;
    vcpu.set_sregs(&state.sregs)
        .map_err(kvm_err("KVM_SET_SREGS"))?;
    phases.mark("registers");
    restore_xsave(vcpu, &state.xsave, template.xsave2_size)?;
    vcpu.set_xcrs(&state.xcrs)
        .map_err(kvm_err("KVM_SET_XCRS"))?;
    vcpu.set_debug_regs(&state.debug_regs)
        .map_err(kvm_err("KVM_SET_DEBUGREGS"))?;
    phases.mark("XSAVE, XCRs, debug registers");
    vcpu.set_lapic(&state.lapic)
        .map_err(kvm_err("KVM_SET_LAPIC"))?;
    phases.mark("LAPIC");
    restore_msrs(vcpu, &state.msrs)?;
    phases.mark("MSRs");
    vcpu.set_vcpu_events(&state.vcpu_events)
        .map_err(kvm_err("KVM_SET_VCPU_EVENTS"))?;
    vcpu_paused(vcpu);
    phases.mark("events, kvmclock");
    log::debug!(
        "vCPU state restored in {:.1} ms ({phases})",
        phases.total().as_secs_f64() * 1e3
    );
    Ok(())
}

/// Keeps the guest's TSC frequency: a host whose own differs (beyond
/// KVM's tolerance) scales the guest's TSC to the saved one.
fn restore_tsc_khz(vcpu: &VcpuFd, saved_khz: u32) -> Result<(), ArchError> {
    let current = vcpu.get_tsc_khz().map_err(kvm_err("KVM_GET_TSC_KHZ"))?;
    let tolerance = u64::from(saved_khz) * TSC_KHZ_TOLERANCE_PPM / 1_000_000;
    if u64::from(current.abs_diff(saved_khz)) <= tolerance {
        return Ok(());
    }
    vcpu.set_tsc_khz(saved_khz).map_err(|source| {
        ArchError::SavedState(format!(
            "the guest's TSC runs at {saved_khz} kHz, this host's at {current} kHz, \
             and KVM cannot scale it: {source}"
        ))
    })
}

fn restore_xsave(vcpu: &VcpuFd, words: &[u32], xsave2_size: usize) -> Result<(), ArchError> {
    if xsave2_size == 0 {
        let mut xsave = kvm_xsave::default();
        let legacy = words.len().min(XSAVE_LEGACY_WORDS);
        xsave.region[..legacy].copy_from_slice(&words[..legacy]);
        // SAFETY: a whole kvm_xsave, the size KVM_SET_XSAVE reads without XSAVE2.
        return unsafe { vcpu.set_xsave(&xsave) }.map_err(kvm_err("KVM_SET_XSAVE"));
    }
    let mut xsave = xsave_buffer(xsave2_size)?;
    let (legacy, extra) = words.split_at(words.len().min(XSAVE_LEGACY_WORDS));
    // SAFETY: the pointer comes from the live wrapper, and the legacy region
    // is a plain array inside it.
    let region = unsafe { &mut (*xsave.as_mut_fam_struct_ptr()).xsave.region };
    region[..legacy.len()].copy_from_slice(legacy);
    let fam = xsave.as_mut_slice();
    let n = extra.len().min(fam.len());
    fam[..n].copy_from_slice(&extra[..n]);
    // SAFETY: the buffer holds the XSAVE2 size KVM gave for this VM, which
    // is what KVM_SET_XSAVE reads.
    unsafe { vcpu.set_xsave2(&xsave) }.map_err(kvm_err("KVM_SET_XSAVE2"))
}

fn restore_msrs(vcpu: &VcpuFd, saved: &[SavedMsr]) -> Result<(), ArchError> {
    for chunk in saved.chunks(KVM_MAX_MSR_ENTRIES) {
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|msr| kvm_msr_entry {
                index: msr.index,
                data: msr.data,
                ..Default::default()
            })
            .collect();
        let msrs = Msrs::from_entries(&entries).map_err(ArchError::Fam)?;
        let set = vcpu.set_msrs(&msrs).map_err(kvm_err("KVM_SET_MSRS"))?;
        if set != chunk.len() {
            return Err(ArchError::SavedState(format!(
                "KVM refused MSR {:#x} = {:#x}",
                chunk[set].index, chunk[set].data
            )));
        }
    }
    Ok(())
}

/// Tells the guest's kvmclock that its vCPU was stopped (KVM_KVMCLOCK_CTRL),
/// so that its watchdogs do not take the pause for a soft lockup. A guest
/// without kvmclock makes KVM answer EINVAL, which is fine.
pub fn vcpu_paused(vcpu: &VcpuFd) {
    if let Err(err) = vcpu.kvmclock_ctrl() {
        if err.errno() != libc::EINVAL {
            log::debug!("KVM_KVMCLOCK_CTRL: {err}");
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn template(xsave2_size: usize) -> VcpuTemplate {
        VcpuTemplate::for_tests(xsave2_size)
    }

    fn state() -> VcpuState {
        sample()
    }

    /// A plausible saved vCPU, for tests of what contains one.
    pub(crate) fn sample() -> VcpuState {
        VcpuState {
            mp_state: kvm_mp_state { mp_state: 3 },
            regs: kvm_regs {
                rip: 0x1000,
                rax: 7,
                ..Default::default()
            },
            sregs: kvm_sregs::default(),
            xsave: vec![0x5a; XSAVE_LEGACY_WORDS + 16],
            xcrs: kvm_xcrs::default(),
            debug_regs: kvm_debugregs::default(),
            lapic: kvm_lapic_state { regs: [3; 1024] },
            vcpu_events: kvm_vcpu_events::default(),
            cpuid: vec![kvm_cpuid_entry2 {
                function: 0x4000_0000,
                eax: 0x4000_0001,
                ..Default::default()
            }],
            msrs: vec![
                SavedMsr {
                    index: index::IA32_TSC,
                    data: 12345,
                },
                SavedMsr {
                    index: IA32_TSC_DEADLINE,
                    data: 99999,
                },
            ],
            tsc_khz: Some(2_000_000),
        }
    }

    #[test]
    fn a_vcpu_state_round_trips_through_json() {
        let saved = state();
        let text = serde_json::to_string(&saved).unwrap();
        let back: VcpuState = serde_json::from_str(&text).unwrap();
        assert_eq!(back, saved);
        assert_eq!(back.regs.rip, 0x1000);
        assert_eq!(back.msrs[1].index, IA32_TSC_DEADLINE);
    }

    #[test]
    fn an_xsave_area_larger_than_the_hosts_is_refused() {
        let saved = state();
        assert!(check_vcpu_state(&saved, &template(4096 + 64)).is_ok());
        let err = check_vcpu_state(&saved, &template(0)).unwrap_err();
        assert!(
            err.to_string().contains("XSAVE area of 4160 bytes"),
            "{err}"
        );
        let mut short = state();
        short.xsave.truncate(10);
        assert!(check_vcpu_state(&short, &template(4096)).is_err());
    }

    #[test]
    fn an_empty_or_oversized_cpuid_is_refused() {
        let mut saved = state();
        saved.cpuid.clear();
        assert!(check_vcpu_state(&saved, &template(4160)).is_err());
        saved.cpuid = vec![kvm_cpuid_entry2::default(); KVM_MAX_CPUID_ENTRIES + 1];
        assert!(check_vcpu_state(&saved, &template(4160)).is_err());
    }
}
