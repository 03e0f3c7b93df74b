#!/usr/bin/env bash
# Builds the guest-side test programs (resources/guest-tools/*.c), static,
# for the guest architectures: x86_64 with gcc, arm64 with
# aarch64-linux-gnu-gcc (Debian: gcc-aarch64-linux-gnu, libc6-dev-arm64-cross).
# resources/build-artifacts.sh puts them in the guest userland's /bin.
#   resources/build-guest-tools.sh [--out DIR] [x86_64] [aarch64]   (default: both)
# Without --out they go to target/guest-tools/<arch>/; prints one line per
# program, e.g.
#   VSOCK_TOOL_X86_64=<repo>/target/guest-tools/x86_64/vsock-tool
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
out_dir=""
arches=()
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out_dir="$2"; shift 2 ;;
        *) arches+=("$1"); shift ;;
    esac
done
[ ${#arches[@]} -gt 0 ] || arches=(x86_64 aarch64)
flags=(-static -O2 -Wall -Wextra -Werror -std=c11)
for arch in "${arches[@]}"; do
    case "$arch" in
        x86_64) cc=gcc ;;
        aarch64) cc=aarch64-linux-gnu-gcc ;;
        *) echo "build-guest-tools: unknown architecture $arch" >&2; exit 2 ;;
    esac
    if ! command -v "$cc" >/dev/null; then
        echo "build-guest-tools: $cc is missing (apt-get install $( [ "$arch" = aarch64 ] \
            && echo gcc-aarch64-linux-gnu libc6-dev-arm64-cross || echo gcc))" >&2
        exit 1
    fi
    out="${out_dir:-$here/../target/guest-tools/$arch}"
    mkdir -p "$out"
    for source in "$here"/guest-tools/*.c; do
        name="$(basename "$source" .c)"
        "$cc" "${flags[@]}" -o "$out/$name" "$source"
        echo "$(echo "${name}_$arch" | tr 'a-z-' 'A-Z_')=$(cd "$out" && pwd)/$name"
    done
done
