"""Reads a GGUF file with gguf-py (llama.cpp's Python reader) and prints a JSON summary.

Usage: gguf_py_check.py FILE.gguf HF_DIR
Output: {"fields": {key: value, or array length}, "tensors": {name: {"type", "shape" (ne order)}},
         "qk_checked": n} where, for an F32 file, every attn_q/attn_k tensor was checked to equal
the Hugging Face bf16 weights permuted exactly as llama.cpp's convert_hf_to_gguf.py permutes them.
Exit code 3 when numpy or gguf cannot be imported (the caller skips).
"""

import json
import struct
import sys

try:
    import numpy as np
    import gguf
except Exception as e:  # noqa: BLE001
    print(f"cannot import numpy/gguf: {e}", file=sys.stderr)
    sys.exit(3)


def safetensors_bf16(path):
    """name -> float32 array of a bf16 safetensors file (numpy only)."""
    b = open(path, "rb").read()
    n = struct.unpack("<Q", b[:8])[0]
    hdr = json.loads(b[8 : 8 + n])

    def get(name):
        m = hdr[name]
        assert m["dtype"] == "BF16", m["dtype"]
        s, e = m["data_offsets"]
        raw = np.frombuffer(b[8 + n + s : 8 + n + e], dtype=np.uint16)
        return (raw.astype(np.uint32) << 16).view(np.float32).reshape(m["shape"])

    return get


def permute(w, n_head):
    """LlamaModel.permute of convert_hf_to_gguf.py."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def main():
    path, hf_dir = sys.argv[1], sys.argv[2]
    r = gguf.GGUFReader(path)
    fields = {}
    for k, f in r.fields.items():
        if k.startswith("GGUF."):
            continue
        v = f.contents()
        fields[k] = len(v) if isinstance(v, list) else v
    tensors = {t.name: {"type": t.tensor_type.name, "shape": [int(x) for x in t.shape]} for t in r.tensors}
    qk = 0
    get = safetensors_bf16(f"{hf_dir}/model.safetensors")
    heads = {"attn_q": fields["llama.attention.head_count"], "attn_k": fields["llama.attention.head_count_kv"]}
    for t in r.tensors:
        kind = t.name.split(".")[-2] if t.name.startswith("blk.") else ""
        if kind in heads and t.tensor_type == gguf.GGMLQuantizationType.F32:
            layer = t.name.split(".")[1]
            hf = "q_proj" if kind == "attn_q" else "k_proj"
            want = permute(get(f"model.layers.{layer}.self_attn.{hf}.weight"), heads[kind])
            got = np.asarray(t.data).reshape(want.shape)
            if not np.array_equal(got, want):
                print(f"{t.name}: rows differ from llama.cpp's permutation", file=sys.stderr)
                sys.exit(1)
            qk += 1
    print(json.dumps({"fields": fields, "tensors": tensors, "qk_checked": qk}))


main()
