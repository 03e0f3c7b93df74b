#!/usr/bin/env bash
# Block benchmark, brique vs QEMU microvm (virtio-blk on virtio-mmio), in
# one test host run: sequential write and read MiB/s and 4 KiB random-read
# IOPS measured inside the guest (a small static O_DIRECT program,
# bench/guest/blkbench.c) against the same image, with ratios brique/QEMU.
#   resources/bench-block.sh [--runs N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=2
[ "${1:-}" = --runs ] && runs="$2"
resources/install-deps.sh
cargo build --release -p brique-api
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
mkdir "$dir/tools"
gcc -O2 -static -o "$dir/tools/blkbench" bench/guest/blkbench.c
cp bench/guest/block-run.sh "$dir/tools/"
mkfs.ext4 -q -d "$dir/tools" "$dir/tools.img" 8M
rm -rf "$dir/tools"
cp bench/guest/block-host.sh bench/guest/report.sh "$dir/"
resources/testhost.sh --with-qemu --with "$dir" -- sh block-host.sh "$runs"
