//! Megatron-style sharding of Llama 3 weights over `world_size` ranks.
//!
//! * Column-parallel (output rows split): `q_proj`, `k_proj`, `v_proj` by attention head (rank
//!   `r` gets query heads `r·H/N ..` and KV heads `r·KV/N ..`, so every query head keeps its GQA
//!   group's KV head on the same rank), `gate_proj` and `up_proj` by intermediate row.
//! * Row-parallel (input columns split): `o_proj` and `down_proj`; each rank's product is a
//!   partial sum of the full output, summed across ranks by an all-reduce.
//! * Replicated: `embed_tokens`, `lm_head`, every RMSNorm weight (every rank holds the full
//!   residual stream; see [`ShardPlan::bytes_per_rank`] for what this costs).

use super::ShardError;
use crate::base::{Error, Result};
use crate::model::config::LlamaConfig;
use crate::model::llama3::{LayerWeights, Weights};
use crate::tensor::{Tensor, TensorData};

/// How a model's heads and intermediate rows are split over `world_size` ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardPlan {
    pub world_size: usize,
    /// Query heads per rank.
    pub heads: usize,
    /// KV heads per rank.
    pub kv_heads: usize,
    /// Intermediate (MLP) rows per rank.
    pub intermediate: usize,
    head_dim: usize,
    /// The full model's q and kv widths and intermediate size (offsets of k/v and up rows).
    q_dim: usize,
    kv_dim: usize,
    full_intermediate: usize,
}

impl ShardPlan {
    /// Checks that `world_size` divides the query heads, the KV heads and the intermediate size.
    pub fn new(c: &LlamaConfig, world_size: usize) -> Result<Self, ShardError> {
        if world_size == 0 {
            return Err(ShardError::EmptyWorld);
        }
        let split = |what: &'static str, value: usize| {
            if value.is_multiple_of(world_size) {
                Ok(value / world_size)
            } else {
                Err(ShardError::NotDivisible { what, value, world_size })
            }
        };
        Ok(ShardPlan {
            world_size,
            heads: split("num_attention_heads", c.num_attention_heads)?,
            kv_heads: split("num_key_value_heads", c.num_key_value_heads)?,
            intermediate: split("intermediate_size", c.intermediate_size)?,
            head_dim: c.head_dim,
            q_dim: c.q_dim(),
            kv_dim: c.kv_dim(),
            full_intermediate: c.intermediate_size,
        })
    }

    /// One rank's view of the model: the heads, KV heads and intermediate rows it holds (what
    /// its KV cache and workspace are sized by). Everything else is the full model's.
    pub fn local_config(&self, c: &LlamaConfig) -> LlamaConfig {
        LlamaConfig {
            num_attention_heads: self.heads,
            num_key_value_heads: self.kv_heads,
            intermediate_size: self.intermediate,
            ..c.clone()
        }
    }

    fn check_rank(&self, rank: usize) -> Result<(), ShardError> {
        if rank >= self.world_size {
            return Err(ShardError::RankOutOfRange { rank, world_size: self.world_size });
        }
        Ok(())
    }

    /// Rank `rank`'s weights cut from the full (host) weights. Row slices of a fused list (q/k/v,
    /// gate/up) stay one tensor per checkpoint tensor (`[q_r, k_r, v_r]`, `[gate_r, up_r]`), the
    /// layout the forward pass concatenates; a slice equal to the whole tensor is a cheap clone
    /// (zero copy for memory-mapped weights), anything else is copied.
    pub fn shard(&self, w: &Weights, rank: usize) -> Result<Weights> {
        self.check_rank(rank)?;
        let (q_rows, kv_rows, i) = (self.heads * self.head_dim, self.kv_heads * self.head_dim, self.intermediate);
        let layers = w
            .layers
            .iter()
            .enumerate()
            .map(|(l, lw)| {
                let name = |t: &str| format!("model.layers.{l}.{t}.weight");
                let (q0, k0, v0) =
                    (rank * q_rows, self.q_dim + rank * kv_rows, self.q_dim + self.kv_dim + rank * kv_rows);
                let mut qkv_proj = concat_rows(&lw.qkv_proj, q0, q_rows, &name("self_attn.q_proj"))?;
                qkv_proj.extend(concat_rows(&lw.qkv_proj, k0, kv_rows, &name("self_attn.k_proj"))?);
                qkv_proj.extend(concat_rows(&lw.qkv_proj, v0, kv_rows, &name("self_attn.v_proj"))?);
                let mut gate_up_proj = concat_rows(&lw.gate_up_proj, rank * i, i, &name("mlp.gate_proj"))?;
                let up0 = self.full_intermediate + rank * i;
                gate_up_proj.extend(concat_rows(&lw.gate_up_proj, up0, i, &name("mlp.up_proj"))?);
                Ok(LayerWeights {
                    input_layernorm: lw.input_layernorm.clone(),
                    qkv_proj, // [q_r | k_r | v_r] rows: [(heads + 2 kv_heads) * head_dim, hidden]
                    o_proj: cols(&lw.o_proj, rank * q_rows, q_rows, &name("self_attn.o_proj"))?, // [hidden, heads * head_dim]
                    post_attention_layernorm: lw.post_attention_layernorm.clone(),
                    gate_up_proj, // [gate_r | up_r] rows: [2 * intermediate / N, hidden]
                    down_proj: cols(&lw.down_proj, rank * i, i, &name("mlp.down_proj"))?, // [hidden, intermediate / N]
                })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Weights { embed_tokens: w.embed_tokens.clone(), layers, norm: w.norm.clone(), lm_head: w.lm_head.clone() })
    }

    /// Weight bytes one rank holds with this plan, given the bytes of one element of the
    /// matrices (2 for bf16): the sharded layer matrices plus the replicated embedding, LM head
    /// (when untied) and norms. With `vocab_parallel`, the embedding and LM head are counted as
    /// split by vocabulary rows instead (not implemented; for comparison).
    pub fn bytes_per_rank(&self, c: &LlamaConfig, elem_bytes: usize, vocab_parallel: bool) -> usize {
        let h = c.hidden_size;
        let per_layer = (self.heads + 2 * self.kv_heads) * self.head_dim * h // qkv
            + h * self.heads * self.head_dim // o
            + 3 * self.intermediate * h; // gate, up, down
        let vocab_mats = if c.tie_word_embeddings { 1 } else { 2 };
        let mut vocab = vocab_mats * c.vocab_size * h;
        if vocab_parallel {
            vocab = vocab.div_ceil(self.world_size);
        }
        let norms = (2 * c.num_hidden_layers + 1) * h;
        (c.num_hidden_layers * per_layer + vocab + norms) * elem_bytes
    }
}

