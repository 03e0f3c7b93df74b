#!/usr/bin/env bash
# The test command: installs what is missing, builds the guest artifacts,
# then runs every check and test brique has:
#   formatting and clippy, unit tests, /dev/kvm tests with tiny guests,
#   end-to-end tests booting real Linux guests in the nested-KVM test host,
#   the aarch64 cross-build (Debian's rustc-web with the arm64 std), and
#   short fuzzing runs of the virtio-blk request parser, the virtio-net
#   TX/RX paths and the API parsers.
# Exits non-zero on the first failure.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n=== %s ===\n' "$*"; }

step "system packages"
resources/install-deps.sh --aarch64

# A Rust toolchain: rustup's when present, else Debian's rustc-web/cargo-web.
if ! command -v cargo >/dev/null 2>&1; then
    export PATH="/usr/bin:$PATH"
fi
cargo --version

step "guest artifacts (cached in ${BRIQUE_CACHE:-~/.cache/brique})"
resources/build-artifacts.sh

step "format and lints"
if cargo fmt --version >/dev/null 2>&1; then
    cargo fmt --all -- --check
else
    echo "*** SKIPPED: cargo fmt is not installed with this toolchain ***"
fi
if cargo clippy --version >/dev/null 2>&1; then
    cargo clippy --workspace --all-targets -- -D warnings
else
    echo "*** SKIPPED: cargo clippy is not installed with this toolchain ***"
fi

step "release build (the binary the test host runs)"
cargo build --release --workspace

step "aarch64 cross-build"
# Its own target dir: another rustc would invalidate the host build.
RUSTC=/usr/bin/rustc CARGO_TARGET_DIR=target/cross \
    CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
    cargo build --target aarch64-unknown-linux-gnu --workspace --all-targets

step "tests: unit, /dev/kvm tiny guests, end-to-end in the test host"
test_log="$(mktemp)"
trap 'rm -f "$test_log"' EXIT
retry_log=target/brique-testhost-retries.log  # written by tests/lib.rs
rm -f "$retry_log"
cargo test --workspace 2>&1 | tee "$test_log"
if [ -s "$retry_log" ]; then
    echo
    echo "*** WARNING: $(grep -c '^\*\*\* WARNING' "$retry_log") test host run(s) hung and were retried (the retries passed):"
    cat "$retry_log"
fi

step "fuzzing: virtio-blk requests, virtio-net frames and API requests, briefly (cargo-fuzz, libFuzzer)"
command -v cargo-fuzz >/dev/null 2>&1 || cargo install cargo-fuzz --locked
# -timeout: an input that takes over 10 s is a hang (a guest or client
# that stalls brique) and fails the run now, not after libFuzzer's 20 min.
for target in virtio_blk_request virtio_net_frames api_request; do
    (cd fuzz && cargo fuzz run --sanitizer none "$target" -- \
        -max_total_time="${BRIQUE_FUZZ_SECONDS:-30}" -timeout=10)
done

# One closing line for the whole run.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "\ntests: %d passed, %d failed\n", p, f }' "$test_log"
