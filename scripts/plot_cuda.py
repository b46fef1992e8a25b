#!/usr/bin/env python3
"""Reads the BENCH_JSON lines that scripts/bench_cuda.sh wrote (rustinfer.txt, hf.txt,
hf_compile.txt), prints a markdown table with ratios and roofline fractions, and draws
test_images/cuda_bench.png; the roofline uses the read bandwidth bench_cuda.sh measured in the same
run (membw.txt) unless ACHIEVABLE_TBPS is given.   plot_cuda.py OUT_DIR PNG [ACHIEVABLE_TBPS]"""
import glob, json, sys

out, png = sys.argv[1], sys.argv[2]
rows = {}
for f in sorted(glob.glob(f"{out}/*.txt")):
    for line in open(f):
        if line.startswith("BENCH_JSON "):
            d = json.loads(line[len("BENCH_JSON "):])
            rows[d.get("engine", "RustInfer")] = d
# The roofline: the read bandwidth measured in the same run (bench_cuda.sh), else the argument.
mem = rows.pop("read-bandwidth", {})
bw = float(sys.argv[3]) if len(sys.argv) > 3 else mem.get("read_tbs", 3.0)
gpu = mem.get("gpu", "NVIDIA H100")
ours = rows["RustInfer"]
gb = ours.get("weights_gb", 2.472)
roof_tg = bw * 1e12 / (gb * 1e9)
roof_pp = 989e12 / (2 * gb / 2 * 1e9)  # dense bf16 tensor-core peak / FLOPs per token (2 per weight)
print(f"| engine ({gpu}, Llama-3.2-1B shape, bf16) | prefill 512 tok/s | decode tok/s | decode vs RustInfer |")
print("|---|---:|---:|---:|")
for name, d in rows.items():
    print(f"| {name} | {d['pp512']:,.0f} | {d['tg']:.1f} | {d['tg'] / ours['tg']:.2f}x |")
print(f"| roofline ({bw:.2f} TB/s measured read; 989 TFLOP/s bf16) | {roof_pp:,.0f} | {roof_tg:.0f} | |")
print(f"\nRustInfer decode = {ours['tg'] / roof_tg:.0%} of the {bw:.2f} TB/s roofline "
      f"({ours['tg'] * gb / 1e3:.2f} TB/s of weights); prefill = {ours['pp512'] / roof_pp:.0%} of tensor-core peak.")
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("matplotlib missing: table only")
names = list(rows)
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
for ax, key, roof, title in [(axes[0], "pp512", roof_pp, "prefill, 512-token prompt (tok/s)"),
                             (axes[1], "tg", roof_tg, "decode, batch 1 (tok/s)")]:
    vals = [rows[n][key] for n in names]
    bars = ax.bar(names, vals, color=["tab:orange" if n == "RustInfer" else "tab:gray" for n in names])
    ax.axhline(roof, color="tab:red", ls="--", label="roofline")
    for b, v in zip(bars, vals):
        ax.text(b.get_x() + b.get_width() / 2, v, f"{v:,.0f}", ha="center", va="bottom", fontsize=8)
    ax.set_title(title)
    ax.tick_params(axis="x", labelsize=8, rotation=12)
    ax.legend(fontsize=8)
import os  # PLOT_NOTE replaces "same device run" when bars come from more than one call
fig.suptitle(f"{gpu}, random Llama-3.2-1B-shaped bf16 weights, {os.environ.get('PLOT_NOTE', 'same device run')}")
fig.tight_layout()
fig.savefig(png, dpi=110)
