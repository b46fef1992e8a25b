//! The key/value cache: per layer `[n_kv_heads, context, head_dim]` f32, preallocated for the
//! chosen context length (never for `max_position_embeddings` unless asked).

use crate::base::{DeviceType, Error, Result};
use crate::tensor::{DType, Tensor};

const NAME: &str = "kv_cache";

#[derive(Debug)]
pub struct KvCache {
    k: Vec<Tensor>,
    v: Vec<Tensor>,
    n_kv_heads: usize,
    head_dim: usize,
    context: usize,
}

impl KvCache {
    /// f32 on the CPU, bf16 on a GPU.
    pub fn new(
        n_layers: usize,
        n_kv_heads: usize,
        head_dim: usize,
        context: usize,
        device: DeviceType,
    ) -> Result<Self> {
        let shape = [n_kv_heads, context, head_dim];
        let dtype = if device.is_cpu() { DType::F32 } else { DType::BF16 };
        let mk = || (0..n_layers).map(|_| Tensor::zeros_on(&shape, dtype, device)).collect::<Result<Vec<_>>>();
        Ok(KvCache { k: mk()?, v: mk()?, n_kv_heads, head_dim, context })
    }

    pub fn context(&self) -> usize {
        self.context
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        self.k.iter().chain(&self.v).map(|t| t.storage_bytes()).sum()
    }

    /// Layer `layer`'s `(k, v)` caches.
    pub fn layer(&self, layer: usize) -> Result<(&Tensor, &Tensor)> {
        match (self.k.get(layer), self.v.get(layer)) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => Err(Error::op(NAME, format!("layer {layer} out of range ({} layers)", self.k.len()))),
        }
    }

    /// Layer `layer`'s `(k, v)` caches, writable.
    pub fn layer_mut(&mut self, layer: usize) -> Result<(&mut Tensor, &mut Tensor)> {
        let n = self.k.len();
        match (self.k.get_mut(layer), self.v.get_mut(layer)) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => Err(Error::op(NAME, format!("layer {layer} out of range ({n} layers)"))),
        }
    }

    /// Copies of positions `start..end` of `layer`, each `[n_kv_heads, end - start, head_dim]`.
    pub fn slice(&self, layer: usize, start: usize, end: usize) -> Result<(Tensor, Tensor)> {
        if start > end || end > self.context {
            return Err(Error::op(NAME, format!("slice {start}..{end} is outside 0..{}", self.context)));
        }
        let (k, v) = self.layer(layer)?;
        let (hd, ctx, n) = (self.head_dim, self.context, end - start);
        let copy = |t: &Tensor| -> Result<Tensor> {
            let src = t.to_f32_vec()?;
            let mut out = Vec::with_capacity(self.n_kv_heads * n * hd);
            for h in 0..self.n_kv_heads {
                out.extend_from_slice(&src[(h * ctx + start) * hd..(h * ctx + end) * hd]);
            }
            Tensor::from_f32(&[self.n_kv_heads, n, hd], out)
        };
        Ok((copy(k)?, copy(v)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slice_per_head() {
        let mut c = KvCache::new(2, 2, 3, 5, DeviceType::Cpu).unwrap(); // 2 layers, 2 heads, head_dim 3, ctx 5
        let (k, v) = c.layer_mut(1).unwrap();
        k.as_f32_mut().unwrap().iter_mut().enumerate().for_each(|(i, x)| *x = i as f32);
        v.as_f32_mut().unwrap().iter_mut().enumerate().for_each(|(i, x)| *x = -(i as f32));
        let (ks, vs) = c.slice(1, 2, 4).unwrap();
        assert_eq!(ks.shape(), &[2, 2, 3]);
        // head 0 positions 2,3 = elements 6..12; head 1 positions 2,3 = 21..27
        assert_eq!(ks.as_f32().unwrap(), &[6., 7., 8., 9., 10., 11., 21., 22., 23., 24., 25., 26.]);
        assert_eq!(vs.as_f32().unwrap()[0], -6.0);
        assert!(c.layer_mut(2).is_err());
        assert!(c.slice(2, 0, 1).is_err());
        assert!(c.slice(0, 3, 6).is_err());
    }
}
