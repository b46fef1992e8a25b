//! Batched forward passes over a paged KV cache: one pass runs rows of many sequences (prefill
//! chunks and decode steps mixed), every matmul once for all rows.

use super::llama3::{Kv, Llama3};
use super::paged_kv::PagedKvCache;
use crate::base::{Error, Result};
use crate::op::matmul::matmul_with_precision;
use crate::op::paged::PagedMeta;
use crate::tensor::{DType, Tensor};

/// One sequence's part of a batched step.
#[derive(Debug, Clone, Copy)]
pub struct BatchItem<'a> {
    /// Tokens to run (a prefill chunk, or the one token of a decode step).
    pub ids: &'a [u32],
    /// Position of `ids[0]`; the cache holds this sequence's positions `0..pos0` already.
    pub pos0: usize,
    /// The sequence's block table: enough blocks for positions `0..pos0 + ids.len()`.
    pub blocks: &'a [u32],
    /// Whether the logits of the last token are wanted.
    pub logits: bool,
}

impl Llama3 {
    /// A paged cache of `num_blocks` blocks of `block_size` tokens for this model and device.
    pub fn paged_cache(&self, num_blocks: usize, block_size: usize) -> Result<PagedKvCache> {
        PagedKvCache::new(&self.config, num_blocks, block_size, self.device)
    }

    /// Sizes the activation buffers for batches of up to `rows` tokens now, so that later
    /// steps never reallocate them (which would invalidate captured CUDA graphs).
    pub fn reserve_batch_rows(&mut self, rows: usize) -> Result<()> {
        self.ws.resize(rows)
    }

    /// Runs every item in one batched pass and returns the logits `[n, vocab]` f32 of the items
    /// with `logits` set, in item order, on the model's device (host memory for the CPU).
    pub fn forward_batch(&mut self, cache: &mut PagedKvCache, items: &[BatchItem]) -> Result<&mut Tensor> {
        let (bs, vocab, ctx) = (cache.block_size(), self.config.vocab_size, self.context_length());
        if items.is_empty() {
            return Err(Error::InvalidArgument("a batched forward needs at least one sequence".into()));
        }
        for (i, it) in items.iter().enumerate() {
            let end = it.pos0 + it.ids.len();
            if it.ids.is_empty() {
                return Err(Error::InvalidArgument(format!("batch item {i} has no tokens")));
            }
            if end > ctx {
                return Err(Error::ContextOverflow { prompt_tokens: end, max_new_tokens: 0, context_length: ctx });
            }
            if it.blocks.len() * bs < end {
                return Err(Error::InvalidArgument(format!(
                    "batch item {i}: {} blocks of {bs} cannot hold {end} positions",
                    it.blocks.len()
                )));
            }
            if let Some(bad) = it.ids.iter().find(|&&id| id as usize >= vocab) {
                return Err(Error::InvalidArgument(format!("token id {bad} is outside the vocabulary ({vocab})")));
            }
        }
        #[cfg(feature = "cuda")]
        if self.batch_graph_fits(items) {
            return self.decode_batch_graph(cache, items);
        }
        // Rows whose logits are wanted go last (in item order), so the LM head reads the
        // workspace's last rows; attention and RoPE do not care about row order.
        let max_blocks = items.iter().map(|it| it.blocks.len()).max().unwrap_or(1).max(1);
        let mut tables = vec![0i32; items.len() * max_blocks];
        let (mut front, mut back) = (Rows::default(), Rows::default());
        for (s, it) in items.iter().enumerate() {
            for (j, &b) in it.blocks.iter().enumerate() {
                tables[s * max_blocks + j] = b as i32;
            }
            for (j, &id) in it.ids.iter().enumerate() {
                let p = it.pos0 + j;
                let slot = it.blocks[p / bs] as usize * bs + p % bs;
                let rows = if it.logits && j + 1 == it.ids.len() { &mut back } else { &mut front };
                rows.push(id, p, slot, s);
            }
        }
        let n_logits = back.ids.len();
        front.append(back);
        let meta = PagedMeta {
            block_size: bs,
            positions: &front.pos,
            slots: &front.slots,
            row_seq: &front.seq,
            block_tables: &tables,
            max_blocks,
            device: None,
        };
        self.ws.resize(front.ids.len())?;
        self.run_layers(&front.ids, Kv::Paged(cache, &meta, None))?;
        // [n_logits, vocab] f32 on the model's device (a GPU keeps them: see `argmax_rows`).
        let mut logits = Tensor::zeros_on(&[n_logits, vocab], DType::F32, self.device)?;
        if n_logits > 0 {
            let rows = self.ws.h.copy_rows(front.ids.len() - n_logits, n_logits)?; // [n_logits, hidden]
            let head = self.weights.lm_head.as_ref().unwrap_or(&self.weights.embed_tokens);
            matmul_with_precision(&rows, head, &mut logits, self.precision)?;
        }
        self.ws.logits = logits;
        Ok(&mut self.ws.logits)
    }
}

/// Batch rows under construction (i32 metadata as the kernels read it).
#[derive(Default)]
struct Rows {
    ids: Vec<u32>,
    pos: Vec<i32>,
    slots: Vec<i32>,
    seq: Vec<i32>,
}

impl Rows {
    fn push(&mut self, id: u32, pos: usize, slot: usize, seq: usize) {
        self.ids.push(id);
        // Positions and slots fit i32: positions < context (a usize checked above, and the RoPE
        // table bounds it), slots < num_blocks * block_size which the pool allocation bounds.
        self.pos.push(pos as i32);
        self.slots.push(slot as i32);
        self.seq.push(seq as i32);
    }

    fn append(&mut self, other: Rows) {
        self.ids.extend(other.ids);
        self.pos.extend(other.pos);
        self.slots.extend(other.slots);
        self.seq.extend(other.seq);
    }
}
