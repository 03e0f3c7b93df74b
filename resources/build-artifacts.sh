#!/usr/bin/env bash
# Builds (or reuses from the cache) everything the end-to-end tests and the
# benchmarks boot, and prints one NAME=path line per artifact on stdout:
#   GUEST_VMLINUX     x86_64 guest kernel, ELF (from Debian's linux-source-6.1)
#   GUEST_BZIMAGE     the same kernel as a bzImage
#   GUEST_INITRAMFS   busybox initramfs (gzip'd cpio) whose /init prints a marker
#   GUEST_ROOTFS      ext4 image with the same busybox userland (mkfs.ext4 -d)
#   TESTHOST_KERNEL   Debian cloud kernel for the nested-KVM test host
#   TESTHOST_MODULES  folder with the kvm modules that kernel needs
# The cache lives in ${BRIQUE_CACHE:-~/.cache/brique}; each artifact's folder
# is named by a hash of its inputs (configs, scripts, package versions), so
# only a change of input rebuilds it. Progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${BRIQUE_CACHE:-$HOME/.cache/brique}"
jobs="${BRIQUE_BUILD_JOBS:-$(($(nproc) + 1))}"
mkdir -p "$cache"

log() { echo "build-artifacts: $*" >&2; }

"$here/install-deps.sh" >&2

# Newest version apt offers of a package, part of the cache keys.
candidate_version() {
    apt-cache policy "$1" | awk '/Candidate:/ {print $2}'
}

# Cache key: a hash of the given strings and of the named build function's
# own text, so that changing how an artifact is built rebuilds it.
cache_key() {
    local build_function="$1"; shift
    { printf '%s\n' "$@"; sed -n "/^$build_function()/,/^}/p" "$0"; } | sha256sum | cut -c1-16
}

