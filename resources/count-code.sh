#!/usr/bin/env bash
# What an auditor of the brique binary reads: the crates it is built from,
# brique's own lines of Rust, and its unsafe blocks (each with a SAFETY
# comment). The README's figures come from this script.
#   resources/count-code.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
# Crates in the binaries (both architectures), and with those only used
# at build time (proc macros, build scripts) added.
crates() {
    cargo tree --locked -e "$1" --prefix none --target all -p brique-api -p brique-jailer \
        | sed 's/ (.*//; s/ (\*)//' | sort -u | grep -v '^brique-' | grep -c .
}
linked=$(crates normal,no-proc-macro)
all=$(crates normal,build)
# brique's own code: the crates the binaries are made of, tests excluded
# (files under tests/ and tests.rs files; inline test modules count).
sources=$(git ls-files 'vmm/src/*.rs' 'devices/src/*.rs' 'api/src/*.rs' 'jailer/src/*.rs' \
    | grep -v -E '(^|/)tests\.rs$|/tests/')
lines=$(cat $sources | grep -v -E '^\s*(//.*)?$' | wc -l)
unsafe_blocks=$(cat $sources | grep -o -E '\bunsafe \{' | wc -l)
safety=$(cat $sources | grep -c 'SAFETY:' || true)
echo "crates linked into brique and brique-jailer (besides brique's own): $linked"
echo "crates including build-time ones (proc macros, build scripts): $all"
echo "lines of Rust in brique's own crates (no test files, blank or comment lines): $lines"
echo "unsafe blocks: $unsafe_blocks (SAFETY comments: $safety)"
