#!/usr/bin/env bash
# Stability benchmark, brique vs QEMU microvm (the peer), in one test host
# run: N short boots each (interleaved) of the same guest kernel, initramfs,
# command line, memory and vCPUs; the guest's init prints its marker and
# reboots. Prints each boot as it ends, then how many boots reached init
# cleanly, triple-faulted, panicked or hung, with wall times. A failed boot
# prints its last console lines, the VMM's stderr (brique's includes the
# vCPU's registers on a triple fault) and the test host's KVM trace.
#   resources/bench-stability.sh [--runs N] [--vcpus N] [--mem-mib N]
#                                [--kernel vmlinux|bzImage] [testhost.sh options]
# The whole console is kept in target/bench-stability-console.log.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
runs=100 vcpus=1 mem=128 kernel=vmlinux
testhost_options=()
while [ $# -gt 0 ]; do
    case "$1" in
        --runs) runs="$2"; shift 2 ;;
        --vcpus) vcpus="$2"; shift 2 ;;
        --mem-mib) mem="$2"; shift 2 ;;
        --kernel) kernel="$2"; shift 2 ;;
        --cpu|--smp|--mem) testhost_options+=("$1" "$2"); shift 2 ;;
        *) echo "bench-stability.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
resources/install-deps.sh
cargo build --release -p brique-api -p brique-bench
dir="$(mktemp -d)"
trap 'rm -rf "$dir"' EXIT
cp target/release/brique-bench "$dir/"
# Inside the test host: KVM's injected exceptions and shutdown exits are
# traced, so that a triple fault shows what led to it.
cat > "$dir/run.sh" <<SCRIPT
t=/sys/kernel/tracing
mount -t tracefs tracefs \$t 2>/dev/null
trace=""
if [ -w \$t/events/kvm/kvm_inj_exception/enable ]; then
    echo 256 > \$t/buffer_size_kb
    echo 1 > \$t/events/kvm/kvm_inj_exception/enable
    echo 1 > \$t/events/kvm/kvm_userspace_exit/enable
    echo 'exit_reason == 0x7f' > \$t/events/kvm/kvm_exit/filter 2>/dev/null
    echo 1 > \$t/events/kvm/kvm_exit/enable
    trace="--kvm-trace \$t/trace"
else
    echo "bench-stability: no KVM tracepoints in the test host; failures come without a trace"
fi
./brique-bench stability --runs $runs --vcpus $vcpus --mem-mib $mem \
    --brique /brique/bin/brique --qemu /brique/qemu/bin/qemu-system-x86_64 \
    --qemu-datadir /brique/qemu/share \
    --kernel /brique/artifacts/$kernel --initrd /brique/artifacts/initramfs.cpio.gz \$trace
SCRIPT
mkdir -p target
resources/testhost.sh --with-qemu --with "$dir" --timeout $((300 + runs * 2 * 60)) \
    --log target/bench-stability-console.log "${testhost_options[@]}" -- sh run.sh
