//! RustInfer core: tensors, ops, the Llama 3 model and text generation.
//!
//! ```no_run
//! use infer_core::{DeviceType, Llama3};
//! let mut model = Llama3::new("path/to/Llama-3.2-1B-Instruct", DeviceType::Cpu, false)?;
//! let text = model.generate("The capital of France is", 32, false)?;
//! # Ok::<(), infer_core::Error>(())
//! ```

pub mod base;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod engine;
pub mod model;
pub mod op;
pub mod parallel;
pub mod tensor;

pub use base::{DeviceType, Error, Result};
pub use model::chat::{ChatMessage, RenderOptions};
pub use model::generate::{FinishReason, GenerateOptions, Generation};
pub use model::llama3::{Llama3, LoadOptions};
pub use model::sampler::SamplerConfig;
pub use model::score::{PositionScore, Score};
pub use model::{Model, config::LlamaConfig};
pub use op::Precision;
pub use tensor::{DType, Tensor};
