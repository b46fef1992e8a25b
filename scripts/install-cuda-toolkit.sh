#!/usr/bin/env bash
# Installs the CUDA 13.0 toolkit (nvcc, cudart, cuBLAS) and NCCL from PyPI into $CUDA_HOME's parent,
# so the `cuda` and `nccl` features compile on machines without a GPU or a system CUDA (CI
# included). NCCL goes to PREFIX/nccl (pip --target does not merge into an existing nvidia/) and
# is loaded at run time (cudarc looks for libnccl.so): PREFIX/nccl/nvidia/nccl/lib gets a
# libnccl.so link; put that directory on LD_LIBRARY_PATH to run tensor parallelism on GPUs.
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
nccl="$prefix/nccl/nvidia/nccl/lib"
if [ ! -e "$nccl/libnccl.so.2" ]; then
  python3 -m pip install -q --target "$prefix/nccl" --no-deps nvidia-nccl-cu13==2.30.7
fi
[ -e "$nccl/libnccl.so" ] || ln -sf libnccl.so.2 "$nccl/libnccl.so"
echo "NCCL_LIB=$nccl"
echo "CUDA_HOME=$home"
