#!/usr/bin/env bash
# Installs what RustInfer needs on a fresh Debian/Ubuntu machine: a C toolchain, Python 3 with
# numpy (benchmark weights), and Rust >= 1.85 (edition 2024) through rustup when cargo is missing.
# With WITH_CUDA=1 also libclang (bindgen) and the CUDA 13 toolkit from PyPI (nvcc, cudart, cuBLAS).
set -euo pipefail
need=()
command -v cc >/dev/null || need+=(build-essential)
command -v python3 >/dev/null || need+=(python3 python3-pip)
python3 -c 'import numpy' 2>/dev/null || need+=(python3-numpy)
command -v curl >/dev/null || need+=(curl ca-certificates)
# bindgen (the `cuda` feature) loads libclang.
if [ "${WITH_CUDA:-0}" = 1 ] && ! ldconfig -p | grep -q 'libclang\(-[0-9.]*\)\?\.so'; then need+=(libclang-dev); fi
if [ ${#need[@]} -gt 0 ]; then
  sudo_=""; [ "$(id -u)" = 0 ] || sudo_=sudo
  $sudo_ apt-get update -qq && $sudo_ apt-get install -y -qq "${need[@]}"
fi
if ! command -v cargo >/dev/null; then
  [ -x "$HOME/.cargo/bin/cargo" ] || curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal -c rustfmt,clippy
  export PATH="$HOME/.cargo/bin:$PATH"
fi
if [ "${WITH_CUDA:-0}" = 1 ]; then
  bash "$(dirname "$0")/install-cuda-toolkit.sh" "${CUDA_PIP_PREFIX:-/opt/cuda-pip}"
fi
cargo --version
