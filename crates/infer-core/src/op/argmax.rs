//! Index of the largest element (greedy decoding).

use crate::base::{Error, Result};

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_max_and_errors() {
        assert_eq!(argmax(&[1.0, 3.0, 3.0, -1.0]).unwrap(), 1);
        assert_eq!(argmax(&[f32::NAN, -5.0]).unwrap(), 1);
        assert!(argmax(&[]).is_err());
        assert!(argmax(&[f32::NAN]).is_err());
    }
}
