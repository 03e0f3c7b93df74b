# Sourced by the benchmark scripts that run brique-bench in the test host:
# installs what is missing, builds brique and brique-bench (release), and
# stages brique-bench in a fresh folder, $bench_dir, removed on exit (pass it
# to testhost.sh --with).
resources/install-deps.sh
cargo build --release -p brique-api -p brique-bench
bench_dir="$(mktemp -d)"
trap 'rm -rf "$bench_dir"' EXIT
cp target/release/brique-bench "$bench_dir/"
