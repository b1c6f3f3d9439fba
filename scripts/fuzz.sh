#!/usr/bin/env bash
# Fuzz the pure-Rust parts: the pattern grammar and matcher (checked against a reference
# definition), and the validation of event types, URLs, headers, secrets and allowed networks.
# Usage: scripts/fuzz.sh [seconds per target, default 600] [target ...]
# cargo-fuzz needs nightly features; RUSTC_BOOTSTRAP=1 lets the stable toolchain use them.
# Without a sanitizer (none is built for stable here): panics and failed assertions are the crashes.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
secs="${1:-600}"
shift || true
targets=("$@")
[ "${#targets[@]}" -gt 0 ] || targets=(patterns emit_validation)
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    echo "==> fuzzing $t for $secs s"
    RUSTC_BOOTSTRAP=1 cargo fuzz run "$t" --sanitizer none "corpus/$t" "seeds/$t" -- -max_total_time="$secs" 2>&1 | tail -3
done
