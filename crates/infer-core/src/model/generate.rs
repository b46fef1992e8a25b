//! Text generation: encode → prefill → loop { sample → stop checks → stream text }.

use std::time::Instant;

use serde::Serialize;

use super::chat::{ChatMessage, RenderOptions};
use super::detokenizer::StreamDecoder;
use super::llama3::Llama3;
use super::sampler::{Sampler, SamplerConfig};
use crate::base::{Error, Result};

/// What to generate and when to stop.
#[derive(Debug, Clone)]
pub struct GenerateOptions {
    pub max_new_tokens: usize,
    pub sampler: SamplerConfig,
    /// Generation stops before the first occurrence of any of these strings (not emitted).
    pub stop: Vec<String>,
    /// Keep going past end-of-sequence tokens (benchmarks, golden tests).
    pub ignore_eos: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        GenerateOptions { max_new_tokens: 256, sampler: SamplerConfig::greedy(), stop: vec![], ignore_eos: false }
    }
}

/// Why generation ended (OpenAI's names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    /// An end-of-sequence token or a stop string.
    Stop,
    /// `max_new_tokens` reached.
    Length,
}

/// The result of one generation.
#[derive(Debug, Clone, Serialize)]
pub struct Generation {
    pub prompt_ids: Vec<u32>,
    /// Generated ids (an end-of-sequence id that stopped generation is included).
    pub ids: Vec<u32>,
    /// Generated text (without the end-of-sequence token or stop string).
    pub text: String,
    pub finish_reason: FinishReason,
    /// Prompt tokens actually computed (a prefix already in the KV cache is reused).
    pub prefill_tokens: usize,
    pub prefill_ms: f64,
    /// Single-token forward passes after the prefill.
    pub decode_tokens: usize,
    pub decode_ms: f64,
}

impl Generation {
    pub fn prefill_tokens_per_s(&self) -> f64 {
        rate(self.prefill_tokens, self.prefill_ms)
    }

    pub fn decode_tokens_per_s(&self) -> f64 {
        rate(self.decode_tokens, self.decode_ms)
    }
}

fn rate(n: usize, ms: f64) -> f64 {
    if ms > 0.0 { n as f64 / (ms / 1e3) } else { 0.0 }
}

/// Holds back text that might be the start of a stop string.
pub(crate) struct StopScanner<'a> {
    pub(crate) stops: &'a [String],
    pub(crate) emitted: usize,
}

impl StopScanner<'_> {
    /// Appends nothing itself: given the full text so far, returns `(delta to emit, stopped)`,
    /// truncating `text` at a stop string when one appears.
    pub(crate) fn scan(&mut self, text: &mut String, finished: bool) -> (String, bool) {
        let longest = self.stops.iter().map(|s| s.len()).max().unwrap_or(0);
        let mut from = self.emitted.saturating_sub(longest);
        while !text.is_char_boundary(from) {
            from -= 1;
        }
        let hit = self.stops.iter().filter(|s| !s.is_empty()).filter_map(|s| text[from..].find(s.as_str())).min();
        if let Some(at) = hit {
            text.truncate(from + at);
        }
        let stopped = hit.is_some();
        let mut end = text.len();
        if !stopped && !finished {
            // Longest suffix of `text` that is a proper prefix of a stop string.
            let hold = (1..longest.min(text.len() + 1))
                .rev()
                .find(|&n| {
                    let start = text.len() - n;
                    text.is_char_boundary(start) && self.stops.iter().any(|s| s.starts_with(&text[start..]))
                })
                .unwrap_or(0);
            end -= hold;
        }
        let delta = if end > self.emitted { text[self.emitted..end].to_string() } else { String::new() };
        self.emitted = self.emitted.max(end);
        (delta, stopped)
    }
}

