//! Command-line flags.

use std::path::PathBuf;

use clap::builder::TypedValueParser;
use clap::{Args, Parser, Subcommand};
use infer_core::{DType, DeviceType, SamplerConfig};

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
    /// Convert a Hugging Face safetensors Llama directory into a GGUF file (optionally quantized).
    Quantize(QuantizeArgs),
    /// Teacher-forced scoring of a token sequence: per-position log-probs, argmax agreement, perplexity.
    Score(ScoreArgs),
    /// OpenAI-compatible HTTP server with continuous batching.
    Serve(ServeArgs),
}

#[derive(Args, Debug)]
pub struct ModelArgs {
    /// Hugging Face model directory (config.json, *.safetensors, tokenizer.json) or a GGUF file.
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
    /// CPU: the reference-precision path: f32 matmul activations against exactly widened or
    /// dequantized weights (slower), instead of bf16-rounded activations (bf16 weights on
    /// AVX512_BF16 CPUs), 8-bit activations with a residual pass (quantized weights, decode) or
    /// bf16-rounded dequantized weights (quantized weights, prefills of 32+ tokens).
    #[arg(long)]
    pub precise: bool,
    /// CPU: keep Q4_K matrices in the file's layout instead of interleaving them by 8 rows for
    /// the decode kernels at load (llama.cpp's `--repack 0`; saves the copy's memory).
    #[arg(long)]
    pub no_repack: bool,
    /// Split the model over N ranks (Megatron-style tensor parallelism): N threads on the CPU;
    /// with `--device cuda[:K]` the GPUs K..K+N-1, through NCCL (a `--features infer-core/nccl` build).
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u64).range(1..=256).map(|x| x as usize))]
    pub tensor_parallel: usize,
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

#[derive(Args, Debug)]
pub struct QuantizeArgs {
    /// Hugging Face model directory (config.json, *.safetensors, tokenizer.json).
    #[arg(long, short)]
    pub model: PathBuf,
    /// Output GGUF file.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Type of the weight matrices: f32, bf16, f16, q8_0, q4_0, q4_1, q4_k, q6_k.
    #[arg(long = "type", short = 't', value_name = "TYPE", value_parser = parse_type)]
    pub dtype: DType,
    /// `tokenizer.ggml.pre` (e.g. llama-bpe) [default: recognized from tokenizer.json].
    #[arg(long)]
    pub pre: Option<String>,
    /// Do not print a line per tensor.
    #[arg(long)]
    pub no_progress: bool,
}

#[derive(Args, Debug)]
#[command(group = clap::ArgGroup::new("input").required(true).args(["ids", "text"]))]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// JSON file: an array of token ids, or an object with an `ids` array.
    #[arg(long)]
    pub ids: Option<PathBuf>,
    /// Text to score, tokenized with the model's tokenizer (BOS as the tokenizer adds it).
    #[arg(long)]
    pub text: Option<String>,
    /// Print one JSON object (positions, nll_mean, perplexity, argmax_agreement).
    #[arg(long)]
    pub json: bool,
}

fn parse_type(s: &str) -> Result<DType, String> {
    infer_core::model::gguf::convert::parse_type(s).map_err(|e| e.to_string())
}

fn parse_device(s: &str) -> Result<DeviceType, String> {
    s.parse().map_err(|e: infer_core::Error| e.to_string())
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port to listen on (0 = any free port; the address is printed to stderr once bound).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Most sequences decoded together in one step.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u64).range(1..=4096).map(|x| x as usize))]
    pub max_batch: usize,
    /// KV-cache pool budget in MiB [default: the engine's].
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=1 << 24).map(|x| x as usize))]
    pub kv_cache_mb: Option<usize>,
    /// Most requests waiting for a slot; more get 429.
    #[arg(long, default_value_t = 256)]
    pub max_queue: usize,
    /// The model name clients pass as `model` [default: the model's file or directory name].
    #[arg(long)]
    pub served_model_name: Option<String>,
    /// Seconds in-flight requests may take to finish after SIGINT/SIGTERM.
    #[arg(long, default_value_t = 30)]
    pub shutdown_grace_s: u64,
}
