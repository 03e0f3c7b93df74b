//! End-to-end virtio-vsock and virtio-rng: a guest with both devices in the
//! test host. 64 MiB each way with checksums, host to guest (through
//! `CONNECT <port>` on the backend's socket) and guest to host (to
//! `<uds_path>_<port>`), 50 connections at once each way, and the guest
//! reading `/dev/hwrng`. Both sides run resources/guest-tools/vsock-tool
//! (the test host takes it from the guest's initramfs: same architecture).

use brique_tests::{on_test_hosts, run_in_test_host_on, HostArch};

/// Bytes moved each way on one connection.
const BIG: u64 = 64 << 20;
/// Connections at once, each way.
const MANY: usize = 50;
/// Bytes echoed on each of them.
const EACH: u64 = 64 << 10;

/// What the guest runs (kernel command line, so: no double quotes). Its
/// listeners report in /tmp/l until they are all up; it then connects to
/// the host's listeners, reads the hardware RNG, and waits for its own
/// listeners to finish.
const GUEST: &str = "cd /tmp; \
vsock-tool listen 5000 sink 1 >> l & vsock-tool listen 5001 source 67108864 1 >> l & \
vsock-tool listen 5002 echo 50 >> l & \
until [ $(grep -c listening l) = 3 ]; do sleep 0.1; done; echo GUEST_LISTENING; \
vsock-tool connect 6000 send 67108864; vsock-tool multi 6001 50 65536 | tail -n 1; \
echo HWRNG $(head -c 4096 /dev/hwrng | wc -c) $(head -c 4096 /dev/hwrng | od -An -tx1 | sort -u | wc -l) \
$(cat /sys/class/misc/hw_random/rng_current); \
wait; grep -v listening l; echo GUEST_DONE";

