#!/usr/bin/env bash
# The dependencies' licenses, duplicate versions and sources, as deny.toml
# allows them (cargo-deny, installed from crates.io if missing).
#   resources/check-supply-chain.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v cargo-deny >/dev/null 2>&1; then
    echo "check-supply-chain: installing cargo-deny (crates.io, --locked)" >&2
    cargo install cargo-deny --locked >&2
fi
cargo deny --version
cargo deny --all-features check licenses bans sources
echo
echo "*** SKIPPED: cargo deny check advisories: the RustSec advisory database cannot be fetched from this machine (no network beyond the package registries) ***"
echo
