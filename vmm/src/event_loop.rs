//! The device event loop: one thread, one epoll (event-manager), serving
//! every device event that does not come from a vCPU exit: console input,
//! guest reset and panic signals, and (later) virtio queue notifications.

use event_manager::{EventManager, EventOps, Events, MutEventSubscriber, SubscriberOps};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// A subscriber on the device event loop.
pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Guest-initiated events the machine reacts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestSignal {
    /// The guest reset the machine (i8042 reset line).
    Reset,
    /// The guest kernel panicked (seen on its console).
    Panicked,
}

/// Turns the reset and panic eventfds into [`GuestSignal`]s on a channel.
#[derive(Debug)]
pub struct GuestSignalWatcher {
    reset: EventFd,
    panic: EventFd,
    sender: Sender<GuestSignal>,
}

impl GuestSignalWatcher {
    /// Watches `reset` and `panic`, reporting to `sender`.
    pub fn new(reset: EventFd, panic: EventFd, sender: Sender<GuestSignal>) -> Self {
        Self {
            reset,
            panic,
            sender,
        }
    }
}

impl MutEventSubscriber for GuestSignalWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        for evt in [&self.reset, &self.panic] {
            if let Err(err) = ops.add(Events::new(evt, EventSet::IN)) {
                log::error!("device loop: cannot watch a guest signal: {err:?}");
            }
        }
    }

    fn process(&mut self, events: Events, _ops: &mut EventOps) {
        let signal = if events.fd() == self.reset.as_raw_fd() {
            let _ = self.reset.read();
            GuestSignal::Reset
        } else if events.fd() == self.panic.as_raw_fd() {
            let _ = self.panic.read();
            GuestSignal::Panicked
        } else {
            return;
        };
        // The receiver is gone only while the machine shuts down.
        let _ = self.sender.send(signal);
    }
}

/// Errors starting the event loop.
#[derive(Debug, thiserror::Error)]
pub enum EventLoopError {
    /// epoll or eventfd creation failed.
    #[error("cannot create the device event loop: {0}")]
    Create(String),
    /// The thread could not be spawned.
    #[error("cannot spawn the device event loop thread: {0}")]
    Spawn(std::io::Error),
}

/// Ends the loop when its eventfd is written.
#[derive(Debug)]
struct StopWatcher {
    evt: EventFd,
    stopped: Arc<AtomicBool>,
}

impl MutEventSubscriber for StopWatcher {
    fn init(&mut self, ops: &mut EventOps) {
        if let Err(err) = ops.add(Events::new(&self.evt, EventSet::IN)) {
            log::error!("device loop: cannot watch its stop event: {err:?}");
        }
    }

    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.evt.read();
        self.stopped.store(true, Ordering::Release);
    }
}

/// The running device event loop thread.
#[derive(Debug)]
pub struct EventLoop {
    stop: EventFd,
    thread: Option<JoinHandle<()>>,
}

impl EventLoop {
    /// Starts a thread serving `subscribers` until [`EventLoop::stop`].
    pub fn start(subscribers: Vec<Subscriber>) -> Result<Self, EventLoopError> {
        let mut manager = EventManager::<Subscriber>::new()
            .map_err(|err| EventLoopError::Create(format!("{err:?}")))?;
        let stop =
            EventFd::new(EFD_NONBLOCK).map_err(|err| EventLoopError::Create(err.to_string()))?;
        let stopped = Arc::new(AtomicBool::new(false));
        manager.add_subscriber(Arc::new(Mutex::new(StopWatcher {
            evt: stop
                .try_clone()
                .map_err(|err| EventLoopError::Create(err.to_string()))?,
            stopped: stopped.clone(),
        })));
        for subscriber in subscribers {
            manager.add_subscriber(subscriber);
        }
        let thread = crate::threads::spawn(crate::threads::ThreadKind::DeviceLoop, move || {
            while !stopped.load(Ordering::Acquire) {
                if let Err(err) = manager.run() {
                    log::error!("device event loop failed: {err:?}");
                    break;
                }
            }
        })
        .map_err(EventLoopError::Spawn)?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the loop and waits for its thread.
    pub fn stop(&mut self) {
        if let Some(thread) = self.thread.take() {
            if self.stop.write(1).is_ok() {
                let _ = thread.join();
            }
        }
    }
}

impl Drop for EventLoop {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn guest_signals_arrive_in_order_and_the_loop_stops() {
        let reset = EventFd::new(EFD_NONBLOCK).unwrap();
        let panic = EventFd::new(EFD_NONBLOCK).unwrap();
        let (sender, receiver) = std::sync::mpsc::channel();
        let watcher = GuestSignalWatcher::new(
            reset.try_clone().unwrap(),
            panic.try_clone().unwrap(),
            sender,
        );
        let mut event_loop = EventLoop::start(vec![Arc::new(Mutex::new(watcher))]).unwrap();
        panic.write(1).unwrap();
        assert_eq!(
            receiver.recv_timeout(Duration::from_secs(5)).unwrap(),
            GuestSignal::Panicked
        );
        reset.write(1).unwrap();
        assert_eq!(
            receiver.recv_timeout(Duration::from_secs(5)).unwrap(),
            GuestSignal::Reset
        );
        event_loop.stop();
        // The watcher (and its sender) went away with the loop.
        assert!(receiver.recv_timeout(Duration::from_secs(5)).is_err());
    }
}
