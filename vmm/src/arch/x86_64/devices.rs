//! x86_64 legacy devices: COM1 and the i8042 (keyboard and reset line) on
//! port I/O with their ISA interrupts, and the i8042's saved state.

use super::legacy::*;
use crate::machine::build::{clone_evt, eventfd};
use crate::machine::MachineError;
use crate::vcpu::IoBuses;
use crate::vm::Vm;
use brique_devices::i8042::{I8042State, I8042};
use brique_devices::serial::SerialConsole;
use brique_devices::EventFdTrigger;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// The legacy devices' saved state (the serial console is saved on
/// its own, as every architecture has one).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyState {
    /// The keyboard controller.
    pub i8042: I8042State,
}

pub fn attach(
    vm: &Vm,
    buses: &mut IoBuses,
    serial: Arc<Mutex<SerialConsole>>,
    serial_irq: &EventFd,
    reset_evt: &EventFd,
    saved: Option<&LegacyState>,
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
    let reset = EventFdTrigger::new(clone_evt(reset_evt)?);
    let kbd_irq = Some(EventFdTrigger::new(kbd_irq));
    let i8042 = match saved {
        Some(state) => I8042::restore(&state.i8042, reset, kbd_irq)
            .map_err(|err| MachineError::Device(err.to_string()))?,
        None => I8042::new(reset, kbd_irq),
    };
    let i8042 = Arc::new(Mutex::new(i8042));
    buses
        .pio
        .insert(i8042.clone(), I8042_PORT_BASE, I8042_PORT_LEN)
        .map_err(|err| MachineError::Device(err.to_string()))?;
    Ok(LegacyDevices { i8042 })
}

/// The legacy devices the VMM acts on at runtime.
#[derive(Debug)]
pub struct LegacyDevices {
    i8042: Arc<Mutex<I8042>>,
}

impl LegacyDevices {
    /// Their state.
    pub fn save(&self) -> LegacyState {
        LegacyState {
            i8042: self
                .i8042
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .save(),
        }
    }

    /// Presses Ctrl-Alt-Del on the guest's keyboard.
    pub fn send_ctrl_alt_del(&self) -> Result<(), MachineError> {
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
