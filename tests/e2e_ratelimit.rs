//! End-to-end rate limiters, measured in the guest: a drive and an
//! interface (each way) limited, then, live, a PATCH of all three to twice
//! that. Every rate must be within 10% of its limit.
//!
//! Each bucket holds half a second of its rate and refills it over 500 ms.
//! A token bucket throws away what it earns beyond its size: when the
//! sender stalls for longer than the bucket lasts, that time is lost for
//! good. The test hosts' software CPUs stall for longer than 100 ms now
//! and then: in the arm64 test host alone, with the guest's TCP send queue
//! holding 1.3-2 MB throughout, the tap's rate over 150 ms samples swung
//! 4.3-14.8 MiB/s against a 10 MiB/s limit in 100 ms buckets, and 1 s
//! windows measured 8.73-10.71. Half a second covers such stalls. The
//! measurement starts only once the full bucket the transfer began with is
//! spent, and lasts 8 s, so a bucket's worth more or less at either end
//! moves the rate by at most 6.25%.
//!
//! The limiter must be what holds each transfer back, so the rates leave
//! each test host room to spare (its software CPU runs the guest, brique
//! and the host side) even while the other architecture's test host runs
//! beside it, as it does in the test command (two host CPUs for both).
//! Alone, unlimited transfers measured 20-38 MiB/s from the drive on both,
//! and over the network 6.5-9 MiB/s each way on x86_64 (one test host
//! CPU) and 17.6-21.5 MiB/s on arm64 (two). With the x86_64 run beside it,
//! the arm64 run moved only 17.65 MiB/s from a drive limited to 20 and
//! 8.38 over an interface limited to 10 (over 8 s, the guest's queue full
//! throughout: too little CPU, not a limiter's fault). So both hold the
//! drive at 4-5 then 8-10 MiB/s; the interface at 2.5 then 5 on arm64, 1
//! then 2 on x86_64. The limiter's arithmetic at any rate is unit-tested
//! against a clock the tests move (brique_devices::rate_limiter).
//!
//! Both TCP senders (the guest's, and the test host's for the guest's RX)
//! build full-size TSO frames (`tcp_min_tso_segs` 44, about 64 KiB). By
//! default Linux sizes them to about 1 ms of its pacing rate, which follows
//! the limited rate: 3-9 segments a frame here. Each frame costs the
//! emulated CPU a few ms of nested exits (the kick, the interrupt, its
//! EOI), so the test host topped out at about 200 frames/s and the guest
//! sent 0.7-1.3 MiB/s against a 2 MiB/s limit, switching between that and
//! the limit within one transfer as its pacing rate followed (measured
//! with the guest's and the tap's counters and each thread's CPU time;
//! one such run failed CI). With 64 KiB frames the same limit takes about
//! 35 frames/s: 13 runs of this test in a row (8 on x86_64, 5 on arm64)
//! held every rate within 2.3% of its limit.

use brique_tests::{on_test_hosts, run_in_test_host_on, HostArch};

/// The limits before the PATCH, in MiB/s (the PATCH doubles them).
#[derive(Clone, Copy)]
struct Rates {
    /// The drive's.
    block: f64,
    /// The interface's, each way.
    net: f64,
}

impl Rates {
    fn on(arch: HostArch) -> Self {
        match arch {
            HostArch::X86_64 => Self {
                block: 4.0,
                net: 1.0,
            },
            HostArch::Aarch64 => Self {
                block: 5.0,
                net: 2.5,
            },
        }
    }

    /// The limits after the PATCH.
    fn doubled(self) -> Self {
        Self {
            block: 2.0 * self.block,
            net: 2.0 * self.net,
        }
    }
}

