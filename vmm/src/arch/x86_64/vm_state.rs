//! The VM-wide state KVM holds on x86_64: the two PICs, the IOAPIC, the
//! PIT and kvmclock.

use super::{kvm_err, ArchError, InterruptController};
use kvm_bindings::{
    kvm_clock_data, kvm_irqchip, kvm_pit_state2, KVM_CLOCK_REALTIME, KVM_IRQCHIP_IOAPIC,
    KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::VmFd;
use serde::{Deserialize, Serialize};

/// The in-kernel interrupt controllers, timer and clock of a VM.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmState {
    /// Master 8259.
    pub pic_master: kvm_irqchip,
    /// Slave 8259.
    pub pic_slave: kvm_irqchip,
    /// IOAPIC.
    pub ioapic: kvm_irqchip,
    /// 8254 PIT.
    pub pit: kvm_pit_state2,
    /// kvmclock.
    pub clock: kvm_clock_data,
}

impl std::fmt::Debug for VmState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // kvm_irqchip (a union) has no Debug of its own.
        f.debug_struct("VmState")
            .field("pit", &self.pit)
            .field("clock", &self.clock)
            .finish_non_exhaustive()
    }
}

fn irqchip(vm: &VmFd, chip_id: u32) -> Result<kvm_irqchip, ArchError> {
    let mut chip = kvm_irqchip {
        chip_id,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip)
        .map_err(kvm_err("KVM_GET_IRQCHIP"))?;
    Ok(chip)
}

/// Reads the VM's state (its vCPUs paused and saved).
pub fn save_vm(
    vm: &VmFd,
    _irqchip: &InterruptController,
    _vcpus: &[super::VcpuState],
) -> Result<VmState, ArchError> {
    Ok(VmState {
        pic_master: irqchip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: irqchip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: irqchip(vm, KVM_IRQCHIP_IOAPIC)?,
        pit: vm.get_pit2().map_err(kvm_err("KVM_GET_PIT2"))?,
        clock: vm.get_clock().map_err(kvm_err("KVM_GET_CLOCK"))?,
    })
}

/// The clock to give KVM_SET_CLOCK. KVM reports flags it does not take
/// back (TSC_STABLE, HOST_TSC). Only with `realtime` (and a saved wall
/// time) is KVM_CLOCK_REALTIME given back, so that KVM advances the clock
/// by the wall time since the snapshot (the guest's clock jumps by the
/// pause, no more); otherwise the clock goes on from where it stopped, as
/// Firecracker's `clock_realtime: false` does.
pub fn clock_to_set(saved: &kvm_clock_data, realtime: bool) -> kvm_clock_data {
    let flags = if realtime {
        saved.flags & KVM_CLOCK_REALTIME
    } else {
        0
    };
    kvm_clock_data { flags, ..*saved }
}

/// Puts a saved state into a new VM (after `setup_vm`, before its vCPUs
/// run); `clock_realtime` as for [`clock_to_set`].
pub fn restore_vm(
    vm: &VmFd,
    _irqchip: &InterruptController,
    state: &VmState,
    clock_realtime: bool,
) -> Result<(), ArchError> {
    let chips = [
        (KVM_IRQCHIP_PIC_MASTER, &state.pic_master),
        (KVM_IRQCHIP_PIC_SLAVE, &state.pic_slave),
        (KVM_IRQCHIP_IOAPIC, &state.ioapic),
    ];
    for (expected, chip) in chips {
        if chip.chip_id != expected {
            return Err(ArchError::SavedState(format!(
                "interrupt controller {} saved where {expected} belongs",
                chip.chip_id
            )));
        }
    }
    vm.set_pit2(&state.pit).map_err(kvm_err("KVM_SET_PIT2"))?;
    if clock_realtime && state.clock.flags & KVM_CLOCK_REALTIME == 0 {
        log::warn!(
            "clock_realtime: the snapshot's clock has no wall time (its host's KVM did not \
             report KVM_CLOCK_REALTIME); the guest clock goes on from where it stopped"
        );
    }
    vm.set_clock(&clock_to_set(&state.clock, clock_realtime))
        .map_err(kvm_err("KVM_SET_CLOCK"))?;
    for (_, chip) in chips {
        vm.set_irqchip(chip).map_err(kvm_err("KVM_SET_IRQCHIP"))?;
    }
    Ok(())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use kvm_bindings::{KVM_CLOCK_HOST_TSC, KVM_CLOCK_TSC_STABLE};

    #[test]
    fn only_the_realtime_clock_flag_is_given_back_and_only_when_asked() {
        let saved = kvm_clock_data {
            clock: 123_456_789,
            flags: KVM_CLOCK_TSC_STABLE | KVM_CLOCK_REALTIME | KVM_CLOCK_HOST_TSC,
            realtime: 42,
            ..Default::default()
        };
        let set = clock_to_set(&saved, true);
        assert_eq!(set.flags, KVM_CLOCK_REALTIME);
        assert_eq!((set.clock, set.realtime), (123_456_789, 42));
        assert_eq!(clock_to_set(&saved, false).flags, 0);
        let no_realtime = kvm_clock_data {
            flags: KVM_CLOCK_TSC_STABLE,
            ..saved
        };
        assert_eq!(clock_to_set(&no_realtime, true).flags, 0);
    }

    #[test]
    fn a_vm_state_round_trips_through_json() {
        let state = sample();
        let text = serde_json::to_string(&state).unwrap();
        let back: VmState = serde_json::from_str(&text).unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), text);
        assert_eq!(back.ioapic.chip_id, KVM_IRQCHIP_IOAPIC);
        assert_eq!((back.pit.flags, back.clock.clock), (1, 77));
    }

    /// A plausible saved VM, for tests of what contains one.
    pub(crate) fn sample() -> VmState {
        VmState {
            pic_master: kvm_irqchip {
                chip_id: KVM_IRQCHIP_PIC_MASTER,
                ..Default::default()
            },
            pic_slave: kvm_irqchip {
                chip_id: KVM_IRQCHIP_PIC_SLAVE,
                ..Default::default()
            },
            ioapic: kvm_irqchip {
                chip_id: KVM_IRQCHIP_IOAPIC,
                ..Default::default()
            },
            pit: kvm_pit_state2 {
                flags: 1,
                ..Default::default()
            },
            clock: kvm_clock_data {
                clock: 77,
                ..Default::default()
            },
        }
    }
}
