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
    ) -> Result<LegacyDevices, MachineError> {
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
        let i8042 = Arc::new(Mutex::new(I8042::new(
            EventFdTrigger::new(clone_evt(reset_evt)?),
            Some(EventFdTrigger::new(kbd_irq)),
        )));
        buses
            .pio
            .insert(i8042.clone(), I8042_PORT_BASE, I8042_PORT_LEN)
            .map_err(|err| MachineError::Device(err.to_string()))?;
        Ok(LegacyDevices { i8042 })
    }

    /// The legacy devices the VMM acts on at runtime.
    #[derive(Debug)]
    pub(crate) struct LegacyDevices {
        i8042: Arc<Mutex<I8042>>,
    }

    impl LegacyDevices {
        /// Presses Ctrl-Alt-Del on the guest's keyboard.
        pub(crate) fn send_ctrl_alt_del(&self) -> Result<(), MachineError> {
            let mut i8042 = self
                .i8042
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if i8042.send_ctrl_alt_del() {
                Ok(())
            } else {
                Err(MachineError::Device(
                    "the guest has not read earlier keyboard input yet; try again".into(),
                ))
            }
        }
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
    ) -> Result<LegacyDevices, MachineError> {
        Err(MachineError::Unsupported("aarch64 legacy devices"))
    }

    /// No legacy devices yet on this architecture.
    #[derive(Debug)]
    pub(crate) struct LegacyDevices;

    impl LegacyDevices {
        pub(crate) fn send_ctrl_alt_del(&self) -> Result<(), MachineError> {
            Err(MachineError::Unsupported("Ctrl-Alt-Del requests"))
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(crate) use self::x86_64::{attach, LegacyDevices};

#[cfg(not(target_arch = "x86_64"))]
pub(crate) use self::other::{attach, LegacyDevices};
