//! Token embedding lookup: rows of the `[vocab, hidden]` table, widened to f32.

use super::{DevicePositions, Op, OpContext, check_shape};
use crate::base::{Error, Result};
use crate::tensor::{DType, Tensor};

const NAME: &str = "embedding";

/// Token ids: on the host, and on a GPU optionally already in device memory (a captured CUDA
/// graph reads the id the previous step's argmax wrote there).
#[derive(Debug, Clone, Copy)]
pub struct Ids<'a> {
    pub host: &'a [u32],
    pub device: Option<&'a DevicePositions>,
}

/// `out[i, :] = table[ids[i], :]`; `table` is `[vocab, hidden]` (f32/bf16/f16), `out` `[ids.len(), hidden]` f32.
pub fn embedding(ids: &[u32], table: &Tensor, out: &mut Tensor) -> Result<()> {
    embedding_ids(&Ids { host: ids, device: None }, table, out)
}

/// [`embedding`] with ids that may already be in device memory.
pub fn embedding_ids(ids: &Ids, table: &Tensor, out: &mut Tensor) -> Result<()> {
    let (vocab, hidden) = table.dims2(NAME)?;
    #[cfg(feature = "cuda")]
    if let (Some(d), true) = (ids.device, table.is_cuda()) {
        check_shape(NAME, "output", out, &[ids.host.len(), hidden])?;
        return crate::cuda::ops::embedding_dev(d, ids.host.len(), table, out);
    }
    let ids = ids.host;
    check_shape(NAME, "output", out, &[ids.len(), hidden])?;
    if let Some(bad) = ids.iter().find(|&&id| id as usize >= vocab) {
        return Err(Error::op(NAME, format!("token id {bad} is out of range for a vocabulary of {vocab}")));
    }
    #[cfg(feature = "cuda")]
    if table.is_cuda() {
        return crate::cuda::ops::embedding(ids, table, out);
    }
    let table = table.data()?;
    let out = out.as_f32_mut()?;
    for (row, &id) in out.chunks_exact_mut(hidden).zip(ids) {
        table.copy_to_f32(id as usize * hidden, row)?;
    }
    Ok(())
}

/// [`Op`] form: inputs `[ids (f32 or i32-valued f32 tensor of shape [seq]), table]`, outputs `[out]`.
pub struct Embedding;

impl Op for Embedding {
    fn name(&self) -> &'static str {
        NAME
    }

    fn forward(&self, ctx: &mut OpContext) -> Result<()> {
        let ids_t = ctx.input(NAME, 0)?;
        if ids_t.dtype() != DType::F32 {
            return Err(Error::op(NAME, "ids must be given as an f32 tensor of integral values"));
        }
        let ids: Vec<u32> = ids_t.as_f32()?.iter().map(|&x| x as u32).collect();
        let table = ctx.input(NAME, 1)?;
        embedding(&ids, table, ctx.output(NAME, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::bf16;

    #[test]
    fn looks_up_rows_and_rejects_bad_ids() {
        let table = Tensor::from_bf16(&[3, 2], [0., 1., 2., 3., 4., 5.].map(bf16::from_f32).to_vec()).unwrap();
        let mut out = Tensor::zeros(&[2, 2], DType::F32);
        embedding(&[2, 0], &table, &mut out).unwrap();
        assert_eq!(out.as_f32().unwrap(), &[4., 5., 0., 1.]);
        let e = embedding(&[3, 0], &table, &mut out).unwrap_err().to_string();
        assert!(e.contains("token id 3"), "{e}");
        let mut wrong = Tensor::zeros(&[3, 2], DType::F32);
        assert!(embedding(&[1, 0], &table, &mut wrong).is_err());
    }
}
