#!/usr/bin/env bash
# Installs every system package brique needs to build, test and benchmark on a
# fresh Debian 12 machine (run as root, or with sudo available).
#   --aarch64   also install the Debian rustc-web toolchain with the arm64 std
#               (cross-build check of the aarch64 arch code) and qemu-user.
# Idempotent: packages already present are skipped quickly.
set -euo pipefail

want_aarch64=0
for arg in "$@"; do
    case "$arg" in
        --aarch64) want_aarch64=1 ;;
        *) echo "install-deps.sh: unknown option $arg" >&2; exit 2 ;;
    esac
done

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive

packages=(
    # test host (nested KVM under QEMU's software CPU) and the QEMU microvm peer
    qemu-system-x86 busybox-static cpio gzip procps
    # guest kernel build from Debian's linux-source-6.1
    build-essential flex bison bc libelf-dev libssl-dev xz-utils
    # rootfs images and host-side checks
    e2fsprogs
    # e2e tests talk to the API socket
    curl
)
if [ "$want_aarch64" = 1 ]; then
    packages+=(rustc-web cargo-web "libstd-rust-web-dev:arm64" gcc-aarch64-linux-gnu
        libc6-dev-arm64-cross qemu-user-static)
fi

missing=()
for p in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing+=("$p")
    fi
done

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-deps: all packages present"
    exit 0
fi

if [ "$want_aarch64" = 1 ] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64
fi
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -q
$SUDO apt-get install -y -q --no-install-recommends "${missing[@]}"
