//! Maps a restored guest's saved pages in ahead of its touches, on a thread
//! of its own while the guest already runs.
//!
//! A restored VM's memory is its memory file mapped privately: every page
//! the guest touches first costs a host page fault. Populating the pages
//! that hold data (`MADV_POPULATE_READ`, read-only from the page cache)
//! saves the guest those faults, but it costs what the guest had touched
//! (tens of milliseconds per hundred MiB), so it runs beside the guest
//! instead of before it: the vCPUs start at once, pages the guest reaches
//! first fault in as usual, and the rest are already there when it gets to
//! them. Ranges go in ascending order, so the kernel's low memory comes
//! first.

use crate::threads::{self, ThreadKind};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Instant;

/// How much one `madvise` call populates: the thread checks whether to
/// stop between chunks, so a VM torn down early waits at most one chunk.
const CHUNK_BYTES: usize = 2 << 20;

/// A host address range of guest RAM that holds saved data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SavedRange {
    pub addr: usize,
    pub len: usize,
}

/// The running prefault. It must be stopped (dropped) before the mappings
/// it populates are unmapped.
#[derive(Debug)]
pub struct Prefault {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Prefault {
    /// Starts populating `ranges` (host addresses inside guest RAM
    /// mappings that outlive the returned value). Without a thread, pages
    /// come on first touch, which is only slower: that is logged.
    pub fn start(ranges: Vec<SavedRange>) -> Prefault {
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = Arc::clone(&stop);
        let thread = threads::spawn(ThreadKind::MemoryPrefault, move || {
            populate(&ranges, &stopped);
        });
        let thread = match thread {
            Ok(thread) => Some(thread),
            Err(err) => {
                log::warn!("memory file pages come on first touch (no prefault thread: {err})");
                None
            }
        };
        Prefault { stop, thread }
    }

    /// Waits until every range is populated (or populating gave up).
    pub fn finish(&mut self) {
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Prefault {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        self.finish();
    }
}

/// Populates `ranges` chunk by chunk until done, stopped or refused.
fn populate(ranges: &[SavedRange], stop: &AtomicBool) {
    let started = Instant::now();
    let mut mapped = 0usize;
    for range in ranges {
        let end = range.addr + range.len;
        let mut at = range.addr;
        while at < end {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            let len = (end - at).min(CHUNK_BYTES);
            if let Err(err) = populate_read(at, len) {
                log::debug!("memory file pages come on first touch (MADV_POPULATE_READ: {err})");
                return;
            }
            mapped += len;
            at += len;
        }
    }
    log::debug!(
        "memory file: {:.1} MiB of saved pages mapped ahead in {:.1} ms, beside the running guest",
        mapped as f64 / f64::from(1 << 20),
        started.elapsed().as_secs_f64() * 1e3
    );
}

/// `MADV_POPULATE_READ` on `addr..addr + len`, again if a signal cut in.
fn populate_read(addr: usize, len: usize) -> std::io::Result<()> {
    loop {
        // SAFETY: `addr..addr + len` lies inside a guest RAM mapping that
        // stays mapped until this thread is joined (`Prefault` is dropped
        // before it); populating only maps pages in, never changes them.
        let advised =
            unsafe { libc::madvise(addr as *mut libc::c_void, len, libc::MADV_POPULATE_READ) };
        if advised == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
