//! End-to-end virtio-net: a guest on two taps in the test host, pinging
//! both ways and moving 64 MiB each direction over TCP with checksums; the
//! second interface's configured MTU is the guest's.

use brique_tests::{on_test_hosts, run_in_test_host_on, HostArch};

/// What the guest runs (kernel command line, so: no double quotes).
const GUEST: &str = "echo GUEST_MTU_ETH1 $(cat /sys/class/net/eth1/mtu); \
ip addr add 172.16.0.2/24 dev eth0; ip link set eth0 up; \
ip addr add 172.16.1.2/24 dev eth1; ip link set eth1 up; \
ping -c 2 -W 5 172.16.0.1 >/dev/null && echo PING_G2H_OK; \
ping -c 2 -W 5 172.16.1.1 >/dev/null && echo PING_ETH1_OK; \
echo GUEST_H2G_SHA $(wget -q -O - http://172.16.0.1:8080/h2g | sha256sum); \
mkdir -p /tmp/www; dd if=/dev/urandom of=/tmp/www/g2h bs=1M count=64 2>/dev/null; \
echo GUEST_G2H_SHA $(sha256sum /tmp/www/g2h); httpd -p 8080 -h /tmp/www; echo GUEST_READY";

fn guest_on_two_taps_pings_and_moves_64_mib_each_way(arch: HostArch) {
    let script = r#"
        for i in 0 1; do
            tunctl -t tap$i >/dev/null
            ip addr add 172.16.$i.1/24 dev tap$i
            ip link set tap$i up
        done
        mkdir -p /tmp/www
        dd if=/dev/urandom of=/tmp/www/h2g bs=1M count=64 2>/dev/null
        echo "HOST_H2G_SHA $(sha256sum /tmp/www/h2g)"
        httpd -p 172.16.0.1:8080 -h /tmp/www
        cat > /tmp/net.json <<JSON
{
  "boot-source": {"kernel_image_path": "$GUEST_KERNEL", "initrd_path": "$GUEST_INITRAMFS",
                  "boot_args": "$DEFAULT_ARGS brique_action=hold brique_run=\"$(cat guest.sh)\""},
  "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
  "network-interfaces": [
    {"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"},
    {"iface_id": "eth1", "host_dev_name": "tap1", "mtu": 1400}
  ]
}
JSON
        "$BRIQUE" --no-api --config-file /tmp/net.json < /dev/null > /tmp/net.out 2>&1 &
        pid=$!
        wait_for_line /tmp/net.out GUEST_READY "$pid" 300
        ping -c 2 -W 5 172.16.0.2 >/dev/null && echo PING_H2G_OK
        # A second VM on the same tap: refused before boot, with the reason.
        sed 's/"tap1"/"tap0"/; s/"eth1"/"other"/' /tmp/net.json > /tmp/busy.json
        "$BRIQUE" --no-api --config-file /tmp/busy.json < /dev/null > /dev/null 2> /tmp/busy.err
        echo "BUSY_EXIT=$? $(cat /tmp/busy.err)"
        echo "HOST_G2H_SHA $(wget -q -O - http://172.16.0.2:8080/g2h | sha256sum)"
        cat /sys/class/net/tap0/address /sys/class/net/tap1/address >/dev/null
        kill "$pid"
        tr -d '\r' < /tmp/net.out | grep -E '^(PING|GUEST_)' | sed 's/^/[guest] /'
        grep -q '^GUEST_READY' /tmp/net.out || tail -40 /tmp/net.out
        "#;
    let run = run_in_test_host_on(arch, script, &[("guest.sh", GUEST.as_bytes())]);
    let console = &run.console;
    for line in console
        .lines()
        .filter(|l| l.contains("SHA") || l.contains("PING") || l.contains("BUSY"))
    {
        eprintln!("{line}");
    }
    let sha = |prefix: &str| -> String {
        console
            .lines()
            .find_map(|line| line.trim_start_matches("[guest] ").strip_prefix(prefix))
            .and_then(|rest| rest.split_whitespace().next())
            .unwrap_or_else(|| panic!("no {prefix} line:\n{console}"))
            .to_owned()
    };
    for marker in ["[guest] PING_G2H_OK", "[guest] PING_ETH1_OK", "PING_H2G_OK"] {
        assert!(console.contains(marker), "{marker} missing:\n{console}");
    }
    // The configured MTU reached the guest's driver (VIRTIO_NET_F_MTU).
    assert!(
        console.contains("[guest] GUEST_MTU_ETH1 1400"),
        "eth1's MTU:\n{console}"
    );
    let busy = console
        .lines()
        .find(|l| l.starts_with("BUSY_EXIT="))
        .unwrap_or_else(|| panic!("no BUSY_EXIT line:\n{console}"));
    assert!(busy.starts_with("BUSY_EXIT=2 brique: "), "{busy}");
    assert!(busy.contains("tap0") && busy.contains("busy"), "{busy}");
    let host_h2g = sha("HOST_H2G_SHA ");
    assert_eq!(host_h2g.len(), 64);
    assert_eq!(sha("GUEST_H2G_SHA "), host_h2g, "host -> guest 64 MiB");
    let guest_g2h = sha("GUEST_G2H_SHA ");
    assert_eq!(sha("HOST_G2H_SHA "), guest_g2h, "guest -> host 64 MiB");
}

// Each case on each test host it applies to (the same script on both).
on_test_hosts!(guest_on_two_taps_pings_and_moves_64_mib_each_way on X86_64, Aarch64);
