//! CUDA backend (FFI to kernels/), filled in by the CUDA issue.
