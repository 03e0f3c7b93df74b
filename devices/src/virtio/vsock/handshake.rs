//! The text a host process sends on the device's Unix socket before its
//! bytes go to the guest: `CONNECT <port>\n` (the word in any case, as
//! Firecracker takes it). brique answers `OK <host port>\n` once the guest
//! accepted; on refusal it closes the socket.
//!
//! The line is read a byte at a time so that data the host sends right
//! after it stays in the socket for the guest.

use std::io::{self, Read};

/// Longest accepted line, newline included (`CONNECT 4294967295\n` is 19).
pub const MAX_LINE: usize = 32;

/// Why a host connection's first line is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// Not `CONNECT <port>`.
    #[error("expected `CONNECT <port>`, got {0:?}")]
    Malformed(String),
    /// No newline within [`MAX_LINE`] bytes.
    #[error("no newline within {MAX_LINE} bytes")]
    TooLong,
    /// The host closed the socket before a whole line.
    #[error("the host closed the connection before a whole line")]
    Closed,
    /// Reading the socket failed.
    #[error("read failed: {0}")]
    Io(String),
}

/// The port a `CONNECT <port>` line (without its newline) names.
pub fn parse_connect_line(line: &[u8]) -> Result<u32, HandshakeError> {
    let malformed = || HandshakeError::Malformed(String::from_utf8_lossy(line).into_owned());
    let text = std::str::from_utf8(line).map_err(|_| malformed())?;
    let mut words = text.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some(verb), Some(port), None) if verb.eq_ignore_ascii_case("connect") => {
            port.parse::<u32>().map_err(|_| malformed())
        }
        _ => Err(malformed()),
    }
}

/// A line being read from a host connection.
#[derive(Debug, Default)]
pub struct LineReader {
    line: Vec<u8>,
}

impl LineReader {
    /// Reads what `stream` has, a byte at a time: `Ok(Some(port))` once the
    /// line is whole, `Ok(None)` while it is not.
    pub fn read_from(&mut self, stream: &mut impl Read) -> Result<Option<u32>, HandshakeError> {
        let mut byte = [0u8; 1];
        loop {
            match stream.read(&mut byte) {
                Ok(0) => return Err(HandshakeError::Closed),
                Ok(_) if byte[0] == b'\n' => return parse_connect_line(&self.line).map(Some),
                Ok(_) if self.line.len() + 1 >= MAX_LINE => return Err(HandshakeError::TooLong),
                Ok(_) => self.line.push(byte[0]),
                Err(err) if err.kind() == io::ErrorKind::WouldBlock => return Ok(None),
                Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                Err(err) => return Err(HandshakeError::Io(err.to_string())),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_lines_name_a_port() {
        assert_eq!(parse_connect_line(b"CONNECT 52"), Ok(52));
        assert_eq!(parse_connect_line(b"connect 1024"), Ok(1024));
        assert_eq!(parse_connect_line(b"Connect  4294967295 "), Ok(u32::MAX));
        for bad in [
            &b"CONNECT"[..],
            b"CONNECT 4294967296",
            b"CONNECT -1",
            b"CONNECT 5 6",
            b"LISTEN 5",
            b"\xff\xfe 5",
            b"",
        ] {
            assert!(
                matches!(parse_connect_line(bad), Err(HandshakeError::Malformed(_))),
                "{bad:?}"
            );
        }
    }

    /// A reader that hands out its bytes, then WouldBlock (or EOF).
    struct Trickle(Vec<u8>, bool);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() {
                return if self.1 {
                    Ok(0)
                } else {
                    Err(io::ErrorKind::WouldBlock.into())
                };
            }
            let n = buf.len().min(self.0.len());
            buf[..n].copy_from_slice(&self.0[..n]);
            self.0.drain(..n);
            Ok(n)
        }
    }

    #[test]
    fn a_line_may_come_in_pieces_and_what_follows_it_is_left_unread() {
        let mut reader = LineReader::default();
        let mut stream = Trickle(b"CONN".to_vec(), false);
        assert_eq!(reader.read_from(&mut stream), Ok(None));
        stream.0.extend_from_slice(b"ECT 77\nguest data");
        assert_eq!(reader.read_from(&mut stream), Ok(Some(77)));
        assert_eq!(stream.0, b"guest data");
    }

    #[test]
    fn overlong_lines_and_early_close_are_refused() {
        let mut stream = Trickle(vec![b'x'; 100], false);
        assert_eq!(
            LineReader::default().read_from(&mut stream),
            Err(HandshakeError::TooLong)
        );
        let mut stream = Trickle(b"CONNECT 5".to_vec(), true);
        assert_eq!(
            LineReader::default().read_from(&mut stream),
            Err(HandshakeError::Closed)
        );
    }
}
