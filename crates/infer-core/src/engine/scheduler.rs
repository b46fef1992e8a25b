//! The scheduler thread: admission, step planning (decode rows + chunked prefill under a token
//! budget), block allocation with preemption, one batched forward per step, sampling, streaming.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rayon::prelude::*;

use super::blocks::BlockPool;
use super::sequence::Sequence;
use super::{Command, EngineConfig, EngineEvent, RequestId, Shared};
use crate::base::Result;
use crate::model::batch::BatchItem;
use crate::model::generate::FinishReason;
use crate::model::llama3::Llama3;
use crate::model::paged_kv::PagedKvCache;
use crate::model::sampler::Sampler;
use crate::model::tokenizer::HfTokenizer;
use crate::op::argmax::argmax_rows;
use crate::tensor::{DType, Tensor};

pub(crate) struct Scheduler {
    model: Llama3,
    cache: PagedKvCache,
    pool: BlockPool,
    cfg: EngineConfig,
    shared: Arc<Shared>,
    tok: HfTokenizer,
    eos: Vec<u32>,
    context: usize,
    waiting: VecDeque<Sequence>,
    running: Vec<Sequence>,
    stamp: u64,
}

impl Scheduler {
    pub fn new(model: Llama3, cache: PagedKvCache, cfg: EngineConfig, shared: Arc<Shared>) -> Self {
        let pool = BlockPool::new(cache.num_blocks(), cache.block_size());
        Scheduler {
            tok: model.hf_tokenizer().clone(),
            eos: model.eos_token_ids().to_vec(),
            context: model.context_length(),
            model,
            cache,
            pool,
            cfg,
            shared,
            waiting: VecDeque::new(),
            running: Vec::new(),
            stamp: 0,
        }
    }

