#!/usr/bin/env bash
# Quantized CPU comparison on the real SmolLM2-135M-Instruct Q4_1 GGUF (scripts/fetch_smollm2.sh),
# or on the GGUF named by MODEL (e.g. a Llama-3.2-1B-shaped one from `infer-cli quantize`):
# RustInfer (`infer-cli generate --json`) against llama.cpp (`llama-bench`) on the same file, in
# paired rounds that alternate which engine runs first: decode (TOKENS tokens after a short prompt)
# and prefill (a prompt of PROMPT tokens).
#   scripts/bench_cpu_quant.sh [LLAMA_CPP_DIR]    env: ROUNDS (8), TOKENS (128), PROMPT (512), THREADS (nproc),
#                                                  MODEL (default: SmolLM2), TITLE (plot title),
#                                                  PLOT (default test_images/cpu_quant_bench.png; empty: none)
# Prints every round, the medians and the median of the per-round ratios, and draws their bar chart.
set -euo pipefail
cd "$(dirname "$0")/.."
llama=${1:-/opt/peers/llama-cpu}
threads=${THREADS:-$(nproc)}
tokens=${TOKENS:-128}
prompt_len=${PROMPT:-512}
model=${MODEL:-$(bash scripts/fetch_smollm2.sh)}
title=${TITLE:-SmolLM2-135M-Instruct Q4_1 GGUF}
cargo build --release -p infer-cli 2>/dev/null
cli=target/release/infer-cli
# "hello world" is two tokens in SmolLM2's and Llama 3's vocabularies: PROMPT tokens with the ones
# the CLI adds.
long=$(python3 -c "print(' '.join(['hello world'] * ($prompt_len // 2)))")
ours() { # $1: prompt, $2: max tokens, $3: json field
  RAYON_NUM_THREADS=$threads "$cli" generate --model "$model" --prompt "$1" --max-tokens "$2" --ignore-eos \
    --temperature 0 --json --no-progress 2>/dev/null | python3 -c "import json, sys; print(json.load(sys.stdin)['$3'])"
}
peer() { # $1: llama-bench arguments
  LD_LIBRARY_PATH="$llama/bin" "$llama/bin/llama-bench" -m "$model" -t "$threads" $1 -r 1 -o json 2>/dev/null |
    python3 -c 'import json, sys; print(json.load(sys.stdin)[0]["avg_ts"])'
}
rows=()
for r in $(seq "${ROUNDS:-8}"); do
  if [ $((r % 2)) = 1 ]; then
    od=$(ours "Once upon a time" "$tokens" decode_tokens_per_s); ld=$(peer "-p 0 -n $tokens")
    lp=$(peer "-p $prompt_len -n 0"); op=$(ours "$long" 1 prefill_tokens_per_s)
  else
    ld=$(peer "-p 0 -n $tokens"); od=$(ours "Once upon a time" "$tokens" decode_tokens_per_s)
    op=$(ours "$long" 1 prefill_tokens_per_s); lp=$(peer "-p $prompt_len -n 0")
  fi
  printf 'round %s: decode RustInfer %.1f llama.cpp %.1f | prefill-%s RustInfer %.1f llama.cpp %.1f tok/s\n' \
    "$r" "$od" "$ld" "$prompt_len" "$op" "$lp"
  rows+=("$od $ld $op $lp")
done
printf '%s\n' "${rows[@]}" | python3 -c '
import statistics, sys
png, threads, tokens, plen, title = sys.argv[1:6]
rows = [tuple(map(float, l.split())) for l in sys.stdin if l.strip()]
med = {}
for name, i in (("decode", 0), ("prefill", 2)):
    o, l = [r[i] for r in rows], [r[i + 1] for r in rows]
    ratios = [a / b for a, b in zip(o, l)]
    med[name] = (statistics.median(o), statistics.median(l), statistics.median(ratios))
    print(f"{name}: {len(rows)} rounds, medians RustInfer {med[name][0]:.1f} vs llama.cpp {med[name][1]:.1f} tok/s; "
          f"median per-round ratio {med[name][2]:.3f}x (range {min(ratios):.2f}-{max(ratios):.2f})")
if png:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, (name, label) in zip(axes, (("decode", f"decode ({tokens} tokens)"), ("prefill", f"prefill ({plen} tokens)"))):
        o, l, r = med[name]
        bars = ax.bar(["RustInfer", "llama.cpp"], [o, l], color=["#d95f02", "#7570b3"])
        ax.bar_label(bars, fmt="%.0f")
        ax.set_title(f"{label}: {r:.2f}x")
        ax.set_ylabel("tok/s")
    fig.suptitle(f"{title}, CPU, {threads} threads (medians of {len(rows)} paired rounds)")
    fig.tight_layout()
    fig.savefig(png, dpi=110)
    print(f"plot: {png}")' "${PLOT-test_images/cpu_quant_bench.png}" "$threads" "$tokens" "$prompt_len" "$title"
