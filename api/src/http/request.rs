//! Parsing one HTTP/1.1 request out of a connection's buffer, with bounded
//! header and body sizes. Header syntax is `httparse`'s job; this module
//! adds the limits and the few headers brique acts on.

use super::response::StatusCode;

/// Longest request line plus headers.
pub const MAX_HEADER_BYTES: usize = 8 * 1024;
/// Most headers in one request.
pub const MAX_HEADERS: usize = 32;
/// Largest body by default (Firecracker's default payload limit;
/// `--http-api-max-payload-size` changes it).
pub const MAX_BODY_BYTES: usize = 50 * 1024;

/// The methods the API uses; others are parsed and answered 405.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// GET.
    Get,
    /// PUT.
    Put,
    /// PATCH.
    Patch,
    /// Anything else (POST, DELETE, ...).
    Other,
}

impl Method {
    fn parse(text: &str) -> Self {
        match text {
            "GET" => Self::Get,
            "PUT" => Self::Put,
            "PATCH" => Self::Patch,
            _ => Self::Other,
        }
    }
}

/// A complete request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// Method.
    pub method: Method,
    /// The method as sent.
    pub method_text: String,
    /// Path without the query string.
    pub path: String,
    /// The body (possibly empty).
    pub body: Vec<u8>,
    /// The client wants the connection kept open after the response.
    pub keep_alive: bool,
}

/// A request that cannot be served: answered with `status`, then the
/// connection is closed (the stream can no longer be trusted).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct RequestError {
    /// Status to answer with.
    pub status: StatusCode,
    /// Why.
    pub message: String,
}

impl RequestError {
    fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self {
            status,
            message: message.into(),
        }
    }
}

/// What the buffer holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParseOutcome {
    /// Not a whole request yet. `expects_continue` is set once the headers
    /// are complete and the client waits for `100 Continue` to send its body.
    Incomplete { expects_continue: bool },
    /// A request, and how many buffer bytes it used.
    Complete(HttpRequest, usize),
}

/// Parses the request at the start of `buf`.
pub fn parse_request(buf: &[u8], max_body: usize) -> Result<ParseOutcome, RequestError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut parsed = httparse::Request::new(&mut headers);
    let header_len = match parsed.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => {
            if buf.len() > MAX_HEADER_BYTES {
                return Err(header_too_large());
            }
            return Ok(ParseOutcome::Incomplete {
                expects_continue: false,
            });
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(RequestError::new(
                StatusCode::RequestHeaderFieldsTooLarge,
                format!("more than {MAX_HEADERS} headers"),
            ))
        }
        Err(err) => {
            return Err(RequestError::new(
                StatusCode::BadRequest,
                format!("malformed HTTP request: {err}"),
            ))
        }
    };
    if header_len > MAX_HEADER_BYTES {
        return Err(header_too_large());
    }
    let version = parsed.version.unwrap_or(1);
    let method_text = parsed.method.unwrap_or("").to_owned();
    let target = parsed.path.unwrap_or("/");
    let path = target.split(['?', '#']).next().unwrap_or("").to_owned();

    let mut content_length: Option<usize> = None;
    let mut keep_alive = version == 1;
    let mut expects_continue = false;
    for header in parsed.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or("").trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            let length = value.parse::<usize>().map_err(|_| {
                RequestError::new(
                    StatusCode::BadRequest,
                    format!("invalid Content-Length {value:?}"),
                )
            })?;
            if content_length.is_some_and(|seen| seen != length) {
                return Err(RequestError::new(
                    StatusCode::BadRequest,
                    "conflicting Content-Length headers",
                ));
            }
            content_length = Some(length);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(RequestError::new(
                StatusCode::NotImplemented,
                "Transfer-Encoding is not supported: send the body with Content-Length",
            ));
        } else if header.name.eq_ignore_ascii_case("connection") {
            let value = value.to_ascii_lowercase();
            if value.contains("close") {
                keep_alive = false;
            } else if value.contains("keep-alive") {
                keep_alive = true;
            }
        } else if header.name.eq_ignore_ascii_case("expect") {
            expects_continue = value.eq_ignore_ascii_case("100-continue");
        }
    }
    let body_len = content_length.unwrap_or(0);
    if body_len > max_body {
        return Err(RequestError::new(
            StatusCode::PayloadTooLarge,
            format!("request body of {body_len} bytes is larger than the limit of {max_body}"),
        ));
    }
    let total = header_len + body_len;
    if buf.len() < total {
        return Ok(ParseOutcome::Incomplete {
            expects_continue: expects_continue && buf.len() == header_len,
        });
    }
    Ok(ParseOutcome::Complete(
        HttpRequest {
            method: Method::parse(&method_text),
            method_text,
            path,
            body: buf[header_len..total].to_vec(),
            keep_alive,
        },
        total,
    ))
}