impl Llama3 {
    /// The seed's API: generates up to `max_tokens` tokens after `prompt` (BOS added) with the
    /// model's sampling defaults (`generation_config.json`; greedy when absent) and returns the
    /// text. With `verbose`, the text streams to stdout and speeds go to stderr.
    pub fn generate(&mut self, prompt: &str, max_tokens: usize, verbose: bool) -> Result<String> {
        let opts = GenerateOptions {
            max_new_tokens: max_tokens,
            sampler: self.generation_defaults.clone(),
            ..GenerateOptions::default()
        };
        let mut print = |s: &str| {
            if verbose {
                use std::io::Write;
                print!("{s}");
                let _ = std::io::stdout().flush();
            }
        };
        let g = self.generate_text(prompt, &opts, &mut print)?;
        if verbose {
            eprintln!(
                "\n[{} prompt tokens, {:.1} tok/s prefill | {} tokens, {:.1} tok/s decode]",
                g.prompt_ids.len(),
                g.prefill_tokens_per_s(),
                g.ids.len(),
                g.decode_tokens_per_s()
            );
        }
        Ok(g.text)
    }

    /// Token ids of `text`; `add_special_tokens` adds BOS as the tokenizer's post-processor does.
    pub fn tokenize(&self, text: &str, add_special_tokens: bool) -> Result<Vec<u32>> {
        self.tokenizer.encode_ids(text, add_special_tokens)
    }

    /// Renders `messages` through the model's chat template.
    pub fn render_chat(&self, messages: &[ChatMessage], opts: &RenderOptions) -> Result<String> {
        let t = self.chat_template.as_ref().ok_or_else(|| {
            Error::Template(format!(
                "{} has no chat template (tokenizer_config.json or chat_template.jinja)",
                self.dir.display()
            ))
        })?;
        t.render(messages, opts)
    }

    /// Prompt ids of a chat: the template emits BOS itself, so no special tokens are added.
    pub fn chat_prompt_ids(&self, messages: &[ChatMessage]) -> Result<Vec<u32>> {
        let text =
            self.render_chat(messages, &RenderOptions { add_generation_prompt: true, ..RenderOptions::default() })?;
        self.tokenize(&text, false)
    }

    /// Generates after a raw text prompt (BOS added).
    pub fn generate_text(
        &mut self,
        prompt: &str,
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        let ids = self.tokenize(prompt, true)?;
        self.generate_ids(&ids, opts, on_text)
    }

    /// Generates the assistant's reply to `messages`.
    pub fn chat(
        &mut self,
        messages: &[ChatMessage],
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        let ids = self.chat_prompt_ids(messages)?;
        self.generate_ids(&ids, opts, on_text)
    }

