//! Activation buffers reused by every forward pass; grown to the longest chunk seen, then
//! viewed at the current chunk length.

use super::config::LlamaConfig;
use crate::base::{DeviceType, Result};
use crate::tensor::{DType, Tensor};

#[derive(Debug)]
pub(crate) struct Workspace {
    /// Row widths of the buffers below, in field order (x, h, qkv, q, att, delta, gate_up, act).
    widths: [usize; 8],
    pub capacity: usize,
    device: DeviceType,
    /// Activation dtype: f32 on the CPU, bf16 on a GPU (the residual stream `x` is always f32).
    act_dtype: DType,
    pub x: Tensor,       // [seq, hidden] f32 residual stream
    pub h: Tensor,       // [seq, hidden] normed activations
    pub qkv: Tensor,     // [seq, (n_heads + 2 n_kv_heads) * head_dim]
    pub q: Tensor,       // [seq, n_heads * head_dim] rotated queries
    pub att: Tensor,     // [seq, n_heads * head_dim]
    pub delta: Tensor,   // [seq, hidden] output of o_proj / down_proj, added to x by the next norm
    pub gate_up: Tensor, // [seq, 2 * intermediate]
    pub act: Tensor,     // [seq, intermediate]
    pub logits: Tensor,  // [rows, vocab] f32
}

impl Workspace {
    pub fn new(c: &LlamaConfig, device: DeviceType) -> Result<Self> {
        let act = if device.is_cpu() { DType::F32 } else { DType::BF16 };
        let z = |w, dtype| Tensor::zeros_on(&[0, w], dtype, device);
        let widths = [
            c.hidden_size,
            c.hidden_size,
            c.q_dim() + 2 * c.kv_dim(),
            c.q_dim(),
            c.q_dim(),
            c.hidden_size,
            2 * c.intermediate_size,
            c.intermediate_size,
        ];
        Ok(Workspace {
            widths,
            capacity: 0,
            device,
            act_dtype: act,
            x: z(widths[0], DType::F32)?,
            h: z(widths[1], act)?,
            qkv: z(widths[2], act)?,
            q: z(widths[3], act)?,
            att: z(widths[4], act)?,
            delta: z(widths[5], act)?,
            gate_up: z(widths[6], act)?,
            act: z(widths[7], act)?,
            logits: Tensor::zeros(&[0, c.vocab_size], DType::F32),
        })
    }

    /// Views every buffer at `seq` rows, growing the storage when needed.
    pub fn resize(&mut self, seq: usize) -> Result<()> {
        let grow = seq > self.capacity;
        let bufs = [
            &mut self.x,
            &mut self.h,
            &mut self.qkv,
            &mut self.q,
            &mut self.att,
            &mut self.delta,
            &mut self.gate_up,
            &mut self.act,
        ];
        for (i, (t, &w)) in bufs.into_iter().zip(&self.widths).enumerate() {
            if grow {
                let dtype = if i == 0 { DType::F32 } else { self.act_dtype };
                *t = Tensor::zeros_on(&[seq, w], dtype, self.device)?;
            } else {
                t.reshape(&[seq, w])?;
            }
        }
        self.capacity = self.capacity.max(seq);
        Ok(())
    }
}
