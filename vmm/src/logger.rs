//! brique's `log` backend: one line per record, with a timestamp, the
//! thread and (optionally) the level and origin, on stderr or on the file
//! or FIFO set by `PUT /logger`.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

/// Log levels as Firecracker's `PUT /logger` names them (any case).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum LogLevel {
    /// Nothing.
    Off,
    /// Errors only.
    Error,
    /// Warnings and errors.
    Warning,
    /// Informational messages and above.
    Info,
    /// Debug messages and above.
    Debug,
    /// Everything.
    Trace,
}

impl<'de> Deserialize<'de> for LogLevel {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

impl std::str::FromStr for LogLevel {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Ok(match text.to_ascii_lowercase().as_str() {
            "off" => Self::Off,
            "error" => Self::Error,
            "warning" | "warn" => Self::Warning,
            "info" => Self::Info,
            "debug" => Self::Debug,
            "trace" => Self::Trace,
            _ => {
                return Err(format!(
                    "unknown log level {text:?}: expected Off, Error, Warning, Info, Debug or Trace"
                ))
            }
        })
    }
}

impl From<LogLevel> for log::LevelFilter {
    fn from(level: LogLevel) -> Self {
        match level {
            LogLevel::Off => Self::Off,
            LogLevel::Error => Self::Error,
            LogLevel::Warning => Self::Warn,
            LogLevel::Info => Self::Info,
            LogLevel::Debug => Self::Debug,
            LogLevel::Trace => Self::Trace,
        }
    }
}

/// `PUT /logger`: where logs go and what they show.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggerConfig {
    /// File or FIFO to append to (stderr when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_path: Option<PathBuf>,
    /// Verbosity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<LogLevel>,
    /// Print the level on each line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_level: Option<bool>,
    /// Print the source file and line on each line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub show_log_origin: Option<bool>,
    /// Only log records whose module path starts with this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
}

/// Errors configuring the logger.
#[derive(Debug, thiserror::Error)]
pub enum LoggerError {
    /// The log path cannot be opened.
    #[error("cannot open log file {path}: {source}")]
    Open {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug)]
struct Settings {
    level: log::LevelFilter,
    show_level: bool,
    show_origin: bool,
    module: Option<String>,
    file: Option<File>,
}

#[derive(Debug)]
struct Logger {
    settings: Mutex<Settings>,
}

static LOGGER: Logger = Logger {
    settings: Mutex::new(Settings {
        level: log::LevelFilter::Warn,
        show_level: true,
        show_origin: false,
        module: None,
        file: None,
    }),
};

impl Logger {
    fn settings(&self) -> std::sync::MutexGuard<'_, Settings> {
        self.settings
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl log::Log for Logger {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        metadata.level() <= self.settings().level
    }

    fn log(&self, record: &log::Record<'_>) {
        let mut settings = self.settings();
        if record.level() > settings.level {
            return;
        }
        if let Some(module) = &settings.module {
            if !record
                .module_path()
                .unwrap_or("")
                .starts_with(module.as_str())
            {
                return;
            }
        }
        let since_epoch = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let thread = std::thread::current();
        let mut line = format!(
            "{}.{:06} [brique:{}",
            since_epoch.as_secs(),
            since_epoch.subsec_micros(),
            thread.name().unwrap_or("main"),
        );
        if settings.show_level {
            line.push_str(&format!(":{}", record.level()));
        }
        if settings.show_origin {
            line.push_str(&format!(
                ":{}:{}",
                record.file().unwrap_or("?"),
                record.line().unwrap_or(0)
            ));
        }
        line.push_str(&format!("] {}\n", record.args()));
        let written = match settings.file.as_mut() {
            Some(file) => file.write_all(line.as_bytes()),
            None => std::io::stderr().lock().write_all(line.as_bytes()),
        };
        // A full FIFO loses the line rather than stalling a vCPU.
        drop(written);
    }

    fn flush(&self) {}
}

/// Installs the logger at `level`, on stderr.
pub fn init(level: log::LevelFilter) {
    LOGGER.settings().level = level;
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(level);
    }
}

/// Applies `PUT /logger`: fields left out keep their current value.
pub fn configure(config: &LoggerConfig) -> Result<(), LoggerError> {
    let file = config
        .log_path
        .as_ref()
        .map(|path| {
            crate::metrics::open_sink(path).map_err(|source| LoggerError::Open {
                path: path.clone(),
                source,
            })
        })
        .transpose()?;
    let mut settings = LOGGER.settings();
    if let Some(file) = file {
        settings.file = Some(file);
    }
    if let Some(level) = config.level {
        settings.level = level.into();
        log::set_max_level(settings.level);
    }
    if let Some(show) = config.show_level {
        settings.show_level = show;
    }
    if let Some(show) = config.show_log_origin {
        settings.show_origin = show;
    }
    if let Some(module) = &config.module {
        settings.module = Some(module.clone());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_parse_in_any_case_and_unknown_ones_are_refused() {
        let parsed: LoggerConfig =
            serde_json::from_str(r#"{"level": "warning", "show_level": true}"#).unwrap();
        assert_eq!(parsed.level, Some(LogLevel::Warning));
        assert_eq!("TRACE".parse::<LogLevel>(), Ok(LogLevel::Trace));
        let err = serde_json::from_str::<LoggerConfig>(r#"{"level": "Loud"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown log level"), "{err}");
        assert!(serde_json::from_str::<LoggerConfig>(r#"{"colour": true}"#).is_err());
    }
}
