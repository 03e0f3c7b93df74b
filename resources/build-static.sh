#!/usr/bin/env bash
# Builds a statically linked brique (and brique-jailer), as a jail needs:
# brique-jailer copies the binary alone into the jail, with no dynamic
# loader or libraries beside it.
#   resources/build-static.sh [--release]
# Prints the binaries' paths, under target/static/<triple>/<profile>/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
profile=debug
args=()
if [ "${1:-}" = "--release" ]; then
    profile=release
    args+=(--release)
fi
triple="$(uname -m)-unknown-linux-gnu"
flags_var="CARGO_TARGET_$(echo "$triple" | tr 'a-z-' 'A-Z_')_RUSTFLAGS"
# The explicit --target keeps the flag off build scripts and proc macros.
env CARGO_TARGET_DIR=target/static "$flags_var=-C target-feature=+crt-static" \
    cargo build "${args[@]}" -p brique-api -p brique-jailer --target "$triple" >&2
echo "BRIQUE_STATIC=$PWD/target/static/$triple/$profile/brique"
echo "BRIQUE_JAILER_STATIC=$PWD/target/static/$triple/$profile/brique-jailer"
