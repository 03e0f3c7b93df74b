#!/usr/bin/env bash
# Builds the release binaries (brique, brique-jailer) twice, from two copies
# of the source in two different directories, and compares their hashes:
# anyone can rebuild what we ship, bit for bit. Paths that would differ (the
# source copy, cargo's home) are remapped to fixed names; the build uses
# Cargo.lock as it is (--locked) and no network beyond the registry.
#   resources/check-reproducible.sh [--keep]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
keep=0
[ "${1:-}" = "--keep" ] && keep=1
work="$(mktemp -d /tmp/brique-repro.XXXXXX)"
[ "$keep" = 1 ] || trap 'rm -rf "$work"' EXIT
cargo_home="${CARGO_HOME:-$HOME/.cargo}"
binaries=(brique brique-jailer)
for copy in one two; do
    # Different depths too, so that no path length leaks in either.
    src="$work/$copy/src-$copy"
    [ "$copy" = two ] && src="$work/$copy/deeper/src-$copy"
    mkdir -p "$src"
    git ls-files -z | xargs -0 cp --parents -t "$src"
    echo "check-reproducible: building in $src" >&2
    (cd "$src" && env CARGO_TARGET_DIR="$src/target" \
        RUSTFLAGS="--remap-path-prefix=$src=/brique --remap-path-prefix=$cargo_home=/cargo" \
        cargo build --release --locked -p brique-api -p brique-jailer >&2)
    for binary in "${binaries[@]}"; do
        sha256sum "$src/target/release/$binary" | cut -d' ' -f1 > "$work/$copy.$binary.sha256"
    done
done
status=0
for binary in "${binaries[@]}"; do
    one="$(cat "$work/one.$binary.sha256")" two="$(cat "$work/two.$binary.sha256")"
    if [ "$one" = "$two" ]; then
        echo "check-reproducible: $binary identical in both builds (sha256 $one)"
    else
        echo "check-reproducible: $binary DIFFERS: $one vs $two" >&2
        status=1
    fi
done
exit "$status"
