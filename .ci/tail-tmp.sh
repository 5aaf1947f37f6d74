set -euo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
step() { printf '\n== %s (%ss)\n' "$1" "$(( $(date +%s) - start ))"; }
step "CUDA kernels: NVRTC 12.6 (JetPack 6) for compute_87 and compute_90, PTX ISA <= 8.5, then ptxas"
if [[ ! -x .venv-cuda/bin/python ]]; then
  python3 -m venv .venv-cuda
fi
.venv-cuda/bin/pip install -q --disable-pip-version-check -r tools/requirements-cuda.txt
cuda_sp=$(.venv-cuda/bin/python -c 'import site; print(site.getsitepackages()[0])')
ptx_dir="${CARGO_TARGET_DIR:-target}/ptx"
rm -rf "$ptx_dir"
# No GPU here: the GPU tests (tests/cuda.rs) stay ignored; the kernel test, ignored where NVRTC is
# missing, runs with --ignored.
LD_LIBRARY_PATH="$cuda_sp/nvidia/cuda_nvrtc/lib" SKILLGRAFT_PTX_OUT="$ptx_dir" \
  cargo test --locked --features cuda --test cuda_kernels -- --ignored
LD_LIBRARY_PATH="$cuda_sp/nvidia/cuda_nvrtc/lib" REQUIRE_NVRTC=1 cargo test --locked --features cuda --lib adapt::
for sm in sm_87 sm_90; do
  "$cuda_sp/nvidia/cuda_nvcc/bin/ptxas" -arch=$sm -v "$ptx_dir/kernels_$sm.ptx" -o "$ptx_dir/kernels_$sm.cubin" 2>&1 \
    | grep -E 'registers|error' || { echo "ptxas rejected the $sm kernels" >&2; exit 1; }
done

