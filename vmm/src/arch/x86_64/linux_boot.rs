//! Loading a Linux kernel (ELF vmlinux or bzImage) and initrd, and filling
//! boot_params ("zero page") with the command line, initrd and e820 map:
//! the Linux 64-bit boot protocol (Documentation/arch/x86/boot.rst).

use super::layout::{CMDLINE_START, EBDA_START, HIMEM_START, INITRD_ADDR_MAX, ZERO_PAGE_START};
use brique_devices::GuestMemoryMmap;
use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params, setup_header};
use linux_loader::loader::{BzImage, Elf, KernelLoader};
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use vm_memory::{Address, GuestAddress, GuestMemoryBackend, GuestMemoryRegion};

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const BOOT_FLAG_MAGIC: u16 = 0xaa55;
const HDRS_MAGIC: u32 = 0x5372_6448; // "HdrS"
const LOADER_TYPE_UNDEFINED: u8 = 0xff;
const KERNEL_ALIGNMENT: u32 = 0x0100_0000;
/// Offset of the 64-bit entry point in a bzImage's protected-mode code.
const BZIMAGE_64BIT_ENTRY_OFFSET: u64 = 0x200;
const PAGE_SIZE: u64 = 0x1000;

/// Errors loading the kernel or initrd.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// Reading the kernel file failed.
    #[error("cannot read the kernel image: {0}")]
    ReadKernel(std::io::Error),
    /// The kernel is neither a loadable ELF nor a bzImage.
    #[error("kernel image is neither an x86_64 ELF vmlinux nor a bzImage: {0}")]
    LoadKernel(linux_loader::loader::Error),
    /// Reading the initrd failed.
    #[error("cannot read the initrd: {0}")]
    ReadInitrd(std::io::Error),
    /// The initrd does not fit between the kernel and the top of low memory.
    #[error("initrd of {size} bytes does not fit in guest memory above the kernel")]
    InitrdTooLarge { size: u64 },
    /// Copying into guest memory failed.
    #[error("cannot copy the initrd into guest memory: {0}")]
    WriteInitrd(vm_memory::GuestMemoryError),
    /// The command line does not fit.
    #[error("kernel command line: {0}")]
    Cmdline(linux_loader::loader::Error),
    /// Writing boot_params failed.
    #[error("cannot write boot_params: {0}")]
    BootParams(linux_loader::configurator::Error),
    /// Too many memory ranges for the zero page's e820 table.
    #[error("too many e820 entries")]
    TooManyE820Entries,
}

/// A kernel in guest memory, ready to enter.
#[derive(Debug, Clone, Copy)]
pub struct LoadedKernel {
    /// Guest address of the 64-bit entry point.
    pub entry: u64,
    /// First guest address past the kernel.
    pub end: u64,
    /// The bzImage's setup header, to seed boot_params with.
    pub setup_header: Option<setup_header>,
}

/// Where the initrd was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoadedInitrd {
    /// Guest address.
    pub addr: u64,
    /// Size in bytes.
    pub size: u64,
}

/// Loads `kernel` (ELF or bzImage, told apart by the ELF magic).
pub fn load_kernel(mem: &GuestMemoryMmap, kernel: &mut File) -> Result<LoadedKernel, BootError> {
    let mut magic = [0u8; 4];
    kernel
        .read_exact(&mut magic)
        .map_err(BootError::ReadKernel)?;
    kernel
        .seek(SeekFrom::Start(0))
        .map_err(BootError::ReadKernel)?;
    let himem = Some(GuestAddress(HIMEM_START));
    if &magic == b"\x7fELF" {
        let result = Elf::load(mem, None, kernel, himem).map_err(BootError::LoadKernel)?;
        Ok(LoadedKernel {
            entry: result.kernel_load.raw_value(),
            end: result.kernel_end,
            setup_header: None,
        })
    } else {
        let result = BzImage::load(mem, None, kernel, himem).map_err(BootError::LoadKernel)?;
        Ok(LoadedKernel {
            entry: result.kernel_load.raw_value() + BZIMAGE_64BIT_ENTRY_OFFSET,
            end: result.kernel_end,
            setup_header: result.setup_header,
        })
    }
}

