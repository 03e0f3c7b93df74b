#!/usr/bin/env bash
# Builds (or reuses from the cache) everything the end-to-end tests and the
# benchmarks boot, and prints one NAME=path line per artifact on stdout:
#   GUEST_VMLINUX     x86_64 guest kernel, ELF (from Debian's linux-source-6.1)
#   GUEST_BZIMAGE     the same kernel as a bzImage
#   GUEST_INITRAMFS   busybox initramfs (gzip'd cpio) whose /init prints a marker
#   GUEST_ROOTFS      ext4 image with the same busybox userland (mkfs.ext4 -d)
#   TESTHOST_KERNEL   Debian cloud kernel for the nested-KVM test host
#   TESTHOST_MODULES  folder with the kvm modules that kernel needs
#   TESTHOST_QEMU     qemu-system-x86_64 that runs the test host: Debian's,
#                     rebuilt with a fix (testhost-qemu/, see below)
#   TESTHOST_QEMU_DATADIR  its firmware folder (-L)
# With --aarch64 (x86_64 and arm64) or --aarch64-only (arm64 alone: what
# `testhost.sh --arch aarch64` asks for), also the arm64 artifacts, so that
# x86_64-only runs do not pay for them:
#   GUEST_AARCH64_IMAGE       arm64 guest kernel Image, cross-compiled from the
#                             same linux-source-6.1 (guest-configs/aarch64-microvm.config)
#   GUEST_AARCH64_INITRAMFS   the same busybox userland and init with Debian's
#   GUEST_AARCH64_ROOTFS      arm64 busybox-static, as initramfs and ext4 image
#   TESTHOST_AARCH64_KERNEL   Debian cloud-arm64 kernel (a plain Image; KVM built in)
#                             for the arm64 test host
#   TESTHOST_AARCH64_MODULES  folder with the modules it loads (tun, bridge)
#   TESTHOST_AARCH64_USERLAND root tree for the arm64 test host: busybox and its
#                             applet links, curl and debugfs with their arm64
#                             libraries and loader (from Debian's arm64 packages)
# With --aarch64-qemu (also implies the arm64 artifacts; what
# `testhost.sh --arch aarch64 --with-qemu` asks for), also:
#   TESTHOST_AARCH64_QEMU     root tree with QEMU for the arm64 test host (the
#                             benchmark peer): brique/qemu/bin/qemu-system-aarch64
#                             from Debian's arm64 qemu-system-arm (bookworm-
#                             backports, the same QEMU as the x86_64 peer) with
#                             its arm64 libraries, and an empty brique/qemu/share
# The cache lives in ${BRIQUE_CACHE:-~/.cache/brique}; each artifact's folder
# is named by a hash of its inputs (configs, scripts, package versions), so
# only a change of input rebuilds it. Progress goes to stderr.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${BRIQUE_CACHE:-$HOME/.cache/brique}"
jobs="${BRIQUE_BUILD_JOBS:-$(($(nproc) + 1))}"
want_x86=1 want_aarch64=0 want_aarch64_qemu=0
for arg in "$@"; do
    case "$arg" in
        --aarch64) want_aarch64=1 ;;
        --aarch64-only) want_aarch64=1 want_x86=0 ;;
        --aarch64-qemu) want_aarch64=1 want_aarch64_qemu=1 ;;
        *) echo "build-artifacts.sh: unknown option $arg (see the header of $0)" >&2; exit 2 ;;
    esac
done
mkdir -p "$cache"

log() { echo "build-artifacts: $*" >&2; }


if [ "$want_aarch64" = 1 ]; then
    "$here/install-deps.sh" --aarch64 >&2
else
    "$here/install-deps.sh" >&2
fi

# Newest version apt offers of a package, part of the cache keys.
candidate_version() {
    apt-cache policy "$1" | awk '/Candidate:/ {print $2}'
}

