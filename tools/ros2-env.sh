# Source this (`. tools/ros2-env.sh [VENV]`): the environment in which skillgraft's rcl transport
# builds and runs against the ROS 2 wheels from PyPI installed in VENV (default: the tests' venv,
# ${CARGO_TARGET_DIR:-target}/venv-ros, which tools/test.sh makes). These are workarounds for this
# packaging and r2r =0.9.7; re-check them when either changes. A ROS 2 from apt needs none:
# source its setup.bash instead.
_sg_venv="${1:-${SKILLGRAFT_VENV:-${CARGO_TARGET_DIR:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/target}/venv-ros}}"
_sg_venv="$(cd "$_sg_venv" && pwd)"
# r2r finds rcl, its headers and the message packages under the ament prefix: the wheels install a
# whole ROS prefix at the venv's root.
export AMENT_PREFIX_PATH="$_sg_venv"
# r2r 0.9.7 panics on "kilted" (it knows foxy to jazzy, lyrical, rolling); Kilted's rcl API is
# Jazzy's, so r2r's Jazzy code paths fit.
export ROS_DISTRO=jazzy
# The wheels carry Fast DDS only, built into librcl; rcl exits 102 on any other RMW name.
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
# The wheels link rmw_fastrtps_cpp into librcl instead of building librmw_implementation, which
# r2r links (its build script too): a linker script of that name stands in for it.
[ -e "$_sg_venv/lib/librmw_implementation.so" ] || echo 'INPUT(-lrmw_fastrtps_cpp)' >"$_sg_venv/lib/librmw_implementation.so"
# The ROS libraries, and the ros_*.libs folders of libraries the wheels bundle (tinyxml2, ...),
# whose RPATHs do not resolve from $VENV/lib.
_sg_libs="$_sg_venv/lib"
for _sg_d in "$_sg_venv"/lib/python3*/site-packages/ros_*.libs; do
  [ -d "$_sg_d" ] && _sg_libs="$_sg_libs:$_sg_d"
done
export LD_LIBRARY_PATH="$_sg_libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
unset _sg_venv _sg_libs _sg_d