    /// Generates after `prompt_ids`, calling `on_text` with each new piece of text (never a
    /// split UTF-8 character, never part of a stop string).
    pub fn generate_ids(
        &mut self,
        prompt_ids: &[u32],
        opts: &GenerateOptions,
        on_text: &mut dyn FnMut(&str),
    ) -> Result<Generation> {
        if prompt_ids.is_empty() {
            return Err(Error::InvalidArgument("the prompt is empty".into()));
        }
        let ctx = self.context_length();
        if prompt_ids.len() + opts.max_new_tokens > ctx {
            return Err(Error::ContextOverflow {
                prompt_tokens: prompt_ids.len(),
                max_new_tokens: opts.max_new_tokens,
                context_length: ctx,
            });
        }
        let vocab = self.config.vocab_size;
        if let Some(bad) = prompt_ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::InvalidArgument(format!("prompt token id {bad} is outside the vocabulary ({vocab})")));
        }
        let mut sampler = Sampler::new(opts.sampler.clone())?;
        // Reuse the cached prefix; at least the last prompt token is recomputed for its logits.
        let common =
            self.cached_ids.iter().zip(prompt_ids).take_while(|(a, b)| a == b).count().min(prompt_ids.len() - 1);
        let t0 = Instant::now();
        let mut logits = self.forward_tokens(&prompt_ids[common..], common, false)?.as_f32()?.to_vec();
        let prefill_ms = t0.elapsed().as_secs_f64() * 1e3;

        let mut g = Generation {
            prompt_ids: prompt_ids.to_vec(),
            ids: Vec::new(),
            text: String::new(),
            finish_reason: FinishReason::Length,
            prefill_tokens: prompt_ids.len() - common,
            prefill_ms,
            decode_tokens: 0,
            decode_ms: 0.0,
        };
        let mut context: Vec<u32> = prompt_ids.to_vec();
        let mut decoder = StreamDecoder::new(true);
        let mut stops = StopScanner { stops: &opts.stop, emitted: 0 };
        let mut hit_stop_string = false;
        let sc = &opts.sampler;
        // Greedy without penalties needs no logits on the host: the GPU's argmax picks the id.
        let greedy_fast = sc.is_plain_greedy() && !self.device.is_cpu();
        // Any other sampling on a GPU: the device samples (penalties included), only ids cross.
        let device_sample = !greedy_fast && self.samples_on_device();
        let on_device = greedy_fast || device_sample;
        // Greedy on a GPU keeps two steps in flight: the step after the current one is queued on
        // the device's own argmax result before the host reads the current id. It needs the
        // same device decode state as device sampling (absent with tensor parallelism).
        let pipeline = greedy_fast && self.samples_on_device();
        let mut in_flight = 0usize;
        let t1 = Instant::now();
        let mut next: Option<u32> = None;
        while g.ids.len() < opts.max_new_tokens {
            let id = match next.take() {
                Some(id) => id,
                None => sampler.sample(&mut logits, &context)?,
            };
            g.ids.push(id);
            context.push(id);
            if !opts.ignore_eos && self.eos_ids.contains(&id) {
                g.finish_reason = FinishReason::Stop;
                break;
            }
            let more = g.ids.len() < opts.max_new_tokens;
            let pos = context.len() - 1;
            if more && greedy_fast {
                // Plain greedy on a GPU: queue the next step now (unless it was queued one
                // iteration ago), detokenize while it runs.
                if in_flight == 0 {
                    self.greedy_launch(id, pos)?;
                    in_flight = 1;
                }
                if pipeline && in_flight == 1 && g.ids.len() + 1 < opts.max_new_tokens {
                    self.greedy_launch_next(pos + 1)?;
                    in_flight = 2;
                }
            } else if more && device_sample {
                if g.ids.len() == 1 {
                    // The first id came from the prefill logits on the host; the device takes over.
                    self.sample_start(sc, &context, &g.ids)?;
                }
                self.sample_launch(id, pos, sampler.uniform())?;
                in_flight = 1;
            }
            g.text.push_str(&decoder.push(&self.tokenizer, id)?);
            let (delta, stopped) = stops.scan(&mut g.text, false);
            if !delta.is_empty() {
                on_text(&delta);
            }
            if stopped {
                g.finish_reason = FinishReason::Stop;
                hit_stop_string = true;
                break;
            }
            if !more {
                break;
            }
            if on_device {
                next = Some(self.greedy_wait()?);
                in_flight -= 1;
            } else {
                logits.copy_from_slice(self.forward_tokens(&[id], pos, false)?.as_f32()?);
            }
            g.decode_tokens += 1;
        }
        // Leave no step in flight (after an EOS id or a stop string, queued steps still run).
        for _ in 0..in_flight {
            self.greedy_wait()?;
        }
        g.decode_ms = t1.elapsed().as_secs_f64() * 1e3;
        if !hit_stop_string {
            g.text.push_str(&decoder.finish(&self.tokenizer)?);
        }
        let (delta, _) = stops.scan(&mut g.text, true);
        if !delta.is_empty() {
            on_text(&delta);
        }
        Ok(g)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(stops: &[&str], pieces: &[&str]) -> (String, String, bool) {
        let stops: Vec<String> = stops.iter().map(|s| s.to_string()).collect();
        let mut sc = StopScanner { stops: &stops, emitted: 0 };
        let (mut text, mut out) = (String::new(), String::new());
        for p in pieces {
            text.push_str(p);
            let (d, stopped) = sc.scan(&mut text, false);
            out.push_str(&d);
            if stopped {
                return (text, out, true);
            }
        }
        let (d, _) = sc.scan(&mut text, true);
        out.push_str(&d);
        (text, out, false)
    }

    #[test]
    fn stop_strings_across_pieces() {
        assert_eq!(run(&["END"], &["hello E", "N", "D more"]), ("hello ".into(), "hello ".into(), true));
        assert_eq!(run(&["END"], &["hello E", "x"]), ("hello Ex".into(), "hello Ex".into(), false));
        assert_eq!(run(&[], &["a", "b"]), ("ab".into(), "ab".into(), false));
        assert_eq!(run(&["数字"], &["ab数", "字c"]), ("ab".into(), "ab".into(), true));
    }
}
