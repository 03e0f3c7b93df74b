//! What a stopped vCPU looked like, for operators debugging a guest that
//! triple-faulted or that KVM could not run: instruction and stack pointers,
//! control registers, descriptor tables and pending events.

use kvm_bindings::{kvm_regs, kvm_sregs, kvm_vcpu_events};
use kvm_ioctls::VcpuFd;
use std::fmt::Write;

/// Reads the vCPU's registers and events and formats them on a few lines.
/// A register set KVM refuses to give is named with the error instead.
pub fn vcpu_state_report(vcpu: &VcpuFd) -> String {
    let regs = vcpu.get_regs();
    let sregs = vcpu.get_sregs();
    let events = vcpu.get_vcpu_events();
    let mut report = String::new();
    match &regs {
        Ok(regs) => report.push_str(&format_regs(regs)),
        Err(err) => report.push_str(&format!("regs: unavailable ({err})")),
    }
    report.push('\n');
    match &sregs {
        Ok(sregs) => report.push_str(&format_sregs(sregs)),
        Err(err) => report.push_str(&format!("sregs: unavailable ({err})")),
    }
    report.push('\n');
    match &events {
        Ok(events) => report.push_str(&format_events(events)),
        Err(err) => report.push_str(&format!("events: unavailable ({err})")),
    }
    if let (Ok(regs), Ok(sregs)) = (&regs, &sregs) {
        if is_reset_state(regs, sregs) {
            report.push_str(
                "\n(this is the x86 reset state: on AMD hosts KVM re-initializes a vCPU \
                 when it triple-faults, so the faulting state is lost; on Intel hosts it is kept)",
            );
        }
    }
    report
}

/// Instruction and stack pointers, flags and the general registers.
pub fn format_regs(regs: &kvm_regs) -> String {
    format!(
        "RIP={:#018x} RSP={:#018x} RBP={:#018x} RFLAGS={:#x}\n\
         RAX={:#x} RBX={:#x} RCX={:#x} RDX={:#x} RSI={:#x} RDI={:#x}",
        regs.rip,
        regs.rsp,
        regs.rbp,
        regs.rflags,
        regs.rax,
        regs.rbx,
        regs.rcx,
        regs.rdx,
        regs.rsi,
        regs.rdi
    )
}

/// Control registers, EFER, code segment and descriptor tables.
pub fn format_sregs(sregs: &kvm_sregs) -> String {
    format!(
        "CR0={:#x} CR2={:#x} CR3={:#x} CR4={:#x} EFER={:#x} APIC_BASE={:#x}\n\
         CS={:#x} (base {:#x}, L={} DPL={}) SS={:#x} TR={:#x}\n\
         GDT base={:#x} limit={:#x} IDT base={:#x} limit={:#x}",
        sregs.cr0,
        sregs.cr2,
        sregs.cr3,
        sregs.cr4,
        sregs.efer,
        sregs.apic_base,
        sregs.cs.selector,
        sregs.cs.base,
        sregs.cs.l,
        sregs.cs.dpl,
        sregs.ss.selector,
        sregs.tr.selector,
        sregs.gdt.base,
        sregs.gdt.limit,
        sregs.idt.base,
        sregs.idt.limit
    )
}

/// Pending or injected exception, interrupt and NMI.
pub fn format_events(events: &kvm_vcpu_events) -> String {
    let mut line = String::from("pending events:");
    let exception = &events.exception;
    if exception.injected != 0 || exception.pending != 0 {
        let _ = write!(
            line,
            " exception vector {} ({}{}{})",
            exception.nr,
            if exception.injected != 0 {
                "injected"
            } else {
                "pending"
            },
            if exception.has_error_code != 0 {
                ", error code "
            } else {
                ""
            },
            if exception.has_error_code != 0 {
                format!("{:#x}", exception.error_code)
            } else {
                String::new()
            }
        );
    }
    if events.interrupt.injected != 0 {
        let _ = write!(line, " interrupt vector {}", events.interrupt.nr);
    }
    if events.nmi.injected != 0 || events.nmi.pending != 0 {
        let _ = write!(line, " NMI");
    }
    if line.ends_with(':') {
        line.push_str(" none");
    }
    let _ = write!(
        line,
        " (interrupt shadow {:#x}, NMI masked {})",
        events.interrupt.shadow, events.nmi.masked
    );
    line
}

/// Whether the registers are what a CPU has right after RESET or INIT.
fn is_reset_state(regs: &kvm_regs, sregs: &kvm_sregs) -> bool {
    regs.rip == 0xfff0 && sregs.cs.base == 0xffff_0000 && sregs.cr0 & 1 == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_are_printed_in_hex_with_their_names() {
        let regs = kvm_regs {
            rip: 0xffff_ffff_8100_0000,
            rsp: 0x1000,
            rflags: 0x2,
            ..Default::default()
        };
        let text = format_regs(&regs);
        assert!(text.contains("RIP=0xffffffff81000000"), "{text}");
        assert!(text.contains("RSP=0x0000000000001000"), "{text}");
        assert!(text.contains("RFLAGS=0x2"), "{text}");
    }

    #[test]
    fn control_registers_and_tables_are_printed() {
        let mut sregs = kvm_sregs {
            cr0: 0x8000_0011,
            cr3: 0x9000,
            cr4: 0x20,
            efer: 0x500,
            ..Default::default()
        };
        sregs.idt.base = 0x520;
        sregs.idt.limit = 7;
        sregs.cs.l = 1;
        let text = format_sregs(&sregs);
        for want in [
            "CR0=0x80000011",
            "CR3=0x9000",
            "CR4=0x20",
            "EFER=0x500",
            "IDT base=0x520 limit=0x7",
            "L=1",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
    }

    #[test]
    fn pending_exception_with_error_code_is_named() {
        let mut events = kvm_vcpu_events::default();
        events.exception.injected = 1;
        events.exception.nr = 13;
        events.exception.has_error_code = 1;
        events.exception.error_code = 0x18;
        let text = format_events(&events);
        assert!(
            text.contains("exception vector 13 (injected, error code 0x18)"),
            "{text}"
        );
        assert!(format_events(&kvm_vcpu_events::default()).contains("pending events: none"));
    }

    #[test]
    fn reset_state_is_recognised() {
        let regs = kvm_regs {
            rip: 0xfff0,
            ..Default::default()
        };
        let mut sregs = kvm_sregs::default();
        sregs.cs.base = 0xffff_0000;
        assert!(is_reset_state(&regs, &sregs));
        sregs.cr0 = 1;
        assert!(!is_reset_state(&regs, &sregs));
    }
}
