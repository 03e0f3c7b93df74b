//! HTTP responses: a status, optional JSON body, and the bytes on the wire.

/// The statuses brique answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StatusCode {
    /// 100 (interim, for `Expect: 100-continue`).
    Continue,
    /// 200 with a JSON body.
    Ok,
    /// 204 without a body.
    NoContent,
    /// 400 with a fault message.
    BadRequest,
    /// 404: no such path.
    NotFound,
    /// 405: the path exists, not with this method.
    MethodNotAllowed,
    /// 408: the request did not arrive in time.
    RequestTimeout,
    /// 413: body over the limit.
    PayloadTooLarge,
    /// 431: headers over the limit.
    RequestHeaderFieldsTooLarge,
    /// 500: the VMM failed.
    InternalServerError,
    /// 501: an HTTP feature brique does not implement.
    NotImplemented,
}

impl StatusCode {
    /// The numeric code.
    pub fn code(self) -> u16 {
        match self {
            Self::Continue => 100,
            Self::Ok => 200,
            Self::NoContent => 204,
            Self::BadRequest => 400,
            Self::NotFound => 404,
            Self::MethodNotAllowed => 405,
            Self::RequestTimeout => 408,
            Self::PayloadTooLarge => 413,
            Self::RequestHeaderFieldsTooLarge => 431,
            Self::InternalServerError => 500,
            Self::NotImplemented => 501,
        }
    }

    fn reason(self) -> &'static str {
        match self {
            Self::Continue => "Continue",
            Self::Ok => "OK",
            Self::NoContent => "No Content",
            Self::BadRequest => "Bad Request",
            Self::NotFound => "Not Found",
            Self::MethodNotAllowed => "Method Not Allowed",
            Self::RequestTimeout => "Request Timeout",
            Self::PayloadTooLarge => "Payload Too Large",
            Self::RequestHeaderFieldsTooLarge => "Request Header Fields Too Large",
            Self::InternalServerError => "Internal Server Error",
            Self::NotImplemented => "Not Implemented",
        }
    }
}

/// A response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    /// Status.
    pub status: StatusCode,
    /// JSON body, if any.
    pub body: Option<String>,
    /// Methods for the `Allow` header (405 only).
    pub allow: Option<String>,
}

impl Response {
    /// 204.
    pub fn no_content() -> Self {
        Self {
            status: StatusCode::NoContent,
            body: None,
            allow: None,
        }
    }

    /// 200 with `json`.
    pub fn json(json: String) -> Self {
        Self {
            status: StatusCode::Ok,
            body: Some(json),
            allow: None,
        }
    }

    /// An error: `{"fault_message": message}`.
    pub fn fault(status: StatusCode, message: &str) -> Self {
        Self {
            status,
            body: Some(serde_json::json!({ "fault_message": message }).to_string()),
            allow: None,
        }
    }

    /// The bytes on the wire; `close` adds `Connection: close`.
    pub fn to_bytes(&self, close: bool) -> Vec<u8> {
        let mut head = format!(
            "HTTP/1.1 {} {}\r\nServer: brique\r\n",
            self.status.code(),
            self.status.reason()
        );
        if let Some(allow) = &self.allow {
            head.push_str(&format!("Allow: {allow}\r\n"));
        }
        if close {
            head.push_str("Connection: close\r\n");
        }
        let body = self.body.as_deref().unwrap_or("");
        if self.body.is_some() {
            head.push_str("Content-Type: application/json\r\n");
        }
        if self.status != StatusCode::NoContent {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body.as_bytes());
        bytes
    }
}

/// The interim response to `Expect: 100-continue`.
pub const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_content_has_no_length_and_no_body() {
        let text = String::from_utf8(Response::no_content().to_bytes(false)).unwrap();
        assert!(text.starts_with("HTTP/1.1 204 No Content\r\n"));
        assert!(!text.contains("Content-Length"));
        assert!(text.ends_with("\r\n\r\n"));
    }

    #[test]
    fn faults_are_json_with_length_and_close() {
        let response = Response::fault(StatusCode::BadRequest, "bad \"thing\"");
        let text = String::from_utf8(response.to_bytes(true)).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.contains("Connection: close"));
        assert!(head.contains(&format!("Content-Length: {}", body.len())));
        let json: serde_json::Value = serde_json::from_str(body).unwrap();
        assert_eq!(json["fault_message"], "bad \"thing\"");
    }
}
