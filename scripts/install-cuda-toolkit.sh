#!/usr/bin/env bash
# Installs the CUDA 13.0 toolkit (nvcc, cudart, cuBLAS) from PyPI into $CUDA_HOME's parent, so the
# `cuda` feature compiles on machines without a GPU or a system CUDA (CI included).
#   scripts/install-cuda-toolkit.sh [PREFIX]   (default /opt/cuda-pip) -> CUDA_HOME=PREFIX/nvidia/cu13
set -euo pipefail
prefix=${1:-/opt/cuda-pip}
home="$prefix/nvidia/cu13"
if [ ! -x "$home/bin/nvcc" ]; then
  python3 -m pip install -q --target "$prefix" nvidia-cuda-nvcc==13.0.88 nvidia-cuda-crt==13.0.88 \
    nvidia-nvvm==13.0.88 nvidia-cuda-runtime==13.0.96 nvidia-cuda-cccl==13.0.85 nvidia-cublas==13.1.0.3
fi
cd "$home/lib"
for l in cudart cublas cublasLt; do
  [ -e "lib$l.so" ] || ln -sf "$(ls lib$l.so.* | head -1)" "lib$l.so"
done
[ -e "$home/lib64" ] || ln -s lib "$home/lib64"
echo "CUDA_HOME=$home"
