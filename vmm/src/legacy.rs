//! Legacy devices: on x86_64, COM1 and the i8042 (keyboard and reset line)
//! on port I/O with their ISA interrupts; on aarch64 they come with aarch64
//! boot (a UART on MMIO).

#[cfg(target_arch = "x86_64")]
mod x86_64 {
    use crate::arch::legacy::*;
    use crate::machine::{clone_evt, eventfd, MachineError};
    use crate::vcpu::IoBuses;
    use crate::vm::Vm;
    use brique_devices::i8042::I8042;
    use brique_devices::serial::SerialConsole;
    use brique_devices::EventFdTrigger;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EventFd;

    pub(crate) fn attach(
        vm: &Vm,
        buses: &mut IoBuses,
        serial: Arc<Mutex<SerialConsole>>,
        serial_irq: &EventFd,
        reset_evt: &EventFd,
    ) -> Result<(), MachineError> {
        vm.fd()
            .register_irqfd(serial_irq, COM1_IRQ)
            .map_err(|err| MachineError::Device(format!("serial irqfd: {err}")))?;
        buses
            .pio
            .insert(serial, COM1_PORT_BASE, COM1_PORT_LEN)
            .map_err(|err| MachineError::Device(err.to_string()))?;
        let kbd_irq = eventfd()?;
        vm.fd()
            .register_irqfd(&kbd_irq, I8042_KBD_IRQ)
            .map_err(|err| MachineError::Device(format!("i8042 irqfd: {err}")))?;
        let i8042 = I8042::new(
            EventFdTrigger::new(clone_evt(reset_evt)?),
            Some(EventFdTrigger::new(kbd_irq)),
        );
        buses
            .pio
            .insert(Arc::new(Mutex::new(i8042)), I8042_PORT_BASE, I8042_PORT_LEN)
            .map_err(|err| MachineError::Device(err.to_string()))?;
        Ok(())
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod other {
    use crate::machine::MachineError;
    use crate::vcpu::IoBuses;
    use crate::vm::Vm;
    use brique_devices::serial::SerialConsole;
    use std::sync::{Arc, Mutex};
    use vmm_sys_util::eventfd::EventFd;

    pub(crate) fn attach(
        _vm: &Vm,
        _buses: &mut IoBuses,
        _serial: Arc<Mutex<SerialConsole>>,
        _serial_irq: &EventFd,
        _reset_evt: &EventFd,
    ) -> Result<(), MachineError> {
        Err(MachineError::Unsupported("aarch64 legacy devices"))
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use self::x86_64::attach;

#[cfg(not(target_arch = "x86_64"))]
pub(crate) use self::other::attach;
