//! A small `log` backend: one line per record on stderr, with a timestamp
//! and the level, filtered by `--log-level`.

use std::io::Write;
use std::time::{SystemTime, UNIX_EPOCH};

/// Writes log records to stderr.
#[derive(Debug)]
struct StderrLogger {
    level: log::LevelFilter,
}

impl log::Log for StderrLogger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.level
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let thread = std::thread::current();
        let _ = writeln!(
            std::io::stderr().lock(),
            "{}.{:06} [brique:{}:{}] {}",
            since_epoch.as_secs(),
            since_epoch.subsec_micros(),
            thread.name().unwrap_or("main"),
            record.level(),
            record.args()
        );
    }

    fn flush(&self) {}
}

/// Installs the logger at `level`.
pub fn init(level: log::LevelFilter) {
    let logger = Box::leak(Box::new(StderrLogger { level }));
    if log::set_logger(logger).is_ok() {
        log::set_max_level(level);
    }
}
