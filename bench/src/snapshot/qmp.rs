//! A minimal QMP client: QEMU's control socket, with the migration events
//! the snapshot benchmark waits for.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

/// A QMP connection that keeps the events it reads.
pub struct Qmp {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    events: Vec<String>,
}

/// The string value of `"key": "value"` in a QMP line.
fn json_string(line: &str, key: &str) -> Option<String> {
    let quoted = format!("\"{key}\"");
    let rest = line[line.find(&quoted)? + quoted.len()..].trim_start();
    let rest = rest.strip_prefix(':')?.trim_start().strip_prefix('"')?;
    Some(rest[..rest.find('"')?].to_owned())
}

impl Qmp {
    fn connect(path: &Path, timeout: Duration) -> std::io::Result<Self> {
        let deadline = Instant::now() + Duration::from_secs(20);
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(stream) => break stream,
                Err(err) if Instant::now() >= deadline => return Err(err),
                Err(_) => std::thread::sleep(Duration::from_millis(10)),
            }
        };
        stream.set_read_timeout(Some(timeout))?;
        let mut qmp = Self {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
            events: Vec::new(),
        };
        qmp.read_line()?; // the greeting
        Ok(qmp)
    }

    fn read_line(&mut self) -> std::io::Result<String> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "QMP closed",
            ));
        }
        Ok(line)
    }

    /// Runs a command; its reply (`Err` with the reply if it is an error).
    pub fn execute(&mut self, command: &str, arguments: &str) -> std::io::Result<String> {
        let request = if arguments.is_empty() {
            format!("{{\"execute\": \"{command}\"}}")
        } else {
            format!("{{\"execute\": \"{command}\", \"arguments\": {arguments}}}")
        };
        writeln!(self.writer, "{request}")?;
        loop {
            let line = self.read_line()?;
            if line.contains("\"event\"") {
                self.events.push(line);
            } else if line.contains("\"error\"") {
                return Err(std::io::Error::other(format!("{request}: {}", line.trim())));
            } else {
                return Ok(line);
            }
        }
    }

    /// Waits for the MIGRATION event that says `completed`.
    pub fn wait_migration(&mut self) -> std::io::Result<()> {
        let mut seen = std::mem::take(&mut self.events).into_iter();
        loop {
            let line = match seen.next() {
                Some(line) => line,
                None => self.read_line()?,
            };
            if json_string(&line, "event").as_deref() != Some("MIGRATION") {
                continue;
            }
            match json_string(&line, "status").as_deref() {
                Some("completed") => return Ok(()),
                Some("failed" | "cancelled") => {
                    return Err(std::io::Error::other(format!("migration {}", line.trim())))
                }
                _ => {}
            }
        }
    }

    /// Connects, leaves negotiation mode and turns migration events on
    /// (and `mapped-ram` if asked).
    pub fn start(path: &Path, mapped_ram: bool, timeout: Duration) -> std::io::Result<Self> {
        let mut qmp = Self::connect(path, timeout)?;
        qmp.execute("qmp_capabilities", "")?;
        qmp.execute(
            "migrate-set-capabilities",
            &format!(
                r#"{{"capabilities": [{{"capability": "events", "state": true}},
                    {{"capability": "mapped-ram", "state": {mapped_ram}}}]}}"#
            ),
        )?;
        Ok(qmp)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn qmp_fields_are_read_from_their_lines() {
        let event = r#"{"timestamp": {"seconds": 1, "microseconds": 2}, "event": "MIGRATION", "data": {"status": "completed"}}"#;
        assert_eq!(json_string(event, "event").as_deref(), Some("MIGRATION"));
        assert_eq!(json_string(event, "status").as_deref(), Some("completed"));
        assert_eq!(json_string(event, "missing"), None);
    }
}
