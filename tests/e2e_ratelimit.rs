//! End-to-end rate limiters, measured in the guest: a drive limited to
//! 10 MiB/s and an interface limited to 10 MiB/s each way, then, live, a
//! PATCH of all three to 20 MiB/s. Every rate must be within 10% of its
//! limit. The buckets are 1 MiB refilled every 100 ms, so that the burst a
//! full bucket allows (1 MiB) is small beside the 40 MiB each phase moves.

use brique_tests::{on_test_hosts, run_in_test_host_on, HostArch};

/// MiB moved in each measurement.
const MIB_PER_RUN: f64 = 40.0;

/// What the guest runs (kernel command line: no double quotes). Each phase
/// drains the drive's bucket, then reads 40 MiB of the drive and fetches
/// 40 MiB from the host, timing each with /proc/uptime; between phases it
/// waits for the host's go (after the PATCH).
const GUEST: &str = "ip addr add 172.16.0.2/24 dev eth0; ip link set eth0 up; \
mkdir -p /tmp/www; dd if=/dev/zero of=/tmp/www/tx bs=1M count=40 2>/dev/null; \
httpd -p 8080 -h /tmp/www; \
t() { cut -d' ' -f1 /proc/uptime; }; \
phase() { dd if=/dev/vdb of=/dev/null bs=1M count=1 skip=$1 2>/dev/null; \
a=$(t); dd if=/dev/vdb of=/dev/null bs=1M count=40 skip=$(($1+1)) 2>/dev/null; b=$(t); \
echo RATE blk$2 $a $b; \
a=$(t); wget -q -O /dev/null http://172.16.0.1:8080/rx; b=$(t); echo RATE rx$2 $a $b; }; \
until wget -q -O /dev/null http://172.16.0.1:8080/ready; do sleep 0.2; done; \
phase 0 1; echo GUEST_PHASE1_DONE; \
until wget -q -O /dev/null http://172.16.0.1:8080/go; do sleep 0.2; done; \
phase 50 2; echo GUEST_PHASE2_DONE";

fn drive_and_interface_limits_hold_and_a_patch_doubles_them(arch: HostArch) {
    let script = r#"
        tunctl -t tap0 >/dev/null
        ip addr add 172.16.0.1/24 dev tap0
        ip link set tap0 up
        mkdir -p /tmp/www
        dd if=/dev/zero of=/tmp/www/rx bs=1M count=40 2>/dev/null
        echo ready > /tmp/www/ready
        httpd -p 172.16.0.1:8080 -h /tmp/www
        truncate -s 128M /tmp/data.img
        limit='{"bandwidth": {"size": 1048576, "refill_time": 100}, "ops": null}'
        cat > /tmp/vm.json <<JSON
{
  "boot-source": {"kernel_image_path": "$GUEST_KERNEL", "initrd_path": "$GUEST_INITRAMFS",
                  "boot_args": "$DEFAULT_ARGS brique_action=hold brique_run=\"$(cat guest.sh)\""},
  "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
  "drives": [{"drive_id": "data", "path_on_host": "/tmp/data.img", "is_root_device": false,
              "rate_limiter": $limit}],
  "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0",
                          "guest_mac": "06:00:ac:10:00:02",
                          "rx_rate_limiter": $limit, "tx_rate_limiter": $limit}]
}
JSON
        "$BRIQUE" --api-sock /tmp/api.sock --config-file /tmp/vm.json < /dev/null > /tmp/vm.out 2>&1 &
        pid=$!
        api() {
            out=$(curl -s -S -w ' HTTP=%{http_code}' --unix-socket /tmp/api.sock -X "$1" \
                -H 'Content-Type: application/json' ${3:+--data "$3"} "http://localhost$2")
            echo "API $1 $2 $out"
        }
        up() { cut -d' ' -f1 /proc/uptime; }
        # Guest to host (the interface's TX): timed here.
        tx() { a=$(up); wget -q -O /dev/null http://172.16.0.2:8080/tx; b=$(up); echo "RATE tx$1 $a $b"; }
        if wait_for_line /tmp/vm.out GUEST_PHASE1_DONE "$pid" 300; then
            tx 1
            double='{"bandwidth": {"size": 2097152, "refill_time": 100}}'
            api PATCH /drives/data "{\"drive_id\": \"data\", \"rate_limiter\": $double}"
            api PATCH /network-interfaces/eth0 "{\"iface_id\": \"eth0\", \"rx_rate_limiter\": $double, \"tx_rate_limiter\": $double}"
            echo go > /tmp/www/go
            wait_for_line /tmp/vm.out GUEST_PHASE2_DONE "$pid" 300 && tx 2
            api PUT /actions '{"action_type": "FlushMetrics"}'
        fi
        kill "$pid"
        tr -d '\r' < /tmp/vm.out | grep -E '^(RATE|GUEST_)' | sed 's/^/[guest] /'
        grep -q '^GUEST_PHASE2_DONE' /tmp/vm.out || tail -40 /tmp/vm.out
        "#;
    let run = run_in_test_host_on(arch, script, &[("guest.sh", GUEST.as_bytes())]);
    let console = &run.console;
    for line in console
        .lines()
        .filter(|l| l.contains("RATE ") || l.starts_with("API "))
    {
        eprintln!("{line}");
    }
    for line in console.lines().filter(|l| l.starts_with("API PATCH")) {
        assert!(line.ends_with("HTTP=204"), "{line}");
    }
    let rate = |what: &str| -> f64 {
        let line = console
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .find_map(|l| {
                l.trim_start_matches("[guest] ")
                    .strip_prefix(&format!("RATE {what} "))
            })
            .unwrap_or_else(|| panic!("no RATE {what} line:\n{console}"));
        let times: Vec<f64> = line
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        assert_eq!(times.len(), 2, "{line}");
        MIB_PER_RUN / (times[1] - times[0])
    };
    let mut report = Vec::new();
    for (what, limit) in [
        ("blk1", 10.0),
        ("rx1", 10.0),
        ("tx1", 10.0),
        ("blk2", 20.0),
        ("rx2", 20.0),
        ("tx2", 20.0),
    ] {
        let measured = rate(what);
        eprintln!("{what}: {measured:.2} MiB/s (limit {limit} MiB/s)");
        if (measured - limit).abs() > limit * 0.1 {
            report.push(format!("{what}: {measured:.2} MiB/s, limit {limit} MiB/s"));
        }
    }
    assert!(
        report.is_empty(),
        "rates off by more than 10%: {report:?}\n{console}"
    );
}

on_test_hosts!(drive_and_interface_limits_hold_and_a_patch_doubles_them on X86_64, Aarch64);
