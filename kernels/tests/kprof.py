#!/usr/bin/env python3
"""Summarises the kernel-timeline records of the kernel harness's decode step.

Build the harness with the probe (EXTRA_FLAGS=-DINFER_KPROF kernels/tests/run.sh), run
BENCH_KPROF=<prefix> kernels_test --decode-only (one <prefix>_<pos>.bin per position), then
kprof.py <prefix>_144.bin ...: per kernel kind, means over the layers of the execution time (first
returned PDL wait to last block exit), the gap after the previous kernel's last block, the blocks
resident before the previous kernel ended, and when their first weight load landed."""
import struct, sys, collections
NAMES = {1014: "qkv", 2001: "attn1", 2002: "attn2", 2004: "attn4", 2008: "attn8", 1002: "o/down", 1013: "gate_up",
         1001: "lm_head", 1000: "gemv", 1012: "o/down"}
def load(path):
    d = open(path, "rb").read()
    n = struct.unpack_from("<Q", d, 0)[0]
    recs = []
    for i in range(n):
        w0, t0, t1, tl, t2 = struct.unpack_from("<5Q", d, 8 + 40 * i)
        recs.append((w0 & 0xFFFF, (w0 >> 16) & 0xFFFF, w0 >> 32, t0, t1, tl, t2))
    return recs
def instances(recs):
    recs = sorted(recs, key=lambda r: r[4])
    out = []
    for r in recs:
        if out and out[-1][0] == r[0]:
            out[-1][1].append(r)
        else:
            out.append((r[0], [r]))
    return out
def main(path):
    recs = load(path)
    base = min(r[3] for r in recs)
    inst = instances(recs)
    rows = []
    prev_end = None
    for tag, rs in inst:
        t0 = min(r[3] for r in rs) - base; t1a = min(r[4] for r in rs) - base; t1b = max(r[4] for r in rs) - base
        t2 = max(r[6] for r in rs) - base
        early = sum(1 for r in rs if prev_end is not None and r[3] - base < prev_end)
        land = [r[5] - r[4] for r in rs if r[5] and r[5] > r[4]]
        land_after = sum(land) / len(land) if land else 0.0   # landed after the wait (mean ns past the wait)
        gap = t1a - prev_end if prev_end is not None else 0
        rows.append((NAMES.get(tag, str(tag)), len(rs), t0, t1a, t1b, t2, gap, early, land_after, len(land)))
        prev_end = t2
    total = rows[-1][5] - rows[0][3]
    print(f"{path}: {len(recs)} records, {len(rows)} kernels, first wait -> last exit {total/1e3:.1f} us")
    agg = collections.OrderedDict()
    for i, r in enumerate(rows):
        name = r[0]
        if name == "o/down":
            name = "o" if i > 0 and rows[i - 1][0].startswith("attn") else "down"
        a = agg.setdefault(name, [0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0])
        a[0] += 1; a[1] += r[5] - r[3]; a[2] += r[6]; a[3] += r[7]; a[4] += r[1]; a[5] += r[8]; a[6] += r[4] - r[3]
    print(f"{'kernel':8} {'n':>3} {'blocks':>6} {'exec us':>8} {'gap us':>7} {'sum us':>8} {'early blk':>9} {'land>wait ns':>12} {'wait spread us':>14}")
    tot = 0
    for k, a in agg.items():
        n = a[0]
        tot += a[1] + a[2]
        print(f"{k:8} {n:3d} {a[4]/n:6.0f} {a[1]/n/1e3:8.2f} {a[2]/n/1e3:7.2f} {(a[1]+a[2])/1e3:8.1f} {a[3]/n:9.0f} {a[5]/n:12.0f} {a[6]/n/1e3:14.2f}")
    print(f"sum of exec + gaps {tot/1e3:.1f} us")
    print("layer 5 detail (us from first entry): name blocks entry wait_first wait_last exit gap early")
    for r in rows[5 * 5: 6 * 5]:
        print(f"  {r[0]:8} {r[1]:5d} {r[2]/1e3:8.2f} {r[3]/1e3:8.2f} {r[4]/1e3:8.2f} {r[5]/1e3:8.2f} {r[6]/1e3:6.2f} {r[7]:5d}")
    ts = sorted(set((r[4] - base) % 1000 for r in recs))
    print(f"timer granularity check: {len(ts)} distinct ns-mod-1000 values of the wait times")
if __name__ == "__main__":
    for p in sys.argv[1:]:
        main(p)