fn vsock_both_ways_with_many_connections_and_hwrng(arch: HostArch) {
    let script = r#"
        mkdir -p /tmp/tools
        (cd /tmp/tools && zcat "$GUEST_INITRAMFS" | cpio -i -d bin/vsock-tool 2>/dev/null)
        vt=/tmp/tools/bin/vsock-tool
        [ -x "$vt" ] || echo "NO_VSOCK_TOOL in $GUEST_INITRAMFS"
        # The host's listeners are up before the guest connects.
        "$vt" --unix /tmp/v.sock listen 6000 sink 1 > /tmp/h6000 2>&1 &
        "$vt" --unix /tmp/v.sock listen 6001 echo 50 > /tmp/h6001 2>&1 &
        cat > /tmp/vsock.json <<JSON
{
  "boot-source": {"kernel_image_path": "$GUEST_KERNEL", "initrd_path": "$GUEST_INITRAMFS",
                  "boot_args": "$DEFAULT_ARGS brique_action=hold brique_run=\"$(cat guest.sh)\""},
  "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
  "vsock": {"guest_cid": 3, "uds_path": "/tmp/v.sock"},
  "entropy": {}
}
JSON
        "$BRIQUE" --no-api --config-file /tmp/vsock.json < /dev/null > /tmp/vsock.out 2>&1 &
        pid=$!
        if wait_for_line /tmp/vsock.out GUEST_LISTENING "$pid" 300; then
            "$vt" --unix /tmp/v.sock connect 5000 send 67108864 > /tmp/h5000 2>&1
            "$vt" --unix /tmp/v.sock connect 5001 recv > /tmp/h5001 2>&1
            "$vt" --unix /tmp/v.sock multi 5002 50 65536 > /tmp/h5002 2>&1
            wait_for_line /tmp/vsock.out GUEST_DONE "$pid" 300
        fi
        kill "$pid"
        for f in h5000 h5001 h5002 h6000 h6001; do sed "s/^/[host] /" /tmp/$f; done
        tr -d '\r' < /tmp/vsock.out | grep -E '^(VSOCK|HWRNG|GUEST_|vsock-tool)' | sed 's/^/[guest] /'
        grep -q '^GUEST_DONE' /tmp/vsock.out || tail -40 /tmp/vsock.out
        "#;
    let run = run_in_test_host_on(arch, script, &[("guest.sh", GUEST.as_bytes())]);
    let console = &run.console;
    let lines = |side: &str| -> Vec<String> {
        console
            .lines()
            .filter_map(|l| l.trim_end_matches('\r').strip_prefix(side))
            .map(str::to_owned)
            .collect()
    };
    let (host, guest) = (lines("[host] "), lines("[guest] "));
    for line in host
        .iter()
        .chain(&guest)
        .filter(|l| !l.contains("port=500"))
    {
        eprintln!("{line}");
    }
    let report = |side: &[String], what: &str, port: u16| -> Report {
        let prefix = format!("VSOCK {what} port={port} ");
        let found: Vec<Report> = side
            .iter()
            .filter(|l| l.starts_with(&prefix))
            .map(|l| Report::parse(l))
            .collect();
        assert_eq!(found.len(), 1, "one {prefix:?} line expected:\n{console}");
        found[0].clone()
    };
    let pattern = pattern_fnv(BIG);

    // Host to guest: 64 MiB through CONNECT 5000.
    let sent = report(&host, "send", 5000);
    let sunk = report(&guest, "sink", 5000);
    assert!(sent.ok && sunk.ok, "{sent:?} {sunk:?}");
    assert_eq!((sent.sent, sent.sent_fnv), (BIG, pattern), "{sent:?}");
    assert_eq!((sunk.recv, sunk.recv_fnv), (BIG, pattern), "host -> guest");
    // Guest to host, on a connection the host opened: 64 MiB back.
    let sourced = report(&guest, "source", 5001);
    let received = report(&host, "recv", 5001);
    assert!(sourced.ok && received.ok, "{sourced:?} {received:?}");
    assert_eq!(
        (received.recv, received.recv_fnv),
        (BIG, pattern),
        "guest -> host"
    );
    // Guest-initiated, to <uds_path>_6000: 64 MiB.
    let guest_sent = report(&guest, "send", 6000);
    let host_sunk = report(&host, "sink", 6000);
    assert!(
        guest_sent.ok && host_sunk.ok,
        "{guest_sent:?} {host_sunk:?}"
    );
    assert_eq!(
        (host_sunk.recv, host_sunk.recv_fnv),
        (BIG, pattern),
        "guest -> <uds>_6000"
    );

    // 50 connections at once each way, every one echoed whole.
    let summary = |side: &[String], port: u16| {
        let wanted = format!("VSOCK multi port={port} connections={MANY} failed=0 ok");
        assert!(side.contains(&wanted), "{wanted:?} missing:\n{console}");
    };
    summary(&host, 5002);
    summary(&guest, 6001);
    let echo_pattern = pattern_fnv(EACH);
    for (side, port) in [(&guest, 5002), (&host, 6001)] {
        let prefix = format!("VSOCK echo port={port} ");
        let echoes: Vec<Report> = side
            .iter()
            .filter(|l| l.starts_with(&prefix))
            .map(|l| Report::parse(l))
            .collect();
        assert_eq!(
            echoes.len(),
            MANY,
            "echo servers on port {port}:\n{console}"
        );
        for echo in echoes {
            assert!(echo.ok, "{echo:?}");
            assert_eq!((echo.recv, echo.recv_fnv), (EACH, echo_pattern), "{echo:?}");
        }
    }

    // The hardware RNG: 4096 bytes, not all alike, from virtio-rng.
    let hwrng = guest
        .iter()
        .find_map(|l| l.strip_prefix("HWRNG "))
        .unwrap_or_else(|| panic!("no HWRNG line:\n{console}"));
    let fields: Vec<&str> = hwrng.split_whitespace().collect();
    assert_eq!(fields.first(), Some(&"4096"), "{hwrng}");
    let distinct_lines: usize = fields.get(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    assert!(
        distinct_lines > 200,
        "4096 random bytes in 256 distinct od lines: {hwrng}"
    );
    assert!(
        fields.get(2).is_some_and(|f| f.starts_with("virtio_rng")),
        "{hwrng}"
    );
}

/// One `VSOCK ...` report line of vsock-tool.
#[derive(Debug, Clone, Default)]
struct Report {
    sent: u64,
    sent_fnv: u32,
    recv: u64,
    recv_fnv: u32,
    ok: bool,
}

impl Report {
    fn parse(line: &str) -> Self {
        let mut report = Self {
            ok: line.ends_with(" ok"),
            ..Self::default()
        };
        for (key, value) in line.split_whitespace().filter_map(|w| w.split_once('=')) {
            match key {
                "sent" => report.sent = value.parse().unwrap_or(u64::MAX),
                "recv" => report.recv = value.parse().unwrap_or(u64::MAX),
                "sent_fnv" => report.sent_fnv = u32::from_str_radix(value, 16).unwrap_or(0),
                "recv_fnv" => report.recv_fnv = u32::from_str_radix(value, 16).unwrap_or(0),
                _ => {}
            }
        }
        report
    }
}

/// 32-bit FNV-1a of vsock-tool's first `len` pattern bytes: byte i is
/// (i * 7 + i / 251) mod 256.
fn pattern_fnv(len: u64) -> u32 {
    (0..len).fold(2_166_136_261u32, |hash, i| {
        let byte = (i.wrapping_mul(7).wrapping_add(i / 251)) as u8;
        (hash ^ u32::from(byte)).wrapping_mul(16_777_619)
    })
}

#[test]
fn the_pattern_checksum_matches_vsock_tool_s() {
    // What vsock-tool reported for 0 and 5000 pattern bytes (`vsock-tool
    // --unix S connect 9 send 5000` against a sink).
    assert_eq!(pattern_fnv(0), 0x811c_9dc5);
    assert_eq!(pattern_fnv(5000), 0x36a5_8129);
}

on_test_hosts!(vsock_both_ways_with_many_connections_and_hwrng on X86_64, Aarch64);
