//! The paged KV cache of a serving engine: per layer one pool of fixed-size blocks
//! `[num_blocks, n_kv_heads, block_size, head_dim]` (f32 on the CPU, bf16 on a GPU) shared by
//! every sequence through its block table (see [`crate::op::paged`]).

use super::config::LlamaConfig;
use crate::base::{DeviceType, Error, Result};
use crate::tensor::{DType, Tensor};

#[derive(Debug)]
pub struct PagedKvCache {
    pub(crate) k: Vec<Tensor>,
    pub(crate) v: Vec<Tensor>,
    block_size: usize,
    num_blocks: usize,
}

impl PagedKvCache {
    /// Bytes one block takes over all layers (K and V).
    pub fn block_bytes(c: &LlamaConfig, block_size: usize, device: DeviceType) -> usize {
        let elem = if device.is_cpu() { 4 } else { 2 };
        2 * c.num_hidden_layers * c.num_key_value_heads * block_size * c.head_dim * elem
    }

    /// Allocates `num_blocks` blocks of `block_size` tokens for every layer of `c` on `device`,
    /// plus one more, [`Self::pad_block`], that padding rows of a batch write to and read from.
    pub fn new(c: &LlamaConfig, num_blocks: usize, block_size: usize, device: DeviceType) -> Result<Self> {
        if num_blocks == 0 || block_size == 0 {
            return Err(Error::InvalidArgument(format!(
                "a paged KV cache needs at least one block of at least one token (got {num_blocks} x {block_size})"
            )));
        }
        let shape = [num_blocks + 1, c.num_key_value_heads, block_size, c.head_dim];
        let dtype = if device.is_cpu() { DType::F32 } else { DType::BF16 };
        let mk =
            || (0..c.num_hidden_layers).map(|_| Tensor::zeros_on(&shape, dtype, device)).collect::<Result<Vec<_>>>();
        Ok(PagedKvCache { k: mk()?, v: mk()?, block_size, num_blocks })
    }

    pub fn block_size(&self) -> usize {
        self.block_size
    }

    /// Blocks for sequences (the pad block not counted).
    pub fn num_blocks(&self) -> usize {
        self.num_blocks
    }

    /// The block no sequence owns: padding rows of a fixed-size (graph-captured) batch use it.
    pub fn pad_block(&self) -> u32 {
        self.num_blocks as u32
    }

    /// Bytes held by the pools.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|t| t.storage_bytes()).sum()
    }
}

impl PagedKvCache {
    /// Layer `layer`'s `(k, v)` pools, writable.
    pub(crate) fn layer_mut(&mut self, layer: usize) -> Result<(&mut Tensor, &mut Tensor)> {
        let n = self.k.len();
        match (self.k.get_mut(layer), self.v.get_mut(layer)) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => Err(Error::op("paged_kv", format!("layer {layer} out of range ({n} layers)"))),
        }
    }
}