/// Rows `start..start + n` of the row-wise concatenation of `parts` (a projection list whose
/// outputs are concatenated), one tensor per part touched.
fn concat_rows(parts: &[Tensor], start: usize, n: usize, name: &str) -> Result<Vec<Tensor>> {
    let mut out = Vec::new();
    let (mut offset, mut got) = (0, 0);
    for p in parts {
        let rows = p.dims2("shard")?.0;
        let (a, b) = (start.max(offset), (start + n).min(offset + rows));
        if a < b {
            let local = a - offset;
            // A whole part is kept as it is (zero copy when mapped); a slice is copied.
            out.push(if local == 0 && b - a == rows { p.clone() } else { p.copy_rows(local, b - a)? });
            got += b - a;
        }
        offset += rows;
    }
    if got != n {
        return Err(Error::op("shard", format!("{name}: rows {start}..{} outside the {offset} rows", start + n)));
    }
    Ok(out)
}

/// Columns `start..start + n` of a 2-D host tensor `[rows, cols]` → `[rows, n]`. A
/// block-quantized tensor can only be cut at block boundaries.
fn cols(t: &Tensor, start: usize, n: usize, name: &str) -> Result<Tensor> {
    let (rows, cols) = t.dims2("shard")?;
    if start == 0 && n == cols {
        return Ok(t.clone());
    }
    if start + n > cols {
        return Err(Error::op("shard", format!("{name}: columns {start}..{} of {cols}", start + n)));
    }
    fn gather<T: Copy>(s: &[T], cols: usize, start: usize, n: usize) -> Vec<T> {
        s.chunks_exact(cols).flat_map(|row| row[start..start + n].iter().copied()).collect()
    }
    match t.data()? {
        TensorData::F32(s) => Tensor::from_f32(&[rows, n], gather(s, cols, start, n)),
        TensorData::BF16(s) => Tensor::from_bf16(&[rows, n], gather(s, cols, start, n)),
        TensorData::F16(s) => Tensor::from_f16(&[rows, n], gather(s, cols, start, n)),
        TensorData::Quant(d, bytes) => {
            let (bs, bb) = (d.block_size(), d.block_bytes());
            if !start.is_multiple_of(bs) || !n.is_multiple_of(bs) {
                let e = ShardError::BlockMisaligned { tensor: name.to_string(), dtype: d.to_string(), start, cols: n };
                return Err(e.into());
            }
            // Each row is cols / bs blocks of bb bytes; keep blocks start/bs .. (start+n)/bs.
            let row_bytes = cols / bs * bb;
            let out = gather(bytes, row_bytes, start / bs * bb, n / bs * bb);
            Tensor::from_quantized(&[rows, n], d, out)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn column_slices_of_float_and_quantized_rows() {
        let t = Tensor::from_f32(&[2, 4], (0..8).map(|x| x as f32).collect()).unwrap();
        let c = cols(&t, 1, 2, "t").unwrap();
        assert_eq!(c.shape(), &[2, 2]);
        assert_eq!(c.as_f32().unwrap(), &[1., 2., 5., 6.]);
        // Q8_0: 32 elements per block, 34 bytes; a [1, 64] tensor has two blocks.
        let bytes: Vec<u8> = (0..68).map(|x| x as u8).collect();
        let q = Tensor::from_quantized(&[1, 64], crate::tensor::DType::Q8_0, bytes).unwrap();
        let c = cols(&q, 32, 32, "q").unwrap();
        match c.data().unwrap() {
            TensorData::Quant(_, b) => assert_eq!(b, (34..68).map(|x| x as u8).collect::<Vec<_>>()),
            other => panic!("{other:?}"),
        }
        let e = cols(&q, 16, 32, "q").unwrap_err();
        assert!(matches!(e, Error::TensorParallel(ShardError::BlockMisaligned { .. })), "{e}");
    }

    #[test]
    fn rows_across_a_fused_list() {
        let a = Tensor::from_f32(&[2, 1], vec![0., 1.]).unwrap();
        let b = Tensor::from_f32(&[3, 1], vec![2., 3., 4.]).unwrap();
        let parts = concat_rows(&[a, b], 1, 3, "ab").unwrap();
        let got: Vec<f32> = parts.iter().flat_map(|p| p.to_f32_vec().unwrap()).collect();
        assert_eq!(got, vec![1., 2., 3.]);
        assert!(concat_rows(&parts, 2, 5, "x").is_err());
    }
}
