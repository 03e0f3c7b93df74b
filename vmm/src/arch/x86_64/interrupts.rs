//! Local APIC setup: LINT0 receives the PIC's ExtINT, LINT1 NMIs, as the
//! MP table announces (and as firmware would leave them).

use kvm_bindings::kvm_lapic_state;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

fn read_reg(state: &kvm_lapic_state, offset: usize) -> u32 {
    let bytes: [u8; 4] = std::array::from_fn(|i| state.regs[offset + i] as u8);
    u32::from_le_bytes(bytes)
}

fn write_reg(state: &mut kvm_lapic_state, offset: usize, value: u32) {
    for (i, byte) in value.to_le_bytes().into_iter().enumerate() {
        state.regs[offset + i] = byte as _;
    }
}

/// Sets an LVT entry's delivery mode (bits 8..11), keeping its other bits.
fn with_delivery_mode(lvt: u32, mode: u32) -> u32 {
    (lvt & !0x700) | (mode << 8)
}

/// Wires LINT0 to ExtINT and LINT1 to NMI in `state`.
pub fn set_lint(state: &mut kvm_lapic_state) {
    let lvt0 = read_reg(state, APIC_LVT0);
    write_reg(state, APIC_LVT0, with_delivery_mode(lvt0, APIC_MODE_EXTINT));
    let lvt1 = read_reg(state, APIC_LVT1);
    write_reg(state, APIC_LVT1, with_delivery_mode(lvt1, APIC_MODE_NMI));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lint_delivery_modes() {
        let mut state = kvm_lapic_state::default();
        write_reg(&mut state, APIC_LVT0, 0x0001_0000); // masked, fixed
        set_lint(&mut state);
        assert_eq!(read_reg(&state, APIC_LVT0), 0x0001_0700);
        assert_eq!(read_reg(&state, APIC_LVT1), 0x0000_0400);
    }
}