# Downloads a Debian package into $2 and unpacks it there; echoes nothing.
fetch_deb() {
    local pkg="$1" dest="$2" tmp
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download -q "$pkg" >&2)
    dpkg-deb -x "$tmp"/*.deb "$dest"
    rm -rf "$tmp"
}

# Runs a build step into a fresh folder, then moves it into place, so that a
# half-built artifact never looks cached.
build_into() {
    local final="$1"; shift
    if [ -e "$final/.complete" ]; then return 0; fi
    rm -rf "$final.tmp" "$final"
    mkdir -p "$final.tmp"
    "$@" "$final.tmp"
    touch "$final.tmp/.complete"
    mv "$final.tmp" "$final"
}

# ---------------------------------------------------------------- guest kernel
linux_source_version="$(candidate_version linux-source-6.1)"
if [ -z "$linux_source_version" ] || [ "$linux_source_version" = "(none)" ]; then
    apt-get update -q >&2
    linux_source_version="$(candidate_version linux-source-6.1)"
fi
kernel_key="$(cache_key build_guest_kernel "$linux_source_version" \
    "$(cat "$here/guest-configs/x86_64-microvm.config")")"
guest_kernel_dir="$cache/guest-kernel-$kernel_key"

build_guest_kernel() {
    local out="$1" src
    src="$(mktemp -d)"
    log "building guest kernel from linux-source-6.1 $linux_source_version (takes minutes, once)"
    fetch_deb linux-source-6.1 "$src/deb"
    tar -C "$src" -xaf "$src"/deb/usr/src/linux-source-6.1.tar.*
    local tree
    tree="$(echo "$src"/linux-source-6.1)"
    make -C "$tree" -s tinyconfig >&2
    "$tree/scripts/kconfig/merge_config.sh" -m -O "$tree" "$tree/.config" \
        "$here/guest-configs/x86_64-microvm.config" >&2
    make -C "$tree" -s olddefconfig >&2
    # Every line of the fragment must have survived olddefconfig.
    local missing=0 line
    while IFS= read -r line; do
        case "$line" in ''|'#'*) continue ;; esac
        local name="${line%%=*}" value="${line#*=}"
        if [ "$value" = n ]; then
            if grep -q "^$name=" "$tree/.config"; then log "config: $name still set"; missing=1; fi
        elif ! grep -qx "$line" "$tree/.config"; then
            log "config: $line did not survive olddefconfig"; missing=1
        fi
    done < "$here/guest-configs/x86_64-microvm.config"
    [ "$missing" = 0 ] || { log "guest kernel config is inconsistent"; exit 1; }
    make -C "$tree" -s -j"$jobs" vmlinux bzImage >&2
    cp "$tree/vmlinux" "$out/vmlinux"
    cp "$tree/arch/x86/boot/bzImage" "$out/bzImage"
    cp "$tree/.config" "$out/config"
    rm -rf "$src"
}
build_into "$guest_kernel_dir" build_guest_kernel

# ------------------------------------------------------ guest userland images
busybox_version="$(dpkg-query -W -f='${Version}' busybox-static)"
userland_key="$(cache_key build_userland "$busybox_version" "$(cat "$here/guest-init/init")" \
    "$(sed -n '/^populate_userland()/,/^}/p' "$0")")"
userland_dir="$cache/guest-userland-$userland_key"

# Fills folder $1 with a busybox userland whose init is guest-init/init.
populate_userland() {
    local root="$1"
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,etc,root,mnt}
    cp /bin/busybox "$root/bin/busybox"
    local applet
    for applet in $("$root/bin/busybox" --list); do
        [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
    done
    cp "$here/guest-init/init" "$root/init"
    ln -sf ../init "$root/sbin/init"
    echo "brique-guest" > "$root/etc/hostname"
}

build_userland() {
    local out="$1" root
    root="$(mktemp -d)"
    log "building guest initramfs and rootfs"
    populate_userland "$root"
    (cd "$root" && find . -print0 | cpio --null -o -H newc --owner=0:0 --quiet) \
        | gzip -9 > "$out/initramfs.cpio.gz"
    rm -f "$root/init" && cp "$here/guest-init/init" "$root/init"
    mkfs.ext4 -q -F -L brique-root -d "$root" "$out/rootfs.ext4" 64M >&2
    rm -rf "$root"
}
build_into "$userland_dir" build_userland

# ------------------------------------------------------------ test host kernel
# The cloud-amd64 meta package names the current ABI (linux-image-6.1.0-N-cloud-amd64).
testhost_image_pkg="$(apt-cache depends linux-image-cloud-amd64 \
    | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
[ -n "$testhost_image_pkg" ] || { log "cannot resolve linux-image-cloud-amd64"; exit 1; }
testhost_key="$(cache_key build_testhost_kernel \
    "$testhost_image_pkg $(candidate_version "$testhost_image_pkg")")"
testhost_dir="$cache/testhost-kernel-$testhost_key"

build_testhost_kernel() {
    local out="$1" tmp
    tmp="$(mktemp -d)"
    log "fetching test host kernel $testhost_image_pkg"
    fetch_deb "$testhost_image_pkg" "$tmp"
    cp "$tmp"/boot/vmlinuz-* "$out/vmlinuz"
    mkdir -p "$out/modules"
    local mod path
    # Load order matters: dependencies first.
    for mod in irqbypass kvm kvm-amd kvm-intel tun bridge stp llc; do
        path="$(find "$tmp/lib/modules" -name "$mod.ko*" | head -n1)"
        [ -n "$path" ] || { log "module $mod missing from $testhost_image_pkg"; exit 1; }
        case "$path" in
            *.ko.xz) xz -dc "$path" > "$out/modules/$mod.ko" ;;
            *.ko.zst) zstd -dqc "$path" > "$out/modules/$mod.ko" ;;
            *) cp "$path" "$out/modules/$mod.ko" ;;
        esac
    done
    rm -rf "$tmp"
}
build_into "$testhost_dir" build_testhost_kernel

echo "GUEST_VMLINUX=$guest_kernel_dir/vmlinux"
echo "GUEST_BZIMAGE=$guest_kernel_dir/bzImage"
echo "GUEST_INITRAMFS=$userland_dir/initramfs.cpio.gz"
echo "GUEST_ROOTFS=$userland_dir/rootfs.ext4"
echo "TESTHOST_KERNEL=$testhost_dir/vmlinuz"
echo "TESTHOST_MODULES=$testhost_dir/modules"