/// What the guest runs (kernel command line: no double quotes). Each phase
/// measures three steady rates, one at a time, from the guest's counters
/// (the drive's sectors read, eth0's bytes received and sent): it starts a
/// transfer (reading the drive, fetching a file from the host, or asking
/// the host to fetch one from it), waits until the phase's warm-up bytes
/// have passed (20 s at most: the full bucket the transfer starts with and
/// 512 KiB more, so the window starts at the limited rate), counts what
/// passes in the next 8 s, then stops the transfer. The files sent either
/// way are sparse: a gigabyte of holes, read as zeroes without taking
/// memory.
///
/// Before the transfer from the guest, what was still queued for it (the
/// host's data in flight when its fetch stopped) drains at the limited rate
/// until its counter rests for a second: the acknowledgements of the next
/// transfer would otherwise wait behind it (seen once on each test host:
/// 1.04 and 0.66 MiB/s measured against a 2 MiB/s limit, with neither a
/// retransmit nor a drop). Between phases it waits for the host's go
/// (after the PATCH).
const GUEST: &str = "ip addr add 172.16.0.2/24 dev eth0; ip link set eth0 up; \
echo 44 > /proc/sys/net/ipv4/tcp_min_tso_segs; \
mkdir -p /tmp/www; dd if=/dev/zero of=/tmp/www/tx bs=1M seek=1024 count=0 2>/dev/null; \
httpd -p 8080 -h /tmp/www; \
t() { cut -d' ' -f1 /proc/uptime; }; \
ctr() { if [ $1 = blk ]; then awk '{print $3*512}' /sys/block/vda/stat; \
else cat /sys/class/net/eth0/statistics/$1_bytes; fi; }; \
measure() { b0=$(ctr $1); n=0; until [ $(($(ctr $1)-b0)) -gt $3 ] || [ $n = 200 ]; \
do sleep 0.1; n=$((n+1)); done; \
a=$(t); x=$(ctr $1); sleep 8; b=$(t); y=$(ctr $1); echo RATE $1$2 $((y-x)) $a $b; \
echo TCP_RETRANSMITS $1$2 $(awk '/^Tcp:/ {n++} n == 2 {print $13; exit}' /proc/net/snmp); }; \
settle() { n=0; a=-1; until [ $(ctr $1) = $a ] || [ $n = 30 ]; do a=$(ctr $1); sleep 1; n=$((n+1)); done; }; \
phase() { dd if=/dev/vda of=/dev/null bs=64k skip=$1 count=4800 2>/dev/null & measure blk $2 $3; kill $!; \
wget -q -O /dev/null http://172.16.0.1:8080/rx & measure rx $2 $4; kill $!; settle rx; \
echo GUEST_WANTS_TX$2; measure tx $2 $4; }; \
until wget -q -O /dev/null http://172.16.0.1:8080/ready; do sleep 0.2; done; \
phase 0 1 BLK1_WARMUP NET1_WARMUP; echo GUEST_PHASE1_DONE; \
until wget -q -O /dev/null http://172.16.0.1:8080/go; do sleep 0.2; done; \
phase 4800 2 BLK2_WARMUP NET2_WARMUP; echo GUEST_PHASE2_DONE";

/// A bucket's size at `mib_per_s`: half a second of it, in bytes.
fn bucket_bytes(mib_per_s: f64) -> u64 {
    (mib_per_s * 1024.0 * 1024.0 / 2.0) as u64
}

/// The bytes a limited transfer moves before it is measured: its first,
/// full bucket and 512 KiB more.
fn warmup_bytes(mib_per_s: f64) -> String {
    (bucket_bytes(mib_per_s) + 512 * 1024).to_string()
}

