#!/usr/bin/env python3
"""Load benchmark of `infer-cli serve`: N concurrent streams, standard library only.

For each concurrency level (default 1, 8, 32, 128), that many client threads each send
`--rounds` streamed /v1/completions requests one after another: a prompt of exactly
`--prompt-len` random token ids (a different one per request, so no prefix-cache hits),
`max_tokens` = `--max-tokens`, `ignore_eos`, greedy. Prints one JSON line per level:
output tok/s (all completion tokens / wall time of the level), time to first token and
inter-token latency p50/p99 (ms), end-to-end latency, errors.

TTFT is measured to the first chunk with text (not the role-only chunk); inter-token latency
is the gap between successive text chunks divided by the tokens they carry (a chunk can carry
the text of several tokens when a character spans tokens).

    scripts/bench_serve.py --url http://127.0.0.1:8000 [--concurrency 1,8,32,128]
        [--prompt-len 128] [--max-tokens 128] [--rounds 2] [--out serve.jsonl]
"""

import argparse
import http.client
import json
import random
import sys
import threading
import time
import urllib.parse


def percentile(xs, q):
    if not xs:
        return None
    xs = sorted(xs)
    i = min(len(xs) - 1, max(0, int(round(q / 100 * (len(xs) - 1)))))
    return xs[i]


def one_request(host, port, model, prompt, max_tokens, timeout):
    """Streams one completion; returns (ttft_s, [itl_s...], completion_tokens, e2e_s) or raises."""
    body = json.dumps({
        "model": model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0,
        "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True},
    })
    conn = http.client.HTTPConnection(host, port, timeout=timeout)
    t0 = time.perf_counter()
    conn.request("POST", "/v1/completions", body, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {resp.read()[:200]!r}")
    ttft, last, itls, tokens, chunks_with_text = None, None, [], 0, 0
    for raw in resp:
        line = raw.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if data == b"[DONE]":
            break
        chunk = json.loads(data)
        if "error" in chunk:
            raise RuntimeError(chunk["error"].get("message"))
        if chunk.get("usage"):
            tokens = chunk["usage"]["completion_tokens"]
        for choice in chunk.get("choices", []):
            if choice.get("text"):
                now = time.perf_counter()
                if ttft is None:
                    ttft = now - t0
                else:
                    itls.append(now - last)
                last = now
                chunks_with_text += 1
    e2e = time.perf_counter() - t0
    conn.close()
    # Spread the gaps over the tokens they carried (usually one chunk = one token).
    if chunks_with_text > 1 and tokens > chunks_with_text:
        scale = (chunks_with_text - 1) / (tokens - 1)
        itls = [x * scale for x in itls]
    return ttft, itls, tokens, e2e


def run_level(args, host, port, model, concurrency, vocab_hi):
    rng = random.Random(1234 + concurrency)
    prompts = [[rng.randrange(1000, vocab_hi) for _ in range(args.prompt_len)]
               for _ in range(concurrency * args.rounds)]
    lock = threading.Lock()
    ttfts, itls, e2es, errors = [], [], [], []
    total_tokens = [0]

    def worker(w):
        for r in range(args.rounds):
            try:
                ttft, gaps, tokens, e2e = one_request(host, port, model, prompts[w * args.rounds + r],
                                                      args.max_tokens, args.timeout)
                with lock:
                    if ttft is not None:
                        ttfts.append(ttft)
                    itls.extend(gaps)
                    e2es.append(e2e)
                    total_tokens[0] += tokens
            except Exception as e:  # counted and reported, the level goes on
                with lock:
                    errors.append(str(e)[:200])

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(concurrency)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    ms = lambda x: None if x is None else round(x * 1e3, 2)  # noqa: E731
    return {
        "concurrency": concurrency, "requests": concurrency * args.rounds, "prompt_tokens": args.prompt_len,
        "max_tokens": args.max_tokens, "wall_s": round(wall, 3), "output_tokens": total_tokens[0],
        "output_tok_s": round(total_tokens[0] / wall, 1) if wall > 0 else None,
        "ttft_p50_ms": ms(percentile(ttfts, 50)), "ttft_p99_ms": ms(percentile(ttfts, 99)),
        "itl_p50_ms": ms(percentile(itls, 50)), "itl_p99_ms": ms(percentile(itls, 99)),
        "e2e_p50_s": round(percentile(e2es, 50) or 0, 3), "errors": len(errors),
        "first_error": errors[0] if errors else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", default="http://127.0.0.1:8000")
    ap.add_argument("--concurrency", default="1,8,32,128")
    ap.add_argument("--prompt-len", type=int, default=128)
    ap.add_argument("--max-tokens", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=2, help="requests per client thread")
    ap.add_argument("--timeout", type=float, default=600)
    ap.add_argument("--label", default="RustInfer", help="stored in each JSON line (e.g. the device)")
    ap.add_argument("--out", help="append the JSON lines to this file too")
    args = ap.parse_args()
    u = urllib.parse.urlparse(args.url)
    host, port = u.hostname, u.port or 80
    conn = http.client.HTTPConnection(host, port, timeout=30)
    conn.request("GET", "/v1/models")
    models = json.loads(conn.getresponse().read())
    model = models["data"][0]["id"]
    conn.close()
    # Token ids below 100k are ordinary tokens in both Llama 3 and smaller vocabularies' ranges
    # we bench; stay under 30k for small-vocabulary models (e.g. SmolLM2's 49152).
    vocab_hi = 30000
    one_request(host, port, model, list(range(1000, 1000 + args.prompt_len)), 4, args.timeout)  # warm-up
    for c in [int(x) for x in args.concurrency.split(",")]:
        row = run_level(args, host, port, model, c, vocab_hi)
        row["label"] = args.label
        row["model"] = model
        line = json.dumps(row)
        print(line, flush=True)
        if args.out:
            with open(args.out, "a") as f:
                f.write(line + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
