#!/usr/bin/env bash
# The test command (README; .ci/run calls it): format, lints, every test of the workspace, then
# the `cuda` and `nccl` features compiled (CUDA 13 toolkit and NCCL from PyPI) and their tests,
# which skip without a GPU.
set -euo pipefail
cd "$(dirname "$0")/.."
WITH_CUDA=1 bash scripts/setup.sh >/dev/null
export PATH="$HOME/.cargo/bin:$PATH"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
# The SmolLM2 GGUF model the GGUF tests run (downloaded once into the cache, ~93 MB).
RUSTINFER_SMOLLM2=$(bash scripts/fetch_smollm2.sh)
export RUSTINFER_SMOLLM2
cargo test --workspace
export CUDA_HOME=${CUDA_HOME:-/opt/cuda-pip/nvidia/cu13}
cargo clippy --workspace --all-targets --features infer-core/nccl -- -D warnings
cargo test -p infer-core --features nccl --test cuda_ops --test cuda_model --test cuda_sample --test cuda_quant \
  --test cuda_tensor_parallel
