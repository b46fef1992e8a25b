#!/usr/bin/env python3
"""Writes the GGML block-quantization fixtures of crates/infer-core/tests/quant.rs, with the
`gguf` Python package (gguf-py, llama.cpp's own reference) as the oracle:

  pip install gguf numpy
  python3 scripts/make_quant_fixtures.py            # -> tests/fixtures/quant/

For each of Q8_0, Q4_0, Q4_1, Q4_K, Q6_K:
  <type>.blocks   random but valid blocks (random quant bytes, sane random f16 scales)
  <type>.dequant  gguf.quants.dequantize of those blocks, f32 little-endian
For the quantizers gguf-py implements (Q8_0, Q4_0, Q4_1; it has no K-quant quantizers):
  quant_input.f32 f32 values (several magnitudes, a zero block, a constant block, ties)
  <type>.quant    gguf.quants.quantize of quant_input.f32

Deterministic (fixed seed); everything stays well under 100 KB.
"""
import os
import numpy as np
from gguf import GGMLQuantizationType as T
from gguf import quants

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "quant")
TYPES = {"q8_0": T.Q8_0, "q4_0": T.Q4_0, "q4_1": T.Q4_1, "q4_k": T.Q4_K, "q6_k": T.Q6_K}
rng = np.random.default_rng(20261125)


def f16_bytes(v):
    return np.asarray(v, dtype=np.float16).reshape(-1, 1).view(np.uint8)


def sane_scales(n, signed=True):
    """f16 scales with magnitudes in [1e-4, 2] (random sign if `signed`), as real weights have."""
    mag = np.exp(rng.uniform(np.log(1e-4), np.log(2.0), n))
    if signed:
        mag *= rng.choice([-1.0, 1.0], n)
    return f16_bytes(mag)


def random_blocks(name, nblocks):
    rnd = lambda nbytes: rng.integers(0, 256, (nblocks, nbytes), dtype=np.uint8)
    if name == "q8_0":  # d, 32 x i8
        return np.concatenate([sane_scales(nblocks), rnd(32)], axis=1)
    if name == "q4_0":  # d, 16 bytes of nibbles
        return np.concatenate([sane_scales(nblocks), rnd(16)], axis=1)
    if name == "q4_1":  # d, m, 16 bytes of nibbles
        return np.concatenate([sane_scales(nblocks, False), sane_scales(nblocks), rnd(16)], axis=1)
    if name == "q4_k":  # d, dmin, 12 bytes of 6-bit scales/mins, 128 bytes of nibbles
        return np.concatenate([sane_scales(nblocks, False), sane_scales(nblocks, False), rnd(12), rnd(128)], axis=1)
    if name == "q6_k":  # 128 ql, 64 qh, 16 x i8 scales, d
        return np.concatenate([rnd(128), rnd(64), rnd(16), sane_scales(nblocks)], axis=1)
    raise ValueError(name)


def quant_input():
    blocks = []
    for i in range(96):  # 96 x 32 = 3072 values = 12 K-blocks
        scale = 10.0 ** rng.uniform(-3, 1)
        blocks.append(rng.standard_normal(32) * scale)
    x = np.concatenate(blocks).astype(np.float32)
    x[32:64] = 0.0  # an all-zero block
    x[64:96] = 0.25  # a constant block
    x[96:128] = np.linspace(-1.0, 1.0, 32)  # evenly spaced: exact .5 ties after scaling
    x[128:160] = np.round(rng.standard_normal(32) * 8) / 8  # coarse values, more ties
    x[160] = -x[161:192].__abs__().max() * 1.5  # the largest magnitude negative
    return x


def main():
    os.makedirs(OUT, exist_ok=True)
    for name, qtype in TYPES.items():
        blocks = random_blocks(name, 16 if name.endswith("_0") or name.endswith("_1") else 6)
        deq = quants.dequantize(blocks, qtype).astype("<f4")
        blocks.tofile(os.path.join(OUT, f"{name}.blocks"))
        deq.tofile(os.path.join(OUT, f"{name}.dequant"))
    x = quant_input()
    x.astype("<f4").tofile(os.path.join(OUT, "quant_input.f32"))
    for name in ["q8_0", "q4_0", "q4_1"]:
        q = quants.quantize(x.reshape(1, -1), TYPES[name])
        q.tofile(os.path.join(OUT, f"{name}.quant"))
    total = sum(os.path.getsize(os.path.join(OUT, f)) for f in os.listdir(OUT))
    print(f"wrote {len(os.listdir(OUT))} files, {total} bytes, to {os.path.normpath(OUT)}")


if __name__ == "__main__":
    main()
