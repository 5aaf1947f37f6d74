#!/usr/bin/env bash
# Fuzzes for SECONDS each (default 60), with libFuzzer through cargo-fuzz:
#  - decoder: the firmware-bridge decoder and device half (firmware-bridge/fuzz), with
#    AddressSanitizer;
#  - bundle, manifest and stats: the skill bundle reader, the manifest parser and the continual
#    statistics reader (fuzz/), with debug
#    assertions (an arithmetic overflow is a crash) and no sanitizer: the code is safe Rust, and
#    an ASan build of all of skillgraft would cost CI minutes for nothing it could find. libFuzzer's
#    -rss_limit_mb and -timeout make an unbounded allocation or a stall a crash too.
# cargo-fuzz needs nightly compiler flags; RUSTC_BOOTSTRAP=1 lets the stable toolchain accept
# them. Installs cargo-fuzz when missing. Crashes are written to */fuzz/artifacts/TARGET/ and
# make the script fail.
#
#   tools/fuzz.sh [SECONDS [TARGET...]]     TARGETs: decoder bundle manifest stats (default: all four)
#
# With CARGO_TARGET_DIR set (a runner keeping a warm target/), the instrumented builds go below
# it, so they are kept too.
set -euo pipefail
seconds="${1:-60}"
shift || true
[[ $# -gt 0 ]] && targets=("$@") || targets=(decoder bundle manifest stats)
root="$(cd "$(dirname "$0")/.." && pwd)"
want() { [[ " ${targets[*]} " == *" $1 "* ]]; }
# Each fuzz crate has its own target folder: instrumented builds cannot share artifacts with
# normal ones.
firmware_target="${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/fuzz-firmware}"
firmware_target="${firmware_target:-$root/firmware-bridge/fuzz/target}"
skillgraft_target="${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/fuzz-skillgraft}"
skillgraft_target="${skillgraft_target:-$root/fuzz/target}"
if ! cargo fuzz --version >/dev/null 2>&1; then
  cargo install cargo-fuzz --locked
fi

if want decoder; then
  cd "$root/firmware-bridge/fuzz"
  CARGO_TARGET_DIR="$firmware_target" RUSTC_BOOTSTRAP=1 cargo fuzz run decoder -- -max_total_time="$seconds" -max_len=4096
fi
want bundle || want manifest || want stats || exit 0

cd "$root/fuzz"
# Seeds: every committed manifest; the example skill as a tar whose first entry is a bundle.json
# listing its files (mode byte 2: the harness signs it), so the fuzzer starts past the signature.
mkdir -p corpus/manifest corpus/bundle corpus/stats
for m in "$root"/skills/*/skill.toml; do
  cp "$m" "corpus/manifest/$(basename "$(dirname "$m")").toml"
done
seed=$(mktemp -d)
mkdir -p "$seed/skill"
cp "$root"/skills/example-arm6/* "$seed/skill/"
{
  printf '{"format": 1, "name": "example-arm6", "version": "0.1.0", "digest": "sha256:%064d", "files": [' 0
  sep=""
  for f in "$seed"/skill/*; do
    printf '%s{"path": "%s", "sha256": "%s", "size": %s}' "$sep" "$(basename "$f")" \
      "$(sha256sum "$f" | cut -d' ' -f1)" "$(stat -c %s "$f")"
    sep=", "
  done
  printf ']}'
} > "$seed/bundle.json"
{ printf '\002'; tar --format=gnu -cf - -C "$seed" bundle.json skill; } > corpus/bundle/example-arm6
rm -rf "$seed"
cp "$root"/tests/fixtures/continual/*.stats corpus/stats/
for target in bundle manifest stats; do
  want "$target" || continue
  CARGO_TARGET_DIR="$skillgraft_target" RUSTC_BOOTSTRAP=1 cargo fuzz run --sanitizer none --debug-assertions "$target" -- \
    -max_total_time="$seconds" -max_len=1048576 -rss_limit_mb=2048 -timeout=30
done