# ---- aarch64 for JetPack 6 and the Debian packages (issue 16) ----------------------------------
# Tools live under the target dir (a runner that keeps CARGO_TARGET_DIR warm keeps them too).
ci_tools="$(realpath -m "${CARGO_TARGET_DIR:-target}")/ci-tools"
aarch64_glibc=aarch64-unknown-linux-gnu.2.35
# One selection for the build and the run, so the binary the tests ran is the one packaged. The
# core of the suite: skill loading and step against onnxruntime (model, cli), adaptation on
# simulated episodes (adapt, transfer), the node over DDS (control_node), the firmware bridge
# (bridge and the crate's device, link, protocol), the tick allocator (tick_alloc, control_alloc).
# The suite's modules are chosen by filters, which apply to every binary of the run, so the suite
# runs apart from the firmware crate's tests and control_alloc.
aarch64_tests=(--workspace --test suite --test control_alloc --test device --test link --test protocol)
aarch64_suite=(model:: cli:: adapt:: transfer:: control_node:: bridge:: tick_alloc::)
zigbuild() { PATH="$ci_tools/zig-venv/bin:$PATH" cargo-zigbuild "$@"; }
# The highest GLIBC_ symbol version a binary needs must be at most JetPack 6's (Ubuntu 22.04).
glibc_at_most_2_35() {
  local need
  need=$("$1" -T "$2" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
  echo "$2 needs at most $need"
  [[ $(printf '%s\nGLIBC_2.35\n' "$need" | sort -V | tail -1) == GLIBC_2.35 ]] || {
    echo "$2 needs $need, newer than JetPack 6's glibc 2.35" >&2
    exit 1
  }
}

step "aarch64 and packages: the Rust target, zig and cargo-zigbuild (tools/requirements-aarch64.txt), qemu-user with the arm64 loader, systemd's tools, cargo-deb"
rustup target add aarch64-unknown-linux-gnu >/dev/null
need=()
for p in qemu-user-static libc6-arm64-cross binutils-aarch64-linux-gnu systemd init-system-helpers; do
  dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if ((${#need[@]})); then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends "${need[@]}"
fi
if [[ ! -x "$ci_tools/zig-venv/bin/python" ]]; then
  python3 -m venv "$ci_tools/zig-venv"
fi
"$ci_tools/zig-venv/bin/pip" install -q --disable-pip-version-check -r tools/requirements-aarch64.txt
if ! "$ci_tools/bin/cargo-deb" --version 2>/dev/null | grep -q '^3\.8\.0'; then
  cargo install -q --locked cargo-deb --version 3.8.0 --root "$ci_tools"
fi
# Test binaries start aarch64 children (the CLI, `unshare` re-running a test): binfmt_misc hands
# them to qemu, which finds the arm64 loader and libc under QEMU_LD_PREFIX.
[[ -e /proc/sys/fs/binfmt_misc/register ]] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
[[ -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || /usr/lib/systemd/systemd-binfmt qemu-aarch64.conf
export QEMU_LD_PREFIX=/usr/aarch64-linux-gnu
# qemu's Cortex-A76 (ARMv8.2, the generation of the Orin's A78AE, no SVE): tract then picks the
# NEON kernels it picks on an Orin, not the SVE2 ones of qemu's default CPU.
export QEMU_CPU=cortex-a76

step "aarch64: the release binary and the core tests' binaries, cross-built against glibc 2.35"
zigbuild test --release --locked --target "$aarch64_glibc" "${aarch64_tests[@]}" --no-run
aarch64_bin="${CARGO_TARGET_DIR:-target}/aarch64-unknown-linux-gnu/release/skillgraft"
glibc_at_most_2_35 aarch64-linux-gnu-objdump "$aarch64_bin"

step "aarch64: the core tests under qemu-user"
# qemu shows the host's /proc/cpuinfo, which has no aarch64 "Features" line: tract warns of it.
# The scikit-learn check runs the (x86-64) Python tools/test.sh made; the tests' default for it is
# beside their own target folder, the aarch64 one here.
RUST_LOG=warn,rustdds=off,ros2_client=error,tract_linalg::arm64=error \
  SKILLGRAFT_ROS_PYTHON="$(realpath -m "${CARGO_TARGET_DIR:-target}")/venv-ros/bin/python" \
  CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64-static \
  zigbuild test --release --locked --target "$aarch64_glibc" --test suite -- "${aarch64_suite[@]}" \
  --skip the_adaptation_bench_runs_both_sides_and_they_agree --skip training_from_scratch_is_reproducible
RUST_LOG=warn,rustdds=off CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64-static \
  zigbuild test --release --locked --target "$aarch64_glibc" --workspace --test control_alloc --test device --test link \
  --test protocol

# The amd64 package needs a second release build (about as long as the aarch64 one cold), so it is
# made only with SKILLGRAFT_CI_AMD64_DEB=1; the arm64 package, the robot's, is made every time.
amd64_deb="${SKILLGRAFT_CI_AMD64_DEB:-0}"
if [[ "$amd64_deb" == 1 ]]; then
  step "x86-64: the release binary against glibc 2.35, for the amd64 package"
  zigbuild build --release --locked --target x86_64-unknown-linux-gnu.2.35 --bin skillgraft
  glibc_at_most_2_35 objdump "${CARGO_TARGET_DIR:-target}/x86_64-unknown-linux-gnu/release/skillgraft"
fi

step "Debian packages (cargo-deb): contents, dpkg --root into a scratch root, the unit started (tests/suite/deb.rs)"
deb_targets=(aarch64-unknown-linux-gnu)
[[ "$amd64_deb" == 1 ]] && deb_targets+=(x86_64-unknown-linux-gnu)
debs=()
for t in "${deb_targets[@]}"; do
  debs+=("$("$ci_tools/bin/cargo-deb" deb --locked --no-build --target "$t" | tail -1)")
done
printf '%s\n' "${debs[@]}"
SKILLGRAFT_DEB=$(IFS=,; echo "${debs[*]}") cargo test --locked --test suite -- --ignored deb::

step "done"
