#!/usr/bin/env bash
# All the tests, on a fresh machine (README's test command; .ci/run calls it):
#  1. what the tests need: netns tools, a font for the plots and libclang for r2r (Debian packages,
#     installed when missing and root), then the peers' Python and the ROS 2 wheels (pinned in
#     tools/requirements-ros.txt) in ${CARGO_TARGET_DIR:-target}/venv-ros, remade when the
#     requirements change, and Garage 2.5.0 (the S3 store of the fleet tests) built once;
#  2. `cargo test --workspace` (default features: the RustDDS transport), with any arguments given
#     (e.g. `tools/test.sh --test ros2_interop`);
#  3. the ROS 2 tests again over the rcl transport (`--features rcl`, r2r built for real against
#     the ROS 2 wheels; tools/ros2-env.sh), then `colcon build` of the package against the same
#     ROS prefix with its install layout checked (tools/colcon-check.sh). SKILLGRAFT_TEST_RCL=0
#     skips this part, =1 runs it; by default it runs when no arguments narrow the run.
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-$PWD/target}"
mkdir -p "$target"

missing=()
command -v unshare >/dev/null || missing+=(util-linux)
command -v ip >/dev/null || missing+=(iproute2)
[[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ]] || missing+=(fonts-dejavu-core)
compgen -G "/usr/lib/llvm-*/lib/libclang-[0-9]*.so*" >/dev/null || missing+=(libclang-dev)
if ((${#missing[@]})); then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null; then
    echo "installing ${missing[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "the tests need these Debian packages: ${missing[*]} (run as root, or install them: apt-get install ${missing[*]})" >&2
    exit 1
  fi
fi

venv="$target/venv-ros"
stamp="$venv/.requirements.sha256"
want="$(sha256sum tools/requirements-ros.txt | cut -d' ' -f1)"
if [[ ! -x "$venv/bin/python" || "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  echo "making $venv (tools/requirements-ros.txt)"
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check -r tools/requirements-ros.txt
  echo "$want" >"$stamp"
fi
export SKILLGRAFT_ROS_PYTHON="$venv/bin/python"

# Garage 2.5.0 for the fleet's S3 tests (tools/build-garage.sh): built once outside the clone,
# beside a kept CARGO_TARGET_DIR or in ~/.cache (SKILLGRAFT_TOOLS names another folder), and reused.
# The test binaries build while it builds (or while CI's background build of it finishes).
if [[ -z "${SKILLGRAFT_GARAGE:-}" ]]; then
  tools_dir="${SKILLGRAFT_TOOLS:-${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/ci-tools}}"
  tools/build-garage.sh "${tools_dir:-$HOME/.cache/skillgraft}/garage-2.5.0" "$target/garage-build" \
    >"$target/garage-path" &
  garage_job=$!
  if (($# == 0)); then
    cargo test --workspace --locked --no-run
  fi
  wait "$garage_job"
  SKILLGRAFT_GARAGE="$(cat "$target/garage-path")"
  export SKILLGRAFT_GARAGE
fi

cargo test --workspace --locked "$@"

if [[ "${SKILLGRAFT_TEST_RCL:-$(($# == 0))}" != 0 ]]; then
  # shellcheck source=tools/ros2-env.sh
  . tools/ros2-env.sh "$venv"
  cargo test --locked --features rcl --test ros2_interop
  SKILLGRAFT_VENV="$venv" tools/colcon-check.sh
fi
