#!/usr/bin/env bash
# Snapshot benchmark, brique vs QEMU microvm (the peer), in one test host run:
# the same kernel and initramfs, a guest that prints a count every 10 ms,
# saved while paused and restored in a fresh VMM process, N times per VMM and
# guest size (interleaved). brique: PATCH /vm Paused, PUT /snapshot/create
# (Full), then PUT /snapshot/load with resume_vm in a new brique. QEMU: QMP
# stop + migrate to a file, then a new QEMU with -incoming defer,
# migrate-incoming and cont. Prints per VMM and size the create time, the
# state+memory file sizes (apparent and allocated), the restore time (load
# request to the first new count on the console), the medians, the ratios
# brique/QEMU and how restore grows from the first size to the last.
#   resources/bench-snapshot.sh [--runs N] [--vcpus N] [--size MIB[:TOUCHED_MIB]]...
#                               [--qemu-mapped-ram] [--mem MIB] [--timeout SECS]
# --size is repeatable (default: 128 and 2048:100, a 2 GiB guest that first
# writes 100 MiB of non-zero data into its tmpfs). --qemu-mapped-ram saves
# QEMU's RAM with its mapped-ram capability (a sparse file, RAM at fixed
# offsets, as brique's memory file) instead of its ordinary stream. --mem is
# the test host's memory (default 4096: a 2 GiB guest, its snapshot files in
# the test host's tmpfs and the restored VMM must fit). --timeout bounds the
# whole test host run (default: 300 s plus 150 s per save+restore). A boot of
# a guest to be saved that fails is retried once, loudly (booting is not what
# is measured); a failed save or restore ends the run with the VMM's console
# and stderr. The console is kept in target/bench-snapshot-console.log.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=3 vcpus=1 host_mem=4096 timeout_secs=""
sizes=() extra=()
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --vcpus) vcpus="$2"; shift 2 ;;
        --size) sizes+=("$2"); shift 2 ;;
        --qemu-mapped-ram) extra+=(--qemu-mapped-ram); shift ;;
        --mem) host_mem="$2"; shift 2 ;;
        --timeout) timeout_secs="$2"; shift 2 ;;
        *) echo "bench-snapshot.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
[ ${#sizes[@]} -gt 0 ] || sizes=(128 2048:100)
size_args=()
for size in "${sizes[@]}"; do size_args+=(--size "$size"); done
[ -n "$timeout_secs" ] || timeout_secs=$((300 + runs * ${#sizes[@]} * 2 * 150))
. resources/bench-lib.sh
mkdir -p target
resources/testhost.sh --with-qemu --with "$bench_dir" --mem "$host_mem" \
    --timeout "$timeout_secs" --log target/bench-snapshot-console.log -- \
    ./brique-bench snapshot --runs "$runs" --vcpus "$vcpus" "${size_args[@]}" "${extra[@]}" \
    --brique /brique/bin/brique --qemu /brique/qemu/bin/qemu-system-x86_64 \
    --qemu-datadir /brique/qemu/share \
    --kernel /brique/artifacts/vmlinux --initrd /brique/artifacts/initramfs.cpio.gz
