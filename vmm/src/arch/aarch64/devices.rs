//! aarch64 legacy devices: they come with aarch64 boot (a UART on MMIO).

use crate::machine::MachineError;
use crate::vcpu::IoBuses;
use crate::vm::Vm;
use brique_devices::serial::SerialConsole;
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// No legacy devices yet on this architecture.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct LegacyState {}

pub fn attach(
    _vm: &Vm,
    _buses: &mut IoBuses,
    _serial: Arc<Mutex<SerialConsole>>,
    _serial_irq: &EventFd,
    _reset_evt: &EventFd,
    _saved: Option<&LegacyState>,
) -> Result<LegacyDevices, MachineError> {
    Err(MachineError::Unsupported("aarch64 legacy devices"))
}

/// No legacy devices yet on this architecture.
#[derive(Debug)]
pub struct LegacyDevices;

impl LegacyDevices {
    pub fn save(&self) -> LegacyState {
        LegacyState {}
    }

    pub fn send_ctrl_alt_del(&self) -> Result<(), MachineError> {
        Err(MachineError::Unsupported("Ctrl-Alt-Del requests"))
    }
}