    pub fn run(mut self) {
        #[cfg(feature = "cuda")]
        if let crate::base::DeviceType::Cuda(n) = self.model.device() {
            // Kernels launched from this thread use the current context.
            if let Err(e) = crate::cuda::device(n).and_then(|d| d.bind()) {
                self.fail_all(&format!("cannot use cuda:{n} on the engine thread: {e}"));
                return;
            }
        }
        while self.take_commands() {
            let t0 = Instant::now();
            self.admit();
            let plan = self.plan();
            if !plan.is_empty() {
                if let Err(e) = self.step(&plan) {
                    let msg = format!("engine error: {e}");
                    for (id, _) in plan {
                        if let Some(mut s) = self.remove(id) {
                            s.emit(EngineEvent::Failed(msg.clone()));
                        }
                    }
                }
                let c = &self.shared.counters;
                c.steps_total.fetch_add(1, Ordering::Relaxed);
                c.busy_micros.fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
            self.publish();
        }
        self.fail_all("server shutting down");
    }

    /// Fails every running, waiting and still-queued request with `msg`; refuses new ones.
    fn fail_all(&mut self, msg: &str) {
        self.shared.shutting_down.store(true, Ordering::Release);
        let queued = self.shared.inbox.lock().map(|mut i| std::mem::take(&mut *i)).unwrap_or_default();
        for c in queued {
            if let Command::Submit(_, _, mut sink) = c {
                self.shared.counters.requests_waiting.fetch_sub(1, Ordering::AcqRel);
                sink(EngineEvent::Failed(msg.to_string()));
            }
        }
        let all: Vec<RequestId> = self.running.iter().chain(&self.waiting).map(|s| s.id).collect();
        for id in all {
            if let Some(mut s) = self.remove(id) {
                s.emit(EngineEvent::Failed(msg.to_string()));
            }
        }
        self.publish();
    }

    /// Applies queued commands, sleeping while there is nothing to do. False: time to exit.
    fn take_commands(&mut self) -> bool {
        let commands = {
            let Ok(mut inbox) = self.shared.inbox.lock() else { return false };
            loop {
                let stopping = self.shared.shutting_down.load(Ordering::Acquire);
                let idle = self.running.is_empty() && self.waiting.is_empty();
                if !inbox.is_empty() || (!idle && !stopping) {
                    break;
                }
                if stopping && (idle || self.past_deadline()) {
                    return false;
                }
                if stopping {
                    break;
                }
                inbox = match self.shared.wake.wait_timeout(inbox, Duration::from_millis(200)) {
                    Ok((g, _)) => g,
                    Err(_) => return false,
                };
            }
            std::mem::take(&mut *inbox)
        };
        for c in commands {
            match c {
                Command::Submit(id, req, mut sink) => match Sampler::new(req.sampler.clone()) {
                    Ok(sampler) => self.waiting.push_back(Sequence::new(id, req, sink, sampler)),
                    Err(e) => {
                        sink(EngineEvent::Failed(e.to_string()));
                        self.shared.counters.requests_waiting.fetch_sub(1, Ordering::AcqRel);
                    }
                },
                Command::Cancel(id) => self.cancel(id),
            }
        }
        !(self.shared.shutting_down.load(Ordering::Acquire) && self.past_deadline())
    }

    fn past_deadline(&self) -> bool {
        self.shared.deadline.lock().ok().and_then(|d| *d).is_some_and(|d| Instant::now() >= d)
    }

    fn cancel(&mut self, id: RequestId) {
        if self.remove(id).is_some() {
            self.shared.counters.requests_cancelled.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Removes a sequence (running or waiting) and frees its blocks.
    fn remove(&mut self, id: RequestId) -> Option<Sequence> {
        let c = &self.shared.counters;
        let mut s = if let Some(i) = self.running.iter().position(|s| s.id == id) {
            c.requests_running.fetch_sub(1, Ordering::AcqRel);
            self.running.swap_remove(i)
        } else if let Some(i) = self.waiting.iter().position(|s| s.id == id) {
            c.requests_waiting.fetch_sub(1, Ordering::AcqRel);
            self.waiting.remove(i)?
        } else {
            return None;
        };
        for b in s.blocks.drain(..) {
            self.pool.release(b);
        }
        Some(s)
    }

    /// Moves waiting sequences into the batch while a slot and blocks for their whole prompt
    /// are free (first come, first served), reusing cached prefix blocks.
    fn admit(&mut self) {
        let bs = self.pool.block_size();
        while self.running.len() < self.cfg.max_batch {
            let Some(mut s) = self.waiting.pop_front() else { break };
            // Cached full blocks, leaving at least the last token to compute (its logits are needed).
            let mut parent = 0;
            while self.cfg.prefix_caching && (s.blocks.len() + 1) * bs < s.tokens.len() {
                let j = s.blocks.len();
                match self.pool.lookup(parent, &s.tokens[j * bs..(j + 1) * bs]) {
                    Some((b, h)) => {
                        s.blocks.push(b);
                        s.hashes.push(h);
                        parent = h;
                    }
                    None => break,
                }
            }
            let need = s.tokens.len().div_ceil(bs) - s.blocks.len();
            if need > self.pool.free() {
                for b in s.blocks.drain(..) {
                    self.pool.release(b);
                }
                s.hashes.clear();
                self.waiting.push_front(s);
                break;
            }
            s.computed = s.blocks.len() * bs;
            let c = &self.shared.counters;
            if s.cached_tokens.is_none() {
                s.cached_tokens = Some(s.computed);
                c.prefix_cache_hit_tokens.fetch_add(s.computed as u64, Ordering::Relaxed);
                c.prompt_tokens_total.fetch_add(s.prompt_len as u64, Ordering::Relaxed);
            }
            self.stamp += 1;
            s.stamp = self.stamp;
            c.requests_waiting.fetch_sub(1, Ordering::AcqRel);
            c.requests_running.fetch_add(1, Ordering::AcqRel);
            self.running.push(s);
        }
    }

    /// This step's `(sequence, tokens)`: every decoding sequence's next token, then prompt
    /// chunks in admission order while the token budget lasts. Blocks are allocated here; when
    /// the pool runs dry the newest sequence is preempted (recomputed after readmission).
    fn plan(&mut self) -> Vec<(RequestId, usize)> {
        self.running.sort_by_key(|s| s.stamp);
        let mut plan: Vec<(RequestId, usize)> = Vec::new();
        let mut budget = self.cfg.step_tokens;
        for decode_pass in [true, false] {
            let mut i = 0;
            while i < self.running.len() && budget > 0 {
                let s = &self.running[i];
                let pending = s.pending();
                if (pending == 1) != decode_pass || pending == 0 {
                    i += 1;
                    continue;
                }
                let n = pending.min(budget);
                match self.reserve(i, s.computed + n, &mut plan, &mut budget) {
                    Some(idx) => {
                        plan.push((self.running[idx].id, n));
                        budget -= n;
                        i = idx + 1;
                    }
                    None => break, // this sequence itself was preempted (it was the newest)
                }
            }
        }
        plan
    }

    /// Gives running sequence `i` blocks for `end` positions, preempting the newest other
    /// sequences as needed (dropping them from `plan`). Returns `i`'s index afterwards, or
    /// None when `i` had to be preempted itself.
    fn reserve(
        &mut self,
        mut i: usize,
        end: usize,
        plan: &mut Vec<(RequestId, usize)>,
        budget: &mut usize,
    ) -> Option<usize> {
        let bs = self.pool.block_size();
        while self.running[i].blocks.len() * bs < end {
            if let Some(b) = self.pool.allocate() {
                self.running[i].blocks.push(b);
                continue;
            }
            // running is sorted by stamp: the newest is last.
            let victim = self.running.len() - 1;
            let vid = self.running[victim].id;
            if let Some(k) = plan.iter().position(|p| p.0 == vid) {
                *budget += plan.remove(k).1;
            }
            self.preempt(victim);
            if victim == i {
                return None;
            }
            i = i.min(self.running.len() - 1);
        }
        Some(i)
    }

    /// Frees sequence `i`'s blocks and puts it first in the queue; it is recomputed on readmission.
    fn preempt(&mut self, i: usize) {
        let mut s = self.running.remove(i);
        for b in s.blocks.drain(..) {
            self.pool.release(b);
        }
        s.hashes.clear();
        s.computed = 0;
        let c = &self.shared.counters;
        c.requests_preempted.fetch_add(1, Ordering::Relaxed);
        c.requests_running.fetch_sub(1, Ordering::AcqRel);
        c.requests_waiting.fetch_add(1, Ordering::AcqRel);
        self.waiting.push_front(s);
    }

    /// Runs the plan through the model, samples, streams, retires finished sequences.
    fn step(&mut self, plan: &[(RequestId, usize)]) -> Result<()> {
        let idx: Vec<usize> = plan.iter().filter_map(|(id, _)| self.running.iter().position(|s| s.id == *id)).collect();
        let items: Vec<BatchItem> = idx
            .iter()
            .zip(plan)
            .map(|(&i, &(_, n))| {
                let s = &self.running[i];
                BatchItem {
                    ids: &s.tokens[s.computed..s.computed + n],
                    pos0: s.computed,
                    blocks: &s.blocks,
                    logits: s.computed + n == s.tokens.len(),
                }
            })
            .collect();
        let wants: Vec<bool> = items.iter().map(|it| it.logits).collect();
        let logits = self.model.forward_batch(&mut self.cache, &items)?;
        let vocab = logits.shape().get(1).copied().unwrap_or(0);
        let bs = self.pool.block_size();
        for (&i, &(_, n)) in idx.iter().zip(plan) {
            let s = &mut self.running[i];
            s.computed += n;
            while self.cfg.prefix_caching && (s.hashes.len() + 1) * bs <= s.computed {
                let j = s.hashes.len();
                let parent = s.hashes.last().copied().unwrap_or(0);
                let h = self.pool.register(s.blocks[j], parent, &s.tokens[j * bs..(j + 1) * bs]);
                s.hashes.push(h);
            }
        }
        // Plain-greedy sequences take the argmax (on the device for a GPU: only ids cross);
        // the others sample from their host row, in parallel (each owns its row and sampler).
        let with_logits: Vec<usize> = idx.iter().zip(&wants).filter(|(_, w)| **w).map(|(&i, _)| i).collect();
        let greedy: Vec<bool> = with_logits.iter().map(|&i| self.running[i].plain_greedy()).collect();
        let ids = if greedy.iter().any(|&g| g) { argmax_rows(logits)? } else { Vec::new() };
        let mut host = None;
        if greedy.iter().any(|&g| !g) {
            host = Some(if logits.is_cuda() {
                logits.to_host()?
            } else {
                std::mem::replace(logits, Tensor::zeros(&[0, 0], DType::F32))
            });
        }
        let mut rows = match host.as_mut() {
            Some(t) => t.as_f32_mut()?.chunks_exact_mut(vocab.max(1)).map(Some).collect(),
            None => Vec::new(),
        };
        let (tok, eos, ctx) = (&self.tok, &self.eos[..], self.context);
        let mut by_index: Vec<Option<&mut Sequence>> = self.running.iter_mut().map(Some).collect();
        let mut jobs: Vec<(&mut Sequence, Choice)> = Vec::new();
        for (r, &i) in with_logits.iter().enumerate() {
            let choice = match (greedy[r], ids.get(r), rows.get_mut(r).and_then(Option::take)) {
                (true, Some(&id), _) => Choice::Id(id),
                (false, _, Some(row)) => Choice::Row(row),
                _ => continue,
            };
            if let Some(s) = by_index[i].take() {
                jobs.push((s, choice));
            }
        }
        let outcomes: Vec<(RequestId, std::result::Result<Option<FinishReason>, String>)> = jobs
            .into_par_iter()
            .map(|(s, choice)| {
                let r = match choice {
                    Choice::Id(id) => s.advance_with(id, tok, eos, ctx),
                    Choice::Row(row) => s.advance(row, tok, eos, ctx),
                };
                (s.id, r.map_err(|e| e.to_string()))
            })
            .collect();
        let generated = outcomes.iter().filter(|o| o.1.is_ok()).count() as u64;
        self.shared.counters.generation_tokens_total.fetch_add(generated, Ordering::Relaxed);
        for (id, outcome) in outcomes {
            match outcome {
                Ok(Some(reason)) => {
                    if let Some(mut s) = self.remove(id) {
                        // Counters first: a client reading metrics after Done sees them updated.
                        self.shared.counters.requests_finished.fetch_add(1, Ordering::Relaxed);
                        self.publish();
                        s.finish(reason, &self.tok);
                    }
                }
                Ok(None) => {}
                Err(msg) => {
                    if let Some(mut s) = self.remove(id) {
                        s.emit(EngineEvent::Failed(msg));
                    }
                }
            }
        }
        // Clients that went away.
        let gone: Vec<RequestId> = self.running.iter().filter(|s| !s.alive).map(|s| s.id).collect();
        for id in gone {
            self.cancel(id);
        }
        Ok(())
    }

    fn publish(&self) {
        let used = (self.pool.total() - self.pool.free()) as u64;
        self.shared.counters.kv_blocks_used.store(used, Ordering::Relaxed);
    }
}

/// How a sequence's next token is chosen this step.
enum Choice<'a> {
    /// Picked already (device or host argmax).
    Id(u32),
    /// Sampled from this host logits row.
    Row(&'a mut [f32]),
}
