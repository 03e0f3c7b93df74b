//! vCPU threads: each runs KVM_RUN, dispatches port I/O and MMIO exits to
//! the device buses, and reports why it stopped.

use crate::arch;
use crate::metrics::METRICS;
use brique_devices::bus::Bus;
use kvm_bindings::kvm_run;
use kvm_ioctls::{VcpuExit, VcpuFd};
use std::cell::Cell;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// The device buses vCPU exits are dispatched to.
#[derive(Debug, Default)]
pub struct IoBuses {
    /// Port I/O (x86 only; empty elsewhere).
    pub pio: Bus,
    /// Memory-mapped I/O.
    pub mmio: Bus,
}

/// Why a vCPU stopped running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VcpuStop {
    /// The VMM asked it to stop.
    Requested,
    /// The guest triple-faulted (KVM_EXIT_SHUTDOWN); the vCPU's state.
    TripleFault(String),
    /// The guest asked for a reset through a KVM system event.
    SystemReset,
    /// The guest powered off through a KVM system event.
    SystemShutdown,
    /// The guest reported a crash through a KVM system event.
    SystemCrash,
    /// KVM could not emulate or run the guest.
    InternalError(String),
    /// VM entry failed.
    FailEntry(u64),
    /// The vCPU halted with no in-kernel interrupt controller to wake it.
    Halted,
    /// An exit brique does not handle.
    UnexpectedExit(String),
    /// KVM_RUN failed.
    RunFailed(String),
}

/// What a parked vCPU thread is asked to do with its vCPU (whose file
/// descriptor only that thread uses); the answer goes back on the sender.
#[derive(Debug)]
pub enum VcpuRequest {
    /// Read the vCPU's whole state.
    SaveState(Sender<Result<arch::VcpuState, String>>),
    /// Put a saved state into the vCPU.
    RestoreState(Box<arch::VcpuState>, Sender<Result<(), String>>),
}

/// Parked threads and the requests waiting for them.
#[derive(Debug, Default)]
struct Parking {
    /// How many vCPU threads are parked in a pause.
    count: usize,
    /// Requests for each vCPU, by id.
    mail: HashMap<u8, VecDeque<VcpuRequest>>,
}

/// What the VMM asks of the vCPU threads: run, pause, or stop, and while
/// paused, requests to each. A run/pause/stop request takes effect at the
/// thread's next exit from KVM_RUN; [`kick_signal`] forces one.
#[derive(Debug, Default)]
pub struct VcpuControl {
    stop: AtomicBool,
    pause: AtomicBool,
    parking: Mutex<Parking>,
    changed: Condvar,
}

impl VcpuControl {
    fn parking(&self) -> MutexGuard<'_, Parking> {
        self.parking
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Leaves `request` for vCPU `id`, served once it is parked.
    pub fn post(&self, id: u8, request: VcpuRequest) {
        self.parking()
            .mail
            .entry(id)
            .or_default()
            .push_back(request);
        self.changed.notify_all();
    }

    /// Whether a pause was requested.
    pub fn pause_requested(&self) -> bool {
        self.pause.load(Ordering::Acquire)
    }

    /// Asks every vCPU to stop for good (paused ones too).
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _parking = self.parking();
        self.changed.notify_all();
    }

    /// Whether a stop was requested.
    pub fn stop_requested(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Asks every vCPU to park at its next exit.
    pub fn request_pause(&self) {
        self.pause.store(true, Ordering::Release);
    }

    /// Lets parked vCPUs run again.
    pub fn request_resume(&self) {
        let _parking = self.parking();
        self.pause.store(false, Ordering::Release);
        self.changed.notify_all();
    }

    /// Waits until `count` vCPUs are parked; false after `timeout`.
    pub fn wait_parked(&self, count: usize, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        let mut parking = self.parking();
        while parking.count < count {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            parking = match self.changed.wait_timeout(parking, left) {
                Ok((guard, _)) => guard,
                Err(poisoned) => poisoned.into_inner().0,
            };
        }
        true
    }

    /// Called by vCPU thread `id` outside KVM_RUN: parks while a pause is
    /// requested (and no stop), serving the requests posted for it.
    fn park_if_paused(&self, id: u8, mut serve: impl FnMut(VcpuRequest)) {
        if !self.pause_requested() {
            return;
        }
        let mut parking = self.parking();
        parking.count += 1;
        self.changed.notify_all();
        while self.pause_requested() && !self.stop_requested() {
            if let Some(request) = parking.mail.get_mut(&id).and_then(VecDeque::pop_front) {
                drop(parking);
                serve(request);
                parking = self.parking();
                continue;
            }
            parking = match self.changed.wait(parking) {
                Ok(guard) => guard,
                Err(poisoned) => poisoned.into_inner(),
            };
        }
        parking.count -= 1;
        self.changed.notify_all();
    }
}

