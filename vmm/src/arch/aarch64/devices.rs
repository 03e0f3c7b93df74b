//! aarch64 fixed devices: the UART (ns16550a on MMIO, the console) and the
//! PL031 real-time clock, with their interrupt lines; and the clock's saved
//! state (the UART's is saved on its own, as every architecture has one).

use super::gic::SPI_BASE;
use super::layout::{RTC_BASE, SERIAL_BASE};
use crate::machine::MachineError;
use crate::vcpu::IoBuses;
use crate::vm::Vm;
use brique_devices::rtc::{Pl031, Pl031State, RTC_WINDOW_SIZE};
use brique_devices::serial::{SerialConsole, COM1_PORT_LEN};
use std::sync::{Arc, Mutex};
use vmm_sys_util::eventfd::EventFd;

/// The UART's interrupt (an SPI).
pub const SERIAL_IRQ: u32 = SPI_BASE + 1;
/// The clock's interrupt (an SPI).
pub const RTC_IRQ: u32 = SPI_BASE + 2;

/// The fixed devices' saved state.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LegacyState {
    /// The real-time clock.
    pub rtc: Pl031State,
}

/// Puts the UART and the clock on the MMIO bus, the UART's interrupt on
/// its line; the clock from `saved` when restoring.
pub fn attach(
    vm: &Vm,
    buses: &mut IoBuses,
    serial: Arc<Mutex<SerialConsole>>,
    serial_irq: &EventFd,
    _reset_evt: &EventFd,
    saved: Option<&LegacyState>,
) -> Result<LegacyDevices, MachineError> {
    vm.fd()
        .register_irqfd(serial_irq, super::irqfd_gsi(SERIAL_IRQ))
        .map_err(|err| MachineError::Device(format!("serial irqfd: {err}")))?;
    buses
        .mmio
        .insert(serial, SERIAL_BASE, COM1_PORT_LEN)
        .map_err(|err| MachineError::Device(err.to_string()))?;
    let rtc = match saved {
        Some(state) => {
            Pl031::restore(&state.rtc).map_err(|err| MachineError::Device(err.to_string()))?
        }
        None => Pl031::new(),
    };
    let rtc = Arc::new(Mutex::new(rtc));
    buses
        .mmio
        .insert(rtc.clone(), RTC_BASE, RTC_WINDOW_SIZE)
        .map_err(|err| MachineError::Device(err.to_string()))?;
    // The clock raises no interrupt (no alarms): its line is in the device
    // tree for the driver and stays quiet.
    Ok(LegacyDevices { rtc })
}

/// The fixed devices the VMM acts on at runtime.
#[derive(Debug)]
pub struct LegacyDevices {
    rtc: Arc<Mutex<Pl031>>,
}

impl LegacyDevices {
    /// Their state.
    pub fn save(&self) -> LegacyState {
        LegacyState {
            rtc: self
                .rtc
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .save(),
        }
    }

    /// aarch64 guests have no keyboard controller (Firecracker's aarch64
    /// refuses this action too).
    pub fn send_ctrl_alt_del(&self) -> Result<(), MachineError> {
        Err(MachineError::Unsupported(
            "Ctrl-Alt-Del requests (no i8042 on aarch64)",
        ))
    }
}
