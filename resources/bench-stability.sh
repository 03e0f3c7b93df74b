#!/usr/bin/env bash
# Stability benchmark, brique vs QEMU microvm (the peer), in one test host
# run: N short boots each (interleaved) of the same guest kernel, initramfs,
# command line, memory and vCPUs; the guest's init prints its marker and
# reboots. Prints each boot as it ends, then how many boots reached init
# cleanly, triple-faulted, panicked or hung, with wall times. A failed boot
# prints its last console lines, the VMM's stderr (brique's includes the
# vCPU's registers on a triple fault) and the test host's KVM trace.
#   resources/bench-stability.sh [--runs N] [--hosts H] [--vcpus N] [--mem-mib N]
#                                [--kernel vmlinux|bzImage] [--host-setup 'SHELL']
#                                [--guest-args 'ARGS'] [testhost.sh options]
# --guest-args adds kernel parameters to the guests of both VMMs.
# --host-setup runs SHELL in the test host before the boots (experiments with
# the test host's kernel settings); the test host's THP and khugepaged
# counters are printed before and after.
# --hosts H splits the boots over H test host runs, one after the other (as
# the end-to-end tests do: a fresh test host for each few boots), and adds
# up their counts at the end. Consoles: target/bench-stability-console-I.log.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=100 hosts=1 vcpus=1 mem=128 kernel=vmlinux host_setup="" guest_args=""
testhost_options=()
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --hosts) hosts="$2"; shift 2 ;;
        --host-setup) host_setup="$2"; shift 2 ;;
        --guest-args) guest_args="$2"; shift 2 ;;
        --vcpus) vcpus="$2"; shift 2 ;;
        --mem-mib) mem="$2"; shift 2 ;;
        --kernel) kernel="$2"; shift 2 ;;
        --cpu|--smp|--mem) testhost_options+=("$1" "$2"); shift 2 ;;
        *) echo "bench-stability.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
. resources/bench-lib.sh
dir="$bench_dir"
# Inside the test host, KVM's injected exceptions and shutdown exits are
# traced (testhost.sh sets that up), so that a triple fault shows what led to it.
printf '%s\n' "$host_setup" > "$dir/host-setup.sh"
cat > "$dir/run.sh" <<SCRIPT
thp=/sys/kernel/mm/transparent_hugepage
thp_state() {
    echo "bench-stability: THP \$(cat \$thp/enabled), collapsed by khugepaged: \$(cat \$thp/khugepaged/pages_collapsed), full scans: \$(cat \$thp/khugepaged/full_scans)"
    echo "bench-stability: page migration: \$(grep -E '^(pgmigrate_success|pgmigrate_fail|compact_stall|compact_daemon_wake|compact_success|thp_migration_success|thp_split_pmd|thp_fault_alloc|thp_zero_page_alloc) ' /proc/vmstat | tr '\\n' ' ')"
}
sh ./host-setup.sh
thp_state
trace=""
if [ -r /sys/kernel/tracing/trace ]; then
    trace="--kvm-trace /sys/kernel/tracing/trace"
else
    echo "bench-stability: no KVM trace in the test host; failures come without one"
fi
BRIQUE_BENCH_GUEST_ARGS='$guest_args' ./brique-bench stability --runs $((runs / hosts)) --vcpus $vcpus --mem-mib $mem \
    --brique /brique/bin/brique --qemu /brique/qemu/bin/qemu-system-x86_64 \
    --qemu-datadir /brique/qemu/share \
    --kernel /brique/artifacts/$kernel --initrd /brique/artifacts/initramfs.cpio.gz \$trace
status=\$?
thp_state
exit \$status
SCRIPT
mkdir -p target
summary="$dir/summary"
for host in $(seq 1 "$hosts"); do
    echo "=== test host run $host/$hosts ==="
    log="target/bench-stability-console-$host.log"
    status=0
    resources/testhost.sh --with-qemu --with "$dir" --timeout $((300 + runs / hosts * 2 * 60)) \
        --log "$log" "${testhost_options[@]}" -- sh run.sh || status=$?
    grep -a '^STABILITY ' "$log" | tr -d '\r' >> "$summary" || true
    grep -a '^  [a-z].* brique .* | qemu microvm ' "$log" | tr -d '\r' >> "$summary" || true
    if [ "$status" != 0 ]; then
        echo "bench-stability: test host run $host ended with status $status (console: $log)"
        echo "TESTHOST_FAILED $host status=$status" >> "$summary"
    fi
done
if [ "$hosts" -gt 1 ]; then
    echo
    echo "stability over $hosts test host runs ($((runs / hosts)) boots each per VMM and run):"
    awk -F'  +' '/ brique .* \| qemu microvm / {
            split($0, a, / brique +| \| qemu microvm +/); name = a[1]; sub(/^ +/, "", name)
            b[name] += a[2]; q[name] += a[3]; if (!(name in seen)) { order[++n] = name; seen[name] = 1 } }
        /^TESTHOST_FAILED/ { failed++ }
        END { for (i = 1; i <= n; i++) printf "  %-34s brique %4d | qemu microvm %4d\n", order[i], b[order[i]], q[order[i]]
              printf "  test host runs that failed: %d\n", failed }' "$summary"
fi
