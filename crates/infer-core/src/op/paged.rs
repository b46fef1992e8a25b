//! Where the rows of a batched forward live in a paged KV cache: shared by
//! [`rope_kv_paged`](super::rope_kv_paged) and [`paged_attention`](super::paged_attention).
//!
//! The pool of one layer is `[num_blocks, n_kv_heads, block_size, head_dim]` (f32 on the CPU,
//! bf16 on a GPU); position `p` of a sequence lives in block `table[p / block_size]` at offset
//! `p % block_size`. Row `r` of the batch attends to positions `0..=positions[r]` of sequence
//! `row_seq[r]` (causal), so a prefill chunk and decode rows of other sequences mix freely.

use crate::base::{Error, Result};
use crate::tensor::Tensor;

/// The device-memory copy of a [`PagedMeta`] (uploaded once per step, read by the kernels).
#[cfg(feature = "cuda")]
pub type DevicePagedMeta = crate::cuda::paged::DevicePagedMeta;
/// Without the `cuda` feature there is no device copy.
#[cfg(not(feature = "cuda"))]
pub type DevicePagedMeta = std::convert::Infallible;

/// Per-row positions and slots plus per-sequence block tables of one batched step.
#[derive(Debug, Clone, Copy)]
pub struct PagedMeta<'a> {
    /// Tokens per block.
    pub block_size: usize,
    /// `[rows]` position of each row in its sequence.
    pub positions: &'a [i32],
    /// `[rows]` pool slot `block * block_size + offset` that receives the row's K/V.
    pub slots: &'a [i32],
    /// `[rows]` index of the row's sequence in `block_tables`.
    pub row_seq: &'a [i32],
    /// `[n_seqs, max_blocks]` block ids of each sequence, row-major (unused entries: any valid id).
    pub block_tables: &'a [i32],
    /// Columns of `block_tables`.
    pub max_blocks: usize,
    /// The same arrays in device memory, when the caller uploaded them (GPU only).
    pub device: Option<&'a DevicePagedMeta>,
}

impl PagedMeta<'_> {
    /// Number of rows.
    pub fn rows(&self) -> usize {
        self.positions.len()
    }

    /// Number of sequences.
    pub fn seqs(&self) -> usize {
        self.block_tables.len().checked_div(self.max_blocks).unwrap_or(0)
    }

    /// Checks every index against a pool of `num_blocks` blocks and `rows` batch rows, so the
    /// kernels never read or write outside the pool.
    pub fn validate(&self, op: &'static str, rows: usize, num_blocks: usize) -> Result<()> {
        let bad = |m: String| Err(Error::op(op, m));
        if self.block_size == 0 || self.max_blocks == 0 {
            return bad("block_size and max_blocks must be positive".into());
        }
        if self.positions.len() != rows || self.slots.len() != rows || self.row_seq.len() != rows {
            return bad(format!(
                "{rows} rows but {} positions, {} slots, {} row_seq entries",
                self.positions.len(),
                self.slots.len(),
                self.row_seq.len()
            ));
        }
        if !self.block_tables.len().is_multiple_of(self.max_blocks) {
            return bad(format!(
                "block table length {} is not a multiple of {}",
                self.block_tables.len(),
                self.max_blocks
            ));
        }
        if let Some(b) = self.block_tables.iter().find(|&&b| b < 0 || b as usize >= num_blocks) {
            return bad(format!("block id {b} outside the pool of {num_blocks} blocks"));
        }
        let (seqs, slots_n) = (self.seqs(), num_blocks * self.block_size);
        for r in 0..rows {
            let (p, s, q) = (self.positions[r], self.slots[r], self.row_seq[r]);
            if q < 0 || q as usize >= seqs {
                return bad(format!("row {r}: sequence {q} outside 0..{seqs}"));
            }
            if p < 0 || p as usize / self.block_size >= self.max_blocks {
                return bad(format!("row {r}: position {p} beyond {} blocks", self.max_blocks));
            }
            if s < 0 || s as usize >= slots_n {
                return bad(format!("row {r}: slot {s} outside the pool ({slots_n} slots)"));
            }
            let block = self.block_tables[q as usize * self.max_blocks + p as usize / self.block_size];
            if s as usize != block as usize * self.block_size + p as usize % self.block_size {
                return bad(format!("row {r}: slot {s} is not position {p}'s place in its block table"));
            }
        }
        Ok(())
    }
}

/// The `(num_blocks, n_kv_heads, block_size, head_dim)` of a pool tensor.
pub(crate) fn pool_dims(op: &'static str, pool: &Tensor, block_size: usize) -> Result<[usize; 4]> {
    match pool.shape()[..] {
        [nb, nkv, bs, hd] if bs == block_size && nb > 0 && nkv > 0 && hd > 0 => Ok([nb, nkv, bs, hd]),
        _ => Err(Error::op(
            op,
            format!("KV pool must be [num_blocks, n_kv_heads, {block_size}, head_dim], got {:?}", pool.shape()),
        )),
    }
}
