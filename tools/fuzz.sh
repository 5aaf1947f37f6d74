#!/usr/bin/env bash
# Fuzzes the firmware-bridge decoder and device half (firmware-bridge/fuzz, libFuzzer through
# cargo-fuzz) for SECONDS (default 60). cargo-fuzz needs nightly compiler flags (sanitizers);
# RUSTC_BOOTSTRAP=1 lets the stable toolchain accept them. Installs cargo-fuzz when missing.
# Crashes are written to firmware-bridge/fuzz/artifacts/decoder/ and make the script fail.
set -euo pipefail
seconds="${1:-60}"
cd "$(dirname "$0")/../firmware-bridge/fuzz"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi
# Its own target folder: sanitizer builds cannot share artifacts with normal ones.
export CARGO_TARGET_DIR="$PWD/target"
RUSTC_BOOTSTRAP=1 cargo fuzz run decoder -- -max_total_time="$seconds" -max_len=4096
