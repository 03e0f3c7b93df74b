#!/usr/bin/env bash
# The test command: installs what is missing, builds the guest artifacts,
# then runs every check and test brique has:
#   formatting and clippy, unit tests, /dev/kvm tests with tiny guests,
#   end-to-end tests booting real Linux guests in the nested-KVM test hosts
#   (x86_64 and arm64), the aarch64 cross-build (Debian's rustc-web with the
#   arm64 std) and the arm64 unit tests under qemu-user, and
#   short fuzzing runs of the virtio-blk request parser, the virtio-net
#   TX/RX paths, the API parsers and the snapshot state-file parser, the
#   supply-chain check (cargo-deny) and the reproducible-build check.
# Every step runs even when an earlier one failed (a failed build or lint
# does not hide test results; cargo test runs with --no-fail-fast), and the
# run ends with one summary: each step's result, the failed tests, where the
# test host consoles are kept (target/testhost-logs/), and the closing line
# `tests: N passed, N failed`. Exits non-zero when anything failed.
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n=== %s ===\n' "$*"; }
step_names=() step_results=()
# run_step NAME CMD...: runs CMD, records whether it passed.
run_step() {
    local name="$1"; shift
    step "$name"
    local started=$SECONDS status
    "$@"
    status=$?
    step_names+=("$name")
    if [ "$status" = 0 ]; then
        step_results+=("ok      $((SECONDS - started)) s")
    else
        step_results+=("FAILED  $((SECONDS - started)) s (status $status)")
    fi
    return "$status"
}

# Without the packages and artifacts nothing else can run: these two stop the run.
run_step "system packages" resources/install-deps.sh --aarch64 || exit 1
# A Rust toolchain: rustup's when present, else Debian's rustc-web/cargo-web.
if ! command -v cargo >/dev/null 2>&1; then
    export PATH="/usr/bin:$PATH"
fi
cargo --version
run_step "guest artifacts (cached in ${BRIQUE_CACHE:-~/.cache/brique})" \
    resources/build-artifacts.sh --aarch64 || exit 1

lints() {
    local status=0
    if cargo fmt --version >/dev/null 2>&1; then
        cargo fmt --all -- --check || status=1
    else
        echo "*** SKIPPED: cargo fmt is not installed with this toolchain ***"
    fi
    if cargo clippy --version >/dev/null 2>&1; then
        cargo clippy --workspace --all-targets -- -D warnings || status=1
    else
        echo "*** SKIPPED: cargo clippy is not installed with this toolchain ***"
    fi
    return "$status"
}
run_step "format and lints" lints

run_step "release build (the binary the test host runs)" cargo build --release --workspace

# Its own target dir: another rustc would invalidate the host build. The
# arm64 binaries are static (+crt-static): the test host needs no libraries,
# and qemu-user runs them (dynamically linked arm64 binaries with threads hang
# under this machine's qemu-user).
aarch64_cargo() {
    env RUSTC=/usr/bin/rustc CARGO_TARGET_DIR=target/cross \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static" \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64-static \
        cargo "$@" --target aarch64-unknown-linux-gnu
}
run_step "aarch64 cross-build" aarch64_cargo build --workspace --all-targets
run_step "aarch64 release build (the binary the arm64 test host runs)" \
    aarch64_cargo build --release -p brique-api
run_step "aarch64 unit tests (qemu-user)" aarch64_cargo test -p brique-vmm -p brique-devices --lib

run_step "static brique and brique-jailer (a jail holds the binary alone)" resources/build-static.sh

test_log="$(mktemp)"
trap 'rm -f "$test_log"' EXIT
retry_log=target/brique-testhost-retries.log  # written by tests/lib.rs
testhost_logs=target/testhost-logs            # one console per test host run (tests/lib.rs)
rm -rf "$retry_log" "$testhost_logs"
run_step "tests: unit, /dev/kvm tiny guests, end-to-end in the test host" \
    bash -c 'set -o pipefail; cargo test --workspace --no-fail-fast 2>&1 | tee "$1"' _ "$test_log"

fuzz() {
    command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked || return 1
    # -timeout: an input that takes over 10 s is a hang (a guest or client
    # that stalls brique) and fails the run now, not after libFuzzer's 20 min.
    local target status=0
    for target in virtio_blk_request virtio_net_frames virtio_vsock_packets api_request snapshot_state; do
        (cd fuzz && cargo fuzz run --sanitizer none "$target" -- \
            -max_total_time="${BRIQUE_FUZZ_SECONDS:-30}" -timeout=10) || status=1
    done
    return "$status"
}
run_step "fuzzing: virtio-blk requests, virtio-net frames, virtio-vsock packets, API requests and snapshot state files, briefly (cargo-fuzz, libFuzzer)" fuzz
run_step "supply chain: licenses, duplicate crates, sources (cargo-deny)" resources/check-supply-chain.sh
run_step "reproducible build: two release builds in two directories, same hashes" resources/check-reproducible.sh

# ------------------------------------------------------------------ summary
step "summary"
failed_steps=0
for i in "${!step_names[@]}"; do
    printf '  %-40.40s %s\n' "${step_names[$i]}" "${step_results[$i]}"
    case "${step_results[$i]}" in FAILED*) failed_steps=$((failed_steps + 1)) ;; esac
done
failed_tests="$(sed -n 's/^test \(.*\) \.\.\. FAILED$/\1/p' "$test_log")"
if [ -n "$failed_tests" ]; then
    echo
    echo "failed tests:"
    printf '  %s\n' $failed_tests
    # What each failure said (its first lines), so that this summary alone
    # tells why, even where only the end of the run's output is kept.
    echo
    echo "why (the first lines of each failure; the whole output is above):"
    awk '/^---- .* stdout ----$/ { name = $2; left = 0 }
         /panicked at/ && name != "" { print "  [" name "]"; left = 25 }
         left > 0 { print "    " $0; left--; if (left == 0) name = "" }' "$test_log"
fi
if [ -d "$testhost_logs" ]; then
    echo
    echo "test host consoles: $testhost_logs/ ($(find "$testhost_logs" -name '*.log' | wc -l) runs)"
fi
if [ -s "$retry_log" ]; then
    echo
    echo "*** WARNING: $(grep -c '^\*\*\* WARNING' "$retry_log") test host run(s) hung and were retried:"
    cat "$retry_log"
fi
# One closing line for the whole run.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\ntests: %d passed, %d failed\n", p, f }' "$test_log"
[ "$failed_steps" = 0 ]