/// A rate limiter body of `mib_per_s`: half a second of it every 500 ms.
fn limit(mib_per_s: f64) -> String {
    let size = bucket_bytes(mib_per_s);
    format!(r#"{{"bandwidth": {{"size": {size}, "refill_time": 500}}}}"#)
}

fn drive_and_interface_limits_hold_and_a_patch_doubles_them(arch: HostArch) {
    let rates = Rates::on(arch);
    let patched = rates.doubled();
    let script = r#"
        blk_limit='BLK_LIMIT'
        net_limit='NET_LIMIT'
        blk_double='BLK_DOUBLE'
        net_double='NET_DOUBLE'
        echo 44 > /proc/sys/net/ipv4/tcp_min_tso_segs
        tunctl -t tap0 >/dev/null
        ip addr add 172.16.0.1/24 dev tap0
        ip link set tap0 up
        mkdir -p /tmp/www
        truncate -s 1G /tmp/www/rx
        echo ready > /tmp/www/ready
        httpd -p 172.16.0.1:8080 -h /tmp/www
        truncate -s 1G /tmp/data.img
        cat > /tmp/vm.json <<JSON
{
  "boot-source": {"kernel_image_path": "$GUEST_KERNEL", "initrd_path": "$GUEST_INITRAMFS",
                  "boot_args": "$DEFAULT_ARGS brique_action=hold brique_run=\"$(cat guest.sh)\""},
  "machine-config": {"vcpu_count": 2, "mem_size_mib": 256},
  "drives": [{"drive_id": "data", "path_on_host": "/tmp/data.img", "is_root_device": false,
              "rate_limiter": $blk_limit}],
  "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0",
                          "guest_mac": "06:00:ac:10:00:02",
                          "rx_rate_limiter": $net_limit, "tx_rate_limiter": $net_limit}]
}
JSON
        "$BRIQUE" --api-sock /tmp/api.sock --config-file /tmp/vm.json < /dev/null > /tmp/vm.out 2>&1 &
        pid=$!
        api() {
            out=$(curl -s -S -w ' HTTP=%{http_code}' --unix-socket /tmp/api.sock -X "$1" \
                -H 'Content-Type: application/json' ${3:+--data "$3"} "http://localhost$2")
            echo "API $1 $2 $out"
        }
        # Guest to host (the interface's TX): fetched from the guest while it counts.
        fetch_tx() {
            wait_for_line /tmp/vm.out "GUEST_WANTS_TX$1" "$pid" 300 || return 1
            wget -q -O /dev/null http://172.16.0.2:8080/tx & fetch=$!
            wait_for_line /tmp/vm.out "GUEST_PHASE$1_DONE" "$pid" 60; status=$?
            kill "$fetch" 2>/dev/null
            return "$status"
        }
        if fetch_tx 1; then
            api PATCH /drives/data "{\"drive_id\": \"data\", \"rate_limiter\": $blk_double}"
            api PATCH /network-interfaces/eth0 "{\"iface_id\": \"eth0\", \"rx_rate_limiter\": $net_double, \"tx_rate_limiter\": $net_double}"
            echo go > /tmp/www/go
            fetch_tx 2
            api PUT /actions '{"action_type": "FlushMetrics"}'
        fi
        kill "$pid"
        tr -d '\r' < /tmp/vm.out | grep -E '^(RATE|GUEST_|TCP_)' | sed 's/^/[guest] /'
        echo "TAP0 dropped rx=$(cat /sys/class/net/tap0/statistics/rx_dropped) tx=$(cat /sys/class/net/tap0/statistics/tx_dropped)"
        grep -q '^GUEST_PHASE2_DONE' /tmp/vm.out || tail -40 /tmp/vm.out
        "#
    .replace("BLK_LIMIT", &limit(rates.block))
    .replace("NET_LIMIT", &limit(rates.net))
    .replace("BLK_DOUBLE", &limit(patched.block))
    .replace("NET_DOUBLE", &limit(patched.net));
    let guest = GUEST
        .replace("BLK1_WARMUP", &warmup_bytes(rates.block))
        .replace("NET1_WARMUP", &warmup_bytes(rates.net))
        .replace("BLK2_WARMUP", &warmup_bytes(patched.block))
        .replace("NET2_WARMUP", &warmup_bytes(patched.net));
    let run = run_in_test_host_on(arch, &script, &[("guest.sh", guest.as_bytes())]);
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
    // RATE <what> <bytes> <start> <end> (guest uptime): MiB/s.
    let rate = |what: &str| -> f64 {
        let line = console
            .lines()
            .map(|l| l.trim_end_matches('\r'))
            .find_map(|l| {
                l.trim_start_matches("[guest] ")
                    .strip_prefix(&format!("RATE {what} "))
            })
            .unwrap_or_else(|| panic!("no RATE {what} line:\n{console}"));
        let values: Vec<f64> = line
            .split_whitespace()
            .filter_map(|v| v.parse().ok())
            .collect();
        assert_eq!(values.len(), 3, "{line}");
        values[0] / (1024.0 * 1024.0) / (values[2] - values[1])
    };
    let mut report = Vec::new();
    for (what, limit) in [
        ("blk1", rates.block),
        ("rx1", rates.net),
        ("tx1", rates.net),
        ("blk2", patched.block),
        ("rx2", patched.net),
        ("tx2", patched.net),
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
