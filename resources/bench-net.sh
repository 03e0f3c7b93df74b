#!/usr/bin/env bash
# Network benchmark, brique vs QEMU microvm (virtio-net on a tap, userspace
# backend, no vhost), in one test host run: TCP throughput host->guest and
# guest->host (128 MiB over HTTP) and ping round-trip time, with ratios.
#   resources/bench-net.sh [--runs N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=2
[ "${1:-}" = --runs ] && runs="$2"
resources/install-deps.sh
cargo build --release -p brique-api
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
cp bench/guest/net-host.sh bench/guest/net-guest.sh bench/guest/report.sh "$dir/"
resources/testhost.sh --with-qemu --with "$dir" -- sh net-host.sh "$runs"
