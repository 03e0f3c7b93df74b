#!/usr/bin/env bash
# Boot benchmark, brique vs QEMU microvm (the peer), in one test host run:
# the same guest kernel and initramfs, N boots each (interleaved), printing
# time to guest init, VMM memory overhead and the ratios brique/QEMU.
#   resources/bench-boot.sh [--runs N] [--vcpus N] [--mem-mib N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=5 vcpus=1 mem=128
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --vcpus) vcpus="$2"; shift 2 ;;
        --mem-mib) mem="$2"; shift 2 ;;
        *) echo "bench-boot.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
. resources/bench-lib.sh
resources/testhost.sh --with-qemu --with "$bench_dir" -- \
    ./brique-bench boot --runs "$runs" --vcpus "$vcpus" --mem-mib "$mem" \
    --brique /brique/bin/brique --qemu /brique/qemu/bin/qemu-system-x86_64 \
    --qemu-datadir /brique/qemu/share \
    --kernel /brique/artifacts/vmlinux --initrd /brique/artifacts/initramfs.cpio.gz
