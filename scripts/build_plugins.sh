#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Build zipvl's native libraries with CMake (plugins/CMakeLists.txt):
#   libzipvl_cpu.so (always), libzipvl_kernels.so + libzipvl_plugins.so (when nvcc and TensorRT headers exist).
#
# Usage: scripts/build_plugins.sh [--build-dir DIR] [--cuda-archs "80;90"] [--cpu-only] [--target NAME]...
# Environment: TENSORRT_INCLUDE_DIR (default: the kernel-lens wheel's copy), ZIPVL_CUDA_ARCHS, PYTHON, JOBS.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
build_dir="${repo}/plugins/build"
archs="${ZIPVL_CUDA_ARCHS:-80;90}"
with_cuda=ON
targets=()

while [[ $# -gt 0 ]]; do
  case "$1" in
    --build-dir) build_dir="$2"; shift 2 ;;
    --cuda-archs) archs="$2"; shift 2 ;;
    --cpu-only) with_cuda=OFF; shift ;;
    --target) targets+=("$2"); shift 2 ;;
    -h|--help) sed -n '3,7p' "$0"; exit 0 ;;
    *) echo "build_plugins.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done

python="${PYTHON:-$(command -v python3 || command -v python)}"
generator=()
if command -v ninja >/dev/null 2>&1; then
  generator=(-G Ninja)
fi

# Re-configuring an existing build folder takes about a second; the build then only redoes what changed.
if [[ -f "${build_dir}/CMakeCache.txt" ]]; then
  generator=()  # the generator of an existing build folder cannot change
fi
cmake -S "${repo}/plugins" -B "${build_dir}" "${generator[@]}" \
  -DCMAKE_BUILD_TYPE=Release \
  -DZIPVL_WITH_CUDA="${with_cuda}" \
  -DZIPVL_CUDA_ARCHS="${archs}" \
  -DPython3_EXECUTABLE="${python}" \
  ${TENSORRT_INCLUDE_DIR:+-DTENSORRT_INCLUDE_DIR="${TENSORRT_INCLUDE_DIR}"} >/dev/null

build_args=(--build "${build_dir}" --parallel "${JOBS:-$(nproc)}")
for t in "${targets[@]}"; do
  build_args+=(--target "$t")
done
cmake "${build_args[@]}"
ls -1 "${build_dir}"/libzipvl_*.so
