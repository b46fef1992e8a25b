#!/usr/bin/env bash
# Decode-only CPU comparison, RustInfer vs llama.cpp, paired rounds that alternate which engine
# runs first (so neither always meets the VM's bandwidth phase of the other's wake). Each run
# decodes TOKENS tokens after a short prompt on the same random Llama-3.2-1B-shaped bf16 weights.
#   scripts/bench_cpu_decode.sh [LLAMA_CPP_DIR]      env: ROUNDS (16), TOKENS (128), THREADS (nproc)
# Prints every pair, the medians and the median of the per-round ratios.
set -euo pipefail
cd "$(dirname "$0")/.."
llama=${1:-/opt/peers/llama-cpu}
threads=${THREADS:-$(nproc)}
tokens=${TOKENS:-128}
model=$PWD/target/models/llama-3.2-1b-random
gguf=$PWD/target/models/llama-3.2-1b-random-bf16.gguf
[ -f "$model/model.safetensors" ] && [ -f "$gguf" ] || { echo "run scripts/bench_cpu.sh once first (it makes both models)"; exit 1; }
cargo test --release -p infer-core --test perf_cpu --no-run 2>/dev/null
bin=$(ls -t target/release/deps/perf_cpu-* | grep -v '\.d$' | head -1)
ours() {
  RAYON_NUM_THREADS=$threads RUSTINFER_MODEL=$model AB_STEPS=$tokens "$bin" decode_ab --ignored --nocapture 2>/dev/null |
    sed -n 's/.*mean \([0-9.]*\) tok\/s.*/\1/p'
}
peer() {
  LD_LIBRARY_PATH="$llama/bin" "$llama/bin/llama-bench" -m "$gguf" -t "$threads" -p 0 -n "$tokens" -r 1 -o json 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["avg_ts"])'
}
pairs=()
for r in $(seq "${ROUNDS:-16}"); do
  if [ $((r % 2)) = 1 ]; then o=$(ours); l=$(peer); else l=$(peer); o=$(ours); fi
  echo "round $r: RustInfer $o tok/s, llama.cpp $l tok/s"
  pairs+=("$o $l")
done
printf '%s\n' "${pairs[@]}" | python3 -c '
import statistics, sys
p = [tuple(map(float, l.split())) for l in sys.stdin if l.strip()]
o, l = [a for a, _ in p], [b for _, b in p]
r = [a / b for a, b in p]
print(f"{len(p)} rounds: medians RustInfer {statistics.median(o):.2f} vs llama.cpp {statistics.median(l):.2f} tok/s "
      f"({statistics.median(o) / statistics.median(l):.3f}x); median per-round ratio {statistics.median(r):.3f}x "
      f"(range {min(r):.2f}-{max(r):.2f}); means {statistics.mean(o):.2f} vs {statistics.mean(l):.2f}")'
