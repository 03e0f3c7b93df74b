#!/usr/bin/env bash
# Control API latency benchmark on this machine's /dev/kvm with a tiny guest:
# p50/p99 round trips of a read-only query and of pause+resume, brique's REST
# API vs QEMU microvm's QMP (the peer), measured in the same run.
#   resources/bench-api.sh [--iterations N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
iterations=1000
while [ $# -gt 0 ]; do
    case "$1" in
        --iterations) iterations="$2"; shift 2 ;;
        *) echo "bench-api.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
resources/install-deps.sh
if [ ! -w /dev/kvm ]; then
    echo "bench-api.sh: /dev/kvm is not usable here" >&2
    exit 1
fi
cargo build --release -p brique-api -p brique-bench
exec target/release/brique-bench api --iterations "$iterations" \
    --brique target/release/brique --qemu "$(command -v qemu-system-x86_64)"
