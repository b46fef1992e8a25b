//! Tensors: dtype + shape + strides over host storage.

mod dtype;
pub mod quant;
pub mod quantize;
pub mod repack;
#[allow(clippy::module_inception)]
mod tensor;

pub use dtype::DType;
pub use tensor::{Tensor, TensorData};
