//! x86_64 guest physical memory layout.
//!
//! ```text
//! 0x0000_0500  GDT                      0x0000_0520  IDT (empty)
//! 0x0000_7000  boot_params (zero page)  0x0000_8ff0  boot stack top
//! 0x0000_9000  PML4  0x0000_a000 PDPT  0x0000_b000 PD (identity map, 1 GiB)
//! 0x0002_0000  kernel command line (up to 64 KiB)
//! 0x0009_fc00  MP table (last KiB of base memory, reserved in e820)
//! 0x0010_0000  high memory: kernel, initrd at the top of low RAM
//! 0xc000_0000  MMIO gap up to 4 GiB: virtio-mmio, IOAPIC, LAPIC
//! 0x1_0000_0000 RAM above 3 GiB continues here
//! ```

/// Global descriptor table.
pub const BOOT_GDT_START: u64 = 0x500;
/// Interrupt descriptor table (one empty entry).
pub const BOOT_IDT_START: u64 = 0x520;
/// Linux boot_params ("zero page").
pub const ZERO_PAGE_START: u64 = 0x7000;
/// Initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Page map level 4 of the boot identity mapping.
pub const PML4_START: u64 = 0x9000;
/// Page directory pointer table.
pub const PDPTE_START: u64 = 0xa000;
/// Page directory (512 x 2 MiB pages = the first GiB).
pub const PDE_START: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_START: u64 = 0x2_0000;
/// Room for the command line, terminating NUL included.
pub const CMDLINE_MAX_SIZE: usize = 0x1_0000;
/// Start of the extended BIOS data area: the MP table lives here.
pub const EBDA_START: u64 = 0x9_fc00;
/// Size of the reserved EBDA window.
pub const EBDA_SIZE: u64 = 0x400;
/// First byte of high memory, where kernels load.
pub const HIMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO gap (devices, IOAPIC, LAPIC).
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// End of the MMIO gap: RAM resumes at 4 GiB.
pub const MMIO_GAP_END: u64 = 0x1_0000_0000;
/// Where virtio-mmio device windows are placed.
pub const MMIO_DEVICES_START: u64 = MMIO_GAP_START;
/// The IOAPIC's MMIO window.
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The boot timer (`--boot-timer`), alone in the MMIO gap below the IOAPIC,
/// far above the virtio-mmio slots.
pub const BOOT_TIMER_START: u64 = 0xfeb0_0000;
/// The local APICs' MMIO window.
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM's three-page TSS region (must be below 4 GiB, outside RAM).
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// Highest address an initrd may end at (the 2 GiB `initrd_addr_max` of
/// older boot protocols; every Linux accepts it).
pub const INITRD_ADDR_MAX: u64 = 0x7fff_ffff;
/// Largest guest memory: RAM above 4 GiB up to a 1 TiB guest physical space.
pub const MAX_GUEST_MEM_MIB: usize = (1 << 20) - ((MMIO_GAP_END - MMIO_GAP_START) >> 20) as usize;

/// Guest RAM ranges for `mem_bytes` of memory: below the MMIO gap, then
/// above 4 GiB for what does not fit.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO_GAP_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO_GAP_START),
            (MMIO_GAP_END, mem_bytes - MMIO_GAP_START),
        ]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ram_skips_the_mmio_gap() {
        assert_eq!(ram_ranges(128 << 20), vec![(0, 128 << 20)]);
        assert_eq!(ram_ranges(MMIO_GAP_START), vec![(0, MMIO_GAP_START)]);
        assert_eq!(
            ram_ranges(4 << 30),
            vec![(0, MMIO_GAP_START), (MMIO_GAP_END, 1 << 30)]
        );
    }

    #[test]
    fn boot_structures_do_not_overlap() {
        let mut areas = [
            (BOOT_GDT_START, 4 * 8),
            (BOOT_IDT_START, 8),
            (ZERO_PAGE_START, 0x1000),
            (PML4_START, 0x1000),
            (PDPTE_START, 0x1000),
            (PDE_START, 0x1000),
            (CMDLINE_START, CMDLINE_MAX_SIZE as u64),
            (EBDA_START, EBDA_SIZE),
        ];
        areas.sort();
        for pair in areas.windows(2) {
            assert!(pair[0].0 + pair[0].1 <= pair[1].0, "{pair:x?}");
        }
        const {
            assert!(
                BOOT_STACK_POINTER > ZERO_PAGE_START + 0x1000 && BOOT_STACK_POINTER < PML4_START
            );
            assert!(EBDA_START + EBDA_SIZE <= HIMEM_START);
        }
    }
}