# "package version" lines for many packages, with one apt-cache call (each
# call takes a second or two).
candidate_versions() {
    apt-cache policy "$@" | awk '/^[^ ]/ {name = $1; sub(/:$/, "", name)} /Candidate:/ {print name, $2}'
}

# Cache key: a hash of the given strings and of the named build function's
# own text, so that changing how an artifact is built rebuilds it.
cache_key() {
    local build_function="$1"; shift
    { printf '%s\n' "$@"; sed -n "/^$build_function()/,/^}/p" "$0"; } | sha256sum | cut -c1-16
}

# The text of the named helper functions, for the cache keys of the builds
# that call them.
functions_text() {
    local name
    for name in "$@"; do sed -n "/^$name()/,/^}/p" "$0"; done
}

# What the guest tools are made of, for the userland images' cache keys.
guest_tools_text() {
    cat "$here/build-guest-tools.sh" "$here"/guest-tools/*.c
}

# Downloads a Debian package into $2 and unpacks it there; echoes nothing.
fetch_deb() {
    local pkg="$1" dest="$2" tmp
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download -q "$pkg" >&2)
    dpkg-deb -x "$tmp"/*.deb "$dest"
    rm -rf "$tmp"
}

# Downloads Debian packages (one apt-get call) and unpacks them all into $1.
fetch_debs() {
    local dest="$1" tmp deb; shift
    tmp="$(mktemp -d)"
    (cd "$tmp" && apt-get download -q "$@" >&2)
    for deb in "$tmp"/*.deb; do dpkg-deb -x "$deb" "$dest"; done
    rm -rf "$tmp"
}

# Copies the named kernel modules (load order: dependencies first) from the
# unpacked kernel package $1 into folder $2, uncompressed.
copy_kernel_modules() {
    local pkgroot="$1" dest="$2" mod path; shift 2
    for mod in "$@"; do
        path="$(find "$pkgroot/lib/modules" -name "$mod.ko*" | head -n1)"
        [ -n "$path" ] || { log "module $mod missing from the kernel package"; exit 1; }
        case "$path" in
            *.ko.xz) xz -dc "$path" > "$dest/$mod.ko" ;;
            *.ko.zst) zstd -dqc "$path" > "$dest/$mod.ko" ;;
            *) cp "$path" "$dest/$mod.ko" ;;
        esac
    done
}

# Checks that every line of a kernel config fragment ($2) survived
# olddefconfig in the kernel tree $1.
check_kernel_config() {
    local tree="$1" fragment="$2" missing=0 line name value
    while IFS= read -r line; do
        case "$line" in ''|'#'*) continue ;; esac
        name="${line%%=*}" value="${line#*=}"
        if [ "$value" = n ]; then
            if grep -q "^$name=" "$tree/.config"; then log "config: $name still set"; missing=1; fi
        elif ! grep -qx "$line" "$tree/.config"; then
            log "config: $line did not survive olddefconfig"; missing=1
        fi
    done < "$fragment"
    [ "$missing" = 0 ] || { log "guest kernel config ($fragment) is inconsistent"; exit 1; }
}

# Runs a build step into a fresh folder, then moves it into place, so that a
# half-built artifact never looks cached.
build_into() {
    local final="$1"; shift
    if [ -e "$final/.complete" ]; then return 0; fi
    # One builder per artifact: another run of this script (parallel test
    # host runs each call it) waits for it instead of building it again
    # into the same folder.
    exec 9> "$final.lock"
    if ! flock -n 9; then
        log "waiting for another build of $(basename "$final")"
        flock 9
    fi
    if [ ! -e "$final/.complete" ]; then
        rm -rf "$final.tmp" "$final"
        mkdir -p "$final.tmp"
        "$@" "$final.tmp"
        touch "$final.tmp/.complete"
        mv "$final.tmp" "$final"
    fi
    exec 9>&-
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
if [ "$want_x86" = 1 ]; then build_into "$guest_kernel_dir" build_guest_kernel; fi

# ------------------------------------------------------ guest userland images
if [ "$want_x86" = 1 ]; then
    busybox_version="$(dpkg-query -W -f='${Version}' busybox-static)"
    userland_key="$(cache_key build_userland "$busybox_version" "$(cat "$here/guest-init/init")" \
        "$(functions_text populate_userland make_userland_images)" "$(guest_tools_text)")"
    userland_dir="$cache/guest-userland-$userland_key"
fi

# Fills folder $1 with a busybox userland whose init is guest-init/init, and
# the guest tools (resources/guest-tools, built for architecture $2), from
# the busybox binary $3; the other arguments are the command that runs that
# binary (none for the host's own architecture; qemu-aarch64-static for arm64).
populate_userland() {
    local root="$1" arch="$2" busybox="$3"; shift 3
    mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,proc,sys,dev,tmp,etc,root,mnt}
    cp "$busybox" "$root/bin/busybox"
    local applet
    for applet in $("$@" "$busybox" --list); do
        [ -e "$root/bin/$applet" ] || ln -s busybox "$root/bin/$applet"
    done
    "$here/build-guest-tools.sh" --out "$root/bin" "$arch" >&2
    cp "$here/guest-init/init" "$root/init"
    ln -sf ../init "$root/sbin/init"
    echo "brique-guest" > "$root/etc/hostname"
}

# Writes initramfs.cpio.gz and rootfs.ext4 into folder $1, holding the
# userland that populate_userland makes from the other arguments.
make_userland_images() {
    local out="$1" root; shift
    root="$(mktemp -d)"
    populate_userland "$root" "$@"
    (cd "$root" && find . -print0 | cpio --null -o -H newc --owner=0:0 --quiet) \
        | gzip -9 > "$out/initramfs.cpio.gz"
    rm -f "$root/init" && cp "$here/guest-init/init" "$root/init"
    mkfs.ext4 -q -F -L brique-root -d "$root" "$out/rootfs.ext4" 64M >&2
    rm -rf "$root"
}

build_userland() {
    log "building guest initramfs and rootfs"
    make_userland_images "$1" x86_64 /bin/busybox
}
if [ "$want_x86" = 1 ]; then build_into "$userland_dir" build_userland; fi

# ------------------------------------------------------------ test host kernel
# The cloud-amd64 meta package names the current ABI (linux-image-6.1.0-N-cloud-amd64);
# BRIQUE_TESTHOST_KERNEL_SUITE=bookworm-backports takes that suite's version of it.
if [ "$want_x86" = 1 ]; then
    testhost_meta=linux-image-cloud-amd64
    if [ -n "${BRIQUE_TESTHOST_KERNEL_SUITE:-}" ]; then
        testhost_meta_version="$(apt-cache madison linux-image-cloud-amd64 \
            | awk -v suite="$BRIQUE_TESTHOST_KERNEL_SUITE" '$0 ~ suite {print $3; exit}')"
        [ -n "$testhost_meta_version" ] || { log "no linux-image-cloud-amd64 in $BRIQUE_TESTHOST_KERNEL_SUITE"; exit 1; }
        testhost_meta="linux-image-cloud-amd64=$testhost_meta_version"
    fi
    testhost_image_pkg="$(apt-cache depends "$testhost_meta" \
        | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
    [ -n "$testhost_image_pkg" ] || { log "cannot resolve linux-image-cloud-amd64"; exit 1; }
    testhost_key="$(cache_key build_testhost_kernel \
        "$testhost_image_pkg $(candidate_version "$testhost_image_pkg")")"
    testhost_dir="$cache/testhost-kernel-$testhost_key"
fi

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
if [ "$want_x86" = 1 ]; then build_into "$testhost_dir" build_testhost_kernel; fi

# ------------------------------------------------- the x86_64 test host's QEMU
# Debian's QEMU (the installed qemu-system-x86, backports' 10.0) rebuilt from
# its Debian source with testhost-qemu/*.patch, x86_64 system emulator only.
# The fix: its VMRUN updated the CPU's interrupt-request word without the
# lock every other writer holds, so it could drop the I/O thread's request to
# take the local APIC timer's interrupt; the test host, one CPU whose only
# interrupt source is that timer, then froze for good (issue 8; the patch's
# header says how). The data dir (-L) links Debian's SeaBIOS and QEMU's
# option ROMs, which the +ds source leaves out.
if [ "$want_x86" = 1 ]; then
    testhost_qemu_version="$(dpkg-query -W -f='${Version}' qemu-system-x86 2>/dev/null || true)"
    [ -n "$testhost_qemu_version" ] || { log "qemu-system-x86 is not installed"; exit 1; }
    testhost_qemu_key="$(cache_key build_testhost_qemu "$testhost_qemu_version" \
        "$(cat "$here"/testhost-qemu/*.patch)")"
    testhost_qemu_dir="$cache/testhost-qemu-$testhost_qemu_key"
fi

build_testhost_qemu() {
    local out="$1" tmp
    tmp="$(mktemp -d)"
    log "building the test host's QEMU from the source of qemu $testhost_qemu_version (a few minutes, once)"
    # apt checks the tarball against the signed source index.
    (cd "$tmp" && apt-get source -q --download-only --tar-only "qemu=$testhost_qemu_version" >&2)
    tar -xf "$tmp"/qemu_*.orig.tar.* -C "$tmp"
    local src
    src="$(find "$tmp" -mindepth 1 -maxdepth 1 -type d -name 'qemu-*')"
    for patch in "$here"/testhost-qemu/*.patch; do
        patch -d "$src" -p1 --forward --quiet < "$patch" >&2 \
            || { log "$(basename "$patch") does not apply to qemu $testhost_qemu_version"; exit 1; }
    done
    mkdir "$src/build"
    # Debian's python3 (meson's), whatever python3 comes first in PATH.
    (cd "$src/build" && ../configure --python=/usr/bin/python3 --target-list=x86_64-softmmu \
        --without-default-features --disable-docs --disable-werror --disable-user \
        --enable-fdt=system --disable-install-blobs > "$tmp/configure.log" 2>&1) \
        || { tail -n 30 "$tmp/configure.log" >&2; log "configuring QEMU failed"; exit 1; }
    ninja -C "$src/build" -j "$jobs" qemu-system-x86_64 > "$tmp/build.log" 2>&1 \
        || { tail -n 30 "$tmp/build.log" >&2; log "building QEMU failed"; exit 1; }
    mkdir -p "$out/bin" "$out/share"
    cp "$src/build/qemu-system-x86_64" "$out/bin/"
    local f
    for f in /usr/share/qemu/* /usr/share/seabios/*; do ln -sf "$f" "$out/share/"; done
    "$out/bin/qemu-system-x86_64" --version | head -n1 >&2
    rm -rf "$tmp"
}
if [ "$want_x86" = 1 ]; then build_into "$testhost_qemu_dir" build_testhost_qemu; fi

if [ "$want_x86" = 1 ]; then
    echo "GUEST_VMLINUX=$guest_kernel_dir/vmlinux"
    echo "GUEST_BZIMAGE=$guest_kernel_dir/bzImage"
    echo "GUEST_INITRAMFS=$userland_dir/initramfs.cpio.gz"
    echo "GUEST_ROOTFS=$userland_dir/rootfs.ext4"
    echo "TESTHOST_KERNEL=$testhost_dir/vmlinuz"
    echo "TESTHOST_MODULES=$testhost_dir/modules"
    echo "TESTHOST_QEMU=$testhost_qemu_dir/bin/qemu-system-x86_64"
    echo "TESTHOST_QEMU_DATADIR=$testhost_qemu_dir/share"
fi
[ "$want_aarch64" = 1 ] || exit 0

# ========================================================================
# arm64 (--aarch64, --aarch64-only). Debian's arm64 packages come through
# the arm64 architecture that `install-deps.sh --aarch64` adds to dpkg.

# The arm64 packages that the guest userland (busybox) and the test host's
# userland are made of: busybox, curl and debugfs, with the dependency
# closure of the last two (they are dynamically linked), and their versions.
testhost_aarch64_packages=(busybox-static:arm64 curl:arm64 e2fsprogs:arm64)
mapfile -t testhost_aarch64_closure < <(apt-cache depends --recurse --no-recommends \
    --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances \
    "${testhost_aarch64_packages[@]}" | grep -E '^[a-z0-9].*:arm64$' | sort -u)
aarch64_versions="$(candidate_versions "${testhost_aarch64_closure[@]}")"
busybox_aarch64_version="$(awk '$1 == "busybox-static:arm64" {print $2}' <<< "$aarch64_versions")"
[ -n "$busybox_aarch64_version" ] || { log "cannot resolve busybox-static:arm64"; exit 1; }

# ---------------------------------------------------------- arm64 guest kernel
aarch64_kernel_key="$(cache_key build_guest_kernel_aarch64 "$linux_source_version" \
    "$(cat "$here/guest-configs/aarch64-microvm.config")" "$(functions_text check_kernel_config)")"
aarch64_kernel_dir="$cache/guest-kernel-aarch64-$aarch64_kernel_key"

build_guest_kernel_aarch64() {
    local out="$1" src tree
    src="$(mktemp -d)"
    log "building arm64 guest kernel from linux-source-6.1 $linux_source_version (takes minutes, once)"
    fetch_deb linux-source-6.1 "$src/deb"
    tar -C "$src" -xaf "$src"/deb/usr/src/linux-source-6.1.tar.*
    tree="$src/linux-source-6.1"
    local kmake=(make -C "$tree" -s ARCH=arm64 CROSS_COMPILE=aarch64-linux-gnu-)
    "${kmake[@]}" tinyconfig >&2
    "$tree/scripts/kconfig/merge_config.sh" -m -O "$tree" "$tree/.config" \
        "$here/guest-configs/aarch64-microvm.config" >&2
    "${kmake[@]}" olddefconfig >&2
    check_kernel_config "$tree" "$here/guest-configs/aarch64-microvm.config"
    "${kmake[@]}" -j"$jobs" Image >&2
    cp "$tree/arch/arm64/boot/Image" "$out/Image"
    cp "$tree/.config" "$out/config"
    rm -rf "$src"
}
build_into "$aarch64_kernel_dir" build_guest_kernel_aarch64

# ---------------------------------------------- arm64 guest userland images
aarch64_userland_key="$(cache_key build_userland_aarch64 "$busybox_aarch64_version" \
    "$(cat "$here/guest-init/init")" "$(functions_text populate_userland make_userland_images)" \
    "$(guest_tools_text)")"
aarch64_userland_dir="$cache/guest-userland-aarch64-$aarch64_userland_key"

build_userland_aarch64() {
    local out="$1" tmp
    tmp="$(mktemp -d)"
    log "building arm64 guest initramfs and rootfs (busybox-static:arm64 $busybox_aarch64_version)"
    fetch_deb busybox-static:arm64 "$tmp"
    make_userland_images "$out" aarch64 "$tmp/bin/busybox" qemu-aarch64-static
    rm -rf "$tmp"
}
build_into "$aarch64_userland_dir" build_userland_aarch64

# ------------------------------------------------------ arm64 test host kernel
testhost_aarch64_image_pkg="$(apt-cache depends linux-image-cloud-arm64:arm64 \
    | awk '/Depends: linux-image-[0-9]/ {print $2; exit}')"
[ -n "$testhost_aarch64_image_pkg" ] || { log "cannot resolve linux-image-cloud-arm64:arm64"; exit 1; }
testhost_aarch64_key="$(cache_key build_testhost_kernel_aarch64 \
    "$testhost_aarch64_image_pkg $(candidate_version "$testhost_aarch64_image_pkg")" \
    "$(functions_text copy_kernel_modules)")"
testhost_aarch64_dir="$cache/testhost-kernel-aarch64-$testhost_aarch64_key"

build_testhost_kernel_aarch64() {
    local out="$1" tmp
    tmp="$(mktemp -d)"
    log "fetching arm64 test host kernel $testhost_aarch64_image_pkg"
    fetch_deb "$testhost_aarch64_image_pkg" "$tmp"
    # A plain Image (QEMU's -kernel takes it as is) with KVM built in
    # (CONFIG_KVM=y): only tun (taps) and the bridge are modules.
    cp "$tmp"/boot/vmlinuz-* "$out/vmlinuz"
    mkdir -p "$out/modules"
    copy_kernel_modules "$tmp" "$out/modules" tun llc stp bridge
    rm -rf "$tmp"
}
build_into "$testhost_aarch64_dir" build_testhost_kernel_aarch64

# ---------------------------------------------------- arm64 test host userland
# curl and debugfs are dynamically linked in Debian: they come with the
# libraries they need (read from their ELF headers) out of the arm64
# packages of their dependency closure.
testhost_aarch64_userland_key="$(cache_key build_testhost_userland_aarch64 "$aarch64_versions" \
    "$(functions_text aarch64_lib_path copy_elf_aarch64)")"
testhost_aarch64_userland_dir="$cache/testhost-userland-aarch64-$testhost_aarch64_userland_key"

# Echoes where library $2 is in the unpacked arm64 packages $1 (a path
# relative to $1), or fails.
aarch64_lib_path() {
    local dir
    for dir in lib/aarch64-linux-gnu usr/lib/aarch64-linux-gnu; do
        if [ -e "$1/$dir/$2" ]; then echo "$dir/$2"; return 0; fi
    done
    log "$2 is in none of the arm64 packages"
    return 1
}

# Copies the arm64 ELF $2 (a path relative to the unpacked packages $1) to
# $3 (a path relative to folder $4), with its program interpreter and,
# recursively, the libraries it needs, each at its own path under $4.
copy_elf_aarch64() {
    local sysroot="$1" src="$2" dest="$3" out="$4" interp lib path
    mkdir -p "$out/$(dirname "$dest")"
    cp -L "$sysroot/$src" "$out/$dest"
    interp="$(readelf -l "$sysroot/$src" | sed -n 's/.*program interpreter: \(.*\)\]$/\1/p')"
    if [ -n "$interp" ] && [ ! -e "$out$interp" ]; then
        mkdir -p "$out$(dirname "$interp")"
        cp -L "$sysroot$interp" "$out$interp"
    fi
    for lib in $(readelf -d "$sysroot/$src" | sed -n 's/.*(NEEDED).*\[\(.*\)\]$/\1/p'); do
        path="$(aarch64_lib_path "$sysroot" "$lib")" || exit 1
        [ -e "$out/$path" ] || copy_elf_aarch64 "$sysroot" "$path" "$path" "$out"
    done
}

build_testhost_userland_aarch64() {
    local out="$1" tmp applet path lib
    tmp="$(mktemp -d)"
    log "building the arm64 test host's userland (busybox, curl, debugfs and their libraries)"
    fetch_debs "$tmp" "${testhost_aarch64_closure[@]}"
    mkdir -p "$out/bin"
    cp "$tmp/bin/busybox" "$out/bin/busybox"
    for applet in $(qemu-aarch64-static "$out/bin/busybox" --list); do
        [ -e "$out/bin/$applet" ] || ln -s busybox "$out/bin/$applet"
    done
    copy_elf_aarch64 "$tmp" usr/bin/curl bin/curl "$out"
    path="$(cd "$tmp" && find sbin usr/sbin -name debugfs 2>/dev/null | head -n1)"
    copy_elf_aarch64 "$tmp" "$path" bin/debugfs "$out"
    # What a dynamically linked brique needs (a static one needs nothing).
    for lib in libc.so.6 libm.so.6 libgcc_s.so.1; do
        path="$(aarch64_lib_path "$tmp" "$lib")" || exit 1
        [ -e "$out/$path" ] || copy_elf_aarch64 "$tmp" "$path" "$path" "$out"
    done
    # They must run (under qemu-user, with this tree as their root).
    qemu-aarch64-static -L "$out" "$out/bin/curl" --version | head -n1 >&2
    qemu-aarch64-static -L "$out" "$out/bin/debugfs" -V >&2
    rm -rf "$tmp"
}
build_into "$testhost_aarch64_userland_dir" build_testhost_userland_aarch64

echo "GUEST_AARCH64_IMAGE=$aarch64_kernel_dir/Image"
echo "GUEST_AARCH64_INITRAMFS=$aarch64_userland_dir/initramfs.cpio.gz"
echo "GUEST_AARCH64_ROOTFS=$aarch64_userland_dir/rootfs.ext4"
echo "TESTHOST_AARCH64_KERNEL=$testhost_aarch64_dir/vmlinuz"
echo "TESTHOST_AARCH64_MODULES=$testhost_aarch64_dir/modules"
echo "TESTHOST_AARCH64_USERLAND=$testhost_aarch64_userland_dir"
[ "$want_aarch64_qemu" = 1 ] || exit 0

# ------------------------------------------ QEMU for the arm64 test host (peer)
# qemu-system-aarch64 out of Debian's arm64 qemu-system-arm from
# bookworm-backports (10.0, as the x86_64 peer), with the libraries it needs
# (read from its ELF header) out of the arm64 packages of its dependencies'
# closure, as the test host's curl and debugfs. Its virt machine booting a
# kernel directly (-kernel, no firmware) reads nothing from its data dir.
qemu_aarch64_version="$(apt-cache policy qemu-system-arm:arm64 \
    | awk '/ bookworm-backports\// {print version; exit} /^ *(\*\*\* )?[0-9]/ {version = $1 == "***" ? $2 : $1}')"
[ -n "$qemu_aarch64_version" ] || { log "cannot resolve qemu-system-arm:arm64 in bookworm-backports"; exit 1; }
mapfile -t qemu_aarch64_closure < <(apt-cache show "qemu-system-arm:arm64=$qemu_aarch64_version" \
    | sed -n 's/^Depends: //p' | head -n1 | tr ',' '\n' | sed 's/^ *//; s/[ |].*//' \
    | grep -v '^qemu-' | sed 's/$/:arm64/' \
    | xargs apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts \
        --no-breaks --no-replaces --no-enhances | grep -E '^[a-z0-9].*:arm64$' | sort -u)
