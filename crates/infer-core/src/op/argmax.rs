//! Index of the largest element (greedy decoding).

use rayon::prelude::*;

use crate::base::{Error, Result};
use crate::tensor::Tensor;

const NAME: &str = "argmax";

/// The first index of the maximum of `x`; NaNs are skipped. Errors on an empty or all-NaN input.
pub fn argmax(x: &[f32]) -> Result<u32> {
    let mut best: Option<(usize, f32)> = None;
    for (i, &v) in x.iter().enumerate() {
        if !v.is_nan() && best.is_none_or(|(_, b)| v > b) {
            best = Some((i, v));
        }
    }
    best.map(|(i, _)| i as u32).ok_or_else(|| Error::op(NAME, format!("no finite maximum in {} values", x.len())))
}

/// [`argmax`] of every row of `logits` `[rows, n]` f32 (on the device for a GPU tensor: only the
/// ids come back).
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    let (_, n) = logits.dims2(NAME)?;
    if n == 0 {
        return Err(Error::op(NAME, "rows of zero logits"));
    }
    #[cfg(feature = "cuda")]
    if logits.is_cuda() {
        return crate::cuda::sample::argmax_rows(logits);
    }
    logits.as_f32()?.par_chunks_exact(n).map(argmax).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_max_and_errors() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]).unwrap(), 1);
        assert_eq!(argmax(&[f32::NAN, -5.0]).unwrap(), 1);
        assert!(argmax(&[]).is_err());
        assert!(argmax(&[f32::NAN]).is_err());
        let t = Tensor::from_f32(&[2, 3], vec![0.0, 2.0, 1.0, 5.0, f32::NAN, 5.0]).unwrap();
        assert_eq!(argmax_rows(&t).unwrap(), vec![1, 0]);
    }
}
