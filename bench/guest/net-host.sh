# Runs inside the test host: TCP throughput host->guest and guest->host
# (128 MiB over HTTP, busybox httpd/wget) and ping round-trip time, with
# brique and then QEMU microvm (virtio-net on the same tap, userspace
# backend, vhost=off), RUNS times each; prints medians and ratios.
runs=${1:-2}
args="console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"
guest=$(cat net-guest.sh)
tunctl -t tap0 >/dev/null
ip addr add 172.16.0.1/24 dev tap0
ip link set tap0 up
mkdir -p /tmp/www
dd if=/dev/zero of=/tmp/www/blob bs=1M count=128 2>/dev/null
httpd -p 172.16.0.1:8080 -h /tmp/www
uptime_s() { cut -d' ' -f1 /proc/uptime; }

measure() { # VMM: the VMM runs in the background writing /tmp/vm.out
    vmm=$1 pid=$2
    echo "measuring $vmm (run $run)"
    for i in $(seq 1 150); do
        grep -q '^NETBENCH_READY' /tmp/vm.out && break
        kill -0 "$pid" 2>/dev/null || break
        sleep 1
    done
    if ! grep -q '^NETBENCH_READY' /tmp/vm.out; then
        # A stalled run says where it stands: each VMM thread's state and
        # CPU ticks (utime stime) twice, 5 s apart, and the tap's counters.
        echo "$vmm: the guest did not get ready; VMM threads (state utime stime), twice:"
        for pass in 1 2; do
            for task in /proc/"$pid"/task/*; do
                echo "  $(cat "$task/comm") $(cut -d' ' -f3,14,15 "$task/stat") wchan=$(cat "$task/wchan")"
            done
            [ $pass = 1 ] && sleep 5
        done
        echo "  tap0 tx_packets=$(cat /sys/class/net/tap0/statistics/tx_packets) rx_packets=$(cat /sys/class/net/tap0/statistics/rx_packets)"
        tail -30 /tmp/vm.out
        kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null
        return
    fi
    tr -d '\r' < /tmp/vm.out | grep '^NETBENCH h2g' | sed "s/^NETBENCH/$vmm net/" | tee -a /tmp/results
    t0=$(uptime_s)
    wget -q -O - http://172.16.0.2:8080/g2h | dd of=/dev/null bs=64k 2>/dev/null
    t1=$(uptime_s)
    awk -v a="$t0" -v b="$t1" -v v="$vmm" 'BEGIN {printf "%s net g2h_MiBps=%.1f\n", v, 128/(b-a)}' | tee -a /tmp/results
    rtt=$(ping -c 40 -i 0.05 172.16.0.2 | tail -n1 | cut -d= -f2 | cut -d/ -f2)
    echo "$vmm net rtt_avg_ms=$rtt" | tee -a /tmp/results
    kill "$pid"; wait "$pid" 2>/dev/null
}

cat > /tmp/net.json <<JSON
{
  "boot-source": {"kernel_image_path": "$GUEST_VMLINUX", "initrd_path": "$GUEST_INITRAMFS",
                  "boot_args": "$args brique_action=hold brique_run=\"$guest\""},
  "machine-config": {"vcpu_count": 1, "mem_size_mib": 512},
  "network-interfaces": [{"iface_id": "eth0", "host_dev_name": "tap0", "guest_mac": "06:00:ac:10:00:02"}]
}
JSON
: > /tmp/results
for run in $(seq 1 "$runs"); do
    "$BRIQUE" --no-api --config-file /tmp/net.json < /dev/null > /tmp/vm.out 2>&1 &
    measure brique $!
    "$QEMU" -L "$QEMU_DATADIR" -M microvm,x-option-roms=off,rtc=off,acpi=off \
        -accel kvm -cpu host -m 512 -smp 1 -nodefaults -no-user-config -display none -no-reboot \
        -serial stdio -kernel "$GUEST_VMLINUX" -initrd "$GUEST_INITRAMFS" \
        -append "$args brique_action=hold brique_run=\"$guest\"" \
        -netdev tap,id=n0,ifname=tap0,script=no,downscript=no,vhost=off \
        -device virtio-net-device,netdev=n0,mac=06:00:ac:10:00:02 \
        < /dev/null > /tmp/vm.out 2>&1 &
    measure qemu $!
done
echo
echo "network benchmark: $runs runs each, 1 vCPU, 128 MiB over TCP (HTTP) each way, 40 pings"
. ./report.sh
report net h2g_MiBps
report net g2h_MiBps
report net rtt_avg_ms
