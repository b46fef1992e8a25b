//! Load-time interleaving of Q4_K matrices for the CPU decode kernels
//! ([`DType::Q4_Kx8`], `tensor::repack`), as llama.cpp's `--repack` (on by default there too).
//!
//! Every projection (q/k/v/o, gate/up/down, and the LM head) stored in Q4_K with a row count
//! that is a multiple of 8 is copied into the interleaved layout, and the memory map's pages of
//! the Q4_K original are released (not read again). A tied LM head gets its own interleaved
//! copy; the embedding's pages are released too, and a lookup faults back in only its row's.

use rayon::prelude::*;

use super::llama3::Weights;
use crate::base::Result;
use crate::tensor::repack::{GROUP, repack_q4_k};
use crate::tensor::{DType, Tensor, TensorData};

/// The interleaved copy of `t` and its bytes when `t` is a Q4_K matrix of whole groups of
/// rows, else `None`.
fn repacked(t: &Tensor) -> Result<Option<(Tensor, u64)>> {
    let (n, k) = match t.shape() {
        [n, k] if t.dtype() == DType::Q4_K && n % GROUP == 0 && *n > 0 => (*n, *k),
        _ => return Ok(None),
    };
    let TensorData::Quant(_, bytes) = t.data()? else { return Ok(None) };
    let r = repack_q4_k(bytes, k)?;
    let len = r.len() as u64;
    Ok(Some((Tensor::from_quantized(&[n, k], DType::Q4_Kx8, r)?, len)))
}

/// Interleaves the Q4_K projections of `w` (see the module docs); `tied_copy`: a missing LM
/// head (tied to the embedding) gets an interleaved copy of the embedding. Returns the bytes
/// interleaved.
pub(crate) fn repack_weights(w: &mut Weights, tied_copy: bool) -> Result<u64> {
    let mut slots: Vec<&mut Tensor> = Vec::new();
    for l in &mut w.layers {
        slots.extend(l.qkv_proj.iter_mut());
        slots.push(&mut l.o_proj);
        slots.extend(l.gate_up_proj.iter_mut());
        slots.push(&mut l.down_proj);
    }
    slots.extend(w.lm_head.as_mut());
    let done: Vec<u64> = slots
        .into_par_iter()
        .map(|t| {
            Ok(match repacked(t)? {
                Some((r, bytes)) => {
                    std::mem::replace(t, r).release_mapped_pages();
                    bytes
                }
                None => 0,
            })
        })
        .collect::<Result<_>>()?;
    let mut total: u64 = done.iter().sum();
    if tied_copy
        && w.lm_head.is_none()
        && let Some((head, bytes)) = repacked(&w.embed_tokens)?
    {
        total += bytes;
        w.lm_head = Some(head);
        // Lookups read a row at a time: only those rows' pages come back.
        w.embed_tokens.release_mapped_pages();
    }
    Ok(total)
}
