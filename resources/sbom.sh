#!/usr/bin/env bash
# A CycloneDX software bill of materials (JSON) for each binary, brique and
# brique-jailer: every crate it is built from, with versions, licenses and
# registry checksums (cargo-cyclonedx, installed from crates.io if missing).
#   resources/sbom.sh        -> target/sbom/brique.cdx.json, target/sbom/brique-jailer.cdx.json
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if ! command -v cargo-cyclonedx >/dev/null 2>&1; then
    echo "sbom: installing cargo-cyclonedx (crates.io, --locked)" >&2
    cargo install cargo-cyclonedx --locked >&2
fi
mkdir -p target/sbom
# One SBOM per binary of the workspace, written beside each Cargo.toml;
# the two shipped binaries' are kept, the benchmark's dropped.
cargo cyclonedx --format json --describe binaries --target all >&2
for made in api/brique_bin.cdx.json jailer/brique-jailer_bin.cdx.json; do
    name="$(basename "$made" _bin.cdx.json)"
    mv "$made" "target/sbom/$name.cdx.json"
    echo "target/sbom/$name.cdx.json"
done
rm -f -- */*_bin.cdx.json
