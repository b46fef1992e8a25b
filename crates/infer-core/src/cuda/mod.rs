//! CUDA backend (feature `cuda`): the device context (cudarc: driver, stream, cuBLASLt), device
//! storage, our kernels from `kernels/` (bindgen FFI) and the per-op device implementations
//! that `crate::op` dispatches to. This module is the only place with `unsafe` FFI calls.

pub mod decode_step;
pub mod device;
pub mod ffi;
pub mod fused;
pub mod ops;
pub mod paged;
pub mod quant;
pub mod sample;
pub mod storage;

pub use device::{CudaDevice, DeviceI32, EventTimer, device};
pub use storage::{CudaData, CudaStorage};
