#!/usr/bin/env bash
# Garage 2.5.0, the replicated S3 store the fleet tests start clusters of: built into ROOT once
# (about 16 min of CPU on 2 cores; the build folder BUILD is removed after), then reused. Prints
# the binary's path. Callers take turns on ROOT.lock, so one that comes while another builds (CI
# builds it in the background during the lints, then tools/test.sh asks) waits for that build.
# Usage: tools/build-garage.sh ROOT BUILD
set -euo pipefail
root="$1"
build="$2"
mkdir -p "$(dirname "$root")"
exec 9>"$root.lock"
flock 9
if [[ ! -x "$root/bin/garage" ]]; then
  echo "building Garage 2.5.0 into $root (once)" >&2
  cargo install garage --version 2.5.0 --locked --quiet --root "$root" --target-dir "$build"
  rm -rf "$build"
fi
echo "$root/bin/garage"
