//! The key/value cache: per layer `[n_kv_heads, context, head_dim]` f32, preallocated for the
//! chosen context length (never for `max_position_embeddings` unless asked).

use crate::base::{Error, Result};
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
    pub fn new(n_layers: usize, n_kv_heads: usize, head_dim: usize, context: usize) -> Self {
        let shape = [n_kv_heads, context, head_dim];
        KvCache {
            k: (0..n_layers).map(|_| Tensor::zeros(&shape, DType::F32)).collect(),
            v: (0..n_layers).map(|_| Tensor::zeros(&shape, DType::F32)).collect(),
            n_kv_heads,
            head_dim,
            context,
        }
    }

    pub fn context(&self) -> usize {
        self.context
    }

    /// Bytes held by the cache.
    pub fn bytes(&self) -> usize {
        2 * self.k.len() * self.n_kv_heads * self.context * self.head_dim * 4
    }

    /// Layer `layer`'s `(k, v)` caches.
    pub fn layer(&self, layer: usize) -> Result<(&Tensor, &Tensor)> {
        match (self.k.get(layer), self.v.get(layer)) {
            (Some(k), Some(v)) => Ok((k, v)),
            _ => Err(Error::op(NAME, format!("layer {layer} out of range ({} layers)", self.k.len()))),
        }
    }

    /// Stores `k_new`, `v_new` `[seq, n_kv_heads * head_dim]` at positions `pos0..pos0 + seq` of `layer`.
    pub fn write(&mut self, layer: usize, pos0: usize, k_new: &Tensor, v_new: &Tensor) -> Result<()> {
        let (seq, width) = k_new.dims2(NAME)?;
        let (hd, nkv, ctx) = (self.head_dim, self.n_kv_heads, self.context);
        if width != nkv * hd || v_new.shape() != k_new.shape() {
            return Err(Error::op(
                NAME,
                format!("new k/v {:?}/{:?}, expected [seq, {}]", k_new.shape(), v_new.shape(), nkv * hd),
            ));
        }
        if pos0 + seq > ctx {
            return Err(Error::op(NAME, format!("positions up to {} exceed the context length {ctx}", pos0 + seq)));
        }
        if layer >= self.k.len() {
            return Err(Error::op(NAME, format!("layer {layer} out of range ({} layers)", self.k.len())));
        }
        for (src, dst) in [(k_new, &mut self.k[layer]), (v_new, &mut self.v[layer])] {
            let (src, dst) = (src.as_f32()?, dst.as_f32_mut()?);
            for (i, row) in src.chunks_exact(width).enumerate() {
                for (h, head) in row.chunks_exact(hd).enumerate() {
                    let at = (h * ctx + pos0 + i) * hd;
                    dst[at..at + hd].copy_from_slice(head);
                }
            }
        }
        Ok(())
    }

    /// Copies of positions `start..end` of `layer`, each `[n_kv_heads, end - start, head_dim]`.
    pub fn slice(&self, layer: usize, start: usize, end: usize) -> Result<(Tensor, Tensor)> {
        if start > end || end > self.context {
            return Err(Error::op(NAME, format!("slice {start}..{end} is outside 0..{}", self.context)));
        }
        let (k, v) = self.layer(layer)?;
        let (hd, ctx, n) = (self.head_dim, self.context, end - start);
        let copy = |t: &Tensor| -> Result<Tensor> {
            let src = t.as_f32()?;
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
    fn write_then_slice() {
        let mut c = KvCache::new(2, 2, 3, 5);
        let k = Tensor::from_f32(&[2, 6], (0..12).map(|x| x as f32).collect()).unwrap();
        let v = Tensor::from_f32(&[2, 6], (0..12).map(|x| -(x as f32)).collect()).unwrap();
        c.write(1, 2, &k, &v).unwrap();
        let (ks, vs) = c.slice(1, 2, 4).unwrap();
        assert_eq!(ks.shape(), &[2, 2, 3]);
        // head 0: rows [0,1,2] and [6,7,8]; head 1: [3,4,5] and [9,10,11]
        assert_eq!(ks.as_f32().unwrap(), &[0., 1., 2., 6., 7., 8., 3., 4., 5., 9., 10., 11.]);
        assert_eq!(vs.as_f32().unwrap()[3], -6.0);
        assert!(c.write(0, 4, &k, &v).is_err());
        assert!(c.slice(2, 0, 1).is_err());
        assert!(c.slice(0, 3, 6).is_err());
    }
}