thread_local! {
    /// This thread's vCPU `kvm_run` page, for the kick signal handler.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(std::ptr::null_mut()) };
}

/// The signal that kicks a vCPU thread out of KVM_RUN.
pub fn kick_signal() -> libc::c_int {
    vmm_sys_util::signal::SIGRTMIN()
}

extern "C" fn handle_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    KVM_RUN.with(|run| {
        let run = run.get();
        if !run.is_null() {
            // SAFETY: the pointer is this thread's own kvm_run mapping, set by
            // `Vcpu::run` for as long as it runs and cleared before it returns;
            // setting immediate_exit makes the next or current KVM_RUN return EINTR.
            unsafe { (*run).immediate_exit = 1 };
        }
    });
}

/// Installs the kick handler (once per process).
pub fn install_kick_handler() -> Result<(), vmm_sys_util::errno::Error> {
    static INSTALLED: std::sync::OnceLock<Result<(), vmm_sys_util::errno::Error>> =
        std::sync::OnceLock::new();
    *INSTALLED
        .get_or_init(|| vmm_sys_util::signal::register_signal_handler(kick_signal(), handle_kick))
}

/// One vCPU, the buses its exits go to, and the host facts its state
/// is saved and restored with.
#[derive(Debug)]
pub struct Vcpu {
    id: u8,
    fd: VcpuFd,
    buses: Arc<IoBuses>,
    template: Arc<arch::VcpuTemplate>,
}

impl Vcpu {
    /// Wraps a vCPU.
    pub fn new(id: u8, fd: VcpuFd, buses: Arc<IoBuses>, template: Arc<arch::VcpuTemplate>) -> Self {
        Self {
            id,
            fd,
            buses,
            template,
        }
    }

    /// This vCPU's index.
    pub fn id(&self) -> u8 {
        self.id
    }

    /// The vCPU's file descriptor (for its setup before it runs).
    pub fn fd(&self) -> &VcpuFd {
        &self.fd
    }

    /// Runs the guest until it stops or `control` asks it to (the thread
    /// being kicked), parking while `control` asks for a pause.
    pub fn run(&mut self, control: &VcpuControl) -> VcpuStop {
        KVM_RUN.with(|run| run.set(self.fd.get_kvm_run()));
        let reason = self.run_loop(control);
        KVM_RUN.with(|run| run.set(std::ptr::null_mut()));
        reason
    }

    fn run_loop(&mut self, control: &VcpuControl) -> VcpuStop {
        loop {
            if control.pause_requested() {
                if let Some(reason) = self.complete_pending_exit() {
                    return reason;
                }
                arch::vcpu_paused(&self.fd);
                control.park_if_paused(self.id, |request| self.serve(request));
            }
            if control.stop_requested() {
                return VcpuStop::Requested;
            }
            match self.fd.run() {
                Ok(exit) => {
                    if let Some(reason) = handle_exit(exit, &self.buses) {
                        return self.with_details(reason);
                    }
                }
                Err(err) if matches!(err.errno(), libc::EINTR | libc::EAGAIN) => {
                    self.fd.set_kvm_immediate_exit(0);
                }
                Err(err) => return VcpuStop::RunFailed(err.to_string()),
            }
        }
    }
}

