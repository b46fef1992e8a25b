#!/usr/bin/env python3
"""Plots the JSON lines of scripts/bench_serve.py: output tok/s, TTFT and inter-token latency
(p50 and p99) against the number of concurrent streams; prints a markdown table.

    scripts/plot_serve.py serve.jsonl [test_images/serve.png]
"""
import json
import sys

src = sys.argv[1]
png = sys.argv[2] if len(sys.argv) > 2 else "test_images/serve.png"
rows = [json.loads(line) for line in open(src) if line.strip().startswith("{")]
if not rows:
    sys.exit(f"no rows in {src}")
labels = list(dict.fromkeys(r.get("label", "RustInfer") for r in rows))
print("| label | streams | output tok/s | TTFT p50 / p99 (ms) | ITL p50 / p99 (ms) | errors |")
print("|---|---:|---:|---:|---:|---:|")
for r in rows:
    print(f"| {r.get('label', '')} | {r['concurrency']} | {r['output_tok_s']:,.0f} | "
          f"{r['ttft_p50_ms']} / {r['ttft_p99_ms']} | {r['itl_p50_ms']} / {r['itl_p99_ms']} | {r['errors']} |")
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("matplotlib missing: table only")
fig, axes = plt.subplots(1, 3, figsize=(15, 5.5))
for label in labels:
    rs = sorted((r for r in rows if r.get("label", "RustInfer") == label), key=lambda r: r["concurrency"])
    xs = [r["concurrency"] for r in rs]
    axes[0].plot(xs, [r["output_tok_s"] for r in rs], "o-", label=label)
    for ax, key in [(axes[1], "ttft"), (axes[2], "itl")]:
        line, = ax.plot(xs, [r[f"{key}_p50_ms"] for r in rs], "o-", label=f"{label} p50")
        ax.plot(xs, [r[f"{key}_p99_ms"] for r in rs], "s--", color=line.get_color(), label=f"{label} p99")
r0 = rows[0]
titles = ["output tokens/s (all streams)", "time to first token (ms)", "inter-token latency (ms)"]
for ax, title in zip(axes, titles):
    ax.set_xscale("log", base=2)
    ax.set_xlabel("concurrent streams")
    ax.set_title(title)
    ax.grid(alpha=0.3)
# One legend per panel, below the axes so no line is hidden.
for ax in axes:
    ax.legend(fontsize=6, loc="upper center", bbox_to_anchor=(0.5, -0.18), ncol=1)
axes[1].set_yscale("log")
fig.suptitle(f"infer-cli serve, {r0.get('model', '')}: prompt {r0['prompt_tokens']} tokens, "
             f"up to {max(r['max_tokens'] for r in rows)} generated (ignore_eos, greedy)")
fig.tight_layout()
fig.savefig(png, dpi=110)
print(f"wrote {png}")
