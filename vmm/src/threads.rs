//! Every thread brique runs is started here, named by its kind, so that
//! what each kind of thread may do (its seccomp filter, next) is decided in
//! one place.

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

/// Starts a thread of `kind` running `body`.
pub fn spawn<T, F>(kind: ThreadKind, body: F) -> std::io::Result<JoinHandle<T>>
where
    F: FnOnce() -> T + Send + 'static,
    T: Send + 'static,
{
    std::thread::Builder::new().name(kind.name()).spawn(body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn threads_carry_their_kind_in_their_name() {
        let name = spawn(ThreadKind::Vcpu(3), || {
            std::thread::current().name().map(str::to_owned)
        })
        .unwrap()
        .join()
        .unwrap();
        assert_eq!(name.as_deref(), Some("brique-vcpu3"));
        assert_eq!(ThreadKind::DeviceLoop.name(), "brique-devices");
    }
}
