# Sourced by the benchmark scripts that run brique-bench in the test host:
# installs what is missing, builds brique and brique-bench (release), and
# stages brique-bench in a fresh folder, $bench_dir, removed on exit (pass it
# to testhost.sh --with). With bench_arch=aarch64 set before sourcing, both
# are static arm64 builds (in target/cross, as testhost.sh --arch aarch64
# wants them), and BRIQUE_BIN names that brique for testhost.sh.
if [ "${bench_arch:-x86_64}" = aarch64 ]; then
    resources/install-deps.sh --aarch64
    RUSTC=/usr/bin/rustc CARGO_TARGET_DIR=target/cross \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc \
        CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS='-C target-feature=+crt-static' \
        cargo build --release --target aarch64-unknown-linux-gnu -p brique-api -p brique-bench
    bench_release=target/cross/aarch64-unknown-linux-gnu/release
    export BRIQUE_BIN="$PWD/$bench_release/brique"
else
    resources/install-deps.sh
    cargo build --release -p brique-api -p brique-bench
    bench_release=target/release
fi
bench_dir="$(mktemp -d)"
trap 'rm -rf "$bench_dir"' EXIT
cp "$bench_release/brique-bench" "$bench_dir/"