impl Vcpu {
    /// Finishes the instruction of the last I/O or MMIO exit without running
    /// the guest on: KVM completes it (an `in` gets its value, RIP moves past
    /// it) only at the next KVM_RUN, and one with `immediate_exit` set does
    /// just that and returns EINTR. Without it, a vCPU saved in a pause would
    /// be restored before that instruction and run it twice (a byte written
    /// to the console twice). A string instruction's next chunk can exit
    /// again without the guest running; those exits are served too.
    fn complete_pending_exit(&mut self) -> Option<VcpuStop> {
        self.fd.set_kvm_immediate_exit(1);
        let stop = loop {
            match self.fd.run() {
                Ok(exit) => {
                    if let Some(reason) = handle_exit(exit, &self.buses) {
                        break Some(reason);
                    }
                }
                Err(err) if matches!(err.errno(), libc::EINTR | libc::EAGAIN) => break None,
                Err(err) => break Some(VcpuStop::RunFailed(err.to_string())),
            }
        };
        self.fd.set_kvm_immediate_exit(0);
        stop.map(|reason| self.with_details(reason))
    }

    /// Serves a request made while the vCPU is parked.
    fn serve(&self, request: VcpuRequest) {
        // A requester that gave up waiting is gone; nothing to tell it.
        match request {
            VcpuRequest::SaveState(reply) => {
                let state = arch::save_vcpu(&self.fd, &self.template)
                    .map_err(|err| format!("vCPU {}: {err}", self.id));
                let _ = reply.send(state);
            }
            VcpuRequest::RestoreState(state, reply) => {
                let restored = arch::restore_vcpu(&self.fd, &state, &self.template)
                    .map_err(|err| format!("vCPU {}: {err}", self.id));
                let _ = reply.send(restored);
            }
        }
    }

    /// Adds what only `kvm_run` knows to a stop reason.
    fn with_details(&mut self, reason: VcpuStop) -> VcpuStop {
        match reason {
            VcpuStop::InternalError(_) => {
                let run = self.fd.get_kvm_run();
                // SAFETY: the last exit was KVM_EXIT_INTERNAL_ERROR, for which
                // `internal` is the union member KVM filled in.
                let (suberror, ndata) = unsafe {
                    let internal = run.__bindgen_anon_1.internal;
                    (internal.suberror, internal.ndata)
                };
                VcpuStop::InternalError(format!(
                    "KVM internal error on vCPU {}: suberror {suberror} ({}), {ndata} data words\n{}",
                    self.id,
                    if suberror == 1 {
                        "emulation failure"
                    } else {
                        "see KVM_INTERNAL_ERROR_*"
                    },
                    arch::vcpu_state_report(&self.fd)
                ))
            }
            VcpuStop::TripleFault(_) => VcpuStop::TripleFault(arch::vcpu_state_report(&self.fd)),
            other => other,
        }
    }
}

