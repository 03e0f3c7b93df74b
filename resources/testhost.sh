#!/usr/bin/env bash
# Boots the x86_64 *test host*: a Debian cloud kernel under QEMU's software
# CPU (TCG), which emulates AMD SVM and so gives a genuine nested KVM that
# can boot real Linux guests (this machine's own /dev/kvm cannot). Runs CMD
# inside it, streams its console to stdout and exits with CMD's status.
# With --arch aarch64, the arm64 test host instead (below).
#
# Usage: resources/testhost.sh [options] -- CMD...
#   --arch ARCH     x86_64 (default) or aarch64
#   --with DIR      copy DIR's files into the test host (at /brique/with)
#   --with-qemu     also copy QEMU (the benchmark peer) and its firmware
#   --smp N         test host CPUs (default: 1 on x86_64, 2 on aarch64; see
#                   below why the x86_64 test host has one)
#   --cpu MODEL     QEMU CPU model of the test host (default: $BRIQUE_TESTHOST_CPU,
#                   else max; aarch64: $BRIQUE_TESTHOST_AARCH64_CPU, else
#                   max,pauth-impdef=on, 4 times as fast as plain max under TCG)
#   --mem MIB       test host memory (default 3072)
#   --timeout SECS  kill the test host after SECS (default 900); exit 124
#   --log FILE      also keep the console in FILE
# The x86_64 test host runs under Debian's QEMU rebuilt with a fix of ours
# (testhost-qemu/, built and cached by build-artifacts.sh): unfixed, it can
# lose the test host's timer interrupt, which froze test hosts (issue 8).
# For experiments with the emulator itself: BRIQUE_TESTHOST_QEMU names another
# qemu-system-x86_64 for the test host, BRIQUE_TESTHOST_QEMU_DATADIR its -L
# (BRIQUE_TESTHOST_AARCH64_QEMU another qemu-system-aarch64);
# BRIQUE_TESTHOST_ACCEL replaces -accel (e.g. tcg,thread=single);
# BRIQUE_TESTHOST_KVM_PARAMS and BRIQUE_TESTHOST_KVM_AMD_PARAMS are given to
# the test host's insmod of kvm.ko and kvm-amd.ko (e.g. tdp_mmu=0, npt=0);
# BRIQUE_TESTHOST_KERNEL_SUITE=bookworm-backports boots that suite's kernel.
# Measured with resources/bench-stability.sh (issue 8): none of these makes
# the test host immune to page migration (see the comment in the init below).
# One x86_64 test host CPU: with two (two emulator threads running nested
# SVM at once) about one guest boot in 100 of either VMM triple-faulted on a
# spurious #PF right after a port exit (100-boot runs: brique 99, QEMU
# microvm 97 and 100); with one, 100 of 100 for both in the same benchmark.
# Guests with 2 vCPUs still get them (time-shared on the one test host CPU).
#
# Inside the test host (a busybox userland plus debugfs, root, /dev/kvm):
#   /brique/bin/brique            target/release/brique (libraries in /lib*)
#   /brique/artifacts/vmlinux     guest kernel (ELF); also bzImage,
#                    initramfs.cpio.gz, rootfs.ext4 (build-artifacts.sh)
#   /brique/with/                 the --with DIR (CMD's working directory)
#   /brique/qemu/bin/qemu-system-x86_64, /brique/qemu/share  (--with-qemu)
#   /tmp                          tmpfs scratch space
# and in CMD's environment: BRIQUE, GUEST_VMLINUX, GUEST_BZIMAGE,
# GUEST_INITRAMFS, GUEST_ROOTFS (and QEMU, QEMU_DATADIR with --with-qemu).
#
# --arch aarch64: Debian's cloud-arm64 kernel (KVM built in) under
# qemu-system-aarch64 -M virt,virtualization=on,gic-version=3 (emulated EL2,
# so a genuine nested KVM; GICv3 only: KVM offers no GICv2 there), console
# on ttyAMA0. Inside it (the same layout, all arm64: busybox, curl, debugfs):
#   /brique/bin/brique            $BRIQUE_BIN, else the newer of
#                    target/cross/aarch64-unknown-linux-gnu/release/brique and
#                    target/aarch64-unknown-linux-gnu/release/brique; best
#                    static (-C target-feature=+crt-static), else it may need
#                    no more than libc, libm and libgcc_s (there in /lib*)
#   /brique/artifacts/Image       arm64 guest kernel; also initramfs.cpio.gz,
#                    rootfs.ext4 (build-artifacts.sh --aarch64-only)
#   /brique/qemu/bin/qemu-system-aarch64, /brique/qemu/share  (--with-qemu: Debian's
#                    arm64 qemu-system-arm from bookworm-backports, its arm64
#                    libraries in /lib*; build-artifacts.sh --aarch64-qemu)
# and in CMD's environment: BRIQUE, GUEST_IMAGE, GUEST_INITRAMFS, GUEST_ROOTFS
# (and QEMU, QEMU_DATADIR with --with-qemu).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(cd "$here/.." && pwd)"
with_dir="" with_qemu=0 smp="" mem=3072 timeout_secs=900 keep_log=""
arch=x86_64 cpu=""
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) arch="$2"; shift 2 ;;
        --with) with_dir="$(cd "$2" && pwd)"; shift 2 ;;
        --with-qemu) with_qemu=1; shift ;;
        --smp) smp="$2"; shift 2 ;;
        --cpu) cpu="$2"; shift 2 ;;
        --mem) mem="$2"; shift 2 ;;
        --timeout) timeout_secs="$2"; shift 2 ;;
        --log) keep_log="$2"; shift 2 ;;
        --) shift; break ;;
        *) echo "testhost.sh: unknown option $1 (usage: see the header of $0)" >&2; exit 2 ;;
    esac
