//! Command-line flags.

use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand};
use infer_core::{DeviceType, SamplerConfig};

#[derive(Parser, Debug)]
#[command(
    name = "infer-cli",
    version,
    about = "RustInfer: fast Llama 3 inference on CPU and CUDA",
    args_override_self = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Generate a completion of one prompt.
    Generate(GenerateArgs),
    /// Interactive multi-turn chat through the model's chat template.
    Chat(ChatArgs),
}

#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Hugging Face model directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long, short)]
    pub model: PathBuf,
    /// `cpu`, `cuda` or `cuda:N`.
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: DeviceType,
    /// KV-cache length in tokens [default: min(max_position_embeddings, 4096)].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1_048_576).map(|x| x as usize))]
    pub context_length: Option<usize>,
    /// Do not draw the loading progress bar.
    #[arg(long)]
    pub no_progress: bool,
    /// CPU: keep matmul activations in f32 (exact, slower) instead of rounding them to bf16
    /// for bf16 weights on CPUs with AVX512_BF16.
    #[arg(long)]
    pub precise: bool,
}

#[derive(Args, Debug)]
pub struct SamplingArgs {
    /// Maximum number of new tokens.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    /// Sampling temperature; 0 means greedy [default: generation_config.json, else greedy].
    #[arg(long)]
    pub temperature: Option<f32>,
    /// Keep only the k most likely tokens (0 = off).
    #[arg(long)]
    pub top_k: Option<usize>,
    /// Nucleus sampling: smallest set with this cumulative probability (1 = off).
    #[arg(long)]
    pub top_p: Option<f32>,
    /// Drop tokens below min_p × the top probability (0 = off).
    #[arg(long)]
    pub min_p: Option<f32>,
    /// Penalty for tokens already in the prompt or output (1 = off).
    #[arg(long)]
    pub repetition_penalty: Option<f32>,
    /// Subtracted once from the logit of every token already generated.
    #[arg(long)]
    pub presence_penalty: Option<f32>,
    /// Subtracted from a token's logit per time it was generated.
    #[arg(long)]
    pub frequency_penalty: Option<f32>,
    /// Random seed: the same seed gives the same text.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Stop before this string (repeatable).
    #[arg(long)]
    pub stop: Vec<String>,
    /// Do not stop at end-of-sequence tokens.
    #[arg(long)]
    pub ignore_eos: bool,
}

impl SamplingArgs {
    /// The model's defaults overridden by every flag given.
    pub fn sampler(&self, defaults: &SamplerConfig) -> SamplerConfig {
        let mut s = defaults.clone();
        if let Some(t) = self.temperature {
            s.temperature = t;
        }
        if let Some(k) = self.top_k {
            s.top_k = k;
        }
        if let Some(p) = self.top_p {
            s.top_p = p;
        }
        if let Some(p) = self.min_p {
            s.min_p = p;
        }
        if let Some(p) = self.repetition_penalty {
            s.repetition_penalty = p;
        }
        if let Some(p) = self.presence_penalty {
            s.presence_penalty = p;
        }
        if let Some(p) = self.frequency_penalty {
            s.frequency_penalty = p;
        }
        if self.seed.is_some() {
            s.seed = self.seed;
        }
        s
    }
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// The prompt text.
    #[arg(long, short)]
    pub prompt: String,
    /// Treat the prompt as one user message rendered through the chat template.
    #[arg(long)]
    pub chat: bool,
    /// System message (with --chat).
    #[arg(long)]
    pub system: Option<String>,
    /// Print one JSON object (ids, text, finish_reason, timings) instead of streaming text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ChatArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// System message.
    #[arg(long)]
    pub system: Option<String>,
}

fn parse_device(s: &str) -> Result<DeviceType, String> {
    s.parse().map_err(|e: infer_core::Error| e.to_string())
}
