//! Tiny hand-assembled guests for tests and benchmarks that run on a
//! /dev/kvm that cannot boot Linux: 64-bit code wrapped in a minimal ELF
//! "kernel", so that brique boots it through its ordinary Linux path
//! (config file or API, boot_params, long mode entry).

/// Guest-physical load address of the code (above the 1 MiB boot area).
const LOAD_ADDR: u64 = 0x100_0000;
const EHDR_LEN: u64 = 64;
const PHDR_LEN: u64 = 56;

/// Prints `.` on COM1, spins a while, and repeats forever: a guest whose
/// console output grows while it runs and stops growing while paused.
pub const DOT_PRINTER: &[u8] = &[
    0x66, 0xba, 0xf8, 0x03, // mov dx, 0x3f8
    0xb0, b'.', // loop: mov al, '.'
    0xee, // out dx, al
    0xb9, 0x00, 0x10, 0x00, 0x00, // mov ecx, 0x1000
    0xff, 0xc9, // spin: dec ecx
    0x75, 0xfc, // jnz spin
    0xeb, 0xf2, // jmp loop
];

/// Prints the letters `a` to `z` on COM1, one after the other with a spin
/// of `spin` (at least 1) rounds in between, over and over: the letter in
/// `bl` says where the guest is, so a restored guest shows whether it went
/// on from where it was saved (the next letter) or started over. With a
/// spin of 1 the guest is almost always at a port write: a pause then
/// lands right after one.
pub fn letter_counter(spin: u32) -> Vec<u8> {
    let mut code = vec![
        0x66,
        0xba,
        0xf8,
        0x03, // mov dx, 0x3f8
        0xb3,
        b'a', // mov bl, 'a'
        0x88,
        0xd8, // loop: mov al, bl
        0xee, // out dx, al
        0xfe,
        0xc3, // inc bl
        0x80,
        0xfb,
        b'z' + 1, // cmp bl, 'z' + 1
        0x75,
        0x02, // jne spin_start
        0xb3,
        b'a', // mov bl, 'a'
        0xb9, // spin_start: mov ecx, spin
    ];
    code.extend_from_slice(&spin.max(1).to_le_bytes());
    code.extend_from_slice(&[
        0xff, 0xc9, // spin: dec ecx
        0x75, 0xfc, // jnz spin
        0xeb, 0xe9, // jmp loop
    ]);
    code
}

/// [`letter_counter`]'s spin between letters in most tests.
pub const LETTER_SPIN: u32 = 0x4000;

/// The letter after `letter` in [`letter_counter`]'s cycle.
pub fn next_letter(letter: u8) -> u8 {
    if letter >= b'z' {
        b'a'
    } else {
        letter + 1
    }
}

/// An ELF64 x86_64 executable whose one PT_LOAD segment holds `code`,
/// entered at its first byte.
pub fn elf_kernel(code: &[u8]) -> Vec<u8> {
    let file_len = EHDR_LEN + PHDR_LEN + code.len() as u64;
    let entry = LOAD_ADDR + EHDR_LEN + PHDR_LEN;
    let mut elf = Vec::with_capacity(file_len as usize);
    // e_ident: magic, 64-bit, little-endian, version 1, System V ABI.
    elf.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0]);
    elf.extend_from_slice(&[0; 8]);
    elf.extend_from_slice(&2u16.to_le_bytes()); // e_type: EXEC
    elf.extend_from_slice(&0x3eu16.to_le_bytes()); // e_machine: x86-64
    elf.extend_from_slice(&1u32.to_le_bytes()); // e_version
    elf.extend_from_slice(&entry.to_le_bytes()); // e_entry
    elf.extend_from_slice(&EHDR_LEN.to_le_bytes()); // e_phoff
    elf.extend_from_slice(&0u64.to_le_bytes()); // e_shoff
    elf.extend_from_slice(&0u32.to_le_bytes()); // e_flags
    elf.extend_from_slice(&(EHDR_LEN as u16).to_le_bytes()); // e_ehsize
    elf.extend_from_slice(&(PHDR_LEN as u16).to_le_bytes()); // e_phentsize
    elf.extend_from_slice(&1u16.to_le_bytes()); // e_phnum
    elf.extend_from_slice(&64u16.to_le_bytes()); // e_shentsize
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shnum
    elf.extend_from_slice(&0u16.to_le_bytes()); // e_shstrndx
                                                // The program header: the whole file loaded at LOAD_ADDR.
    elf.extend_from_slice(&1u32.to_le_bytes()); // p_type: LOAD
    elf.extend_from_slice(&5u32.to_le_bytes()); // p_flags: R+X
    elf.extend_from_slice(&0u64.to_le_bytes()); // p_offset
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_vaddr
    elf.extend_from_slice(&LOAD_ADDR.to_le_bytes()); // p_paddr
    elf.extend_from_slice(&file_len.to_le_bytes()); // p_filesz
    elf.extend_from_slice(&file_len.to_le_bytes()); // p_memsz
    elf.extend_from_slice(&0x1000u64.to_le_bytes()); // p_align
    elf.extend_from_slice(code);
    elf
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_elf_header_points_at_the_code() {
        let elf = elf_kernel(DOT_PRINTER);
        assert_eq!(&elf[..4], b"\x7fELF");
        let entry = u64::from_le_bytes(elf[24..32].try_into().unwrap());
        let offset = (entry - LOAD_ADDR) as usize;
        assert_eq!(&elf[offset..], DOT_PRINTER);
    }
}
