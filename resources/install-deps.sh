#!/usr/bin/env bash
# Installs every system package brique needs to build, test and benchmark on a
# fresh Debian 12 machine (run as root, or with sudo available).
#   --aarch64   also install the Debian rustc-web toolchain with the arm64 std
#               (cross-build check of the aarch64 arch code), qemu-user, and
#               what the arm64 guest kernel, userland and test host need: the
#               cross gcc, qemu-system-arm (also from bookworm-backports) and
#               dpkg's arm64 architecture (for Debian's arm64 packages; added
#               with the first install, which libstd-rust-web-dev:arm64 needs).
# Idempotent: packages already present are skipped quickly.
#
# It never removes a package the machine has. QEMU (the test host and the
# benchmark peer) comes from bookworm-backports (10.0): Debian 12 machines
# often carry backports' qemu-utils, which Breaks bookworm's qemu-system 7.2,
# so installing 7.2 would remove it. Backports are NotAutomatic, so adding
# that suite upgrades nothing else. Should apt still want to remove anything,
# this script stops and names it instead.
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

# Taken from bookworm-backports (see above); meson and pycotap too, because
# the x86_64 test host's QEMU is built from that QEMU's source with a fix
# (build-artifacts.sh, testhost-qemu/), and QEMU 10.0 needs meson >= 1.5.
backports_packages=(qemu-system-x86 meson python3-pycotap)
packages=(
    # test host (nested KVM under QEMU's software CPU) and the QEMU microvm peer
    "${backports_packages[@]}" busybox-static cpio gzip procps seabios
    # building the test host's QEMU (see above)
    ninja-build libglib2.0-dev libpixman-1-dev libfdt-dev python3-venv pkg-config
    # guest kernel build from Debian's linux-source-6.1
    build-essential flex bison bc libelf-dev libssl-dev xz-utils
    # rootfs images and host-side checks
    e2fsprogs
    # e2e tests talk to the API socket
    curl
    # a hung test host's report: QEMU's monitor and QEMU's thread backtraces
    socat gdb
)
if [ "$want_aarch64" = 1 ]; then
    backports_packages+=(qemu-system-arm)
    packages+=(rustc-web cargo-web "libstd-rust-web-dev:arm64" gcc-aarch64-linux-gnu
        libc6-dev-arm64-cross qemu-user-static qemu-system-arm
        # the arm64 device tree test decompiles the tree brique builds
        device-tree-compiler)
fi

installed_version() {
    { dpkg-query -W -f='${Status} ${Version}' "$1" 2>/dev/null || true; } \
        | awk '$3 == "installed" {print $4}'
}

missing=()
for p in "${packages[@]}"; do
    version="$(installed_version "$p")"
    if [ -z "$version" ]; then
        missing+=("$p")
    elif [[ " ${backports_packages[*]} " == *" $p "* ]] && [[ "$version" != *bpo12* ]]; then
        # bookworm's QEMU from an earlier install: move it to backports' (an upgrade).
        missing+=("$p")
    fi
done

# Whether apt is configured for bookworm-backports' index of kind $1
# (Packages: binaries; Sources: deb-src), from its sources as written (no
# `apt-get update` needed).
has_backports_index() {
    apt-get indextargets --no-release-info --format '$(CREATED_BY) $(RELEASE)' 2>/dev/null \
        | grep -qx "$1 bookworm-backports"
}

# QEMU's source from bookworm-backports (apt-get source), for the test host's
# QEMU: its deb-src entry, once.
backports_src_list=/etc/apt/sources.list.d/brique-bookworm-backports-src.sources
if ! has_backports_index Sources; then
    echo "install-deps: adding the sources of Debian's bookworm-backports ($backports_src_list) for QEMU's source"
    $SUDO tee "$backports_src_list" > /dev/null <<'SOURCES'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
    $SUDO apt-get update -q
fi

if [ "${#missing[@]}" -eq 0 ]; then
    echo "install-deps: all packages present"
    exit 0
fi

backports_list=/etc/apt/sources.list.d/brique-bookworm-backports.sources
if ! has_backports_index Packages; then
    echo "install-deps: adding Debian's bookworm-backports suite ($backports_list) for QEMU"
    $SUDO tee "$backports_list" > /dev/null <<'EOF'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
fi
if [ "$want_aarch64" = 1 ] && ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $SUDO dpkg --add-architecture arm64
fi

# Two groups: QEMU with `-t bookworm-backports` (its own dependencies of the
# same version come from there too), everything else from bookworm.
from_backports=() from_release=()
for p in "${missing[@]}"; do
    if [[ " ${backports_packages[*]} " == *" $p "* ]]; then
        from_backports+=("$p")
    else
        from_release+=("$p")
    fi
done

# Runs apt-get install for one group ($1: extra apt options, then packages),
# after checking that it removes nothing.
install_group() {
    local options="$1"; shift
    [ $# -gt 0 ] || return 0
    local removals
    # shellcheck disable=SC2086 # options are words on purpose
    removals="$(apt-get install -s -q --no-install-recommends $options "$@" 2>&1 \
        | awk '/^Remv / {print $2}' | tr '\n' ' ')"
    if [ -n "$removals" ]; then
        echo "install-deps: installing $* would remove packages this machine has:" \
            "${removals}- stopping; none of them was removed." >&2
        exit 1
    fi
    # shellcheck disable=SC2086
    $SUDO apt-get install -y -q --no-install-recommends --no-remove $options "$@"
}

echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -q
install_group "" "${from_release[@]}"
install_group "-t bookworm-backports" "${from_backports[@]}"
