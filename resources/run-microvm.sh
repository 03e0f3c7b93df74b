#!/usr/bin/env bash
# The main job on a fresh Debian machine: install what is needed, build
# brique and a guest kernel + initramfs, and boot a microVM (2 vCPUs,
# 256 MiB) whose init prints a marker, runs a command and reboots, which
# ends brique with status 0.
#
# Where the host's /dev/kvm can boot Linux (a real KVM: vmx/svm in
# /proc/cpuinfo), brique boots the guest directly. Elsewhere (the nested,
# paravirtual KVM of these development machines) it boots it inside the
# nested-KVM test host (resources/testhost.sh). Force either with
# --direct or --test-host. Any further arguments become the guest command.
#
# --arch aarch64 boots an arm64 microVM (arm64 guest kernel and busybox,
# console on the guest's ns16550a, ttyS0): directly on an arm64 host with
# /dev/kvm, else inside the arm64 test host (`testhost.sh --arch aarch64`),
# with brique cross-built, static, into target/cross.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode=auto arch=x86_64
while [ $# -gt 0 ]; do
    case "$1" in
        --direct) mode=direct; shift ;;
        --test-host) mode=test-host; shift ;;
        --arch) arch="$2"; shift 2 ;;
        *) break ;;
    esac
done
guest_cmd="${*:-uname -a; grep -c ^processor /proc/cpuinfo; free}"
case "$arch" in
    x86_64|aarch64) ;;
    *) echo "run-microvm: --arch is x86_64 or aarch64, not $arch" >&2; exit 2 ;;
esac

if [ "$arch" = aarch64 ]; then
    resources/install-deps.sh --aarch64
    if [ "$(uname -m)" = aarch64 ]; then
        cargo build --release -p brique-api
        brique_bin="$PWD/target/release/brique"
    else
        env RUSTC=/usr/bin/rustc CARGO_TARGET_DIR=target/cross \
            CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
            CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS='-C target-feature=+crt-static' \
            cargo build --release --target aarch64-unknown-linux-gnu -p brique-api
        brique_bin="$PWD/target/cross/aarch64-unknown-linux-gnu/release/brique"
    fi
    eval "$(resources/build-artifacts.sh --aarch64-only)"
    base_args="console=ttyS0 panic=1"
    if [ "$mode" = auto ]; then
        if [ -w /dev/kvm ] && [ "$(uname -m)" = aarch64 ]; then mode=direct; else mode=test-host; fi
    fi
else
    resources/install-deps.sh
    command -v cargo >/dev/null 2>&1 || export PATH="/usr/bin:$PATH"
    if ! command -v cargo >/dev/null 2>&1; then
        resources/install-deps.sh --aarch64   # brings Debian's rustc-web/cargo-web
    fi
    cargo build --release -p brique-api
    eval "$(resources/build-artifacts.sh)"
    base_args="console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd"
    if [ "$mode" = auto ]; then
        if [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then mode=direct; else mode=test-host; fi
    fi
fi

# `brique_run` reaches the guest's init as an environment variable.
write_config() { # KERNEL INITRD OUT
    local cmd_escaped
    cmd_escaped="$(printf '%s' "$guest_cmd" | sed 's/\\/\\\\/g; s/"/\\"/g')"
    cat > "$3" <<JSON
{
  "boot-source": {
    "kernel_image_path": "$1",
    "initrd_path": "$2",
    "boot_args": "$base_args brique_run=\\"$cmd_escaped\\""
  },
  "machine-config": {"vcpu_count": 2, "mem_size_mib": 256}
}
JSON
}

if [ "$mode" = direct ]; then
    echo "run-microvm: booting directly on this host's KVM" >&2
    config="$(mktemp)"
    if [ "$arch" = aarch64 ]; then
        write_config "$GUEST_AARCH64_IMAGE" "$GUEST_AARCH64_INITRAMFS" "$config"
        exec "$brique_bin" --no-api --config-file "$config"
    fi
    write_config "$GUEST_VMLINUX" "$GUEST_INITRAMFS" "$config"
    exec target/release/brique --no-api --config-file "$config"
fi

if [ "$arch" = aarch64 ]; then
    echo "run-microvm: not an arm64 host with /dev/kvm; booting inside the arm64 nested-KVM test host" >&2
else
    echo "run-microvm: this host's /dev/kvm cannot boot Linux; booting inside the nested-KVM test host" >&2
fi
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
if [ "$arch" = aarch64 ]; then
    write_config /brique/artifacts/Image /brique/artifacts/initramfs.cpio.gz "$dir/vm.json"
else
    write_config /brique/artifacts/vmlinux /brique/artifacts/initramfs.cpio.gz "$dir/vm.json"
fi
cat > "$dir/run.sh" <<'EOF2'
/brique/bin/brique --no-api --config-file vm.json
status=$?
echo "brique exited with status $status"
exit $status
EOF2
if [ "$arch" = aarch64 ]; then
    BRIQUE_BIN="$brique_bin" resources/testhost.sh --arch aarch64 --with "$dir" -- sh run.sh
else
    resources/testhost.sh --with "$dir" -- sh run.sh
fi
