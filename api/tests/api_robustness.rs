//! Hostile and sloppy clients: malformed HTTP, bad JSON, unknown fields,
//! wrong types, huge bodies, thousands of requests, clients that vanish
//! mid-body or stall half-way. brique answers each with a clear status (or
//! drops the connection), keeps serving everyone else, and the microVM
//! (a tiny guest on /dev/kvm) keeps running throughout.

// Test helpers outside #[test] functions fail loudly too.
#![allow(clippy::unwrap_used)]

mod common;

use brique_tests::api_client::ApiClient;
use brique_tests::kvm_available;
use common::Brique;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

/// Sends raw bytes on a fresh connection and returns everything the server
/// answered before closing (or within 5 s).
fn raw_exchange(sock: &std::path::Path, bytes: &[u8]) -> String {
    let mut stream = UnixStream::connect(sock).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    // The server may close before reading everything (oversized input).
    let _ = stream.write_all(bytes);
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    String::from_utf8_lossy(&answer).into_owned()
}

fn status_of(answer: &str) -> u16 {
    answer
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0)
}

#[test]
fn hostile_clients_get_clear_errors_and_the_vm_keeps_running() {
    let running = kvm_available();
    let mut vm = Brique::start("robust", &[]);
    if running {
        vm.start_tiny_guest();
    } else {
        vm.configure_tiny_guest();
    }
    let config_before = vm.call("GET", "/vm/config", "").body;
    let sock = vm.sock().to_owned();

    // Malformed HTTP: 400-class answer, then the connection is closed.
    let big_headers = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(20_000));
    let big_body = format!(
        "PUT /machine-config HTTP/1.1\r\nContent-Length: {}\r\n\r\n{}",
        200_000,
        "x".repeat(200_000)
    );
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("garbage", b"\x00\x01\x02\x03\r\n\r\n".to_vec(), 400),
        ("no version", b"GET /\r\n\r\n".to_vec(), 400),
        (
            "bad header",
            b"GET / HTTP/1.1\r\nNoColon\r\n\r\n".to_vec(),
            400,
        ),
        (
            "bad length",
            b"PUT /vm HTTP/1.1\r\nContent-Length: x\r\n\r\n".to_vec(),
            400,
        ),
        (
            "chunked",
            b"PUT /vm HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(),
            501,
        ),
        ("huge headers", big_headers.into_bytes(), 431),
        ("huge body", big_body.into_bytes(), 413),
    ];
    for (name, bytes, status) in cases {
        let answer = raw_exchange(&sock, &bytes);
        assert_eq!(status_of(&answer), status, "{name}: {answer}");
        assert!(answer.contains("fault_message"), "{name}: {answer}");
    }

    // Well-formed HTTP with bad JSON bodies: 400 with the reason.
    for (method, path, body, needle) in [
        ("PUT", "/machine-config", "{", "invalid JSON"),
        ("PUT", "/machine-config", "null", "JSON object"),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": true, "mem_size_mib": 32}"#,
            "invalid type",
        ),
        (
            "PUT",
            "/machine-config",
            r#"{"vcpu_count": 1, "mem_size_mib": 32, "gpu": 1}"#,
            "unknown field",
        ),
        (
            "PUT",
            "/boot-source",
            r#"{"kernel_image_path": 7}"#,
            "invalid type",
        ),
        (
            "PUT",
            "/actions",
            r#"{"action_type": "Detonate"}"#,
            "unknown variant",
        ),
        ("PUT", "/actions", "", "needs a JSON body"),
        (
            "PATCH",
            "/vm",
            r#"{"state": "Paused", "extra": 1}"#,
            "unknown field",
        ),
        (
            "PUT",
            "/drives/x",
            r#"{"drive_id": "y", "path_on_host": "/a", "is_root_device": false}"#,
            "does not match",
        ),
        (
            "PUT",
            "/logger",
            r#"{"level": "Chatty"}"#,
            "unknown log level",
        ),
    ] {
        vm.refused(method, path, body, needle);
    }
    assert_eq!(vm.call("GET", "/nowhere", "").status, 404);
    let wrong = vm.call("DELETE", "/vm", "");
    assert_eq!(wrong.status, 405);
    assert_eq!(wrong.header("allow"), Some("PATCH"));

    // A client that stalls half-way through a request, one that sends half
    // a body and disconnects, and many idle ones: none of them delays a
    // well-behaved client.
    let mut stalled = UnixStream::connect(&sock).unwrap();
    stalled
        .write_all(b"PUT /machine-config HTTP/1.1\r\nContent-Le")
        .unwrap();
    let mut half_body = UnixStream::connect(&sock).unwrap();
    half_body
        .write_all(b"PATCH /vm HTTP/1.1\r\nContent-Length: 20\r\n\r\n{\"state\": \"Pa")
        .unwrap();
    drop(half_body);
    let idle: Vec<UnixStream> = (0..100)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    let started = Instant::now();
    let mut other = ApiClient::connect(&sock, Duration::from_secs(1)).unwrap();
    assert_eq!(
        other.request("GET", "/machine-config", "").unwrap().status,
        200
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "served past stalled clients"
    );
    drop(idle);

    // Thousands of requests, keep-alive and one connection each.
    for i in 0..3000 {
        let response = vm.call("GET", "/machine-config", "");
        assert_eq!(response.status, 200, "request {i}");
    }
    for i in 0..500 {
        let mut client = ApiClient::connect(&sock, Duration::from_secs(1)).unwrap();
        assert_eq!(
            client.request("GET", "/", "").unwrap().status,
            200,
            "connection {i}"
        );
    }
    // Pipelined requests on one connection are answered in order.
    let mut pipelined = ApiClient::connect(&sock, Duration::from_secs(1)).unwrap();
    pipelined
        .stream()
        .write_all(b"GET /version HTTP/1.1\r\n\r\nGET /nope HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n")
        .unwrap();
    let statuses: Vec<u16> = (0..3)
        .map(|_| pipelined.read_response().unwrap().status)
        .collect();
    assert_eq!(statuses, [200, 404, 200]);
    // curl's Expect: 100-continue gets its interim answer.
    let mut expecting = ApiClient::connect(&sock, Duration::from_secs(1)).unwrap();
    let body = r#"{"state": "Resumed"}"#;
    expecting
        .stream()
        .write_all(
            format!(
                "PATCH /vm HTTP/1.1\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
        )
        .unwrap();
    let mut interim = [0u8; 25];
    expecting.stream().read_exact(&mut interim).unwrap();
    assert_eq!(&interim, b"HTTP/1.1 100 Continue\r\n\r\n");
    expecting.stream().write_all(body.as_bytes()).unwrap();
    let resumed = expecting.read_response().unwrap().status;
    assert_eq!(resumed, if running { 204 } else { 400 });

    // Nothing of the above changed the configuration; the VM still runs.
    assert_eq!(vm.call("GET", "/vm/config", "").body, config_before);
    if running {
        assert_eq!(vm.state(), "Running");
        assert!(
            vm.guest_runs(Duration::from_secs(5)),
            "the guest still prints"
        );
    }
    // The stalled client is eventually dropped (10 s); the server was never stuck.
    stalled
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let mut rest = Vec::new();
    let closed = stalled.read_to_end(&mut rest);
    assert!(
        closed.is_ok(),
        "the stalled client was closed by the server: {closed:?}"
    );
    assert!(
        vm.child.try_wait().unwrap().is_none(),
        "brique still runs: {}",
        vm.stderr()
    );
}

#[test]
fn running_out_of_descriptors_makes_room_for_new_clients() {
    // 64 descriptors: 16 for clients (a quarter), the rest for brique and its VM.
    let mut vm = Brique::start_limited("fds", &[], Some(64));
    let sock = vm.sock().to_owned();
    let idle: Vec<UnixStream> = (0..60)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    let mut late = ApiClient::connect(&sock, Duration::from_secs(1)).unwrap();
    assert_eq!(late.request("GET", "/", "").unwrap().status, 200);
    // The clients took at most a quarter of the descriptors: brique still
    // opens its drive, its VM and its vCPU with all 60 connected.
    if kvm_available() {
        vm.start_tiny_guest();
        assert!(
            vm.guest_runs(Duration::from_secs(5)),
            "the guest prints: {}",
            vm.stderr()
        );
    } else {
        eprintln!("*** SKIPPED: booting with 60 clients connected needs /dev/kvm ***");
    }
    drop(idle);
    assert_eq!(vm.call("GET", "/version", "").status, 200);
    assert!(
        vm.child.try_wait().unwrap().is_none(),
        "brique still runs: {}",
        vm.stderr()
    );
}
