//! Rotary position embedding (Hugging Face "rotate_half" layout) with Llama 3 frequency scaling.

use super::{Op, OpContext};
use crate::base::{Error, Result};
use crate::model::config::{LlamaConfig, RopeScaling};
use crate::tensor::Tensor;

const NAME: &str = "rope";

/// Precomputed `cos`/`sin` for positions `0..max_pos`, each `[max_pos, head_dim / 2]`.
#[derive(Debug, Clone)]
pub struct RopeTable {
    head_dim: usize,
    max_pos: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
    /// The interleaved (cos, sin) table on a GPU, uploaded on first use.
    #[cfg(feature = "cuda")]
    device: std::sync::OnceLock<crate::cuda::CudaStorage>,
}

/// The inverse frequencies `[head_dim / 2]`, after the config's scaling (computed in f64).
pub fn inv_frequencies(head_dim: usize, theta: f64, scaling: Option<&RopeScaling>) -> Vec<f64> {
    let base: Vec<f64> = (0..head_dim / 2).map(|i| 1.0 / theta.powf((2 * i) as f64 / head_dim as f64)).collect();
    match scaling {
        None => base,
        Some(RopeScaling::Linear { factor }) => base.iter().map(|f| f / factor).collect(),
        Some(&RopeScaling::Llama3 { factor, low_freq_factor, high_freq_factor, original_max_position_embeddings }) => {
            let low_wavelen = original_max_position_embeddings / low_freq_factor;
            let high_wavelen = original_max_position_embeddings / high_freq_factor;
            base.iter()
                .map(|&f| {
                    let wavelen = 2.0 * std::f64::consts::PI / f;
                    if wavelen < high_wavelen {
                        f
                    } else if wavelen > low_wavelen {
                        f / factor
                    } else {
                        let smooth = (original_max_position_embeddings / wavelen - low_freq_factor)
                            / (high_freq_factor - low_freq_factor);
                        (1.0 - smooth) * f / factor + smooth * f
                    }
                })
                .collect()
        }
    }
}

impl RopeTable {
    /// Tables for positions `0..max_pos` of a model.
    pub fn new(cfg: &LlamaConfig, max_pos: usize) -> Self {
        let half = cfg.head_dim / 2;
        let inv = inv_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling.as_ref());
        let mut cos = vec![0f32; max_pos * half];
        let mut sin = vec![0f32; max_pos * half];
        for p in 0..max_pos {
            for (i, f) in inv.iter().enumerate() {
                // Angle in f64: at long positions an f32 product loses the low bits of the phase.
                let a = p as f64 * f;
                cos[p * half + i] = a.cos() as f32;
                sin[p * half + i] = a.sin() as f32;
            }
        }
        RopeTable {
            head_dim: cfg.head_dim,
            max_pos,
            cos,
            sin,
            #[cfg(feature = "cuda")]
            device: std::sync::OnceLock::new(),
        }
    }

    pub fn max_pos(&self) -> usize {
        self.max_pos
    }

    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// `[max_pos, head_dim / 2, 2]` interleaved (cos, sin), the layout of the CUDA kernel's table.
    pub fn cos_sin_interleaved(&self) -> Vec<f32> {
        self.cos.iter().zip(&self.sin).flat_map(|(c, s)| [*c, *s]).collect()
    }

    /// The interleaved table in `dev`'s memory (uploaded once).
    #[cfg(feature = "cuda")]
    pub(crate) fn device_cos_sin(
        &self,
        dev: &std::sync::Arc<crate::cuda::CudaDevice>,
    ) -> Result<&crate::cuda::CudaStorage> {
        if let Some(t) = self.device.get().filter(|t| t.dev.ordinal == dev.ordinal) {
            return Ok(t);
        }
        let t = crate::cuda::ops::upload_cos_sin(dev, &self.cos_sin_interleaved())?;
        let _ = self.device.set(t);
        self.device.get().ok_or_else(|| Error::op(NAME, "rope table upload failed"))
    }
}

