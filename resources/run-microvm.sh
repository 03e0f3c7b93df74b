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
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

mode=auto
case "${1:-}" in
    --direct) mode=direct; shift ;;
    --test-host) mode=test-host; shift ;;
esac
guest_cmd="${*:-uname -a; grep -c ^processor /proc/cpuinfo; free}"

resources/install-deps.sh
command -v cargo >/dev/null 2>&1 || export PATH="/usr/bin:$PATH"
if ! command -v cargo >/dev/null 2>&1; then
    resources/install-deps.sh --aarch64   # brings Debian's rustc-web/cargo-web
fi
cargo build --release -p brique-api
eval "$(resources/build-artifacts.sh)"

if [ "$mode" = auto ]; then
    if [ -w /dev/kvm ] && grep -qwE 'vmx|svm' /proc/cpuinfo; then mode=direct; else mode=test-host; fi
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
    "boot_args": "console=ttyS0 reboot=k panic=1 i8042.noaux i8042.nomux i8042.nopnp i8042.dumbkbd brique_run=\\"$cmd_escaped\\""
  },
  "machine-config": {"vcpu_count": 2, "mem_size_mib": 256}
}
JSON
}

if [ "$mode" = direct ]; then
    echo "run-microvm: booting directly on this host's KVM" >&2
    config="$(mktemp)"
    write_config "$GUEST_VMLINUX" "$GUEST_INITRAMFS" "$config"
    exec target/release/brique --config-file "$config"
fi

echo "run-microvm: this host's /dev/kvm cannot boot Linux; booting inside the nested-KVM test host" >&2
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
write_config /brique/artifacts/vmlinux /brique/artifacts/initramfs.cpio.gz "$dir/vm.json"
cat > "$dir/run.sh" <<'EOF2'
/brique/bin/brique --config-file vm.json
status=$?
echo "brique exited with status $status"
exit $status
EOF2
resources/testhost.sh --with "$dir" -- sh run.sh