done
[ $# -gt 0 ] || { echo "testhost.sh: no command given after --" >&2; exit 2; }
if [ -z "$smp" ]; then
    case "$arch" in
        x86_64) smp=1 ;;
        *) smp=2 ;;
    esac
fi

case "$arch" in
    x86_64)
        cpu="${cpu:-${BRIQUE_TESTHOST_CPU:-max}}"
        machine=(-M q35) console=ttyS0
        brique_bin="${BRIQUE_BIN:-$repo/target/release/brique}"
        [ -x "$brique_bin" ] || {
            echo "testhost.sh: $brique_bin not found: run 'cargo build --release' first" >&2; exit 2; }
        eval "$("$here/build-artifacts.sh")"
        testhost_kernel="$TESTHOST_KERNEL"
        # Debian's QEMU rebuilt with the fix of testhost-qemu/ (see
        # build-artifacts.sh), unless another is named.
        if [ -n "${BRIQUE_TESTHOST_QEMU:-}" ]; then
            testhost_qemu=("$BRIQUE_TESTHOST_QEMU")
            [ -n "${BRIQUE_TESTHOST_QEMU_DATADIR:-}" ] && testhost_qemu+=(-L "$BRIQUE_TESTHOST_QEMU_DATADIR")
        else
            testhost_qemu=("$TESTHOST_QEMU" -L "$TESTHOST_QEMU_DATADIR")
        fi
        ;;
    aarch64)
        cpu="${cpu:-${BRIQUE_TESTHOST_AARCH64_CPU:-max,pauth-impdef=on}}"
        testhost_qemu=("${BRIQUE_TESTHOST_AARCH64_QEMU:-qemu-system-aarch64}")
        machine=(-M virt,virtualization=on,gic-version=3) console=ttyAMA0
        brique_bin="${BRIQUE_BIN:-}"
        if [ -z "$brique_bin" ]; then
            for candidate in "$repo"/target/{cross/,}aarch64-unknown-linux-gnu/release/brique; do
                if [ -x "$candidate" ] && { [ -z "$brique_bin" ] || [ "$candidate" -nt "$brique_bin" ]; }; then
                    brique_bin="$candidate"
                fi
            done
        fi
        if [ -z "$brique_bin" ] || [ ! -x "$brique_bin" ]; then
            echo "testhost.sh: no arm64 brique (${brique_bin:-target/cross/aarch64-unknown-linux-gnu/release/brique}): build it with" \
                "RUSTC=/usr/bin/rustc CARGO_TARGET_DIR=target/cross" \
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc" \
                "CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS='-C target-feature=+crt-static'" \
                "cargo build --release --target aarch64-unknown-linux-gnu -p brique-api" >&2
            exit 2
        fi
        readelf -h "$brique_bin" 2>/dev/null | grep -q 'Machine:.*AArch64' || {
            echo "testhost.sh: $brique_bin is not an arm64 program" >&2; exit 2; }
        if [ "$with_qemu" = 1 ]; then
            eval "$("$here/build-artifacts.sh" --aarch64-only --aarch64-qemu)"
        else
            eval "$("$here/build-artifacts.sh" --aarch64-only)"
        fi
        testhost_kernel="$TESTHOST_AARCH64_KERNEL"
        ;;
    *) echo "testhost.sh: --arch is x86_64 or aarch64, not $arch" >&2; exit 2 ;;
