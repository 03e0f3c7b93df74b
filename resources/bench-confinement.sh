#!/usr/bin/env bash
# What confinement costs, on this machine's /dev/kvm with a tiny guest:
# brique started without seccomp, with its filters (the default), jailed by
# brique-jailer, and jailed with --new-pid-ns (root only), interleaved;
# medians of process start to API socket ready and of InstanceStart to the
# guest's first output, and what each variant adds to the one before it
# (goal: under 1 ms).
#   resources/bench-confinement.sh [--runs N]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=30
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        *) echo "bench-confinement.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
resources/install-deps.sh
if [ ! -w /dev/kvm ]; then
    echo "bench-confinement.sh: /dev/kvm is not usable here" >&2
    exit 1
fi
cargo build --release -p brique-bench
eval "$(resources/build-static.sh --release)"
# The same (static) binary in every variant: only the confinement differs.
exec target/release/brique-bench confinement --runs "$runs" --brique "$BRIQUE_STATIC" \
    --static-brique "$BRIQUE_STATIC" --jailer "$BRIQUE_JAILER_STATIC"
