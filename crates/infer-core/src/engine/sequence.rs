//! One request inside the engine: its tokens, KV blocks, sampler and text stream.

use super::{Completion, EngineEvent, EngineRequest, EventSink, RequestId, TokenLogprob, TopLogprob};
use crate::base::Result;
use crate::model::detokenizer::StreamDecoder;
use crate::model::generate::{FinishReason, StopScanner};
use crate::model::sampler::Sampler;
use crate::model::tokenizer::HfTokenizer;

pub(crate) struct Sequence {
    pub id: RequestId,
    pub req: EngineRequest,
    sink: EventSink,
    /// Prompt, then generated tokens.
    pub tokens: Vec<u32>,
    pub prompt_len: usize,
    /// Tokens whose K/V are in the cache.
    pub computed: usize,
    /// Block table.
    pub blocks: Vec<u32>,
    /// Prefix hashes of the leading full blocks that are registered in the pool.
    pub hashes: Vec<u64>,
    sampler: Sampler,
    decoder: StreamDecoder,
    text: String,
    emitted: usize,
    pub cached_tokens: Option<usize>,
    /// Admission order (preemption picks the newest).
    pub stamp: u64,
    /// False once the sink refused an event (client gone).
    pub alive: bool,
}

impl Sequence {
    pub fn new(id: RequestId, req: EngineRequest, sink: EventSink, sampler: Sampler) -> Self {
        Sequence {
            id,
            tokens: req.prompt_ids.clone(),
            prompt_len: req.prompt_ids.len(),
            req,
            sink,
            computed: 0,
            blocks: Vec::new(),
            hashes: Vec::new(),
            sampler,
            decoder: StreamDecoder::new(true),
            text: String::new(),
            emitted: 0,
            cached_tokens: None,
            stamp: 0,
            alive: true,
        }
    }

    pub fn generated(&self) -> usize {
        self.tokens.len() - self.prompt_len
    }

    /// Tokens still to run through the model.
    pub fn pending(&self) -> usize {
        self.tokens.len() - self.computed
    }

    /// Sends an event unless the client is gone; records whether it still listens.
    pub fn emit(&mut self, ev: EngineEvent) -> bool {
        if self.alive {
            self.alive = (self.sink)(ev);
        }
        self.alive
    }

    /// Whether the next id is the argmax of the raw logits, so the device can pick it.
    pub fn plain_greedy(&self) -> bool {
        self.req.sampler.is_plain_greedy() && self.req.logprobs.is_none()
    }

    /// Samples the next token from `row` (this sequence's logits, modified in place), streams
    /// it, and returns why the sequence ends, if it does.
    pub fn advance(
        &mut self,
        row: &mut [f32],
        tok: &HfTokenizer,
        eos: &[u32],
        context: usize,
    ) -> Result<Option<FinishReason>> {
        let raw = self.req.logprobs.map(|k| (row.to_vec(), k));
        let id = self.sampler.sample(row, &self.tokens)?;
        let logprob = match raw {
            Some((raw, k)) => Some(logprobs(&raw, id, k, tok)?),
            None => None,
        };
        self.push(id, logprob, tok, eos, context)
    }

    /// [`Sequence::advance`] with the id chosen already (a device argmax, for [`Self::plain_greedy`]).
    pub fn advance_with(
        &mut self,
        id: u32,
        tok: &HfTokenizer,
        eos: &[u32],
        context: usize,
    ) -> Result<Option<FinishReason>> {
        self.sampler.record(id);
        self.push(id, None, tok, eos, context)
    }

    fn push(
        &mut self,
        id: u32,
        logprob: Option<TokenLogprob>,
        tok: &HfTokenizer,
        eos: &[u32],
        context: usize,
    ) -> Result<Option<FinishReason>> {
        self.tokens.push(id);
        self.text.push_str(&self.decoder.push(tok, id)?);
        let mut scan = StopScanner { stops: &self.req.stop, emitted: self.emitted };
        let (delta, stopped) = scan.scan(&mut self.text, false);
        self.emitted = scan.emitted;
        let eos_hit = !self.req.ignore_eos && eos.contains(&id);
        self.emit(EngineEvent::Token { id, text: delta, logprob });
        Ok(if stopped || eos_hit {
            if stopped {
                self.decoder = StreamDecoder::new(true); // nothing after a stop string is text
            }
            Some(FinishReason::Stop)
        } else if self.generated() >= self.req.max_tokens || self.tokens.len() >= context {
            Some(FinishReason::Length)
        } else {
            None
        })
    }

    /// Sends the final event.
    pub fn finish(&mut self, reason: FinishReason, tok: &HfTokenizer) {
        let rest = self.decoder.finish(tok).unwrap_or_default();
        self.text.push_str(&rest);
        let mut scan = StopScanner { stops: &self.req.stop, emitted: self.emitted };
        let (text, _) = scan.scan(&mut self.text, true);
        self.emitted = scan.emitted;
        let done = Completion {
            text,
            reason,
            prompt_tokens: self.prompt_len,
            completion_tokens: self.generated(),
            cached_tokens: self.cached_tokens.unwrap_or(0),
        };
        self.emit(EngineEvent::Done(done));
    }
}

/// Log-softmax of `raw` at `id` plus the `k` most likely tokens.
fn logprobs(raw: &[f32], id: u32, k: usize, tok: &HfTokenizer) -> Result<TokenLogprob> {
    let max = raw.iter().copied().filter(|x| !x.is_nan()).fold(f32::NEG_INFINITY, f32::max);
    let lse = max + raw.iter().filter(|x| !x.is_nan()).map(|&x| (x - max).exp()).sum::<f32>().ln();
    let lp = |i: usize| raw[i] - lse;
    let mut order: Vec<usize> = (0..raw.len()).filter(|&i| !raw[i].is_nan()).collect();
    let k = k.min(order.len());
    if k > 0 && k < order.len() {
        order.select_nth_unstable_by(k - 1, |&a, &b| raw[b].total_cmp(&raw[a]));
    }
    order.truncate(k);
    order.sort_by(|&a, &b| raw[b].total_cmp(&raw[a]));
    let piece = |i: u32| -> Result<(String, Vec<u8>)> {
        let s = tok.decode_ids(&[i], false)?;
        let b = s.as_bytes().to_vec();
        Ok((s, b))
    };
    let top = order
        .into_iter()
        .map(|i| {
            let (token, bytes) = piece(i as u32)?;
            Ok(TopLogprob { id: i as u32, token, bytes, logprob: lp(i) })
        })
        .collect::<Result<Vec<_>>>()?;
    let (token, bytes) = piece(id)?;
    Ok(TokenLogprob { id, token, bytes, logprob: lp(id as usize), top })
}
