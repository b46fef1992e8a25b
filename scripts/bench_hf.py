#!/usr/bin/env python3
"""Hugging Face transformers peer for the CUDA benchmark: same checkpoint, same prompt lengths,
bf16, greedy, static KV cache. Without --compile, generate() runs eagerly (disable_compile);
with it, generate() compiles the decode step the way transformers does for static caches
(torch.compile, mode "reduce-overhead" = CUDA graphs). Prints one BENCH_JSON line.
  bench_hf.py MODEL_DIR [--compile]"""
import json, statistics, sys, time
import torch
from transformers import AutoModelForCausalLM

model_dir, compile_ = sys.argv[1], "--compile" in sys.argv
torch.manual_seed(0)
model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.bfloat16).cuda().eval()
prompt = torch.tensor([[1000 + (i * 7919) % 100000 for i in range(512)]], device="cuda")
short = prompt[:, :16]

def timed(fn):
    torch.cuda.synchronize(); t = time.perf_counter(); fn(); torch.cuda.synchronize()
    return time.perf_counter() - t

def gen(ids, n):
    return model.generate(ids, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                          cache_implementation="static", pad_token_id=0, disable_compile=not compile_)

with torch.inference_mode():
    pp = []
    for _ in range(6):
        pp.append(512 / timed(lambda: model(prompt)))
    for _ in range(3 if compile_ else 1):
        gen(short, 257); gen(short, 1)  # warm-up (compiles when --compile)
    tg = []
    for _ in range(5):
        t_all, t_one = timed(lambda: gen(short, 257)), timed(lambda: gen(short, 1))
        tg.append(256 / (t_all - t_one))
print("BENCH_JSON " + json.dumps({"engine": "transformers" + ("+compile" if compile_ else ""),
      "pp512": statistics.median(pp[1:]), "tg": statistics.median(tg)}))