fn header_too_large() -> RequestError {
    RequestError::new(
        StatusCode::RequestHeaderFieldsTooLarge,
        format!("request line and headers exceed {MAX_HEADER_BYTES} bytes"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn complete(raw: &[u8]) -> (HttpRequest, usize) {
        match parse_request(raw, MAX_BODY_BYTES).unwrap() {
            ParseOutcome::Complete(req, used) => (req, used),
            other => panic!("not complete: {other:?}"),
        }
    }

    #[test]
    fn a_put_with_a_body_and_a_query_string() {
        let raw =
            b"PUT /drives/rootfs?x=1 HTTP/1.1\r\nHost: localhost\r\nContent-Length: 2\r\n\r\n{}GET";
        let (req, used) = complete(raw);
        assert_eq!(req.method, Method::Put);
        assert_eq!(req.path, "/drives/rootfs");
        assert_eq!(req.body, b"{}");
        assert!(req.keep_alive);
        assert_eq!(used, raw.len() - 3, "the next request's bytes stay");
    }

    #[test]
    fn partial_requests_wait_for_more_bytes() {
        let full = b"PATCH /vm HTTP/1.1\r\nContent-Length: 20\r\n\r\n{\"state\": \"Paused\"}\n";
        for cut in 0..full.len() {
            assert!(
                matches!(
                    parse_request(&full[..cut], MAX_BODY_BYTES),
                    Ok(ParseOutcome::Incomplete { .. })
                ),
                "cut at {cut}"
            );
        }
        assert_eq!(complete(full).0.body.len(), 20);
    }

    #[test]
    fn expect_continue_is_reported_once_headers_are_in() {
        let raw = b"PUT /x HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: 5\r\n\r\n";
        assert_eq!(
            parse_request(raw, MAX_BODY_BYTES).unwrap(),
            ParseOutcome::Incomplete {
                expects_continue: true
            }
        );
    }

    #[test]
    fn connection_close_and_http_1_0() {
        let (req, _) = complete(b"GET / HTTP/1.1\r\nConnection: close\r\n\r\n");
        assert!(!req.keep_alive);
        let (req, _) = complete(b"GET / HTTP/1.0\r\n\r\n");
        assert!(!req.keep_alive);
        let (req, _) = complete(b"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n");
        assert!(req.keep_alive);
    }

    #[test]
    fn malformed_and_oversized_requests_are_refused_with_a_status() {
        let cases: Vec<(Vec<u8>, StatusCode)> = vec![
            (
                b"GET / HTTP/1.1\r\nBad Header\r\n\r\n".to_vec(),
                StatusCode::BadRequest,
            ),
            (
                b"\x00\x01\x02 / HTTP/1.1\r\n\r\n".to_vec(),
                StatusCode::BadRequest,
            ),
            (b"GET / HTTP/9.9\r\n\r\n".to_vec(), StatusCode::BadRequest),
            (
                b"PUT / HTTP/1.1\r\nContent-Length: -1\r\n\r\n".to_vec(),
                StatusCode::BadRequest,
            ),
            (
                b"PUT / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n".to_vec(),
                StatusCode::BadRequest,
            ),
            (
                b"PUT / HTTP/1.1\r\nContent-Length: 999999999\r\n\r\n".to_vec(),
                StatusCode::PayloadTooLarge,
            ),
            (
                b"PUT / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec(),
                StatusCode::NotImplemented,
            ),
            (
                format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEADER_BYTES)).into_bytes(),
                StatusCode::RequestHeaderFieldsTooLarge,
            ),
            (
                format!(
                    "GET / HTTP/1.1\r\n{}\r\n",
                    "X-A: b\r\n".repeat(MAX_HEADERS + 1)
                )
                .into_bytes(),
                StatusCode::RequestHeaderFieldsTooLarge,
            ),
        ];
        for (raw, status) in cases {
            let err = parse_request(&raw, MAX_BODY_BYTES).unwrap_err();
            assert_eq!(err.status, status, "{:?}", String::from_utf8_lossy(&raw));
            assert!(!err.message.is_empty());
        }
    }

    #[test]
    fn body_limit_is_inclusive() {
        let body = vec![b'x'; MAX_BODY_BYTES];
        let mut raw =
            format!("PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", body.len()).into_bytes();
        raw.extend(&body);
        assert_eq!(complete(&raw).0.body.len(), MAX_BODY_BYTES);
    }

    #[test]
    fn a_smaller_or_larger_body_limit_is_honoured() {
        let raw = b"PUT / HTTP/1.1\r\nContent-Length: 100\r\n\r\n".to_vec();
        let err = parse_request(&raw, 99).unwrap_err();
        assert_eq!(err.status, StatusCode::PayloadTooLarge);
        assert!(err.message.contains("limit of 99"), "{}", err.message);
        let mut big =
            format!("PUT / HTTP/1.1\r\nContent-Length: {}\r\n\r\n", 200 * 1024).into_bytes();
        big.extend(vec![b'y'; 200 * 1024]);
        assert!(parse_request(&big, MAX_BODY_BYTES).is_err());
        match parse_request(&big, 200 * 1024).unwrap() {
            ParseOutcome::Complete(request, _) => assert_eq!(request.body.len(), 200 * 1024),
            ParseOutcome::Incomplete { .. } => panic!("a whole request was read as incomplete"),
        }
    }
}
