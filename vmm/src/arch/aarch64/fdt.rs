//! The flattened device tree an aarch64 guest boots with (vm-fdt): CPUs
//! with their MPIDRs and PSCI, memory, the command line and initrd, the
//! GICv3, the architected timer, the UART, the PL031 clock and one node per
//! virtio-mmio device.

use super::devices::{RTC_IRQ, SERIAL_IRQ};
use super::gic::SPI_BASE;
use super::layout::*;
use super::VirtioSlot;
use vm_fdt::{Error as FdtError, FdtWriter};

/// The GIC's phandle.
const GIC_PHANDLE: u32 = 1;
/// The fixed clock PrimeCell devices (the PL031) need.
const APB_CLOCK_PHANDLE: u32 = 2;
/// Device tree interrupt specifier: shared or private line.
const GIC_SPI: u32 = 0;
const GIC_PPI: u32 = 1;
/// Trigger types.
const IRQ_TYPE_EDGE_RISING: u32 = 1;
const IRQ_TYPE_LEVEL_HIGH: u32 = 4;
/// The architected timer's private lines: secure, non-secure physical,
/// virtual, hypervisor.
const TIMER_PPIS: [u32; 4] = [13, 14, 11, 10];

/// What the device tree describes.
#[derive(Debug, Clone)]
pub struct FdtParams<'a> {
    /// Each vCPU's MPIDR_EL1.
    pub mpidrs: &'a [u64],
    /// Guest RAM in bytes (from [`DRAM_START`]).
    pub mem_bytes: u64,
    /// The kernel command line.
    pub cmdline: &'a str,
    /// The initrd's guest range, if any.
    pub initrd: Option<(u64, u64)>,
    /// The virtio-mmio devices.
    pub virtio: &'a [VirtioSlot],
}

fn two(value: u64) -> [u32; 2] {
    [(value >> 32) as u32, value as u32]
}

fn reg(base: u64, size: u64) -> Vec<u64> {
    vec![base, size]
}

/// The guest-visible interrupt (an SPI's INTID) as a device tree specifier.
fn spi(intid: u32) -> [u32; 3] {
    [GIC_SPI, intid - SPI_BASE, IRQ_TYPE_EDGE_RISING]
}

