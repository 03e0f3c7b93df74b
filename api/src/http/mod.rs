//! HTTP/1.1 for the control socket: request parsing (with `httparse`),
//! responses, and the Unix socket server that multiplexes clients.

pub mod request;
pub mod response;
pub mod server;

pub use request::{parse_request, HttpRequest, Method, ParseOutcome, RequestError};
pub use response::{Response, StatusCode};
