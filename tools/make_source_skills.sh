#!/bin/sh
# Regenerates skills/reach-arm-a: 300 reaches of the simulated arm-a's expert (with noise on the
# executed commands, so the policy also learns to recover), then an MLP trained from scratch on
# them with one thread. Same machine kind (matrixmultiply picks its kernel by CPU), same bytes.
set -eu
cd "$(dirname "$0")/.."
cargo build --release --quiet
bin=target/release/skillgraft
demos=$(mktemp -d)
trap 'rm -rf "$demos"' EXIT
"$bin" sim --robot arm-a --demos 300 --seed 1 --noise 0.3 --out "$demos/arm-a"
rm -rf skills/reach-arm-a
"$bin" train "$demos/arm-a" --robot arm-a --out skills/reach-arm-a --seed 0 --threads 1