/// Builds the device tree blob.
pub fn build(params: &FdtParams<'_>) -> Result<Vec<u8>, FdtError> {
    let mut fdt = FdtWriter::new()?;
    let root = fdt.begin_node("")?;
    fdt.property_string("compatible", "linux,dummy-virt")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 2)?;
    fdt.property_u32("interrupt-parent", GIC_PHANDLE)?;

    let cpus = fdt.begin_node("cpus")?;
    fdt.property_u32("#address-cells", 2)?;
    fdt.property_u32("#size-cells", 0)?;
    for &mpidr in params.mpidrs {
        // The affinity fields, as the cpu nodes' reg takes them.
        let hwid = mpidr & 0x00ff_00ff_ffff;
        let cpu = fdt.begin_node(&format!("cpu@{hwid:x}"))?;
        fdt.property_string("device_type", "cpu")?;
        fdt.property_string("compatible", "arm,arm-v8")?;
        fdt.property_string("enable-method", "psci")?;
        fdt.property_array_u32("reg", &two(hwid))?;
        fdt.end_node(cpu)?;
    }
    fdt.end_node(cpus)?;

    let memory = fdt.begin_node(&format!("memory@{DRAM_START:x}"))?;
    fdt.property_string("device_type", "memory")?;
    fdt.property_array_u64("reg", &reg(DRAM_START, params.mem_bytes))?;
    fdt.end_node(memory)?;

    let chosen = fdt.begin_node("chosen")?;
    fdt.property_string("bootargs", params.cmdline)?;
    fdt.property_string("stdout-path", &format!("/uart@{SERIAL_BASE:x}"))?;
    if let Some((start, end)) = params.initrd {
        fdt.property_u64("linux,initrd-start", start)?;
        fdt.property_u64("linux,initrd-end", end)?;
    }
    fdt.end_node(chosen)?;

    let vcpu_count = params.mpidrs.len() as u8;
    let gic = fdt.begin_node(&format!("intc@{GIC_DIST_BASE:x}"))?;
    fdt.property_string("compatible", "arm,gic-v3")?;
    fdt.property_null("interrupt-controller")?;
    fdt.property_u32("#interrupt-cells", 3)?;
    fdt.property_array_u64(
        "reg",
        &[
            GIC_DIST_BASE,
            GIC_DIST_SIZE,
            GIC_REDIST_BASE,
            gic_redist_size(vcpu_count),
        ],
    )?;
    fdt.property_u32("#redistributor-regions", 1)?;
    fdt.property_u32("phandle", GIC_PHANDLE)?;
    // The maintenance interrupt (PPI 9), for a guest hypervisor.
    fdt.property_array_u32("interrupts", &[GIC_PPI, 9, IRQ_TYPE_LEVEL_HIGH])?;
    fdt.end_node(gic)?;

    let timer = fdt.begin_node("timer")?;
    fdt.property_string("compatible", "arm,armv8-timer")?;
    fdt.property_null("always-on")?;
    let interrupts: Vec<u32> = TIMER_PPIS
        .iter()
        .flat_map(|&ppi| [GIC_PPI, ppi, IRQ_TYPE_LEVEL_HIGH])
        .collect();
    fdt.property_array_u32("interrupts", &interrupts)?;
    fdt.end_node(timer)?;

    let psci = fdt.begin_node("psci")?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,psci-0.2".to_owned(), "arm,psci".to_owned()],
    )?;
    fdt.property_string("method", "hvc")?;
    fdt.end_node(psci)?;

    let clock = fdt.begin_node("apb-pclk")?;
    fdt.property_string("compatible", "fixed-clock")?;
    fdt.property_u32("#clock-cells", 0)?;
    fdt.property_u32("clock-frequency", 24_000_000)?;
    fdt.property_string("clock-output-names", "clk24mhz")?;
    fdt.property_u32("phandle", APB_CLOCK_PHANDLE)?;
    fdt.end_node(clock)?;

    let uart = fdt.begin_node(&format!("uart@{SERIAL_BASE:x}"))?;
    fdt.property_string("compatible", "ns16550a")?;
    fdt.property_array_u64("reg", &reg(SERIAL_BASE, SERIAL_SIZE))?;
    fdt.property_u32("clock-frequency", 1_843_200)?;
    fdt.property_array_u32("interrupts", &spi(SERIAL_IRQ))?;
    fdt.end_node(uart)?;

    let rtc = fdt.begin_node(&format!("rtc@{RTC_BASE:x}"))?;
    fdt.property_string_list(
        "compatible",
        vec!["arm,pl031".to_owned(), "arm,primecell".to_owned()],
    )?;
    fdt.property_array_u64("reg", &reg(RTC_BASE, 0x1000))?;
    fdt.property_array_u32("interrupts", &spi(RTC_IRQ))?;
    fdt.property_u32("clocks", APB_CLOCK_PHANDLE)?;
    fdt.property_string("clock-names", "apb_pclk")?;
    fdt.end_node(rtc)?;

    for slot in params.virtio {
        let node = fdt.begin_node(&format!("virtio_mmio@{:x}", slot.base))?;
        fdt.property_string("compatible", "virtio,mmio")?;
        fdt.property_array_u64("reg", &reg(slot.base, 0x1000))?;
        fdt.property_array_u32("interrupts", &spi(slot.irq))?;
        fdt.property_null("dma-coherent")?;
        fdt.end_node(node)?;
    }

    fdt.end_node(root)?;
    fdt.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params<'a>(mpidrs: &'a [u64], virtio: &'a [VirtioSlot]) -> FdtParams<'a> {
        FdtParams {
            mpidrs,
            mem_bytes: 256 << 20,
            cmdline: "console=ttyS0 panic=1",
            initrd: Some((0x8f00_0000, 0x8f10_0000)),
            virtio,
        }
    }

    /// The tree decompiled by dtc, when dtc is installed (the test
    /// command installs it); None otherwise, said loudly.
    fn decompile(blob: &[u8]) -> Option<String> {
        let dir = std::env::temp_dir().join(format!("brique-fdt-{}", std::process::id()));
        std::fs::create_dir_all(&dir).ok()?;
        let path = dir.join("guest.dtb");
        std::fs::write(&path, blob).ok()?;
        let output = std::process::Command::new("dtc")
            .args(["-I", "dtb", "-O", "dts"])
            .arg(&path)
            .output();
        let _ = std::fs::remove_dir_all(&dir);
        match output {
            Ok(out) if out.status.success() => Some(String::from_utf8_lossy(&out.stdout).into()),
            other => {
                eprintln!("\n*** SKIPPED: dtc cannot decompile the device tree: {other:?} ***\n");
                None
            }
        }
    }

    #[test]
    fn the_tree_has_what_the_guest_needs() {
        let virtio = [
            VirtioSlot {
                base: MMIO_DEVICES_START,
                irq: 40,
            },
            VirtioSlot {
                base: MMIO_DEVICES_START + 0x1000,
                irq: 41,
            },
        ];
        let blob = build(&params(&[0x8000_0000, 0x8000_0001], &virtio)).unwrap();
        assert_eq!(&blob[..4], &[0xd0, 0x0d, 0xfe, 0xed], "FDT magic");
        assert!(blob.len() as u64 <= FDT_MAX_SIZE);
        let Some(dts) = decompile(&blob) else {
            return;
        };
        for needed in [
            "compatible = \"arm,gic-v3\"",
            "compatible = \"arm,armv8-timer\"",
            "compatible = \"arm,psci-0.2\\0arm,psci\"",
            "method = \"hvc\"",
            "cpu@0 {",
            "cpu@1 {",
            "enable-method = \"psci\"",
            "reg = <0x00 0x80000000 0x00 0x10000000>",
            "bootargs = \"console=ttyS0 panic=1\"",
            "linux,initrd-start = <0x00 0x8f000000>",
            "compatible = \"ns16550a\"",
            "uart@9000000",
            "compatible = \"arm,pl031\\0arm,primecell\"",
            "virtio_mmio@40000000",
            "virtio_mmio@40001000",
            // SPI 8 and 9 (INTIDs 40, 41), edge rising: the irqfd lines.
            "interrupts = <0x00 0x08 0x01>",
            "interrupts = <0x00 0x09 0x01>",
            // Two vCPUs: two 128 KiB redistributors.
            "reg = <0x00 0x8000000 0x00 0x10000 0x00 0x80a0000 0x00 0x40000>",
        ] {
            assert!(dts.contains(needed), "missing {needed:?} in\n{dts}");
        }
    }
}
