//! aarch64 guest physical memory layout.
//!
//! ```text
//! 0x0800_0000  GICv3 distributor (64 KiB)
//! 0x080a_0000  GICv3 redistributors (128 KiB per vCPU)
//! 0x0900_0000  ns16550a UART (COM1's registers on MMIO)
//! 0x0901_0000  PL031 real-time clock
//! 0x4000_0000  virtio-mmio windows (4 KiB each)
//! 0x8000_0000  DRAM: kernel Image at its start, initrd and device tree at its top
//! ```

/// Guest RAM starts at 2 GiB; devices live below it.
pub const DRAM_START: u64 = 0x8000_0000;
/// Largest guest memory: up to a 1 TiB guest physical space.
pub const MAX_GUEST_MEM_MIB: usize = (1 << 20) - (DRAM_START >> 20) as usize;

/// GICv3 distributor.
pub const GIC_DIST_BASE: u64 = 0x0800_0000;
/// Size of the distributor's registers.
pub const GIC_DIST_SIZE: u64 = 0x1_0000;
/// First redistributor (one per vCPU, contiguous).
pub const GIC_REDIST_BASE: u64 = 0x080a_0000;
/// Size of one vCPU's redistributor (RD and SGI frames).
pub const GIC_REDIST_SIZE_PER_VCPU: u64 = 0x2_0000;

/// The UART (ns16550a, byte registers).
pub const SERIAL_BASE: u64 = 0x0900_0000;
/// Its window.
pub const SERIAL_SIZE: u64 = 0x1000;
/// The PL031 real-time clock.
pub const RTC_BASE: u64 = 0x0901_0000;
/// The boot timer (`--boot-timer`), the page after the clock.
pub const BOOT_TIMER_START: u64 = 0x0902_0000;

/// Where virtio-mmio device windows are placed.
pub const MMIO_DEVICES_START: u64 = 0x4000_0000;

/// Most bytes a device tree may take (the arm64 boot protocol's limit).
pub const FDT_MAX_SIZE: u64 = 0x20_0000;

/// Guest RAM ranges for `mem_bytes` of memory.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    vec![(DRAM_START, mem_bytes)]
}

/// The redistributors' whole range for `vcpu_count` vCPUs.
pub fn gic_redist_size(vcpu_count: u8) -> u64 {
    GIC_REDIST_SIZE_PER_VCPU * u64::from(vcpu_count)
}
