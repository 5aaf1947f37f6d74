#!/usr/bin/env bash
# skillgraft as a ROS 2 package: `colcon build` of this repository (package.xml, ament_cargo) with
# the rcl transport against the ROS prefix of tools/ros2-env.sh, then checks of the install
# layout and of the lookups `ros2 run` and `ros2 launch` make (ament index, lib/<pkg>/<exe>,
# share/<pkg>/launch), and a run of the installed node. tools/test.sh calls it after the rcl
# tests; it needs what they need (target/venv-ros, with colcon from tools/requirements-ros.txt).
set -euo pipefail
cd "$(dirname "$0")/.."
repo="$PWD"
target="${CARGO_TARGET_DIR:-$repo/target}"
venv="${SKILLGRAFT_VENV:-$target/venv-ros}"
. tools/ros2-env.sh "$venv"

# cargo-ament-build (the cargo subcommand colcon-ros-cargo runs), kept beside the build.
tools="$target/cargo-tools"
if [[ ! -x "$tools/bin/cargo-ament-build" ]]; then
  cargo install --quiet --locked --root "$tools" cargo-ament-build --version 0.1.11
fi
export PATH="$tools/bin:$venv/bin:$PATH"

# A workspace whose src/ holds this repository. colcon writes a .cargo/config.toml into its working
# folder, so it works in a folder of its own; the build folder is the tests' target folder, so
# the rcl build the tests made is reused. colcon runs cargo outside the repository, where the
# repository's .cargo/config.toml is not read: its message filter is passed on explicitly.
ws="$target/colcon-ws"
rm -rf "$ws"
mkdir -p "$ws/src" "$ws/build"
ln -s "$repo" "$ws/src/skillgraft"
ln -s "$target" "$ws/build/skillgraft"
IDL_PACKAGE_FILTER="$(sed -n 's/^IDL_PACKAGE_FILTER = "\(.*\)"$/\1/p' .cargo/config.toml)"
export IDL_PACKAGE_FILTER
(cd "$ws" && colcon list && colcon build --packages-select skillgraft --cargo-args --features rcl)

install="$ws/install"
fail() { echo "colcon-check: $*" >&2; exit 1; }
for f in lib/skillgraft/skillgraft share/skillgraft/package.xml share/skillgraft/launch/skillgraft.launch.py \
  share/skillgraft/launch/skillgraft.launch.xml share/skillgraft/launch/params.yaml \
  share/skillgraft/skills/example-arm6/skill.toml share/skillgraft/skills/reach-arm-a/policy.onnx \
  share/ament_index/resource_index/packages/skillgraft; do
  [[ -e "$install/skillgraft/$f" ]] || fail "$f is not installed"
done

# What ros2 run and ros2 launch do: find the package through the ament index, then the
# executable in <prefix>/lib/<package>/ and the launch files in the share folder.
export AMENT_PREFIX_PATH="$install/skillgraft:$AMENT_PREFIX_PATH"
exe="$("$venv/bin/python" - <<'EOF'
import os
from ament_index_python.packages import get_package_prefix, get_package_share_directory
prefix = get_package_prefix("skillgraft")
share = get_package_share_directory("skillgraft")
exe = os.path.join(prefix, "lib", "skillgraft", "skillgraft")
assert os.access(exe, os.X_OK), exe
assert os.path.isfile(os.path.join(share, "launch", "skillgraft.launch.py"))
print(exe)
EOF
)"
share="$install/skillgraft/share/skillgraft"
"$exe" inspect "$share/skills/example-arm6" >"$ws/inspect.txt"
head -1 "$ws/inspect.txt"
# The installed node starts over rcl (in a network namespace of its own: no traffic leaves).
out="$(unshare -n sh -c "ip link set lo up; timeout -s INT 4 \"$exe\" run \"$share/skills/example-arm6\" \
  --params-file \"$share/launch/params.yaml\" 2>&1" || true)"
echo "$out" | head -1
echo "$out" | grep -q "over rcl" || fail "the installed node did not start over rcl: $out"
echo "colcon-check: ok"
