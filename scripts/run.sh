#!/usr/bin/env bash
# The main job: set up, build, and generate text.
#   scripts/run.sh [MODEL_DIR] [extra infer-cli generate flags...]
# Without MODEL_DIR it makes a random-weight Llama-3.2-1B-shaped checkpoint (2.5 GB, numpy only)
# under target/models/ and generates from it (the text is gibberish: the weights are random).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
model=${1:-}
[ $# -gt 0 ] && shift
if [ -z "$model" ]; then
  model=target/models/llama-3.2-1b-random
  [ -f "$model/model.safetensors" ] ||
    python3 scripts/make_random_llama.py --out "$model" --shape llama-3.2-1b --tokenizer-from tests/fixtures/tiny-llama3
fi
cargo build --release -p infer-cli
./target/release/infer-cli generate --model "$model" --prompt "${PROMPT:-The capital of France is}" --max-tokens 64 "$@"
