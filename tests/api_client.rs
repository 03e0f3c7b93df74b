//! A small blocking HTTP/1.1 client for brique's API socket, for tests and
//! benchmarks (keep-alive, Content-Length bodies).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A response: status and body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    /// HTTP status code.
    pub status: u16,
    /// Body text.
    pub body: String,
    /// Response headers, names lowercased.
    pub headers: Vec<(String, String)>,
}

impl ApiResponse {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// How often [`ApiClient::connect`] tries again. A failed connect costs
/// microseconds; the benchmarks time the socket's readiness through it, and
/// a 20 ms retry made every start look 20 ms long.
const CONNECT_RETRY: Duration = Duration::from_millis(1);

/// A keep-alive connection to the API socket.
#[derive(Debug)]
pub struct ApiClient {
    path: PathBuf,
    stream: UnixStream,
    buffer: Vec<u8>,
}

impl ApiClient {
    /// Connects to `path`, retrying every `CONNECT_RETRY` for up to
    /// `wait` while brique starts (one attempt when `wait` is zero).
    pub fn connect(path: &Path, wait: Duration) -> std::io::Result<Self> {
        let deadline = Instant::now() + wait;
        loop {
            match UnixStream::connect(path) {
                Ok(stream) => {
                    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
                    return Ok(Self {
                        path: path.to_owned(),
                        stream,
                        buffer: Vec::new(),
                    });
                }
                Err(err) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Err(err);
                    }
                    std::thread::sleep(CONNECT_RETRY.min(left));
                }
            }
        }
    }

    /// Sends one request and reads its response; reconnects once if the
    /// server closed the connection.
    pub fn request(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> std::io::Result<ApiResponse> {
        match self.try_request(method, path, body) {
            Ok(response) => Ok(response),
            Err(_) => {
                *self = Self::connect(&self.path.clone(), Duration::from_secs(1))?;
                self.try_request(method, path, body)
            }
        }
    }

    fn try_request(
        &mut self,
        method: &str,
        path: &str,
        body: &str,
    ) -> std::io::Result<ApiResponse> {
        let mut raw =
            format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nAccept: application/json\r\n");
        if !body.is_empty() {
            raw.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        }
        raw.push_str("\r\n");
        raw.push_str(body);
        self.stream.write_all(raw.as_bytes())?;
        self.read_response()
    }

    /// Reads one response from the connection (after raw writes).
    pub fn read_response(&mut self) -> std::io::Result<ApiResponse> {
        let mut chunk = [0u8; 8192];
        loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut parsed = httparse::Response::new(&mut headers);
            if let Ok(httparse::Status::Complete(head_len)) = parsed.parse(&self.buffer) {
                let status = parsed.code.unwrap_or(0);
                let headers: Vec<(String, String)> = parsed
                    .headers
                    .iter()
                    .map(|h| {
                        (
                            h.name.to_ascii_lowercase(),
                            String::from_utf8_lossy(h.value).into_owned(),
                        )
                    })
                    .collect();
                let length = headers
                    .iter()
                    .find(|(n, _)| n == "content-length")
                    .and_then(|(_, v)| v.trim().parse::<usize>().ok())
                    .unwrap_or(0);
                if status == 100 {
                    self.buffer.drain(..head_len);
                    continue;
                }
                if self.buffer.len() >= head_len + length {
                    let body = String::from_utf8_lossy(&self.buffer[head_len..head_len + length])
                        .into_owned();
                    self.buffer.drain(..head_len + length);
                    return Ok(ApiResponse {
                        status,
                        body,
                        headers,
                    });
                }
            }
            let n = self.stream.read(&mut chunk)?;
            if n == 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the server closed the connection",
                ));
            }
            self.buffer.extend_from_slice(&chunk[..n]);
        }
    }

    /// The raw stream, for tests that misbehave on purpose.
    pub fn stream(&mut self) -> &mut UnixStream {
        &mut self.stream
    }
}
