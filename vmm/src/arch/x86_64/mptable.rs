//! The Intel MultiProcessor Specification (1.4) table: how a guest without
//! ACPI finds its CPUs, its IOAPIC and how ISA interrupts are wired.
//!
//! Laid out at the start of the EBDA (the last KiB of base memory), where
//! Linux scans for the `_MP_` floating pointer.

use super::layout::{APIC_START, EBDA_SIZE, EBDA_START, IOAPIC_START};
use brique_devices::GuestMemoryMmap;
use vm_memory::{Bytes, GuestAddress};

/// IOAPIC input pins; ISA IRQs 0-15 and the virtio-mmio lines above them.
pub const IOAPIC_PINS: u8 = 24;

const SPEC_REV: u8 = 4;
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// Family 6 in the CPU signature; guests take the real one from CPUID.
const CPU_SIGNATURE: u32 = 0x600;
/// CPU feature flags: FPU and APIC present.
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const INT_TYPE_INT: u8 = 0;
const INT_TYPE_NMI: u8 = 1;
const INT_TYPE_EXTINT: u8 = 3;
const ISA_BUS_ID: u8 = 0;

const FLOATING_POINTER_LEN: usize = 16;
const HEADER_LEN: usize = 44;

/// Errors building the MP table.
#[derive(Debug, thiserror::Error)]
pub enum MpTableError {
    /// More vCPUs than APIC ids the IOAPIC id leaves room for.
    #[error("too many vCPUs for the MP table: {0}")]
    TooManyCpus(u8),
    /// The table does not fit in the EBDA window.
    #[error("MP table of {0} bytes does not fit in the EBDA")]
    TooLarge(usize),
    /// Guest memory does not cover the EBDA.
    #[error("cannot write the MP table: {0}")]
    Write(#[from] vm_memory::GuestMemoryError),
}

fn checksum(bytes: &[u8]) -> u8 {
    bytes
        .iter()
        .fold(0u8, |sum, b| sum.wrapping_add(*b))
        .wrapping_neg()
}

/// Serializes the MP floating pointer and configuration table for
/// `vcpu_count` CPUs, located at guest address `base`.
pub fn build(vcpu_count: u8, base: u64) -> Result<Vec<u8>, MpTableError> {
    if vcpu_count == 0 || vcpu_count == u8::MAX {
        return Err(MpTableError::TooManyCpus(vcpu_count));
    }
    let ioapic_id = vcpu_count;
    let mut entries: Vec<u8> = Vec::new();
    let mut entry_count: u16 = 0;

    for cpu in 0..vcpu_count {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BSP } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, LAPIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0u8; 8]);
        entry_count += 1;
    }

    entries.extend_from_slice(&[ENTRY_BUS, ISA_BUS_ID]);
    entries.extend_from_slice(b"ISA   ");
    entry_count += 1;

    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    entry_count += 1;

    // Identity wiring: bus IRQ n -> IOAPIC pin n (KVM's default GSI routing),
    // bus default polarity and trigger (flags 0).
    for pin in 0..IOAPIC_PINS {
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INT_TYPE_INT, 0, 0]);
        entries.extend_from_slice(&[ISA_BUS_ID, pin, ioapic_id, pin]);
        entry_count += 1;
    }

    // LINT0: ExtINT (the PIC) on every local APIC; LINT1: NMI.
    for (int_type, lint) in [(INT_TYPE_EXTINT, 0u8), (INT_TYPE_NMI, 1u8)] {
        entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, int_type, 0, 0]);
        entries.extend_from_slice(&[ISA_BUS_ID, 0, 0xff, lint]);
        entry_count += 1;
    }

    let table_len = HEADER_LEN + entries.len();
    let total = FLOATING_POINTER_LEN + table_len;
    if total as u64 > EBDA_SIZE {
        return Err(MpTableError::TooLarge(total));
    }
    let table_addr = base + FLOATING_POINTER_LEN as u64;

    let mut fp = Vec::with_capacity(FLOATING_POINTER_LEN);
    fp.extend_from_slice(b"_MP_");
    fp.extend_from_slice(&(table_addr as u32).to_le_bytes());
    fp.extend_from_slice(&[1, SPEC_REV, 0, 0, 0, 0, 0, 0]);
    fp[10] = checksum(&fp);

    let mut table = Vec::with_capacity(table_len);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&(table_len as u16).to_le_bytes());
    table.extend_from_slice(&[SPEC_REV, 0]);
    table.extend_from_slice(b"BRIQUE  ");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&entry_count.to_le_bytes());
    table.extend_from_slice(&(APIC_START as u32).to_le_bytes());
    table.extend_from_slice(&[0, 0, 0, 0]); // extended table length, checksum, reserved
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    fp.extend_from_slice(&table);
    Ok(fp)
}

/// Writes the MP table for `vcpu_count` CPUs at the start of the EBDA.
pub fn write(mem: &GuestMemoryMmap, vcpu_count: u8) -> Result<(), MpTableError> {
    let bytes = build(vcpu_count, EBDA_START)?;
    mem.write_slice(&bytes, GuestAddress(EBDA_START))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn floating_pointer_and_table_check_out() {
        for cpus in [1u8, 2, 32] {
            let bytes = build(cpus, EBDA_START).unwrap();
            assert_eq!(&bytes[0..4], b"_MP_");
            assert_eq!(sum(&bytes[0..16]), 0, "floating pointer checksum");
            let table_addr = u32::from_le_bytes(bytes[4..8].try_into().unwrap());
            assert_eq!(u64::from(table_addr), EBDA_START + 16);
            let table = &bytes[16..];
            assert_eq!(&table[0..4], b"PCMP");
            let len = usize::from(u16::from_le_bytes([table[4], table[5]]));
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0, "config table checksum");
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(usize::from(count), usize::from(cpus) + 2 + 24 + 2);
            let lapic = u32::from_le_bytes(table[36..40].try_into().unwrap());
            assert_eq!(u64::from(lapic), APIC_START);
        }
    }

    #[test]
    fn processors_are_listed_with_one_bsp() {
        let bytes = build(4, EBDA_START).unwrap();
        let entries = &bytes[16 + HEADER_LEN..];
        for cpu in 0..4usize {
            let e = &entries[cpu * 20..cpu * 20 + 20];
            assert_eq!(e[0], ENTRY_PROCESSOR);
            assert_eq!(usize::from(e[1]), cpu);
            assert_eq!(e[3], if cpu == 0 { 3 } else { 1 });
        }
        let ioapic = &entries[4 * 20 + 8..4 * 20 + 16];
        assert_eq!((ioapic[0], ioapic[1]), (ENTRY_IOAPIC, 4));
    }

    #[test]
    fn limits() {
        assert!(matches!(
            build(0, EBDA_START),
            Err(MpTableError::TooManyCpus(0))
        ));
        assert!(build(32, EBDA_START).unwrap().len() as u64 <= EBDA_SIZE);
        assert!(matches!(
            build(64, EBDA_START),
            Err(MpTableError::TooLarge(_))
        ));
    }
}
