//! Teacher-forced scoring: one batched forward pass over a token sequence with every position's
//! logits, then, per position, the most likely next id and the log-probability of the id that
//! actually follows (log-softmax in f64), and the perplexity `exp(mean NLL)` over the `n - 1`
//! predictions.

use serde::Serialize;

use super::llama3::Llama3;
use crate::base::{Error, Result};

/// The score of one prediction: position `pos` predicting the token at `pos + 1`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PositionScore {
    pub pos: usize,
    /// The id that follows (`ids[pos + 1]`).
    pub next_id: u32,
    /// The model's most likely next id (the lowest id among equal maxima).
    pub argmax: u32,
    /// `log p(next_id | ids[..=pos])`, natural log.
    pub logprob: f64,
}

/// The score of a sequence.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Score {
    /// Length of the scored sequence.
    pub tokens: usize,
    /// `tokens - 1` predictions.
    pub positions: Vec<PositionScore>,
    /// Mean negative log-likelihood (nats per token).
    pub nll_mean: f64,
    /// `exp(nll_mean)`.
    pub perplexity: f64,
    /// Fraction of positions whose argmax is the next id.
    pub argmax_agreement: f64,
}

/// `log_softmax(row)[target]` in f64, and the argmax of `row` (first of equal maxima). A
/// `target` outside the row has log-probability −∞.
pub fn logprob_and_argmax(row: &[f32], target: usize) -> (f64, u32) {
    let (mut best, mut max) = (0usize, f32::NEG_INFINITY);
    for (i, &x) in row.iter().enumerate() {
        if x > max {
            (best, max) = (i, x);
        }
    }
    let m = f64::from(max);
    let sum: f64 = row.iter().map(|&x| (f64::from(x) - m).exp()).sum();
    let lp = row.get(target).map_or(f64::NEG_INFINITY, |&x| f64::from(x) - m - sum.ln());
    (lp, best as u32)
}

impl Score {
    /// Scores `ids` from logits of at least `ids.len() - 1` rows of `vocab` (row `i` predicts
    /// `ids[i + 1]`; a last row, predicting past the end, is ignored).
    pub fn from_logits(ids: &[u32], logits: &[f32], vocab: usize) -> Result<Score> {
        let bad_id = ids.iter().skip(1).any(|&id| id as usize >= vocab);
        if ids.len() < 2 || vocab == 0 || logits.len() < (ids.len() - 1) * vocab || bad_id {
            return Err(Error::InvalidArgument(format!(
                "scoring needs at least 2 ids inside the vocabulary and logits for each prediction ({} ids, {} logits of vocab {vocab})",
                ids.len(),
                logits.len()
            )));
        }
        let positions: Vec<PositionScore> = ids
            .windows(2)
            .zip(logits.chunks_exact(vocab))
            .enumerate()
            .map(|(pos, (w, row))| {
                let (logprob, argmax) = logprob_and_argmax(row, w[1] as usize);
                PositionScore { pos, next_id: w[1], argmax, logprob }
            })
            .collect();
        let n = positions.len() as f64;
        let nll_mean = -positions.iter().map(|p| p.logprob).sum::<f64>() / n;
        let agree = positions.iter().filter(|p| p.argmax == p.next_id).count() as f64;
        Ok(Score { tokens: ids.len(), positions, nll_mean, perplexity: nll_mean.exp(), argmax_agreement: agree / n })
    }
}

impl Llama3 {
    /// Teacher-forced score of `ids` (one batched forward from position 0; the KV cache is
    /// overwritten). Errors: fewer than 2 ids, an id outside the vocabulary, more ids than the
    /// context length.
    pub fn score(&mut self, ids: &[u32]) -> Result<Score> {
        if ids.len() < 2 {
            return Err(Error::InvalidArgument(format!(
                "scoring needs at least 2 tokens (one prediction), got {}",
                ids.len()
            )));
        }
        let vocab = self.config.vocab_size;
        if let Some((i, id)) = ids.iter().enumerate().find(|(_, id)| **id as usize >= vocab) {
            return Err(Error::InvalidArgument(format!(
                "token id {id} at index {i} is outside the vocabulary (size {vocab})"
            )));
        }
        if ids.len() > self.context_length() {
            return Err(Error::ContextOverflow {
                prompt_tokens: ids.len(),
                max_new_tokens: 0,
                context_length: self.context_length(),
            });
        }
        self.reset();
        let logits = self.forward_tokens(ids, 0, true)?.as_f32()?;
        Score::from_logits(ids, logits, vocab)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logprob_matches_a_direct_softmax() {
        let row = [1.0f32, 3.0, -2.0, 3.0];
        let (lp, am) = logprob_and_argmax(&row, 2);
        let z: f64 = row.iter().map(|&x| f64::from(x).exp()).sum();
        assert!((lp - ((-2f64).exp() / z).ln()).abs() < 1e-12);
        assert_eq!(am, 1, "first of equal maxima");
        // Large logits do not overflow.
        let (lp, _) = logprob_and_argmax(&[1000.0, 1000.0], 0);
        assert!((lp - 0.5f64.ln()).abs() < 1e-12);
    }

    #[test]
    fn perplexity_of_a_uniform_model_is_the_vocab() {
        // Uniform logits: argmax 0 everywhere; next ids 0 and 2 → half agree.
        let s = Score::from_logits(&[5, 0, 2], &[0.0; 3 * 4], 4).unwrap();
        assert_eq!((s.tokens, s.positions.len()), (3, 2));
        assert!((s.perplexity - 4.0).abs() < 1e-12 && (s.nll_mean - 4f64.ln()).abs() < 1e-12);
        assert_eq!(s.argmax_agreement, 0.5);
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(Score::from_logits(&[0], &[0.0; 4], 4).is_err());
        assert!(Score::from_logits(&[0, 1, 2], &[0.0; 4], 4).is_err());
        assert!(Score::from_logits(&[0, 9], &[0.0; 8], 4).is_err());
    }
}
