//! End-to-end control API: a whole microVM lifecycle in the test host,
//! driven only with `curl --unix-socket` (configure, add a drive and a
//! network interface, start, pause, resume, swap the drive's file, flush
//! metrics, Ctrl-Alt-Del), with the guest's state checked on its console
//! and over the network.

use brique_tests::{on_test_hosts, run_in_test_host_on, HostArch};

/// What the guest runs (kernel command line: no double quotes). It brings
/// eth0 up, reports the data drive's content and, whenever it changes, the
/// drive's size in sectors.
const GUEST: &str = "ip addr add 172.16.0.2/24 dev eth0; ip link set eth0 up; \
echo DRIVE_SAYS $(head -c 18 /dev/vda); \
(old=0; while true; do s=$(cat /sys/block/vda/size); \
[ $s -ne $old ] && echo VDA_SECTORS=$s; old=$s; sleep 0.3; done) & \
echo GUEST_READY";

fn full_lifecycle_through_curl_only(arch: HostArch) {
    let script = r#"
        tunctl -t tap0 >/dev/null
        ip addr add 172.16.0.1/24 dev tap0
        ip link set tap0 up
        printf 'hello from drive1' > /tmp/data1.img
        truncate -s 4M /tmp/data1.img
        truncate -s 16M /tmp/data2.img
        "$BRIQUE" --api-sock /tmp/api.sock --id e2e-vm < /dev/null > /tmp/console.out 2> /tmp/brique.err &
        pid=$!
        api() {
            out=$(curl -s -S -w ' HTTP=%{http_code}' --unix-socket /tmp/api.sock -X "$1" \
                -H 'Content-Type: application/json' ${3:+--data "$3"} "http://localhost$2")
            echo "API $1 $2 $out"
        }
        n=0; while [ ! -S /tmp/api.sock ] && [ $n -lt 100 ]; do sleep 0.1; n=$((n+1)); done
        api GET /
        api PUT /machine-config '{"vcpu_count": 2, "mem_size_mib": 256}'
        args="$DEFAULT_ARGS brique_action=hold brique_run=\"$(cat guest.sh)\""
        api PUT /boot-source "{\"kernel_image_path\": \"$GUEST_KERNEL\", \"initrd_path\": \"$GUEST_INITRAMFS\", \"boot_args\": \"$(echo "$args" | sed 's/"/\\"/g')\"}"
        api PUT /drives/data '{"drive_id": "data", "path_on_host": "/tmp/data1.img", "is_root_device": false}'
        api PUT /network-interfaces/eth0 '{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}'
        api PUT /metrics '{"metrics_path": "/tmp/metrics.json"}'
        api PATCH /vm '{"state": "Paused"}'
        api PUT /actions '{"action_type": "InstanceStart"}'
        wait_for_line /tmp/console.out GUEST_READY "$pid" 300
        api GET /
        ping -c 2 -W 5 172.16.0.2 >/dev/null && echo PING_RUNNING_OK
        api PATCH /vm '{"state": "Paused"}'
        api GET /
        ping -c 2 -W 1 172.16.0.2 >/dev/null || echo PING_PAUSED_FAILS
        api PATCH /vm '{"state": "Resumed"}'
        ping -c 2 -W 5 172.16.0.2 >/dev/null && echo PING_RESUMED_OK
        api PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 128}'
        api PATCH /drives/data '{"drive_id": "data", "path_on_host": "/tmp/data2.img"}'
        wait_for_line /tmp/console.out VDA_SECTORS=32768 "$pid" 30
        api GET /vm/config
        api PUT /actions '{"action_type": "FlushMetrics"}'
        echo "METRICS $(tail -n 1 /tmp/metrics.json)"
        api PUT /actions '{"action_type": "SendCtrlAltDel"}'
        # aarch64 guests have no i8042: the request is refused, SIGTERM ends brique.
        [ "$ARCH" = aarch64 ] && kill -TERM "$pid"
        n=0; while kill -0 "$pid" 2>/dev/null && [ $n -lt 300 ]; do sleep 0.1; n=$((n+1)); done
        if kill -0 "$pid" 2>/dev/null; then echo "CAD_EXIT=still-running"; kill -9 "$pid"; else wait "$pid"; echo "CAD_EXIT=$?"; fi
        [ -e /tmp/api.sock ] && echo SOCKET_LEFT_BEHIND
        tr -d '\r' < /tmp/console.out | grep -E '^(DRIVE_SAYS|VDA_SECTORS|GUEST_READY|BRIQUE_GUEST)' | sed 's/^/[guest] /'
        grep -q '^GUEST_READY' /tmp/console.out || tail -40 /tmp/console.out
        sed 's/^/[stderr] /' /tmp/brique.err | tail -5
        "#;
    let run = run_in_test_host_on(arch, script, &[("guest.sh", GUEST.as_bytes())]);
    let console = &run.console;
    let api_lines: Vec<&str> = console.lines().filter(|l| l.starts_with("API ")).collect();
    for line in &api_lines {
        eprintln!("{line}");
    }
    let api = |prefix: &str, nth: usize| -> &str {
        api_lines
            .iter()
            .filter(|l| l.starts_with(prefix))
            .nth(nth)
            .copied()
            .unwrap_or_else(|| panic!("no {prefix} #{nth}:\n{console}"))
    };
    // Configuration before start.
    assert!(api("API GET /", 0).contains(r#""state":"Not started""#));
    assert!(api("API GET /", 0).contains(r#""id":"e2e-vm""#));
    for put in [
        "API PUT /machine-config",
        "API PUT /boot-source",
        "API PUT /drives/data",
    ] {
        assert!(api(put, 0).ends_with("HTTP=204"), "{}", api(put, 0));
    }
    assert!(api("API PUT /network-interfaces/eth0", 0).ends_with("HTTP=204"));
    assert!(api("API PUT /metrics", 0).ends_with("HTTP=204"));
    let early_pause = api("API PATCH /vm", 0);
    assert!(
        early_pause.contains("not started") && early_pause.ends_with("HTTP=400"),
        "{early_pause}"
    );
    assert!(
        api("API PUT /actions", 0).ends_with("HTTP=204"),
        "InstanceStart"
    );
    // Running, guest on the network; paused: silent; resumed: back.
    assert!(console.contains("[guest] GUEST_READY"), "{console}");
    assert!(api("API GET /", 1).contains(r#""state":"Running""#));
    assert!(console.contains("PING_RUNNING_OK"), "{console}");
    assert!(api("API PATCH /vm", 1).ends_with("HTTP=204"));
    assert!(api("API GET /", 2).contains(r#""state":"Paused""#));
    assert!(console.contains("PING_PAUSED_FAILS"), "{console}");
    assert!(api("API PATCH /vm", 2).ends_with("HTTP=204"));
    assert!(console.contains("PING_RESUMED_OK"), "{console}");
    // Pre-boot-only request refused at runtime.
    let late = api("API PUT /machine-config", 1);
    assert!(
        late.contains("before InstanceStart") && late.ends_with("HTTP=400"),
        "{late}"
    );
    // Drive: the guest read it, then saw the new file's size (16 MiB).
    assert!(
        console.contains("[guest] DRIVE_SAYS hello from drive1"),
        "{console}"
    );
    assert!(console.contains("[guest] VDA_SECTORS=8192"), "{console}");
    assert!(api("API PATCH /drives/data", 0).ends_with("HTTP=204"));
    assert!(console.contains("[guest] VDA_SECTORS=32768"), "{console}");
    assert!(api("API GET /vm/config", 0).contains("/tmp/data2.img"));
    // Metrics: block reads and network traffic counted.
    assert!(
        api("API PUT /actions", 1).ends_with("HTTP=204"),
        "FlushMetrics"
    );
    let metrics = console
        .lines()
        .find_map(|l| l.strip_prefix("METRICS "))
        .unwrap_or_else(|| panic!("no metrics line:\n{console}"));
    assert!(metrics.contains(r#""block":{"data":{"#), "{metrics}");
    assert!(
        !metrics.contains(r#""read_bytes":0"#),
        "the guest read the drive: {metrics}"
    );
    assert!(
        !metrics.contains(r#""rx_packets":0"#),
        "pings reached the guest: {metrics}"
    );
    // Ctrl-Alt-Del: the guest reboots, brique ends cleanly and removes its
    // socket. On aarch64 (no i8042) it is refused and SIGTERM ends brique.
    let ctrl_alt_del = api("API PUT /actions", 2);
    match arch {
        HostArch::X86_64 => assert!(ctrl_alt_del.ends_with("HTTP=204"), "{ctrl_alt_del}"),
        HostArch::Aarch64 => assert!(
            ctrl_alt_del.ends_with("HTTP=400") && ctrl_alt_del.contains("i8042"),
            "{ctrl_alt_del}"
        ),
    }
    assert!(console.contains("CAD_EXIT=0"), "{console}");
    assert!(!console.contains("SOCKET_LEFT_BEHIND"), "{console}");
}

// Each case on each test host it applies to (the same script on both).
on_test_hosts!(full_lifecycle_through_curl_only on X86_64, Aarch64);
