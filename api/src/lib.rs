//! brique's control plane: the HTTP/1.1 server on the API Unix socket and
//! the routes that turn Firecracker-compatible REST requests into the
//! VMM's actions. The server thread holds no VM state: every request goes
//! to the VMM thread through a [`brique_vmm::controller::ControllerHandle`].

pub mod cli;
pub mod fuzzing;
pub mod http;
pub mod routes;

use brique_vmm::controller::ControllerHandle;
use http::{HttpRequest, Response};

/// Answers one request: route it, run the action on the VMM thread, and
/// turn the result into a response.
pub fn handle_request(controller: &ControllerHandle, request: &HttpRequest) -> Response {
    match routes::parse(request) {
        Ok(action) => routes::respond(controller.call(action)),
        Err(err) => err.into_response(),
    }
}
