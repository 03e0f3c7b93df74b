//! The VMM thread's loop: it waits on API requests, the machine's end and
//! the periodic metrics flush, and runs the controller's actions in order.

use super::{Controller, ControllerError, VmmAction, VmmData};
use crate::machine::ExitReason;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::mpsc::{channel, sync_channel, Receiver, Sender, SyncSender, TryRecvError};
use std::sync::Arc;
use std::time::{Duration, Instant};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

/// Errors of the VMM loop.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// An eventfd could not be created or used.
    #[error("eventfd: {0}")]
    EventFd(std::io::Error),
    /// poll(2) failed.
    #[error("poll: {0}")]
    Poll(std::io::Error),
    /// Every request sender is gone and no microVM runs.
    #[error("the control API stopped before a microVM was started")]
    NoRequests,
}

type Reply = Result<VmmData, ControllerError>;

struct Request {
    action: VmmAction,
    reply: SyncSender<Reply>,
}

/// The API thread's side: sends actions to the VMM thread and waits for
/// their results.
#[derive(Debug, Clone)]
pub struct ControllerHandle {
    requests: Sender<Request>,
    wake: Arc<EventFd>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Request")
            .field("action", &self.action)
            .finish_non_exhaustive()
    }
}

impl ControllerHandle {
    /// Runs `action` on the VMM thread and returns its result.
    pub fn call(&self, action: VmmAction) -> Reply {
        let (reply, result) = sync_channel(1);
        self.requests
            .send(Request { action, reply })
            .map_err(|_| ControllerError::VmmGone)?;
        self.wake.write(1).map_err(|_| ControllerError::VmmGone)?;
        result.recv().map_err(|_| ControllerError::VmmGone)?
    }
}

/// The VMM thread's side of the request channel.
#[derive(Debug)]
pub struct RequestReceiver {
    requests: Receiver<Request>,
    wake: Arc<EventFd>,
}

impl RequestReceiver {
    /// A connected pair.
    pub fn channel() -> Result<(ControllerHandle, Self), ServeError> {
        let (requests_tx, requests) = channel();
        let wake = Arc::new(EventFd::new(EFD_NONBLOCK).map_err(ServeError::EventFd)?);
        Ok((
            ControllerHandle {
                requests: requests_tx,
                wake: wake.clone(),
            },
            Self { requests, wake },
        ))
    }
}

/// Runs `controller` until its microVM ends or `stop` becomes readable
/// (the operator's stop signal): executes requests as they come, flushes
/// metrics every `metrics_interval`, and returns why it ended.
pub fn serve(
    mut controller: Controller,
    receiver: RequestReceiver,
    metrics_interval: Duration,
    stop: Option<&EventFd>,
) -> Result<ExitReason, ServeError> {
    let mut next_flush = Instant::now() + metrics_interval;
    let mut requests_open = true;
    loop {
        let mut fds: Vec<libc::pollfd> = Vec::with_capacity(3);
        if let Some(stop) = stop {
            fds.push(poll_in(stop.as_raw_fd()));
        }
        if requests_open {
            fds.push(poll_in(receiver.wake.as_raw_fd()));
        }
        if let Some(machine) = controller.machine() {
            fds.push(poll_in(machine.exit_fd()));
        } else if !requests_open {
            return Err(ServeError::NoRequests);
        }
        let timeout = next_flush.saturating_duration_since(Instant::now());
        let timeout_ms = libc::c_int::try_from(timeout.as_millis().saturating_add(1))
            .unwrap_or(libc::c_int::MAX);
        // SAFETY: `fds` is a valid array of `fds.len()` pollfd structs that
        // lives across the call.
        let ready = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
        if ready < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(ServeError::Poll(err));
            }
        }

        if let Some(reason) = controller.try_exit() {
            return Ok(reason);
        }
        if stop.is_some_and(|stop| stop.read().is_ok()) {
            return Ok(controller.stop());
        }
        if requests_open {
            let _ = receiver.wake.read();
            loop {
                match receiver.requests.try_recv() {
                    Ok(request) => {
                        let name = request.action.name();
                        let result = controller.handle(request.action);
                        if let Err(err) = &result {
                            log::info!("{name} refused: {err}");
                        }
                        // The API thread may have given up on the answer.
                        let _ = request.reply.send(result);
                    }
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        requests_open = false;
                        break;
                    }
                }
            }
        }
        if Instant::now() >= next_flush {
            controller.flush_metrics_quietly();
            next_flush = Instant::now() + metrics_interval;
        }
    }
}

fn poll_in(fd: RawFd) -> libc::pollfd {
    libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    }
}
