//! The Llama 3 model: config, weights, KV cache, tokenizer, chat template, sampling, generation.

pub mod batch;
#[cfg(feature = "cuda")]
mod batch_graph;
pub mod chat;
pub mod config;
mod cpu_repack;
pub mod detokenizer;
pub mod generate;
pub mod gguf;
#[cfg(feature = "cuda")]
mod gpu;
pub mod kv_cache;
pub mod llama3;
pub mod paged_kv;
mod pyfmt;
pub mod safetensors;
pub mod sampler;
pub mod score;
pub mod tokenizer;
pub mod weights;
mod workspace;

use crate::base::{DeviceType, Result};
use crate::tensor::Tensor;
pub use chat::{ChatMessage, ChatTemplate, RenderOptions};
pub use tokenizer::{HfTokenizer, Tokenizer};
pub use weights::WeightSource;

/// What every model offers (the seed's trait, kept).
pub trait Model {
    /// Prepares the model to run on `device_type` (allocates KV cache and workspace).
    fn init(&mut self, device_type: DeviceType) -> Result<()>;

    /// Runs the tokens of `input` (i32 ids, `[seq]`) at positions `pos` (i32, `[seq]`, consecutive)
    /// and returns the logits of the last position, `[vocab]`.
    fn forward(&mut self, input: &Tensor, pos: &Tensor) -> Result<Tensor>;

    fn tokenizer(&self) -> &dyn Tokenizer;

    fn encode(&self, text: &str) -> Result<Vec<i32>> {
        self.tokenizer().encode(text)
    }

    fn decode(&self, ids: &[i32]) -> Result<String> {
        self.tokenizer().decode(ids)
    }

    fn is_eos_token(&self, token_id: u32) -> bool;

    /// Copies of layer `layer_idx`'s cached keys and values for positions `start_pos..end_pos`,
    /// each `[n_kv_heads, end_pos - start_pos, head_dim]`.
    fn slice_kv_cache(&self, layer_idx: usize, start_pos: usize, end_pos: usize) -> Result<(Tensor, Tensor)>;
}