/// Handles one exit; `Some` when the vCPU must stop.
fn handle_exit(exit: VcpuExit<'_>, buses: &IoBuses) -> Option<VcpuStop> {
    match exit {
        #[cfg(target_arch = "x86_64")]
        VcpuExit::IoIn(port, data) => {
            METRICS.vcpu.exit_io_in.inc();
            if !buses.pio.read(u64::from(port), data) {
                data.fill(0xff);
            }
            None
        }
        #[cfg(target_arch = "x86_64")]
        VcpuExit::IoOut(port, data) => {
            METRICS.vcpu.exit_io_out.inc();
            buses.pio.write(u64::from(port), data);
            None
        }
        VcpuExit::MmioRead(addr, data) => {
            METRICS.vcpu.exit_mmio_read.inc();
            if !buses.mmio.read(addr, data) {
                data.fill(0);
            }
            None
        }
        VcpuExit::MmioWrite(addr, data) => {
            METRICS.vcpu.exit_mmio_write.inc();
            buses.mmio.write(addr, data);
            None
        }
        VcpuExit::Shutdown => Some(VcpuStop::TripleFault(String::new())),
        VcpuExit::Hlt => Some(VcpuStop::Halted),
        VcpuExit::SystemEvent(kind, _) => Some(match kind {
            kvm_bindings::KVM_SYSTEM_EVENT_RESET => VcpuStop::SystemReset,
            kvm_bindings::KVM_SYSTEM_EVENT_SHUTDOWN => VcpuStop::SystemShutdown,
            kvm_bindings::KVM_SYSTEM_EVENT_CRASH => VcpuStop::SystemCrash,
            other => VcpuStop::UnexpectedExit(format!("system event {other}")),
        }),
        VcpuExit::InternalError => Some(VcpuStop::InternalError(
            "KVM internal error (emulation failure)".to_owned(),
        )),
        VcpuExit::FailEntry(reason, _cpu) => Some(VcpuStop::FailEntry(reason)),
        VcpuExit::Intr => None,
        other => Some(VcpuStop::UnexpectedExit(format!("{other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicU64;

    /// Threads that do what a vCPU thread does between KVM_RUN calls.
    fn spawn_workers(
        control: &Arc<VcpuControl>,
        count: usize,
    ) -> (Arc<AtomicU64>, Vec<std::thread::JoinHandle<()>>) {
        let progress = Arc::new(AtomicU64::new(0));
        let threads = (0..count)
            .map(|_| {
                let control = control.clone();
                let progress = progress.clone();
                std::thread::spawn(move || loop {
                    control.park_if_paused(0, |_| {});
                    if control.stop_requested() {
                        return;
                    }
                    progress.fetch_add(1, Ordering::Relaxed);
                    std::thread::sleep(Duration::from_millis(1));
                })
            })
            .collect();
        (progress, threads)
    }

    #[test]
    fn pause_parks_every_thread_resume_releases_them_stop_ends_them() {
        let control = Arc::new(VcpuControl::default());
        let (progress, threads) = spawn_workers(&control, 3);
        control.request_pause();
        assert!(control.wait_parked(3, Duration::from_secs(5)));
        let paused_at = progress.load(Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            progress.load(Ordering::Relaxed),
            paused_at,
            "no progress while paused"
        );
        control.request_resume();
        let deadline = Instant::now() + Duration::from_secs(5);
        while progress.load(Ordering::Relaxed) == paused_at && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(
            progress.load(Ordering::Relaxed) > paused_at,
            "progress after resume"
        );
        // A stop also releases paused threads.
        control.request_pause();
        assert!(control.wait_parked(3, Duration::from_secs(5)));
        control.request_stop();
        for thread in threads {
            thread.join().unwrap();
        }
        assert_eq!(control.parking().count, 0);
    }

    #[test]
    fn parked_threads_serve_the_requests_posted_for_them_only() {
        let control = Arc::new(VcpuControl::default());
        control.request_pause();
        let (served_tx, served) = std::sync::mpsc::channel();
        let threads: Vec<_> = (0..2u8)
            .map(|id| {
                let control = control.clone();
                let served_tx = served_tx.clone();
                std::thread::spawn(move || {
                    control.park_if_paused(id, |request| {
                        if let VcpuRequest::SaveState(reply) = request {
                            let _ = reply.send(Err(format!("served by {id}")));
                            served_tx.send(id).unwrap();
                        }
                    });
                })
            })
            .collect();
        assert!(control.wait_parked(2, Duration::from_secs(5)));
        let (reply, answer) = std::sync::mpsc::channel();
        control.post(1, VcpuRequest::SaveState(reply));
        assert_eq!(
            answer.recv_timeout(Duration::from_secs(5)).unwrap(),
            Err("served by 1".to_owned())
        );
        assert_eq!(served.recv_timeout(Duration::from_secs(5)).unwrap(), 1);
        assert!(served.try_recv().is_err(), "vCPU 0 served nothing");
        control.request_resume();
        for thread in threads {
            thread.join().unwrap();
        }
    }

    #[test]
    fn waiting_for_more_parked_threads_than_exist_times_out() {
        let control = Arc::new(VcpuControl::default());
        let (_, threads) = spawn_workers(&control, 1);
        control.request_pause();
        assert!(!control.wait_parked(2, Duration::from_millis(100)));
        control.request_stop();
        for thread in threads {
            thread.join().unwrap();
        }
    }
}
