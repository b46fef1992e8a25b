#!/usr/bin/env bash
# Serving benchmark, run ON the GPU machine in one go: makes the random Llama-3.2-1B checkpoint
# (as bench_cuda.sh), starts `infer-cli serve` on it, runs scripts/bench_serve.py at 1, 8, 32 and
# 128 concurrent streams and appends the JSON lines to $OUT/serve.jsonl (default ./bench-out).
#   scripts/bench_serve.sh PATH_TO_INFER_CLI [DEVICE]      (a --features cuda release build; cuda:0)
# Env: CONCURRENCY (1,8,32,128), PROMPT_LEN (128), MAX_TOKENS (128), ROUNDS (2), MAX_BATCH (128).
set -uo pipefail
cli=${1:?path to infer-cli}
device=${2:-cuda:0}
here=$(dirname "$0")
out=${OUT:-bench-out}; mkdir -p "$out"
model=${MODEL:-/tmp/llama-3.2-1b-random}
[ -f "$model/model.safetensors" ] ||
  python3 "$here/make_random_llama.py" --out "$model" --shape llama-3.2-1b --tokenizer-from "$here/../tests/fixtures/tiny-llama3"
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$out/gpu.txt" 2>/dev/null || echo "$device" > "$out/gpu.txt"
port=${PORT:-8123}
"$cli" serve --model "$model" --device "$device" --port "$port" --no-progress --context-length 2048 \
  --max-batch "${MAX_BATCH:-128}" --max-queue 1024 2> "$out/server.log" &
pid=$!
for _ in $(seq 600); do grep -q "serving" "$out/server.log" && break; sleep 0.2; done
grep -q "serving" "$out/server.log" || { cat "$out/server.log"; kill "$pid"; exit 1; }
python3 "$here/bench_serve.py" --url "http://127.0.0.1:$port" --concurrency "${CONCURRENCY:-1,8,32,128}" \
  --prompt-len "${PROMPT_LEN:-128}" --max-tokens "${MAX_TOKENS:-128}" --rounds "${ROUNDS:-2}" \
  --label "RustInfer ($(head -n1 "$out/gpu.txt" | cut -d, -f1))" --out "$out/serve.jsonl"
rc=$?
curl -s "http://127.0.0.1:$port/metrics" > "$out/metrics.txt" 2>/dev/null || true
kill -TERM "$pid"
wait "$pid"
echo "server exit code $?" >> "$out/server.log"
exit $rc
