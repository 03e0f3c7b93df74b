//! Tests on the host's /dev/kvm with tiny hand-assembled 64-bit guests: the
//! whole machine path (KVM VM, vCPU threads, port I/O bus, serial console,
//! i8042 reset, panic watcher, exit reasons) without a Linux kernel.
//!
//! Needs /dev/kvm; without it each test says SKIPPED loudly and passes.
#![cfg(target_arch = "x86_64")]
#![allow(clippy::unwrap_used)]

use brique_vmm::config::MachineConfig;
use brique_vmm::machine::BARE_CODE_ADDR;
use brique_vmm::{ConsoleIo, ExitReason, Machine, Payload, VmConfig};
use std::io::{self, Write};
use std::sync::{Arc, Mutex};

use brique_tests::kvm_available;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

/// 64-bit code: print `message` on COM1 byte by byte, then pulse the
/// i8042 reset line (what Linux does for `reboot=k`), then halt forever.
fn print_then_reset(message: &[u8]) -> Vec<u8> {
    const PROGRAM_LEN: u32 = 25;
    let msg = (BARE_CODE_ADDR as u32 + PROGRAM_LEN).to_le_bytes();
    let mut code = vec![
        0xbe, msg[0], msg[1], msg[2], msg[3], // mov esi, msg
        0xba, 0xf8, 0x03, 0x00, 0x00, // mov edx, 0x3f8
        0xac, // next: lodsb
        0x84, 0xc0, // test al, al
        0x74, 0x03, // jz done
        0xee, // out dx, al
        0xeb, 0xf8, // jmp next
        0xb0, 0xfe, // done: mov al, 0xfe
        0xe6, 0x64, // out 0x64, al
        0xf4, // hlt
        0xeb, 0xfd, // jmp hlt
    ];
    assert_eq!(code.len(), PROGRAM_LEN as usize);
    code.extend_from_slice(message);
    code.push(0);
    code
}

fn config(vcpu_count: u8) -> VmConfig {
    VmConfig {
        machine_config: MachineConfig {
            vcpu_count,
            mem_size_mib: 16,
            ..Default::default()
        },
        ..Default::default()
    }
}

fn run(vcpu_count: u8, code: &[u8]) -> (ExitReason, String) {
    let out = Captured::default();
    let console = ConsoleIo {
        output: Box::new(out.clone()),
        input: None,
    };
    let machine = Machine::boot(
        &config(vcpu_count),
        Payload::BareCode(code),
        console,
        Default::default(),
    )
    .expect("machine boots");
    let reason = machine.wait_for_exit();
    (reason, out.text())
}

#[test]
fn guest_serial_output_reaches_the_console_and_reset_ends_cleanly() {
    if !kvm_available() {
        return;
    }
    let (reason, output) = run(1, &print_then_reset(b"hello from a tiny guest\n"));
    assert_eq!(output, "hello from a tiny guest\n");
    assert_eq!(reason, ExitReason::GuestReset);
    assert_eq!(reason.exit_code(), 0);
}

#[test]
fn every_vcpu_is_stopped_when_the_guest_resets() {
    if !kvm_available() {
        return;
    }
    // vCPUs 1-3 wait for a SIPI that never comes; they must still stop.
    let (reason, output) = run(4, &print_then_reset(b"bsp\n"));
    assert_eq!(output, "bsp\n");
    assert_eq!(reason, ExitReason::GuestReset);
}

#[test]
fn thirty_two_vcpus_boot_and_stop() {
    if !kvm_available() {
        return;
    }
    let (reason, output) = run(32, &print_then_reset(b"32\n"));
    assert_eq!(output, "32\n");
    assert_eq!(reason, ExitReason::GuestReset);
}

#[test]
fn kernel_panic_on_the_console_ends_with_an_error() {
    if !kvm_available() {
        return;
    }
    let message = b"[ 1.0] Kernel panic - not syncing: Attempted to kill init!\n\
        [ 1.0] CPU: 0 PID: 1\n\
        [ 1.1] ---[ end Kernel panic - not syncing: Attempted to kill init! ]---\n";
    let (reason, output) = run(1, &print_then_reset(message));
    assert!(output.ends_with("]---\n"), "{output}");
    assert_eq!(
        reason,
        ExitReason::GuestPanic("Kernel panic - not syncing: Attempted to kill init!".into())
    );
    assert_eq!(reason.exit_code(), 1);
}

#[test]
fn reboot_after_a_panic_line_is_reported_as_the_panic() {
    if !kvm_available() {
        return;
    }
    // With panic=1 Linux prints the panic line, then reboots: no end line.
    let message = b"Kernel panic - not syncing: VFS: Unable to mount root fs\n\
        Rebooting in 1 seconds..\n";
    let (reason, _) = run(1, &print_then_reset(message));
    assert_eq!(
        reason,
        ExitReason::GuestPanic("Kernel panic - not syncing: VFS: Unable to mount root fs".into())
    );
}

#[test]
fn triple_fault_after_a_panic_line_is_reported_as_the_panic() {
    if !kvm_available() {
        return;
    }
    // A panicking kernel can fault while it prints its backtrace.
    let mut code = print_then_reset(b"Kernel panic - not syncing: sysrq triggered crash\n");
    let reset = [0xb0, 0xfe, 0xe6, 0x64];
    let at = code.windows(4).position(|w| w == reset).unwrap();
    code[at..at + 4].copy_from_slice(&[0x0f, 0x0b, 0x90, 0x90]); // ud2 instead of the reset
    let (reason, _) = run(1, &code);
    assert_eq!(
        reason,
        ExitReason::GuestPanic("Kernel panic - not syncing: sysrq triggered crash".into())
    );
}

#[test]
fn triple_fault_ends_with_an_error() {
    if !kvm_available() {
        return;
    }
    // The boot IDT has no present entry: #UD -> #GP -> #DF -> triple fault.
    let code = [0x0f, 0x0b]; // ud2
    let (reason, _) = run(1, &code);
    let ExitReason::TripleFault { vcpu: 0, state } = &reason else {
        panic!("expected a triple fault on vCPU 0, got {reason:?}");
    };
    // The operator gets the vCPU's registers (after the fault: on AMD hosts
    // KVM has re-initialized the vCPU by then, so only their presence is
    // checked here, not the faulting RIP).
    for want in [
        "RIP=",
        "RSP=",
        "CR0=",
        "CR3=",
        "CR4=",
        "EFER=",
        "IDT base=",
        "GDT base=",
        "pending events:",
    ] {
        assert!(state.contains(want), "{want} missing from {state}");
    }
    assert!(
        reason
            .to_string()
            .contains("guest triple fault on vCPU 0; vCPU state:\n  RIP="),
        "{reason}"
    );
    assert_eq!(reason.exit_code(), 1);
}

#[test]
fn unknown_ports_read_as_all_ones() {
    if !kvm_available() {
        return;
    }
    // in al, 0x99 (nothing there); out to COM1; then reset.
    let mut code = vec![
        0xe4, 0x99, // in al, 0x99
        0xba, 0xf8, 0x03, 0x00, 0x00, // mov edx, 0x3f8
        0xee, // out dx, al
        0xb0, 0x0a, // mov al, '\n'
        0xee, // out dx, al
        0xb0, 0xfe, // mov al, 0xfe
        0xe6, 0x64, // out 0x64, al
        0xf4,
    ];
    code.push(0xf4);
    let (reason, output) = run(1, &code);
    assert_eq!(
        output.as_bytes(),
        b"\xef\xbf\xbd\n",
        "0xff is not UTF-8: lossy replacement"
    );
    assert_eq!(reason, ExitReason::GuestReset);
}
