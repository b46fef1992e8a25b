#!/usr/bin/env python3
"""Reads bench-out/ (RustInfer's BENCH_JSON lines and llama-bench JSON, one file per round, the
two engines run alternately), prints a markdown table of each engine's median over the rounds,
the median of the per-round ratios (each round's two runs are neighbours in time, so the VM's
bandwidth drift hits both alike) and the rounds one by one, and draws a bar chart of the medians.
  plot_bench.py cpu OUT_DIR PNG"""
import glob, json, re, statistics, sys

kind, out, png = sys.argv[1], sys.argv[2], sys.argv[3]
KEYS = ("pp64", "pp128", "tg")


def round_no(path):
    return int(re.search(r"-(\d+)\.", path).group(1))


ours_r, peer_r, isa = {}, {}, "?"
for f in glob.glob(f"{out}/rustinfer-*.txt"):
    for line in open(f):
        if line.startswith("BENCH_JSON "):
            d = json.loads(line[len("BENCH_JSON "):])
            ours_r[round_no(f)] = {k: d[k] for k in KEYS}
            isa = d.get("isa", "?")
exact = {}
for line in (open(f"{out}/exact.txt") if glob.glob(f"{out}/exact.txt") else []):
    if line.startswith("BENCH_JSON "):
        exact = json.loads(line[len("BENCH_JSON "):])
for f in glob.glob(f"{out}/llama-*.json"):
    for r in json.load(open(f)):
        k = f"pp{r['n_prompt']}" if r["n_gen"] == 0 else "tg"
        peer_r.setdefault(round_no(f), {})[k] = r["avg_ts"]
rounds = sorted(set(ours_r) & set(peer_r))
med = lambda xs: statistics.median(xs) if xs else float("nan")
ours = {k: med([ours_r[r][k] for r in rounds]) for k in KEYS}
peer = {k: med([peer_r[r].get(k, float("nan")) for r in rounds]) for k in KEYS}
ratio = {k: [ours_r[r][k] / peer_r[r][k] for r in rounds if peer_r[r].get(k)] for k in KEYS}
rows = [("prefill 64 tokens", "pp64"), ("prefill 128 tokens", "pp128"), ("decode", "tg")]
extra = " RustInfer `--precise` |" if exact else ""
print(f"{len(rounds)} rounds; tok/s are medians over the rounds, the ratio is the median of the per-round ratios\n")
print(f"| {kind.upper()} tok/s | RustInfer ({isa}) | llama.cpp | ratio (per-round range) |{extra}")
print("|---|---:|---:|---:|" + ("---:|" if exact else ""))
for label, k in rows:
    e = f" {exact.get(k, 0.0):.1f} |" if exact else ""
    rr = ratio[k]
    span = f" ({min(rr):.2f}-{max(rr):.2f})" if rr else ""
    print(f"| {label} | {ours[k]:.1f} | {peer[k]:.1f} | **{med(rr):.2f}x**{span} |{e}")
print()
for k in KEYS:
    pairs = " / ".join(f"{ours_r[r][k]:.1f} vs {peer_r[r].get(k, float('nan')):.1f}" for r in rounds)
    print(f"- {k} by round (RustInfer vs llama.cpp): {pairs}")
try:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
except ImportError:
    sys.exit("matplotlib missing: table only")
fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), gridspec_kw={"width_ratios": [2, 1, 2]})
for ax, keys, title in [(axes[0], ["pp64", "pp128"], "prefill (tok/s, medians)"), (axes[1], ["tg"], "decode (tok/s, medians)")]:
    xs = range(len(keys))
    ax.bar([x - 0.2 for x in xs], [ours.get(k, 0) for k in keys], 0.4, label="RustInfer")
    ax.bar([x + 0.2 for x in xs], [peer.get(k, 0) for k in keys], 0.4, label="llama.cpp")
    ax.set_xticks(list(xs), keys)
    ax.set_title(title)
axes[0].legend(loc="lower right")
# Per-round paired ratios: each round's two runs are neighbours in time.
ax = axes[2]
for x, k in enumerate(KEYS):
    rr = ratio[k]
    ax.scatter([x] * len(rr), rr, color="tab:blue", alpha=0.6)
    if rr:
        ax.hlines(med(rr), x - 0.25, x + 0.25, color="black")
ax.axhline(1.0, color="tab:orange", linestyle="--", label="llama.cpp")
ax.set_xticks(range(len(KEYS)), KEYS)
ax.set_title("RustInfer / llama.cpp per round (bar: median)")
ax.legend(loc="lower center")
fig.suptitle(f"Llama-3.2-1B shape, bf16 weights, {kind.upper()}, {len(rounds)} alternating rounds (same machine, same run)")
fig.tight_layout()
fig.savefig(png, dpi=110)
