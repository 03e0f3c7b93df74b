//! The fuzzing harness for the HTTP and request parsers: any bytes from a
//! client go through `parse_request` and, when they form a request, through
//! the router, which must answer or refuse, never panic, and respect the
//! size limits. Used by `fuzz/fuzz_targets/api_request.rs` and by a unit
//! test over pseudo-random mutations of real requests.

use crate::http::request::{MAX_BODY_BYTES, MAX_HEADER_BYTES};
use crate::http::{parse_request, ParseOutcome};
use crate::routes;

/// Parses `data` as a stream of pipelined requests, routing each.
pub fn run(data: &[u8]) {
    let mut rest = data;
    while let Ok(ParseOutcome::Complete(request, used)) = parse_request(rest, MAX_BODY_BYTES) {
        assert!(
            used > 0 && used <= rest.len(),
            "consumed {used} of {}",
            rest.len()
        );
        assert!(request.body.len() <= MAX_BODY_BYTES);
        assert!(used - request.body.len() <= MAX_HEADER_BYTES);
        if let Err(err) = routes::parse(&request) {
            assert!(err.status.code() >= 400 && !err.message.is_empty());
        }
        rest = &rest[used..];
    }
}

#[cfg(test)]
mod tests {
    /// Real requests, then thousands of byte-level mutations of them.
    #[test]
    fn mutated_requests_never_panic_the_parsers() {
        let seeds: &[&[u8]] = &[
            b"PUT /machine-config HTTP/1.1\r\nContent-Length: 36\r\n\r\n{\"vcpu_count\": 2, \"mem_size_mib\": 64}",
            b"PATCH /vm HTTP/1.1\r\nContent-Length: 19\r\n\r\n{\"state\": \"Paused\"}",
            b"PUT /drives/a HTTP/1.1\r\nContent-Length: 62\r\n\r\n{\"drive_id\": \"a\", \"path_on_host\": \"/x\", \"is_root_device\": true}",
            b"GET / HTTP/1.1\r\n\r\nGET /vm/config HTTP/1.1\r\n\r\n",
        ];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for round in 0..20_000 {
            let mut data = seeds[round % seeds.len()].to_vec();
            for _ in 0..(next() % 8) {
                let at = (next() as usize) % data.len().max(1);
                match next() % 4 {
                    0 => data[at] = next() as u8,
                    1 => data.insert(at, next() as u8),
                    2 => {
                        data.remove(at);
                    }
                    _ => data.truncate(at),
                }
                if data.is_empty() {
                    break;
                }
            }
            super::run(&data);
        }
    }
}
