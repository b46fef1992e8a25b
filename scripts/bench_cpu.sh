#!/usr/bin/env bash
# CPU benchmark, RustInfer vs llama.cpp side by side on one machine, same model (random
# Llama-3.2-1B-shaped bf16 weights), same thread count; writes bench-out/ and test_images/cpu_bench.png.
#   scripts/bench_cpu.sh [LLAMA_CPP_DIR]   (build it with ../shared/tools/build_llama_cpp.sh cpu DIR)
set -euo pipefail
cd "$(dirname "$0")/.."
llama=${1:-/opt/peers/llama-cpu}
threads=${THREADS:-$(nproc)}
model=$PWD/target/models/llama-3.2-1b-random
gguf=$PWD/target/models/llama-3.2-1b-random-bf16.gguf
out=bench-out
mkdir -p "$out"
[ -f "$model/model.safetensors" ] ||
  python3 scripts/make_random_llama.py --out "$model" --shape llama-3.2-1b --tokenizer-from tests/fixtures/tiny-llama3
[ -f "$gguf" ] || python3 "$llama/convert_hf_to_gguf.py" "$model" --outtype bf16 --outfile "$gguf"
cargo test --release -p infer-core --test perf_cpu --test matmul_bench --no-run 2>/dev/null
# The VM's memory bandwidth drifts: a plain $threads-thread read of 256 MiB before each engine.
membw() {
  RAYON_NUM_THREADS=$threads MATMUL_BENCH_FILTER=none \
    cargo test --release -p infer-core --test matmul_bench -- --ignored --nocapture 2>/dev/null | grep "plain"
}
rm -f "$out"/rustinfer-*.txt "$out"/llama-*.json "$out"/membw.txt
for round in $(seq "${ROUNDS:-6}"); do # alternate the two engines so drift hits both alike
  echo "round $round rustinfer: $(membw)" | tee -a "$out/membw.txt"
  RAYON_NUM_THREADS=$threads RUSTINFER_MODEL=$model \
    cargo test --release -p infer-core --test perf_cpu -- --ignored --show-output test_llama3_cpu_loading_and_generation | tee "$out/rustinfer-$round.txt"
  echo "round $round llama.cpp: $(membw)" | tee -a "$out/membw.txt"
  LD_LIBRARY_PATH="$llama/bin" "$llama/bin/llama-bench" -m "$gguf" -t "$threads" -p 64,128 -n 128 -r 2 -o json \
    > "$out/llama-$round.json"
done
# Precision::Exact (f32 activations, --precise) once, for the table's extra column.
RAYON_NUM_THREADS=$threads RUSTINFER_MODEL=$model RUSTINFER_PRECISION=exact \
  cargo test --release -p infer-core --test perf_cpu -- --ignored --show-output test_llama3_cpu_loading_and_generation | tee "$out/exact.txt"
python3 scripts/plot_bench.py cpu "$out" test_images/cpu_bench.png | tee "$out/cpu_table.md"
