#!/usr/bin/env bash
# CUDA benchmark, run ON the GPU machine in one go: makes the random Llama-3.2-1B checkpoint,
# runs RustInfer's test_llama3_cuda_performance and Hugging Face transformers (bf16, greedy,
# static cache, eager and torch.compile) on the same weights and prompt lengths, and writes
# BENCH_JSON lines to $OUT (or ./bench-out).
#   scripts/bench_cuda.sh CUDA_MODEL_TEST_BINARY
# HF_EAGER=0 / HF_COMPILE=0 skip the transformers runs. With LLAMA_CPP=DIR (a llama.cpp CUDA build from ../shared/tools/build_llama_cpp.sh: DIR/bin and
# DIR/convert_hf_to_gguf.py) the same weights are converted to a bf16 GGUF and llama-bench runs too
# (-fa 0, all layers on the GPU, 5 repetitions: pp512 and tg256).
set -uo pipefail
bin=${1:?path to the cuda_model test binary}
out=${OUT:-bench-out}; mkdir -p "$out"
model=${MODEL:-/tmp/llama-3.2-1b-random}
[ -f "$model/model.safetensors" ] ||
  python3 "$(dirname "$0")/make_random_llama.py" --out "$model" --shape llama-3.2-1b --tokenizer-from "$(dirname "$0")/../tests/fixtures/tiny-llama3"
nvidia-smi --query-gpu=name,memory.total,clocks.max.memory --format=csv | tee "$out/gpu.txt"
# The hardware limit in the same run: achievable HBM read bandwidth (a 4 GiB bf16 sum, best of 10).
python3 - <<'PY' | tee "$out/membw.txt"
import json, torch
x = torch.empty(2 << 30, dtype=torch.bfloat16, device="cuda").uniform_()
best = 0.0
for _ in range(10):
    a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    a.record(); x.sum(dtype=torch.float32); b.record(); torch.cuda.synchronize()
    best = max(best, x.numel() * 2 / (a.elapsed_time(b) / 1e3) / 1e12)
print("BENCH_JSON " + json.dumps({"engine": "read-bandwidth", "read_tbs": round(best, 3),
                                  "gpu": torch.cuda.get_device_name(0)}))
PY
RUSTINFER_MODEL=$model "$bin" test_llama3_cuda_performance --ignored --nocapture --test-threads=1 2>&1 | tee "$out/rustinfer.txt"
[ "${HF_EAGER:-1}" = 1 ] && timeout 300 python3 "$(dirname "$0")/bench_hf.py" "$model" 2>&1 | grep -v Warning | tail -3 | tee "$out/hf.txt"
[ "${HF_COMPILE:-1}" = 1 ] && timeout 400 python3 "$(dirname "$0")/bench_hf.py" "$model" --compile 2>&1 | tail -3 | tee "$out/hf_compile.txt"
if [ -n "${LLAMA_CPP:-}" ]; then
  gguf=$model/model-bf16.gguf
  [ -f "$gguf" ] || python3 "$LLAMA_CPP/convert_hf_to_gguf.py" "$model" --outtype bf16 --outfile "$gguf" > "$out/convert.log" 2>&1
  LD_LIBRARY_PATH="$LLAMA_CPP/bin:${LD_LIBRARY_PATH:-}" timeout 300 "$LLAMA_CPP/bin/llama-bench" -m "$gguf" \
    -p 512 -n 256 -fa 0 -ngl 99 -r 5 -o json > "$out/llamacpp.json" 2> "$out/llamacpp.err"
  python3 - "$out" <<'PY' | tee "$out/llamacpp.txt"
import json, sys
rows = json.load(open(f"{sys.argv[1]}/llamacpp.json"))
pp = next(r["avg_ts"] for r in rows if r["n_prompt"] == 512 and r["n_gen"] == 0)
tg = next(r["avg_ts"] for r in rows if r["n_gen"] == 256 and r["n_prompt"] == 0)
print("BENCH_JSON " + json.dumps({"engine": "llama.cpp CUDA", "pp512": pp, "tg": tg}))
PY
fi