qemu_aarch64_key="$(cache_key build_testhost_qemu_aarch64 "$qemu_aarch64_version" \
    "$(candidate_versions "${qemu_aarch64_closure[@]}")" \
    "$(functions_text aarch64_lib_path copy_elf_aarch64 fetch_debs)")"
qemu_aarch64_dir="$cache/testhost-qemu-aarch64-$qemu_aarch64_key"

build_testhost_qemu_aarch64() {
    local out="$1" tmp
    tmp="$(mktemp -d)"
    log "building QEMU for the arm64 test host (qemu-system-arm:arm64 $qemu_aarch64_version and its libraries)"
    fetch_debs "$tmp" "qemu-system-arm:arm64=$qemu_aarch64_version" "${qemu_aarch64_closure[@]}"
    copy_elf_aarch64 "$tmp" usr/bin/qemu-system-aarch64 brique/qemu/bin/qemu-system-aarch64 "$out"
    mkdir -p "$out/brique/qemu/share"
    # It must run (under qemu-user, with this tree as its root).
    qemu-aarch64-static -L "$out" "$out/brique/qemu/bin/qemu-system-aarch64" --version | head -n1 >&2
    rm -rf "$tmp"
}
build_into "$qemu_aarch64_dir" build_testhost_qemu_aarch64

echo "TESTHOST_AARCH64_QEMU=$qemu_aarch64_dir"
