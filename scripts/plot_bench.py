#!/usr/bin/env python3
"""Reads bench-out/ (RustInfer's BENCH_JSON lines and llama-bench JSON), prints a markdown table
of the best round of each engine with ratios, and draws a bar chart.
  plot_bench.py cpu OUT_DIR PNG"""
import glob, json, sys

kind, out, png = sys.argv[1], sys.argv[2], sys.argv[3]
ours = {}
for f in sorted(glob.glob(f"{out}/rustinfer-*.txt")):
    for line in open(f):
        if line.startswith("BENCH_JSON "):
            d = json.loads(line[len("BENCH_JSON "):])
            for k in ("pp64", "pp128", "tg"):
                ours[k] = max(ours.get(k, 0.0), d[k])
            ours["isa"] = d.get("isa", "?")
exact = {}
for line in (open(f"{out}/exact.txt") if glob.glob(f"{out}/exact.txt") else []):
    if line.startswith("BENCH_JSON "):
        exact = json.loads(line[len("BENCH_JSON "):])
peer = {}
for f in sorted(glob.glob(f"{out}/llama-*.json")):
    for r in json.load(open(f)):
        k = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else "tg"
        peer[k] = max(peer.get(k, 0.0), r["avg_ts"])
rows = [("prefill 64 tokens", "pp64"), ("prefill 128 tokens", "pp128"), ("decode", "tg")]
extra = " RustInfer `--precise` |" if exact else ""
print(f"| {kind.upper()} tok/s | RustInfer ({ours.get('isa','?')}) | llama.cpp | ratio |{extra}")
print("|---|---:|---:|---:|" + ("---:|" if exact else ""))
for label, k in rows:
    a, b = ours.get(k, 0.0), peer.get(k, 0.0)
    e = f" {exact.get(k, 0.0):.1f} |" if exact else ""
    print(f"| {label} | {a:.1f} | {b:.1f} | {a / b if b else float('nan'):.2f}x |{e}")
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("matplotlib missing: table only")
fig, axes = plt.subplots(1, 2, figsize=(9, 3.6))
for ax, keys, title in [(axes[0], ["pp64", "pp128"], "prefill (tok/s)"), (axes[1], ["tg"], "decode (tok/s)")]:
    xs = range(len(keys))
    ax.bar([x - 0.2 for x in xs], [ours.get(k, 0) for k in keys], 0.4, label="RustInfer")
    ax.bar([x + 0.2 for x in xs], [peer.get(k, 0) for k in keys], 0.4, label="llama.cpp")
    ax.set_xticks(list(xs), keys)
    ax.set_title(title)
axes[0].legend()
fig.suptitle(f"Llama-3.2-1B shape, bf16 weights, {kind.upper()} (same machine, same run)")
fig.tight_layout()
fig.savefig(png, dpi=110)