/// Places `initrd` page-aligned at the top of low memory, below 2 GiB and
/// above the kernel.
pub fn load_initrd(
    mem: &GuestMemoryMmap,
    initrd: &mut File,
    kernel_end: u64,
) -> Result<LoadedInitrd, BootError> {
    let size = initrd.metadata().map_err(BootError::ReadInitrd)?.len();
    let low_ram_end = mem
        .iter()
        .next()
        .map_or(0, |region| region.last_addr().raw_value() + 1);
    let top = low_ram_end.min(INITRD_ADDR_MAX + 1);
    let addr = top
        .checked_sub(size)
        .map(|addr| addr & !(PAGE_SIZE - 1))
        .filter(|addr| *addr >= kernel_end)
        .ok_or(BootError::InitrdTooLarge { size })?;
    let size_usize = usize::try_from(size).map_err(|_| BootError::InitrdTooLarge { size })?;
    vm_memory::Bytes::read_exact_volatile_from(mem, GuestAddress(addr), initrd, size_usize)
        .map_err(BootError::WriteInitrd)?;
    Ok(LoadedInitrd { addr, size })
}

/// Writes the command line at its fixed address.
pub fn write_cmdline(
    mem: &GuestMemoryMmap,
    cmdline: &linux_loader::cmdline::Cmdline,
) -> Result<(), BootError> {
    linux_loader::loader::load_cmdline(mem, GuestAddress(CMDLINE_START), cmdline)
        .map_err(BootError::Cmdline)
}

