#!/usr/bin/env bash
# Boot benchmark, brique vs QEMU (the peer), in one test host run: the same
# guest kernel, initramfs, command line, memory and vCPUs, N boots each
# (interleaved), printing time to guest init, VMM memory overhead (RSS minus
# the resident guest RAM) and the ratios brique/QEMU.
#   resources/bench-boot.sh [--arch x86_64|aarch64] [--runs N] [--vcpus N] [--mem-mib N]
# x86_64 (default): QEMU's microvm machine (Debian's qemu-system-x86) in the
# x86_64 test host, the ELF vmlinux. aarch64: QEMU's virt machine with a
# GICv3 (Debian's arm64 qemu-system-arm from bookworm-backports, the same
# QEMU 10.0 as on x86_64) in the arm64 test host, the arm64 Image, with
# static arm64 builds of brique and brique-bench; the guest's console is
# the PL011 (ttyAMA0) under QEMU and the 16550A (ttyS0) under brique.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=5 vcpus=1 mem=128 bench_arch=x86_64
while [ $# -gt 0 ]; do
    case "$1" in
        --arch) bench_arch="$2"; shift 2 ;;
        --runs) runs="$2"; shift 2 ;;
        --vcpus) vcpus="$2"; shift 2 ;;
        --mem-mib) mem="$2"; shift 2 ;;
        *) echo "bench-boot.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
case "$bench_arch" in
    x86_64) testhost_args=() qemu=qemu-system-x86_64 kernel=vmlinux ;;
    aarch64) testhost_args=(--arch aarch64) qemu=qemu-system-aarch64 kernel=Image ;;
    *) echo "bench-boot.sh: --arch is x86_64 or aarch64, not $bench_arch" >&2; exit 2 ;;
esac
. resources/bench-lib.sh
resources/testhost.sh "${testhost_args[@]}" --with-qemu --with "$bench_dir" -- \
    ./brique-bench boot --runs "$runs" --vcpus "$vcpus" --mem-mib "$mem" \
    --brique /brique/bin/brique --qemu "/brique/qemu/bin/$qemu" \
    --qemu-datadir /brique/qemu/share \
    --kernel "/brique/artifacts/$kernel" --initrd /brique/artifacts/initramfs.cpio.gz