/// Rotates `x` `[seq, n_heads * head_dim]` (f32, in place); row `i` is at position `pos0 + i`.
pub fn rope(x: &mut Tensor, pos0: usize, table: &RopeTable) -> Result<()> {
    let (seq, width) = x.dims2(NAME)?;
    let hd = table.head_dim;
    if !width.is_multiple_of(hd) {
        return Err(Error::op(NAME, format!("row width {width} is not a multiple of head_dim {hd}")));
    }
    if pos0 + seq > table.max_pos {
        return Err(Error::op(NAME, format!("positions up to {} exceed the table ({})", pos0 + seq, table.max_pos)));
    }
    rotate_rows(x.as_f32_mut()?, width, pos0, table);
    Ok(())
}

/// Rotates rows of `width` (a multiple of head_dim) in place, row `i` at position `pos0 + i`.
/// Callers have checked that the positions are inside the table.
pub(crate) fn rotate_rows(x: &mut [f32], width: usize, pos0: usize, table: &RopeTable) {
    let (hd, half) = (table.head_dim, table.head_dim / 2);
    crate::op::cpu::pool::for_each_chunk(x, width, |i, row| {
        let p = pos0 + i;
        let (cos, sin) = (&table.cos[p * half..(p + 1) * half], &table.sin[p * half..(p + 1) * half]);
        for head in row.chunks_exact_mut(hd) {
            let (x1, x2) = head.split_at_mut(half);
            for j in 0..half {
                let (a, b) = (x1[j], x2[j]);
                x1[j] = a * cos[j] - b * sin[j];
                x2[j] = b * cos[j] + a * sin[j];
            }
        }
    });
}

/// [`Op`] form: outputs `[x]` rotated in place at positions `pos0..`.
pub struct Rope<'a> {
    pub table: &'a RopeTable,
    pub pos0: usize,
}

impl Op for Rope<'_> {
    fn name(&self) -> &'static str {
        NAME
    }

    fn forward(&self, ctx: &mut OpContext) -> Result<()> {
        rope(ctx.output(NAME, 0)?, self.pos0, self.table)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn tiny() -> LlamaConfig {
        let text = include_str!("../../../../tests/fixtures/tiny-llama3/config.json");
        LlamaConfig::from_json_str(text, Path::new("config.json")).unwrap()
    }

    #[test]
    fn llama3_scaling_touches_three_bands() {
        let c = tiny();
        let plain = inv_frequencies(c.head_dim, c.rope_theta, None);
        let scaled = inv_frequencies(c.head_dim, c.rope_theta, c.rope_scaling.as_ref());
        let kept = plain.iter().zip(&scaled).filter(|(a, b)| a == b).count();
        let divided = plain.iter().zip(&scaled).filter(|(a, b)| ((*a / 8.0) - **b).abs() < 1e-18).count();
        let smoothed = plain.len() - kept - divided;
        assert!(kept > 0 && divided > 0 && smoothed > 0, "{kept} {divided} {smoothed}");
    }

    #[test]
    fn rotates_pairs_half_apart() {
        let c = tiny();
        let table = RopeTable::new(&c, 8);
        let hd = c.head_dim;
        let orig: Vec<f32> = (0..2 * hd).map(|i| (i as f32 * 0.37).sin()).collect();
        let mut x = Tensor::from_f32(&[1, 2 * hd], orig.clone()).unwrap();
        rope(&mut x, 5, &table).unwrap();
        let inv = inv_frequencies(hd, c.rope_theta, c.rope_scaling.as_ref());
        let got = x.as_f32().unwrap();
        for h in 0..2 {
            for j in 0..hd / 2 {
                let a = 5.0 * inv[j];
                let (x1, x2) = (orig[h * hd + j] as f64, orig[h * hd + j + hd / 2] as f64);
                assert!((got[h * hd + j] as f64 - (x1 * a.cos() - x2 * a.sin())).abs() < 1e-6);
                assert!((got[h * hd + j + hd / 2] as f64 - (x2 * a.cos() + x1 * a.sin())).abs() < 1e-6);
            }
        }
        assert!(rope(&mut x, 8, &table).is_err());
    }
}
