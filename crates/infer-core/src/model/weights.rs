//! Where a model's weights come from: a safetensors checkpoint or a GGUF file, seen through
//! one interface that speaks Hugging Face tensor names.

use crate::base::Result;
use crate::tensor::Tensor;

/// A loaded weights file (or set of shards) that hands out tensors by Hugging Face name,
/// e.g. `model.layers.0.self_attn.q_proj.weight`.
pub trait WeightSource: Send + Sync + std::fmt::Debug {
    /// The tensor `name`, checked to have `shape` (`[out, in]` for projections) and a
    /// supported dtype; zero copy where the format allows it.
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor>;

    /// Whether the source holds a tensor called `name`.
    fn contains(&self, name: &str) -> bool;

    /// Total size of the weight files in bytes (for the progress bar).
    fn file_bytes(&self) -> u64;

    /// Touches every page once so the first forward pass does not pay the page faults;
    /// `progress` receives the bytes done after each chunk.
    fn prefault(&self, progress: &mut dyn FnMut(u64));
}
