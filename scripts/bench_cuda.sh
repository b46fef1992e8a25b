#!/usr/bin/env bash
# CUDA benchmark, run ON the GPU machine in one go: makes the random Llama-3.2-1B checkpoint,
# runs RustInfer's test_llama3_cuda_performance and Hugging Face transformers (bf16, greedy,
# static cache, eager and torch.compile) on the same weights and prompt lengths, and writes
# BENCH_JSON lines to $OUT (or ./bench-out).
#   scripts/bench_cuda.sh CUDA_MODEL_TEST_BINARY
set -uo pipefail
bin=${1:?path to the cuda_model test binary}
out=${OUT:-bench-out}; mkdir -p "$out"
model=${MODEL:-/tmp/llama-3.2-1b-random}
[ -f "$model/model.safetensors" ] ||
  python3 "$(dirname "$0")/make_random_llama.py" --out "$model" --shape llama-3.2-1b --tokenizer-from "$(dirname "$0")/../tests/fixtures/tiny-llama3"
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv | tee "$out/gpu.txt"
RUSTINFER_MODEL=$model "$bin" test_llama3_cuda_performance --ignored --nocapture --test-threads=1 2>&1 | tee "$out/rustinfer.txt"
timeout 300 python3 "$(dirname "$0")/bench_hf.py" "$model" 2>&1 | grep -v Warning | tail -3 | tee "$out/hf.txt"
timeout 400 python3 "$(dirname "$0")/bench_hf.py" "$model" --compile 2>&1 | tail -3 | tee "$out/hf_compile.txt"