esac

stage="$(mktemp -d)"
work="$(mktemp -d)"
cleanup() { rm -rf "$stage" "$work"; }
trap cleanup EXIT

# Copies an executable and the shared libraries it needs into the stage.
copy_with_libs() {
    local bin="$1" dest="$2" lib
    mkdir -p "$(dirname "$stage$dest")"
    cp "$bin" "$stage$dest"
    for lib in $(ldd "$bin" | grep -o '/[^ ]*'); do
        [ -e "$stage$lib" ] || { mkdir -p "$stage$(dirname "$lib")"; cp -L "$lib" "$stage$lib"; }
    done
}

mkdir -p "$stage"/{bin,sbin,dev,proc,sys,tmp,run,etc,lib/modules,brique/{bin,artifacts,with}}
if [ "$arch" = x86_64 ]; then
    cp /bin/busybox "$stage/bin/busybox"
    for applet in $(/bin/busybox --list); do
        [ -e "$stage/bin/$applet" ] || ln -s busybox "$stage/bin/$applet"
    done
    cp "$TESTHOST_MODULES"/*.ko "$stage/lib/modules/"
    copy_with_libs "$brique_bin" /brique/bin/brique
    copy_with_libs "$(command -v debugfs)" /bin/debugfs
    copy_with_libs "$(command -v curl)" /bin/curl
    cp "$GUEST_VMLINUX" "$GUEST_BZIMAGE" "$GUEST_INITRAMFS" "$GUEST_ROOTFS" "$stage/brique/artifacts/"
else
    # busybox, curl, debugfs and the arm64 libraries they need, as a root tree.
    cp -a "$TESTHOST_AARCH64_USERLAND/." "$stage/"
    rm -f "$stage/.complete"
    cp "$TESTHOST_AARCH64_MODULES"/*.ko "$stage/lib/modules/"
    cp "$brique_bin" "$stage/brique/bin/brique"
    for lib in $(readelf -d "$brique_bin" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'); do
        [ -e "$stage/lib/aarch64-linux-gnu/$lib" ] || [ -e "$stage/usr/lib/aarch64-linux-gnu/$lib" ] || {
            echo "testhost.sh: $brique_bin needs $lib, which the arm64 test host lacks:" \
                "link it statically (-C target-feature=+crt-static)" >&2; exit 2; }
    done
    cp "$GUEST_AARCH64_IMAGE" "$stage/brique/artifacts/Image"
    cp "$GUEST_AARCH64_INITRAMFS" "$GUEST_AARCH64_ROOTFS" "$stage/brique/artifacts/"
fi
if [ -n "$with_dir" ]; then cp -a "$with_dir/." "$stage/brique/with/"; fi
if [ "$with_qemu" = 1 ] && [ "$arch" = aarch64 ]; then
    # qemu-system-aarch64 at /brique/qemu/bin and its arm64 libraries, as a root tree.
    cp -a "$TESTHOST_AARCH64_QEMU/." "$stage/"
    rm -f "$stage/.complete"
elif [ "$with_qemu" = 1 ]; then
    copy_with_libs /usr/bin/qemu-system-x86_64 /brique/qemu/bin/qemu-system-x86_64
    mkdir -p "$stage/brique/qemu/share"
    cp /usr/share/qemu/{qboot.rom,linuxboot_dma.bin} "$stage/brique/qemu/share/"
    # QEMU 10 finds the microvm BIOS (SeaBIOS's build) in its data dir only.
    cp -L /usr/share/seabios/bios-microvm.bin "$stage/brique/qemu/share/"
fi

{
    printf '#!/bin/sh\n'
    printf 'export BRIQUE=/brique/bin/brique\n'
    if [ "$arch" = x86_64 ]; then
        for name in GUEST_VMLINUX GUEST_BZIMAGE GUEST_INITRAMFS GUEST_ROOTFS; do
            printf 'export %s=/brique/artifacts/%s\n' "$name" "$(basename "${!name}")"
        done
    else
        printf 'export GUEST_IMAGE=/brique/artifacts/Image\n'
        printf 'export GUEST_INITRAMFS=/brique/artifacts/%s\n' "$(basename "$GUEST_AARCH64_INITRAMFS")"
        printf 'export GUEST_ROOTFS=/brique/artifacts/%s\n' "$(basename "$GUEST_AARCH64_ROOTFS")"
    fi
    if [ "$with_qemu" = 1 ]; then
        printf 'export QEMU=/brique/qemu/bin/qemu-system-%s QEMU_DATADIR=/brique/qemu/share\n' "$arch"
    fi
    printf 'cd /brique/with\n'
    printf '%q ' "$@"
    printf '\n'
} > "$stage/brique/cmd.sh"

printf '%s\n' "${BRIQUE_TESTHOST_KVM_PARAMS:-}" > "$stage/brique/kvm-params"
printf '%s\n' "${BRIQUE_TESTHOST_KVM_AMD_PARAMS:-}" > "$stage/brique/kvm-amd-params"
cat > "$stage/init" <<'INIT'
#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mkdir -p /dev/pts && mount -t devpts devpts /dev/pts
INIT
if [ "$arch" = x86_64 ]; then
    cat >> "$stage/init" <<'INIT'
insmod /lib/modules/irqbypass.ko || echo "testhost: insmod irqbypass failed"
insmod /lib/modules/kvm.ko $(cat /brique/kvm-params) || echo "testhost: insmod kvm failed"
if grep -qw svm /proc/cpuinfo; then insmod /lib/modules/kvm-amd.ko $(cat /brique/kvm-amd-params); else insmod /lib/modules/kvm-intel.ko; fi
for m in tun llc stp bridge; do insmod /lib/modules/$m.ko 2>/dev/null; done
INIT
else
    cat >> "$stage/init" <<'INIT'
# KVM is built into the cloud-arm64 kernel; taps and the bridge are modules.
for m in tun llc stp bridge; do insmod /lib/modules/$m.ko 2>/dev/null; done
INIT
fi
cat >> "$stage/init" <<'INIT'
# No page of a running guest is moved behind KVM's back: QEMU's software CPU
# (L0) loses track of a guest page that the test host's kernel migrates or
# collapses into a huge page while KVM runs on it (the guest then reads page
# tables as not present: triple faults, or an endless #PF loop). Measured with
# resources/bench-stability.sh: khugepaged scanning every 1 ms made 1 in 20-30
# brique boots fail; compacting memory every 0.1 s (28,000 migrations in 40
# boots) made guests of brique and QEMU microvm alike triple-fault right after
# a serial port read (rip io_serial_in+0xf, #PF 0x10 being delivered) and
# crashed the test host's own kernel (stack guard page hit in a page fault
# loop), with the 6.1 and the 6.12 kernel, KVM's TDP MMU or its legacy MMU,
# 1 or 2 CPUs alike (1 CPU froze instead). So khugepaged sleeps, THP faults
# never compact, and proactive compaction is off: a plain run then migrates
# no page at all (bench-stability prints the counters). Guests still get
# huge pages where free.
thp=/sys/kernel/mm/transparent_hugepage
echo 86400000 > $thp/khugepaged/scan_sleep_millisecs
echo 0 > $thp/khugepaged/defrag
echo never > $thp/defrag
echo 0 > /proc/sys/vm/compaction_proactiveness 2>/dev/null
# KVM's shutdown exits (a guest's triple fault) and injected exceptions are
# traced; after CMD, a run that had a triple fault prints what led to it.
t=/sys/kernel/tracing
mount -t tracefs tracefs $t 2>/dev/null
if [ -w $t/events/kvm/kvm_inj_exception/enable ]; then
    echo 256 > $t/buffer_size_kb
    echo 'exit_reason == 0x7f' > $t/events/kvm/kvm_exit/filter
    echo 1 > $t/events/kvm/kvm_exit/enable
    echo 1 > $t/events/kvm/kvm_inj_exception/enable
fi
ip link set lo up
if [ -c /dev/kvm ]; then echo "BRIQUE_TESTHOST_READY kvm=yes"; else echo "BRIQUE_TESTHOST_READY kvm=no"; fi
sh /brique/cmd.sh
status=$?
if grep -q 'reason shutdown' $t/trace 2>/dev/null; then
    echo "testhost: a guest triple-faulted; the KVM trace (shutdown exits, injected exceptions):"
    grep -v '^#' $t/trace | tail -n 40
fi
echo "BRIQUE_TESTHOST_EXIT=$status"
# Whatever CMD left running (a VM, a server) must not hold up the power-off.
kill -9 -1 2>/dev/null
sleep 1
sync
poweroff -f
INIT
chmod +x "$stage/init" "$stage/brique/cmd.sh"

(cd "$stage" && find . -print0 | cpio --null -o -H newc --owner=0:0 --quiet) > "$work/initramfs.cpio"

# hang_report QEMU_PID MONITOR: what a hung test host's QEMU is doing: each
# QEMU thread's state and CPU time twice, 5 s apart (a spinning software CPU
# or a blocked one), the emulated CPUs' local APIC (is a timer armed?) and
# registers from QEMU's monitor (where the test host, or its guest, is
# stuck), and QEMU's thread backtraces. The first one caught (CI, x86_64)
# showed an idle test host: its one CPU halted in the kernel's idle loop,
# QEMU's vCPU thread waiting for an interrupt, its main loop all but idle:
# a wake-up (timer) interrupt that never came. Later ones showed the CPU in
# brique's guest, spinning on a lock with interrupts off, the test host's
# timer pending in IRR, and QEMU's CPU thread polling its interrupt requests
# in a loop: the timer's request had been lost (testhost-qemu/ fixes it).
hang_report() {
    pid="$1" monitor="$2"
    echo "=== hang report: QEMU pid $pid, $(date -u +%T) ==="
    for round in 1 2; do
        echo "--- QEMU threads (round $round: name state utime stime) ---"
        for task in /proc/"$pid"/task/*; do
            echo "  $(cat "$task/comm" 2>/dev/null) $(awk '{print $3, $14, $15}' "$task/stat" 2>/dev/null) wchan=$(cat "$task/wchan" 2>/dev/null)"
        done
        [ "$round" = 1 ] && sleep 5
    done
    if command -v socat > /dev/null; then
        echo "--- QEMU monitor ---"
        printf 'info status\ninfo cpus\ninfo lapic\ninfo registers -a\n' \
            | timeout 10 socat -t 5 - "UNIX-CONNECT:$monitor" 2>&1 \
            | tr -d '\r' | grep -v -E '^(\(qemu\)|QEMU .* monitor|FPR|YMM|XMM|FCW|DR[0-7])' \
            | head -n 160
    else
        echo "(no socat: QEMU's monitor not read; resources/install-deps.sh installs it)"
    fi
    if command -v gdb > /dev/null; then
        echo "--- QEMU backtraces ---"
        timeout 60 gdb -q -batch -p "$pid" -ex 'thread apply all bt 12' 2>&1 \
            | grep -E '^(Thread|#)' | head -n 80
    else
        echo "(no gdb: QEMU's backtraces not taken; resources/install-deps.sh installs it)"
    fi
}

log="${keep_log:-$work/console.log}"
# A CPU stuck in the test host's kernel for 120 s (a soft lockup, e.g. in
# KVM; watchdog_thresh=60 is the largest) panics the test host instead of
# hanging it to the time limit; the panic replays the kernel log, which then
# holds every CPU's backtrace. The threshold is high because the emulator
# itself sometimes stalls the whole test host for about a minute and then
# goes on (seen once in ~150 boots: "stuck for 55s" on an idle CPU); that
# must not end a run. The console stays at loglevel 3, so kernel lines do
# not cut into CMD's output.
diagnostics="watchdog_thresh=60 softlockup_panic=1 softlockup_all_cpu_backtrace=1 panic_print=0x20"
accel="tcg"
[ "$smp" -gt 1 ] && accel="tcg,thread=multi"
accel="${BRIQUE_TESTHOST_ACCEL:-$accel}"
# Once CMD has reported its status, the test host has 60 s to power off; a
# test host that hangs on the way down must not turn a finished run into a
# timeout. The watchdog then stops QEMU, loudly, and the reported status stands.
# A run still going after --timeout is a hang: before stopping QEMU, the
# watchdog writes what QEMU was doing to $log.hang (see hang_report), so that
# a hang's cause can be told from the report of the run that had it.
: > "$log"
monitor="$work/monitor.sock"
hang_report="$log.hang"
rm -f "$hang_report"
(
    grace=60 elapsed=0
    while sleep 1; do
        elapsed=$((elapsed + 1))
        if grep -q '^BRIQUE_TESTHOST_EXIT=' "$log" 2>/dev/null; then
            grace=$((grace - 1))
            [ "$grace" -gt 0 ] && continue
            if pkill -TERM -f -- "-initrd $work/initramfs.cpio"; then
                echo "testhost.sh: WARNING: the test host hung after CMD ended; stopped QEMU" >&2
            fi
            exit 0
        fi
        if [ "$elapsed" -ge "$timeout_secs" ]; then
            # The newest match is QEMU itself (timeout, its parent, also matches).
            qemu_pid="$(pgrep -n -f -- "-initrd $work/initramfs.cpio")"
            [ -n "$qemu_pid" ] && hang_report "$qemu_pid" "$monitor" > "$hang_report" 2>&1
            : > "$work/timed-out"
            pkill -TERM -f -- "-initrd $work/initramfs.cpio"
            exit 0
        fi
    done
) &
watchdog=$!
set +e
timeout --foreground -k 10 "$((timeout_secs + 120))" \
    "${testhost_qemu[@]}" "${machine[@]}" -accel "$accel" -cpu "$cpu" -m "$mem" -smp "$smp" \
    -kernel "$testhost_kernel" -initrd "$work/initramfs.cpio" \
    -append "console=$console panic=-1 quiet loglevel=3 $diagnostics" \
    -nodefaults -no-user-config -display none -no-reboot \
    -monitor "unix:$monitor,server=on,wait=off" \
    -chardev stdio,id=console,signal=off -serial chardev:console \
    < /dev/null | tee "$log"
qemu_status=${PIPESTATUS[0]}
kill "$watchdog" 2>/dev/null
wait "$watchdog" 2>/dev/null
set -e
[ -e "$work/timed-out" ] && qemu_status=124

if [ "$qemu_status" = 124 ]; then
    echo "testhost.sh: the test host did not finish within ${timeout_secs}s" >&2
    exit 124
fi
status="$(tr -d '\r' < "$log" | sed -n 's/^BRIQUE_TESTHOST_EXIT=\([0-9]*\)$/\1/p' | tail -n1)"
if [ -z "$status" ]; then
    echo "testhost.sh: the test host ended (qemu status $qemu_status) before CMD finished" >&2
    exit 125
fi
exit "$status"
