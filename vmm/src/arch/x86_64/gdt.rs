//! The boot GDT and the KVM segment registers it implies.

use kvm_bindings::kvm_segment;

/// A GDT entry from its flags (the access byte and the granularity nibble,
/// as `0xF0AA`: flags in bits 12..16, access in bits 0..8), base and limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
}

/// The boot GDT: null, 64-bit code, data, TSS.
pub const BOOT_GDT: [u64; 4] = [
    gdt_entry(0, 0, 0),
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];

/// GDT index of the code segment.
pub const CODE_INDEX: u8 = 1;
/// GDT index of the data segment.
pub const DATA_INDEX: u8 = 2;
/// GDT index of the TSS.
pub const TSS_INDEX: u8 = 3;

fn base(entry: u64) -> u64 {
    ((entry & 0xff00_0000_0000_0000) >> 32)
        | ((entry & 0x0000_00ff_0000_0000) >> 16)
        | ((entry & 0x0000_0000_ffff_0000) >> 16)
}

fn limit(entry: u64) -> u32 {
    let raw = (((entry & 0x000f_0000_0000_0000) >> 32) | (entry & 0xffff)) as u32;
    // With 4 KiB granularity the limit counts pages.
    if (entry >> 55) & 1 == 1 {
        (raw << 12) | 0xfff
    } else {
        raw
    }
}

/// The KVM segment register that loading GDT entry `index` yields.
pub fn segment_from_gdt(entry: u64, index: u8) -> kvm_segment {
    let bit = |n: u32| ((entry >> n) & 1) as u8;
    kvm_segment {
        base: base(entry),
        limit: limit(entry),
        selector: u16::from(index) * 8,
        type_: ((entry >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((entry >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        padding: 0,
        unusable: u8::from(bit(47) == 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_long_mode_ring0_present() {
        let seg = segment_from_gdt(BOOT_GDT[CODE_INDEX as usize], CODE_INDEX);
        assert_eq!(seg.selector, 0x8);
        assert_eq!(
            (seg.l, seg.db, seg.present, seg.s, seg.dpl, seg.g),
            (1, 0, 1, 1, 0, 1)
        );
        assert_eq!(seg.type_, 0xb, "execute/read, accessed");
        assert_eq!(seg.limit, 0xffff_ffff);
        assert_eq!(seg.base, 0);
    }

    #[test]
    fn data_and_tss_segments() {
        let data = segment_from_gdt(BOOT_GDT[DATA_INDEX as usize], DATA_INDEX);
        assert_eq!(
            (data.selector, data.type_, data.db, data.l),
            (0x10, 0x3, 1, 0)
        );
        let tss = segment_from_gdt(BOOT_GDT[TSS_INDEX as usize], TSS_INDEX);
        assert_eq!((tss.selector, tss.type_, tss.s), (0x18, 0xb, 0));
        assert_eq!(tss.unusable, 0);
    }

    #[test]
    fn base_and_limit_round_trip() {
        let entry = gdt_entry(0x4093, 0x1234_5678, 0xabcde);
        let seg = segment_from_gdt(entry, 5);
        assert_eq!(seg.base, 0x1234_5678);
        assert_eq!(seg.limit, 0xabcde, "byte granularity");
        assert_eq!(segment_from_gdt(gdt_entry(0, 0, 0), 0).unusable, 1);
    }
}
