//! Activation buffers reused by every forward pass; grown to the longest chunk seen, then
//! viewed at the current chunk length.

use super::config::LlamaConfig;
use crate::base::Result;
use crate::tensor::{DType, Tensor};

#[derive(Debug)]
pub(crate) struct Workspace {
    hidden: usize,
    q_dim: usize,
    kv_dim: usize,
    inter: usize,
    capacity: usize,
    pub x: Tensor,      // [seq, hidden] residual stream
    pub h: Tensor,      // [seq, hidden] normed input / projection output
    pub q: Tensor,      // [seq, n_heads * head_dim]
    pub k: Tensor,      // [seq, n_kv_heads * head_dim]
    pub v: Tensor,      // [seq, n_kv_heads * head_dim]
    pub att: Tensor,    // [seq, n_heads * head_dim]
    pub gate: Tensor,   // [seq, intermediate]
    pub up: Tensor,     // [seq, intermediate]
    pub act: Tensor,    // [seq, intermediate]
    pub logits: Tensor, // [rows, vocab]
}

impl Workspace {
    pub fn new(c: &LlamaConfig) -> Self {
        let z = |w| Tensor::zeros(&[0, w], DType::F32);
        let (hidden, q_dim, kv_dim, inter) = (c.hidden_size, c.q_dim(), c.kv_dim(), c.intermediate_size);
        Workspace {
            hidden,
            q_dim,
            kv_dim,
            inter,
            capacity: 0,
            x: z(hidden),
            h: z(hidden),
            q: z(q_dim),
            k: z(kv_dim),
            v: z(kv_dim),
            att: z(q_dim),
            gate: z(inter),
            up: z(inter),
            act: z(inter),
            logits: z(c.vocab_size),
        }
    }

    /// Views every buffer at `seq` rows, growing the storage when needed.
    pub fn resize(&mut self, seq: usize) -> Result<()> {
        let grow = seq > self.capacity;
        let (hidden, q_dim, kv_dim, inter) = (self.hidden, self.q_dim, self.kv_dim, self.inter);
        for (t, w) in [
            (&mut self.x, hidden),
            (&mut self.h, hidden),
            (&mut self.q, q_dim),
            (&mut self.k, kv_dim),
            (&mut self.v, kv_dim),
            (&mut self.att, q_dim),
            (&mut self.gate, inter),
            (&mut self.up, inter),
            (&mut self.act, inter),
        ] {
            if grow {
                *t = Tensor::zeros(&[seq, w], DType::F32);
            } else {
                t.reshape(&[seq, w])?;
            }
        }
        self.capacity = self.capacity.max(seq);
        Ok(())
    }
}
