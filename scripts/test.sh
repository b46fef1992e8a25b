#!/usr/bin/env bash
# The test command (README; .ci/run calls it): format, lints, every test of the workspace, the
# openai-client test of the HTTP server, then the `cuda` and `nccl` features compiled (CUDA 13
# toolkit and NCCL from PyPI) and their tests (the library's unit tests too: some exist only with
# `cuda`), whose GPU parts skip without a GPU.
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
# The official `openai` Python client, unmodified, against `infer-cli serve` (PyPI package into
# target/pydeps: no system site-packages touched).
pydeps="$PWD/target/pydeps"
PYTHONPATH="$pydeps" python3 -c 'import openai' 2>/dev/null ||
  python3 -m pip install -q --upgrade --target "$pydeps" openai
cargo build -p infer-cli
PYTHONPATH="$pydeps" python3 tests/python/test_openai_client.py --cli target/debug/infer-cli
export CUDA_HOME=${CUDA_HOME:-/opt/cuda-pip/nvidia/cu13}
cargo clippy --workspace --all-targets --features infer-core/nccl -- -D warnings
cargo test -p infer-core --features nccl --lib --test cuda_ops --test cuda_model --test cuda_sample --test cuda_quant \
  --test cuda_engine --test cuda_paged --test cuda_tensor_parallel