/// The e820 map for the guest's RAM `ranges`: base memory up to the EBDA,
/// then every range from 1 MiB up.
pub fn e820_map(ranges: &[(u64, u64)]) -> Vec<boot_e820_entry> {
    let entry = |addr, size, kind| boot_e820_entry {
        addr,
        size,
        r#type: kind,
    };
    let mut map = vec![
        entry(0, EBDA_START, E820_RAM),
        entry(EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
    ];
    for &(start, len) in ranges {
        let end = start + len;
        let start = start.max(HIMEM_START);
        if end > start {
            map.push(entry(start, end - start, E820_RAM));
        }
    }
    map
}

/// Fills and writes boot_params at the zero page.
pub fn write_boot_params(
    mem: &GuestMemoryMmap,
    kernel: &LoadedKernel,
    cmdline_len: usize,
    initrd: Option<LoadedInitrd>,
) -> Result<(), BootError> {
    let mut params = boot_params::default();
    if let Some(header) = kernel.setup_header {
        params.hdr = header;
    } else {
        params.hdr.boot_flag = BOOT_FLAG_MAGIC;
        params.hdr.header = HDRS_MAGIC;
        params.hdr.kernel_alignment = KERNEL_ALIGNMENT;
    }
    params.hdr.type_of_loader = LOADER_TYPE_UNDEFINED;
    params.hdr.cmd_line_ptr = CMDLINE_START as u32;
    params.hdr.cmdline_size = cmdline_len as u32;
    if let Some(initrd) = initrd {
        params.hdr.ramdisk_image = initrd.addr as u32;
        params.hdr.ramdisk_size = initrd.size as u32;
    }

    let ranges: Vec<(u64, u64)> = mem
        .iter()
        .map(|r| (r.start_addr().raw_value(), r.len()))
        .collect();
    let map = e820_map(&ranges);
    if map.len() > params.e820_table.len() {
        return Err(BootError::TooManyE820Entries);
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(&map) {
        *slot = *entry;
    }
    params.e820_entries = map.len() as u8;

    LinuxBootConfigurator::write_bootparams::<GuestMemoryMmap>(
        &BootParams::new::<boot_params>(&params, GuestAddress(ZERO_PAGE_START)),
        mem,
    )
    .map_err(BootError::BootParams)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::Bytes;

    fn mem(size: u64) -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap()
    }

    fn temp_file(content: &[u8]) -> File {
        let path = std::env::temp_dir().join(format!(
            "brique-boot-test-{}-{}",
            std::process::id(),
            content.len()
        ));
        let mut file = File::create(&path).unwrap();
        file.write_all(content).unwrap();
        let file = File::open(&path).unwrap();
        std::fs::remove_file(&path).unwrap();
        file
    }

    #[test]
    fn e820_reserves_the_ebda_and_skips_the_gap() {
        let map = e820_map(&[(0, 0xc000_0000), (0x1_0000_0000, 0x4000_0000)]);
        let got: Vec<(u64, u64, u32)> = map.iter().map(|e| (e.addr, e.size, e.r#type)).collect();
        assert_eq!(
            got,
            vec![
                (0, EBDA_START, E820_RAM),
                (EBDA_START, HIMEM_START - EBDA_START, E820_RESERVED),
                (HIMEM_START, 0xc000_0000 - HIMEM_START, E820_RAM),
                (0x1_0000_0000, 0x4000_0000, E820_RAM),
            ]
        );
    }

    #[test]
    fn initrd_goes_page_aligned_to_the_top_of_memory() {
        let mem = mem(64 << 20);
        let mut initrd = temp_file(&[0x5a; 5000]);
        let placed = load_initrd(&mem, &mut initrd, 0x200_0000).unwrap();
        assert_eq!(placed.size, 5000);
        assert_eq!(placed.addr % PAGE_SIZE, 0);
        assert!(placed.addr + placed.size <= 64 << 20);
        let mut byte = [0u8; 1];
        mem.read_slice(&mut byte, GuestAddress(placed.addr + 4999))
            .unwrap();
        assert_eq!(byte[0], 0x5a);
    }

    #[test]
    fn initrd_that_would_overlap_the_kernel_is_refused() {
        let mem = mem(16 << 20);
        let mut initrd = temp_file(&[0; 8192]);
        let err = load_initrd(&mem, &mut initrd, (16 << 20) - 4096).unwrap_err();
        assert!(matches!(err, BootError::InitrdTooLarge { size: 8192 }));
    }

    #[test]
    fn garbage_is_not_a_kernel() {
        let mem = mem(64 << 20);
        let mut junk = temp_file(&[0x11; 4096]);
        assert!(matches!(
            load_kernel(&mem, &mut junk),
            Err(BootError::LoadKernel(_))
        ));
        let mut empty = temp_file(&[]);
        assert!(matches!(
            load_kernel(&mem, &mut empty),
            Err(BootError::ReadKernel(_))
        ));
    }

    #[test]
    fn boot_params_carry_cmdline_initrd_and_e820() {
        let mem = mem(64 << 20);
        let kernel = LoadedKernel {
            entry: 0x100_0000,
            end: 0x200_0000,
            setup_header: None,
        };
        let initrd = LoadedInitrd {
            addr: 0x300_0000,
            size: 0x1234,
        };
        write_boot_params(&mem, &kernel, 42, Some(initrd)).unwrap();
        let params: boot_params = mem.read_obj(GuestAddress(ZERO_PAGE_START)).unwrap();
        assert_eq!({ params.hdr.boot_flag }, BOOT_FLAG_MAGIC);
        assert_eq!({ params.hdr.header }, HDRS_MAGIC);
        assert_eq!({ params.hdr.cmd_line_ptr }, CMDLINE_START as u32);
        assert_eq!({ params.hdr.cmdline_size }, 42);
        assert_eq!({ params.hdr.ramdisk_image }, 0x300_0000);
        assert_eq!({ params.hdr.ramdisk_size }, 0x1234);
        assert_eq!(params.e820_entries, 3);
        let last = params.e820_table[2];
        assert_eq!(
            ({ last.addr }, { last.size }),
            (HIMEM_START, (64 << 20) - HIMEM_START)
        );
    }
}
