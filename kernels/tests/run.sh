#!/usr/bin/env bash
# Build the kernels and the standalone test harness with nvcc, then run it.
#   kernels/tests/run.sh [--no-bench]       env: NVCC, ARCH (default sm_90a), BUILD (build dir), BUILD_ONLY=1,
#   EXTRA_FLAGS (e.g. -DINFER_KPROF: the timeline probe, see common.cuh)
set -euo pipefail
cd "$(dirname "$0")/.."
NVCC=${NVCC:-$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)}
ARCH=${ARCH:-sm_90a}
BUILD=${BUILD:-/tmp/infer_kernels_build}
mkdir -p "$BUILD"
# -rdc=true as in the crate (`cc` compiles the kernels with --device-c): shared-memory layout and
# linking then match what the engine runs.
FLAGS=(-arch="$ARCH" -O3 -std=c++17 --expt-relaxed-constexpr -lineinfo -rdc=true ${EXTRA_FLAGS:-})
SRCS=(*.cu tests/kernels_test.cu tests/kernels_bench.cu tests/decode_step_test.cu)
OBJS=()
for f in "${SRCS[@]}"; do OBJS+=("$BUILD/$(basename "${f%.cu}").o"); done
export NVCC BUILD FLAGS_STR="${FLAGS[*]}"
printf '%s\n' "${SRCS[@]}" | xargs -P "${JOBS:-$(nproc)}" -I{} sh -c \
    'f={}; b=$(basename "$f" .cu); $NVCC $FLAGS_STR -c "$f" -o "$BUILD/$b.o"'
"$NVCC" "${FLAGS[@]}" "${OBJS[@]}" -o "$BUILD/kernels_test"
[ "${BUILD_ONLY:-0}" = 1 ] || "$BUILD/kernels_test" "$@"
