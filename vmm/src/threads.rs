//! Every thread brique runs is started here, named by its kind, and
//! confined by its kind's seccomp filter before it runs anything else: what
//! each kind of thread may do is decided in one place.

use crate::seccomp::{self, FilterKind};
use std::thread::JoinHandle;

/// The kinds of thread brique runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ThreadKind {
    /// The REST API server.
    Api,
    /// One vCPU, by index.
    Vcpu(u8),
    /// The device event loop.
    DeviceLoop,
    /// Forwards guest signals (reset, panic) to the machine's waiter.
    GuestSignals,
}

impl ThreadKind {
    /// The thread's name (as `ps -T` and /proc show it).
    pub fn name(self) -> String {
        match self {
            Self::Api => "brique-api".to_owned(),
            Self::Vcpu(id) => format!("brique-vcpu{id}"),
            Self::DeviceLoop => "brique-devices".to_owned(),
            Self::GuestSignals => "brique-signals".to_owned(),
        }
    }
}

impl ThreadKind {
    /// The seccomp filter threads of this kind run under.
    pub fn filter(self) -> FilterKind {
        match self {
            Self::Api => FilterKind::Api,
            Self::Vcpu(_) => FilterKind::Vcpu,
            Self::DeviceLoop => FilterKind::Devices,
            Self::GuestSignals => FilterKind::Signals,
        }
    }
}

/// Starts a thread of `kind` running `body`, once the thread has installed
/// its seccomp filter (if brique runs with filters); a filter that cannot
/// be installed is an error here, and `body` never runs.
pub fn spawn<F>(kind: ThreadKind, body: F) -> std::io::Result<JoinHandle<()>>
where
    F: FnOnce() + Send + 'static,
{
    let (confined_tx, confined) = std::sync::mpsc::channel();
    let thread = std::thread::Builder::new()
        .name(kind.name())
        .spawn(move || {
            let result = seccomp::confine_current_thread(kind.filter());
            let ok = result.is_ok();
            let _ = confined_tx.send(result);
            if ok {
                body();
            }
        })?;
    match confined.recv() {
        Ok(Ok(())) => Ok(thread),
        Ok(Err(err)) => {
            let _ = thread.join();
            Err(std::io::Error::other(err))
        }
        Err(_) => Err(std::io::Error::other(format!(
            "thread {} ended before installing its seccomp filter",
            kind.name()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_carry_their_kind_in_their_name() {
        let (name_tx, name) = std::sync::mpsc::channel();
        spawn(ThreadKind::Vcpu(3), move || {
            let _ = name_tx.send(std::thread::current().name().map(str::to_owned));
        })
        .unwrap()
        .join()
        .unwrap();
        assert_eq!(name.recv().unwrap().as_deref(), Some("brique-vcpu3"));
        assert_eq!(ThreadKind::DeviceLoop.name(), "brique-devices");
        assert_eq!(ThreadKind::Vcpu(0).filter(), FilterKind::Vcpu);
    }
}
