//! Llama 3: weights (Hugging Face names end to end), the forward pass, and the seed's API.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

use super::chat::ChatTemplate;
use super::config::LlamaConfig;
#[cfg(feature = "cuda")]
use super::gpu::{Select, graph_slot};
use super::kv_cache::KvCache;
use super::paged_kv::PagedKvCache;
use super::safetensors::WeightStore;
use super::sampler::{SamplerConfig, from_generation_config};
use super::tokenizer::{HfTokenizer, Tokenizer};
use super::weights::WeightSource;
use super::{Model, workspace::Workspace};
use crate::base::{DeviceType, Error, Result};
#[cfg(feature = "cuda")]
use crate::cuda::decode_step::DecodeKernel;
use crate::op::embedding::{Ids, embedding_ids};
#[cfg(feature = "cuda")]
use crate::op::matmul::matmul;
use crate::op::matmul::matmul_with_precision;
use crate::op::{DevicePositions, Positions, Precision, attention::attention, matmul_add::matmul_add};
use crate::op::{norm_linear::norm_linear, norm_rope_kv::norm_rope_kv, norm_swiglu::norm_swiglu};
use crate::op::{paged::PagedMeta, paged_attention::paged_attention, rope_kv_paged::rope_kv_paged};
use crate::op::{rms_norm::rms_norm, rope::RopeTable};
use crate::parallel::{Communicator, reduce_add};
use crate::tensor::{DType, Tensor};

/// Default KV-cache length when the user does not choose one.
pub const DEFAULT_CONTEXT: usize = 4096;
/// Longest chunk of prompt processed by one batched forward pass.
pub const PREFILL_CHUNK: usize = 512;

/// Where a forward pass keeps its keys and values.
pub(crate) enum Kv<'a> {
    /// The model's own contiguous cache, the chunk starting at this position.
    Own(usize),
    /// A serving engine's paged cache, rows placed by the metadata; on a GPU optionally with the
    /// token ids already in device memory (what a captured batched decode step reads).
    #[cfg_attr(not(feature = "cuda"), allow(dead_code))]
    Paged(&'a mut PagedKvCache, &'a PagedMeta<'a>, Option<&'a DevicePositions>),
}

/// How to load a model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub device: DeviceType,
    /// KV-cache length; `None` = min(max_position_embeddings, 4096).
    pub context_length: Option<usize>,
    /// Show a progress bar while reading weights (only drawn when stderr is a terminal).
    pub progress: bool,
    /// CPU matmul precision: [`Precision::Fast`] (default) rounds activations to bf16 for bf16
    /// weights on CPUs with AVX512_BF16, as llama.cpp does; [`Precision::Exact`] keeps them f32.
    pub precision: Precision,
    /// CPU with [`Precision::Fast`]: copy Q4_K matrices into the 8-row interleaved layout that
    /// the decode kernels read fastest (`tensor::repack`; llama.cpp's `--repack`, also on by
    /// default). The copied matrices' mapped pages are released (`MADV_DONTNEED`), so resident
    /// memory grows only by the layout's larger scales and a tied LM head's copy (~8% measured
    /// on a 1B model); loading takes longer (0.75 vs 0.5 s there).
    pub repack: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            device: DeviceType::Cpu,
            context_length: None,
            progress: true,
            precision: Precision::default(),
            repack: true,
        }
    }
}

/// One decoder layer's weights (Hugging Face names). Projections that read the same input are
/// kept as lists whose outputs are concatenated: on the CPU the checkpoint's own tensors
/// (zero copy), on a GPU one fused matrix per list.
#[derive(Debug)]
pub struct LayerWeights {
    pub input_layernorm: Tensor, // [hidden]
    /// `self_attn.q_proj | k_proj | v_proj`: [n_heads * head_dim + 2 * n_kv_heads * head_dim, hidden]
    pub qkv_proj: Vec<Tensor>,
    pub o_proj: Tensor,                   // [hidden, n_heads * head_dim]
    pub post_attention_layernorm: Tensor, // [hidden]
    /// `mlp.gate_proj | up_proj`: [2 * intermediate, hidden]
    pub gate_up_proj: Vec<Tensor>,
    pub down_proj: Tensor, // [hidden, intermediate]
}

#[derive(Debug)]
pub struct Weights {
    pub embed_tokens: Tensor, // [vocab, hidden]
    pub layers: Vec<LayerWeights>,
    pub norm: Tensor, // [hidden]
    /// `None` when tied to `embed_tokens`.
    pub lm_head: Option<Tensor>, // [vocab, hidden]
}

impl Weights {
    pub(crate) fn load(store: &dyn WeightSource, c: &LlamaConfig) -> Result<Self> {
        let (h, i, q, kv) = (c.hidden_size, c.intermediate_size, c.q_dim(), c.kv_dim());
        let layers = (0..c.num_hidden_layers)
            .map(|l| {
                let get = |name: &str, shape: &[usize]| store.get(&format!("model.layers.{l}.{name}.weight"), shape);
                Ok(LayerWeights {
                    input_layernorm: get("input_layernorm", &[h])?,
                    qkv_proj: vec![
                        get("self_attn.q_proj", &[q, h])?,
                        get("self_attn.k_proj", &[kv, h])?,
                        get("self_attn.v_proj", &[kv, h])?,
                    ],
                    o_proj: get("self_attn.o_proj", &[h, q])?,
                    post_attention_layernorm: get("post_attention_layernorm", &[h])?,
                    gate_up_proj: vec![get("mlp.gate_proj", &[i, h])?, get("mlp.up_proj", &[i, h])?],
                    down_proj: get("mlp.down_proj", &[h, i])?,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let lm_head = match (c.tie_word_embeddings, store.contains("lm_head.weight")) {
            (true, _) => None,
            (false, _) => Some(store.get("lm_head.weight", &[c.vocab_size, h])?),
        };
        Ok(Weights {
            embed_tokens: store.get("model.embed_tokens.weight", &[c.vocab_size, h])?,
            layers,
            norm: store.get("model.norm.weight", &[h])?,
            lm_head,
        })
    }
}

/// What a model source (Hugging Face directory or GGUF file) provides before the weights are
/// placed on a device.
pub(crate) struct ModelParts {
    pub config: LlamaConfig,
    pub store: Box<dyn WeightSource>,
    pub tokenizer: HfTokenizer,
    pub chat_template: Option<ChatTemplate>,
    pub generation_defaults: SamplerConfig,
    /// Every id that ends generation, sorted and deduplicated.
    pub eos_ids: Vec<u32>,
}

impl ModelParts {
    /// A Hugging Face model directory: config.json, safetensors, tokenizer and generation files.
    fn from_hf_dir(dir: &Path) -> Result<Self> {
        let config = LlamaConfig::from_file(&dir.join("config.json"))?;
        let store: Box<dyn WeightSource> = Box::new(WeightStore::open(dir)?);
        let tokenizer = HfTokenizer::from_file(&dir.join("tokenizer.json"))?;
        let chat_template = ChatTemplate::from_model_dir(dir)?;
        let generation_defaults = from_generation_config(&dir.join("generation_config.json"))?.unwrap_or_default();
        let mut eos_ids = config.eos_token_ids.clone();
        eos_ids.extend(generation_eos_ids(&dir.join("generation_config.json"))?);
        for special in ["<|eot_id|>", "<|eom_id|>", "<|end_of_text|>"] {
            eos_ids.extend(tokenizer.token_to_id(special));
        }
        eos_ids.sort_unstable();
        eos_ids.dedup();
        Ok(ModelParts { config, store, tokenizer, chat_template, generation_defaults, eos_ids })
    }

    /// Reads a model path (directory or GGUF file) for `opts`: checks the path and the device,
    /// chooses the KV-cache length.
    pub(crate) fn open(path: &Path, opts: &LoadOptions) -> Result<(ModelMeta, Box<dyn WeightSource>)> {
        let dir = path.to_path_buf();
        let gguf = super::gguf::is_gguf_file(&dir);
        if !gguf && !dir.is_dir() {
            return Err(Error::ModelNotFound(dir));
        }
        check_device(opts.device)?;
        let parts = if gguf { super::gguf::load_parts(&dir)? } else { ModelParts::from_hf_dir(&dir)? };
        let ModelParts { config, store, tokenizer, chat_template, generation_defaults, eos_ids } = parts;
        let context = match opts.context_length {
            None => config.max_position_embeddings.min(DEFAULT_CONTEXT),
            Some(0) => return Err(Error::InvalidArgument("context length must be at least 1".into())),
            Some(n) if n > config.max_position_embeddings => {
                return Err(Error::InvalidArgument(format!(
                    "context length {n} exceeds the model's max_position_embeddings {}",
                    config.max_position_embeddings
                )));
            }
            Some(n) => n,
        };
        Ok((ModelMeta { dir, config, tokenizer, chat_template, generation_defaults, eos_ids, context }, store))
    }
}

/// Everything about a model but its weights (each tensor-parallel rank gets a clone).
#[derive(Clone)]
pub(crate) struct ModelMeta {
    pub dir: PathBuf,
    pub config: LlamaConfig,
    pub tokenizer: HfTokenizer,
    pub chat_template: Option<ChatTemplate>,
    pub generation_defaults: SamplerConfig,
    pub eos_ids: Vec<u32>,
    /// KV-cache length.
    pub context: usize,
}

/// A loaded Llama 3 model with its tokenizer, chat template, KV cache and workspace.
pub struct Llama3 {
    pub(crate) config: LlamaConfig,
    pub(crate) dir: PathBuf,
    pub(crate) device: DeviceType,
    /// CPU matmul precision chosen at load.
    pub(crate) precision: Precision,
    pub(crate) weights: Weights,
    /// The mapped files behind CPU weights (dropped once weights are uploaded to a GPU).
    _store: Option<Box<dyn WeightSource>>,
    #[cfg(feature = "cuda")]
    gpu: Option<super::gpu::GpuState>,
    /// Graphs of batched decode steps (serving engine), created on first use.
    #[cfg(feature = "cuda")]
    pub(crate) batch_graphs: Option<super::batch_graph::BatchGraphs>,
    pub(crate) tokenizer: HfTokenizer,
    pub(crate) chat_template: Option<ChatTemplate>,
    pub(crate) generation_defaults: SamplerConfig,
    pub(crate) eos_ids: Vec<u32>,
    pub(crate) cache: KvCache,
    rope: RopeTable,
    pub(crate) ws: Workspace,
    /// Token ids whose K/V are in the cache, in order (enables prefix reuse across calls).
    pub(crate) cached_ids: Vec<u32>,
    /// Result of a CPU `greedy_launch`, handed out by `greedy_wait`.
    pending_greedy: Option<u32>,
    pub(crate) load_ms: f64,
    /// This rank's link to its tensor-parallel group (`None`: the whole model on one device).
    pub(crate) tp: Option<crate::parallel::TpLink>,
}

impl std::fmt::Debug for Llama3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Llama3")
            .field("dir", &self.dir)
            .field("device", &self.device)
            .field("config", &self.config)
            .field("context_length", &self.cache.context())
            .field("cached_tokens", &self.cached_ids.len())
            .finish_non_exhaustive()
    }
}

pub(crate) fn check_device(device: DeviceType) -> Result<()> {
    match device {
        DeviceType::Cpu => Ok(()),
        #[cfg(feature = "cuda")]
        DeviceType::Cuda(n) => crate::cuda::device(n).map(|_| ()),
        #[cfg(not(feature = "cuda"))]
        DeviceType::Cuda(_) => Err(Error::DeviceUnavailable {
            device: device.to_string(),
            msg: if cfg!(feature = "cuda") {
                "the CUDA model runner is not available in this build yet".into()
            } else {
                "this build has no CUDA support (rebuild with `--features cuda`)".into()
            },
        }),
    }
}

impl Llama3 {
    /// The seed's constructor: loads a Hugging Face model directory or a GGUF file. `quantized`
    /// asks for quantized weights, which need a GGUF file (a safetensors directory gives an
    /// error). A GGUF file always keeps its weights as stored (quantized blocks stay blocks,
    /// dequantized row by row inside the matmul), so `quantized = false` loads it the same way;
    /// the compute precision is chosen separately.
    pub fn new(path: impl AsRef<Path>, device: DeviceType, quantized: bool) -> Result<Self> {
        if quantized && !super::gguf::is_gguf_file(path.as_ref()) {
            return Err(Error::InvalidArgument(format!(
                "quantized loading needs a GGUF model file; {} is a safetensors model (load it with quantized = false)",
                path.as_ref().display()
            )));
        }
        Self::load(path, LoadOptions { device, ..LoadOptions::default() })
    }

    /// Loads a Hugging Face model directory (config.json, safetensors, tokenizer files) or a
    /// GGUF file (a file starting with `GGUF`: config, weights, tokenizer, chat template).
    pub fn load(path: impl AsRef<Path>, opts: LoadOptions) -> Result<Self> {
        let t0 = Instant::now();
        let (meta, store) = ModelParts::open(path.as_ref(), &opts)?;
        let weights = Weights::load(store.as_ref(), &meta.config)?;
        let local = meta.config.clone();
        Self::assemble(meta, weights, Some(store), &local, None, &opts, t0)
    }

    /// Places `weights` on `opts.device` and allocates the KV cache and workspace for `local`'s
    /// heads and intermediate size (the model's own, or a tensor-parallel rank's share).
    pub(crate) fn assemble(
        meta: ModelMeta,
        weights: Weights,
        store: Option<Box<dyn WeightSource>>,
        local: &LlamaConfig,
        tp: Option<crate::parallel::TpLink>,
        opts: &LoadOptions,
        t0: Instant,
    ) -> Result<Self> {
        let ModelMeta { dir, config, tokenizer, chat_template, generation_defaults, eos_ids, context } = meta;
        let bar = progress_bar(opts.progress, store.as_ref().map_or(0, |s| s.file_bytes()));
        let (weights, store) = if opts.device.is_cpu() {
            if let Some(s) = &store {
                s.prefault(&mut |n| bar.inc(n));
            }
            let mut weights = weights;
            if opts.repack && opts.precision == Precision::Fast && crate::op::cpu::quant::interleaved_kernels() {
                // Tensor-parallel ranks keep a tied head as it is (their embedding is not sharded).
                super::cpu_repack::repack_weights(&mut weights, tp.is_none())?;
            }
            (weights, store)
        } else {
            #[cfg(feature = "cuda")]
            let w = super::gpu::upload_weights(weights, opts.device, |n| bar.inc(n))?;
            #[cfg(not(feature = "cuda"))]
            let w = weights;
            (w, None)
        };
        bar.finish_and_clear();
        let rope = RopeTable::new(&config, context);
        let (layers, kv_heads, hd) = (local.num_hidden_layers, local.num_key_value_heads, local.head_dim);
        let cache = KvCache::new(layers, kv_heads, hd, context, opts.device)?;
        let ws = Workspace::new(local, opts.device)?;
        // Tensor-parallel ranks run the eager path (no CUDA graphs or device sampling).
        #[cfg(feature = "cuda")]
        let gpu = match opts.device {
            DeviceType::Cuda(n) if tp.is_none() => {
                Some(super::gpu::GpuState::new(n, PREFILL_CHUNK, config.vocab_size)?)
            }
            _ => None,
        };
        Ok(Llama3 {
            dir,
            device: opts.device,
            precision: opts.precision,
            weights,
            _store: store,
            #[cfg(feature = "cuda")]
            gpu,
            #[cfg(feature = "cuda")]
            batch_graphs: None,
            tokenizer,
            chat_template,
            generation_defaults,
            eos_ids,
            cache,
            rope,
            ws,
            cached_ids: Vec::new(),
            pending_greedy: None,
            load_ms: t0.elapsed().as_secs_f64() * 1e3,
            config,
            tp,
        })
    }

    /// The GPU the model runs on, if any.
    #[cfg(feature = "cuda")]
    pub(crate) fn gpu_dev(&self) -> Option<std::sync::Arc<crate::cuda::CudaDevice>> {
        self.gpu.as_ref().map(|g| g.dev.clone())
    }

    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    pub fn model_dir(&self) -> &Path {
        &self.dir
    }

    pub fn device(&self) -> DeviceType {
        self.device
    }

    /// The CPU matmul precision chosen at load time.
    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// The weights as placed on the device (on the CPU: Q4_K projections interleaved as
    /// [`DType::Q4_Kx8`](crate::tensor::DType::Q4_Kx8) when [`LoadOptions::repack`] applied).
    pub fn weights(&self) -> &Weights {
        &self.weights
    }

    pub fn hf_tokenizer(&self) -> &HfTokenizer {
        &self.tokenizer
    }

    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat_template.as_ref()
    }

    /// Sampling defaults from `generation_config.json` (greedy when absent).
    pub fn generation_defaults(&self) -> &SamplerConfig {
        &self.generation_defaults
    }

    /// Every id that ends generation (config, generation_config and the Llama 3 specials).
    pub fn eos_token_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    /// KV-cache length in tokens.
    pub fn context_length(&self) -> usize {
        self.cache.context()
    }

    /// Milliseconds spent in [`Llama3::load`].
    pub fn load_ms(&self) -> f64 {
        self.load_ms
    }

    /// Forgets the cached tokens.
    pub fn reset(&mut self) {
        self.cached_ids.clear();
    }

    /// Runs `ids` at positions `pos0..` (the cache must hold exactly `pos0` tokens' K/V) and
    /// returns logits `[rows, vocab]`: every position when `all_logits`, else only the last.
    pub fn forward_tokens(&mut self, ids: &[u32], pos0: usize, all_logits: bool) -> Result<&Tensor> {
        if ids.is_empty() {
            return Err(Error::InvalidArgument("forward needs at least one token".into()));
        }
        if pos0 + ids.len() > self.cache.context() {
            return Err(Error::ContextOverflow {
                prompt_tokens: pos0 + ids.len(),
                max_new_tokens: 0,
                context_length: self.cache.context(),
            });
        }
        let rows_out = if all_logits { ids.len() } else { 1 };
        // Every row is overwritten below: reuse the buffer when the shape matches (a decode step
        // then allocates nothing for its 128k logits).
        if self.ws.logits.shape() != [rows_out, self.config.vocab_size] {
            self.ws.logits = Tensor::zeros(&[rows_out, self.config.vocab_size], DType::F32);
        }
        #[cfg(feature = "cuda")]
        if ids.len() == 1 && !all_logits && self.gpu.is_some() {
            self.decode_step_graph(ids[0], pos0, true)?;
            return Ok(&self.ws.logits);
        }
        for (c, chunk) in ids.chunks(PREFILL_CHUNK).enumerate() {
            let start = c * PREFILL_CHUNK;
            self.forward_chunk(chunk, pos0 + start)?;
            let last_chunk = start + chunk.len() == ids.len();
            if all_logits {
                self.lm_head(start, chunk.len())?;
            } else if last_chunk {
                self.lm_head(0, 1)?;
            }
        }
        self.cached_ids.truncate(pos0);
        self.cached_ids.extend_from_slice(ids);
        Ok(&self.ws.logits)
    }

    /// One batched pass of `ids` (at most [`PREFILL_CHUNK`]) through every layer; leaves the
    /// final normed hidden states in `ws.h`.
    pub(crate) fn forward_chunk(&mut self, ids: &[u32], pos0: usize) -> Result<()> {
        self.ws.resize(ids.len())?;
        #[cfg(feature = "cuda")]
        if let Some(g) = self.gpu.as_mut() {
            let dev_ids: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
            g.ids.set(&dev_ids)?;
            g.set_pos(pos0)?;
            g.device_next = None;
            g.forget_in_flight(); // `ids` now holds the chunk, not a step's next id
        }
        self.run_layers(ids, Kv::Own(pos0))
    }

    /// Embedding, every decoder layer and the final norm over the workspace (already sized to
    /// `ids.len()` rows). With [`Kv::Own`] on a GPU the ids and position are already in device
    /// memory, which is what a captured decode step reads. A tensor-parallel rank runs its shard
    /// of every layer (its group's other ranks run theirs on the same ids).
    pub(crate) fn run_layers(&mut self, ids: &[u32], kv: Kv<'_>) -> Result<()> {
        let Some(tp) = self.tp.take() else { return self.layers(ids, kv, None) };
        let own_pos = match kv {
            Kv::Own(pos0) => Some(pos0),
            Kv::Paged(..) => None,
        };
        let out = tp.run(ids, own_pos, |comm| self.layers(ids, kv, Some(comm)));
        self.tp = Some(tp);
        out
    }

    /// [`Llama3::run_layers`] on this instance's weights; with `comm`, o_proj and down_proj are
    /// row-parallel shards whose partial products are summed over the group before the add.
    fn layers(&mut self, ids: &[u32], mut kv: Kv<'_>, comm: Option<&dyn Communicator>) -> Result<()> {
        let c = &self.config;
        let heads = c.num_attention_heads / comm.map_or(1, |c| c.world_size()); // this rank's
        let eps = c.rms_norm_eps as f32;
        let ws = &mut self.ws;
        #[cfg(feature = "cuda")]
        let (dev_pos, dev_ids) = match (self.gpu.as_ref(), &kv) {
            (Some(g), Kv::Own(_)) => (Some(&g.pos), Some(&g.ids)),
            (_, Kv::Paged(_, _, ids)) => (None, *ids),
            _ => (None, None),
        };
        #[cfg(not(feature = "cuda"))]
        let (dev_pos, dev_ids) = (None, None);
        embedding_ids(&Ids { host: ids, device: dev_ids }, &self.weights.embed_tokens, &mut ws.x)?; // [seq, hidden] f32
        let p = self.precision;
        for (l, w) in self.weights.layers.iter().enumerate() {
            match &mut kv {
                Kv::Own(pos0) => {
                    let pos = Positions { start: *pos0, device: dev_pos };
                    let (kc, vc) = self.cache.layer_mut(l)?; // [n_kv_heads, ctx, head_dim]
                    // q: [seq, n_heads * head_dim], k/v into the caches (ws.h, ws.qkv: scratch unless fused)
                    let (input_norm, qkv_w) = (&w.input_layernorm, &w.qkv_proj);
                    let (h, qkv, q) = (&mut ws.h, &mut ws.qkv, &mut ws.q);
                    norm_rope_kv(&ws.x, input_norm, eps, qkv_w, h, qkv, q, (kc, vc), &pos, &self.rope, p)?;
                    attention(&ws.q, kc, vc, &pos, heads, &mut ws.att)?; // [seq, n_heads * head_dim]
                }
                Kv::Paged(cache, meta, _) => {
                    // [seq, (n_heads + 2 n_kv_heads) * head_dim]; ws.h: [seq, hidden] normed (unless fused)
                    norm_linear(&ws.x, &w.input_layernorm, eps, &w.qkv_proj, &mut ws.h, &mut ws.qkv, p)?;
                    let (kc, vc) = cache.layer_mut(l)?; // [num_blocks, n_kv_heads, block_size, head_dim]
                    rope_kv_paged(&ws.qkv, &mut ws.q, kc, vc, meta, &self.rope)?;
                    paged_attention(&ws.q, kc, vc, meta, heads, &mut ws.att)?;
                }
            }
            match comm {
                None => matmul_add(&ws.att, &w.o_proj, &mut ws.delta, &mut ws.x, p)?, // x += att · o_projᵀ
                Some(comm) => reduce_add(comm, &ws.att, &w.o_proj, &mut ws.delta, &mut ws.x, p)?, // x += Σ ranks
            }
            // act: [seq, intermediate (/ ranks)] = silu(gate) * up (ws.gate_up: scratch unless fused)
            let post_norm = &w.post_attention_layernorm;
            norm_swiglu(&ws.x, post_norm, eps, &w.gate_up_proj, &mut ws.h, &mut ws.gate_up, &mut ws.act, p)?;
            match comm {
                None => matmul_add(&ws.act, &w.down_proj, &mut ws.delta, &mut ws.x, p)?, // x += act · down_projᵀ
                Some(comm) => reduce_add(comm, &ws.act, &w.down_proj, &mut ws.delta, &mut ws.x, p)?, // x += Σ ranks
            }
        }
        rms_norm(&ws.x, &self.weights.norm, eps, &mut ws.h) // [seq, hidden]
    }

    /// LM head over the last `rows_n` normed hidden rows of the chunk, written to logits rows
    /// `out_row..out_row + rows_n`.
    pub(crate) fn lm_head(&mut self, out_row: usize, rows_n: usize) -> Result<()> {
        let ws = &mut self.ws;
        let seq = ws.h.dims2("lm_head")?.0;
        let vocab = self.config.vocab_size;
        let rows = ws.h.copy_rows(seq - rows_n, rows_n)?; // [rows, hidden]
        let head = self.weights.lm_head.as_ref().unwrap_or(&self.weights.embed_tokens);
        if self.device.is_cpu() && out_row == 0 && ws.logits.shape() == [rows_n, vocab] {
            return matmul_with_precision(&rows, head, &mut ws.logits, self.precision); // [rows, vocab]
        }
        let mut out = Tensor::zeros_on(&[rows_n, vocab], DType::F32, self.device)?;
        matmul_with_precision(&rows, head, &mut out, self.precision)?; // [rows, vocab]
        let out = out.to_host()?;
        ws.logits.as_f32_mut()?[out_row * vocab..(out_row + rows_n) * vocab].copy_from_slice(out.as_f32()?);
        Ok(())
    }

    /// Starts the greedy step of `id` at `pos` ([`Llama3::greedy_wait`] returns its result). On a
    /// GPU this only queues work, so the caller can detokenize meanwhile; on the CPU it computes.
    pub fn greedy_launch(&mut self, id: u32, pos: usize) -> Result<()> {
        #[cfg(feature = "cuda")]
        if self.gpu.is_some() {
            self.pending_greedy = None;
            return self.decode_launch(id, pos, Select::Greedy);
        }
        self.pending_greedy = Some(self.next_token_greedy(id, pos)?);
        Ok(())
    }

    /// Queues, behind the greedy step in flight, the step at `pos` whose input is that step's
    /// next id, still on the device: generation keeps two steps in flight, so the GPU never
    /// waits for the host between tokens. [`Llama3::greedy_wait`] returns the ids in launch
    /// order. `pos` must be the position the newest step in flight produces an id for. GPU only.
    pub fn greedy_launch_next(&mut self, pos: usize) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Some(g) = self.gpu.as_ref() {
            if g.newest_out_pos() != Some(pos) {
                return Err(Error::InvalidArgument(format!(
                    "greedy_launch_next({pos}): no step in flight produces the id for position {pos}"
                )));
            }
            self.check_decode_pos(pos)?;
            self.cached_ids.truncate(pos);
            self.enqueue_decode_step(None, pos, Select::Greedy)?;
            // Not known on the host yet: `decode_outputs` writes it when the step before is read
            // (u32::MAX never matches a prompt id, so prefix reuse stops here until then).
            self.cached_ids.push(u32::MAX);
            return Ok(());
        }
        let _ = pos;
        Err(Error::InvalidArgument("greedy_launch_next needs a GPU model".into()))
    }

    /// The next id of the step started by [`Llama3::greedy_launch`] or [`Llama3::sample_launch`].
    pub fn greedy_wait(&mut self) -> Result<u32> {
        if let Some(id) = self.pending_greedy.take() {
            return Ok(id);
        }
        #[cfg(feature = "cuda")]
        if self.gpu.is_some() {
            return self.decode_outputs(false);
        }
        Err(Error::InvalidArgument("greedy_wait without greedy_launch".into()))
    }

    /// Whether this model can sample on its device ([`Llama3::sample_start`]): true on a GPU.
    pub fn samples_on_device(&self) -> bool {
        #[cfg(feature = "cuda")]
        if self.gpu.is_some() {
            return true;
        }
        false
    }

    /// Prepares sampling on the device for one generation: the parameters, the ids in the
    /// context (repetition penalty) and the ids generated so far (presence/frequency).
    pub fn sample_start(&mut self, cfg: &SamplerConfig, context: &[u32], generated: &[u32]) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Some(g) = self.gpu.as_mut() {
            return g.sampler.start(cfg, context, generated);
        }
        let _ = (cfg, context, generated);
        Err(Error::InvalidArgument("sampling on the device needs a GPU model".into()))
    }

    /// Starts a decode step of `id` at `pos` that samples its next id on the device with the
    /// uniform `u` in [0, 1) ([`Llama3::greedy_wait`] returns the id). GPU only.
    pub fn sample_launch(&mut self, id: u32, pos: usize, u: f64) -> Result<()> {
        #[cfg(feature = "cuda")]
        if let Some(g) = self.gpu.as_mut() {
            self.pending_greedy = None;
            g.sampler.set_uniform(u)?;
            return self.decode_launch(id, pos, Select::Sample);
        }
        let _ = (id, pos, u);
        Err(Error::InvalidArgument("sampling on the device needs a GPU model".into()))
    }

    /// Feeds `id` at position `pos` and returns the most likely next token. On a GPU the argmax
    /// runs on the device and only the id crosses to the host.
    pub fn next_token_greedy(&mut self, id: u32, pos: usize) -> Result<u32> {
        #[cfg(feature = "cuda")]
        if self.gpu.is_some() {
            return self.decode_step_graph(id, pos, false);
        }
        let logits = self.forward_tokens(&[id], pos, false)?;
        crate::op::argmax::argmax(logits.as_f32()?)
    }

    /// One decode step on a GPU: the first runs eagerly (sizing scratch buffers), the second is
    /// captured as a CUDA graph, later ones replay it with the new position and id. Returns the
    /// greedy next id; the logits are copied to the host only when `want_logits`.
    #[cfg(feature = "cuda")]
    fn decode_step_graph(&mut self, id: u32, pos: usize, want_logits: bool) -> Result<u32> {
        self.decode_launch(id, pos, Select::Greedy)?;
        self.decode_outputs(want_logits)
    }

    /// Queues one decode step of `id` at `pos` on the GPU stream without waiting for it, and
    /// records `id` as cached at `pos`.
    #[cfg(feature = "cuda")]
    fn decode_launch(&mut self, id: u32, pos: usize, select: Select) -> Result<()> {
        self.check_decode_pos(pos)?;
        // Steps still in flight (an abandoned pipelined generation) are read and dropped first,
        // so the next `decode_outputs` returns this step's id.
        while self.gpu.as_ref().is_some_and(|g| g.in_flight() > 0) {
            self.decode_outputs(false)?;
        }
        self.cached_ids.truncate(pos);
        self.enqueue_decode_step(Some(id), pos, select)?;
        self.cached_ids.push(id);
        Ok(())
    }

    /// A decode step at `pos` must fit the KV cache.
    #[cfg(feature = "cuda")]
    fn check_decode_pos(&self, pos: usize) -> Result<()> {
        if pos + 1 > self.cache.context() {
            return Err(Error::ContextOverflow {
                prompt_tokens: pos + 1,
                max_new_tokens: 0,
                context_length: self.cache.context(),
            });
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    /// `id: None`: the input id is the one the step before left in device memory.
    fn enqueue_decode_step(&mut self, id: Option<u32>, pos: usize, select: Select) -> Result<()> {
        self.ws.resize(1)?;
        let g = self.gpu.as_mut().ok_or_else(|| Error::op("decode", "no GPU state"))?;
        // A graph is valid for the buffers it was captured with: workspace and device scratch.
        let capacity = (self.ws.capacity, g.dev.scratch_epoch());
        for slot in g.graphs.iter_mut() {
            if slot.as_ref().is_some_and(|(_, cap)| *cap != capacity) {
                *slot = None; // the workspace or the scratch was reallocated since the capture
            }
        }
        // The previous step's argmax already left its id in device memory.
        if let Some(id) = id
            && g.device_next != Some(id)
        {
            g.ids.set(&[id as i32])?;
        }
        g.set_pos(pos)?;
        g.device_next = None;
        self.prepare_decode_kernel()?; // allocates and uploads once: never inside a capture
        let g = self.gpu.as_mut().ok_or_else(|| Error::op("decode", "no GPU state"))?;
        let one_kernel = matches!(&g.decode_step, Some(Some(step)) if step.runs(g.decode_kernel, pos));
        g.last_step_kernel = one_kernel;
        let slot = graph_slot(select, one_kernel, pos);
        if g.graphs[slot].is_none() {
            let capture = g.eager_steps > 0;
            g.eager_steps += 1;
            if capture {
                g.begin_capture()?;
            }
            // The host id is not read on the GPU (the step embeds the id in device memory).
            g.forget_pos(); // an op failing midway leaves the position unknown
            let run = self.decode_ops(id.unwrap_or(0), pos, select, one_kernel);
            let g = self.gpu.as_mut().ok_or_else(|| Error::op("decode", "no GPU state"))?;
            if !capture {
                run?;
                g.step_queued(pos);
                return g.push_readback(pos + 1);
            }
            // End the capture even when an op failed, so the stream is usable again.
            let ended = g.end_capture(capacity, slot);
            run?;
            ended?;
        }
        let g = self.gpu.as_mut().ok_or_else(|| Error::op("decode", "no GPU state"))?;
        g.forget_pos();
        g.launch(slot)?;
        g.step_queued(pos);
        g.push_readback(pos + 1)
    }

    /// The decode step's ops (what the graph captures): layers, final norm, LM head into the
    /// GPU state's logits buffer, then the next id (argmax or sampled) into `ids`; or all of it
    /// as one kernel.
    #[cfg(feature = "cuda")]
    fn decode_ops(&mut self, id: u32, pos: usize, select: Select, one_kernel: bool) -> Result<()> {
        if one_kernel {
            return self.decode_kernel_step(select);
        }
        self.run_layers(&[id], Kv::Own(pos))?;
        let head = self.weights.lm_head.as_ref().unwrap_or(&self.weights.embed_tokens);
        let g = self.gpu.as_mut().ok_or_else(|| Error::op("decode", "no GPU state"))?;
        matmul(&self.ws.h, head, &mut g.logits)?; // [1, vocab] f32
        match select {
            Select::Greedy => crate::cuda::ops::argmax_dev(&g.logits, &mut g.ids)?, // read by the next step
            Select::Sample => g.sampler.launch(&g.logits, &mut g.ids)?,
        }
        g.queue_advance() // the id to its host slot, position + 1
    }

    /// The decode step as one kernel (prepared, see `prepare_decode_kernel`): embedding, every
    /// layer, LM head into the GPU state's logits and the next id into `ids` (greedy) or through
    /// the sampler.
    #[cfg(feature = "cuda")]
    fn decode_kernel_step(&mut self, select: Select) -> Result<()> {
        let g = self.gpu.as_mut().ok_or_else(|| Error::op("decode", "no GPU state"))?;
        let Some(Some(step)) = &g.decode_step else { return Err(Error::op("decode_step", "not prepared")) };
        step.launch(&mut g.ids, &g.pos, &mut g.logits, select == Select::Greedy)?;
        if select == Select::Sample {
            g.sampler.launch(&g.logits, &mut g.ids)?;
        }
        g.queue_advance() // the id to its host slot, position + 1
    }

    /// Builds the one-kernel step's tables once, unless the per-op step is forced (device
    /// allocations and uploads: this must run outside a graph capture, which would record them
    /// as graph nodes).
    #[cfg(feature = "cuda")]
    fn prepare_decode_kernel(&mut self) -> Result<()> {
        let Some(g) = self.gpu.as_mut().filter(|g| g.decode_kernel != DecodeKernel::PerOp && g.decode_step.is_none())
        else {
            return Ok(());
        };
        let step = crate::cuda::decode_step::DecodeStep::new(
            &g.dev,
            &self.config,
            &self.weights,
            &mut self.cache,
            &self.rope,
        )?;
        g.decode_step = Some(step);
        Ok(())
    }

    /// Whether the last decode step ran as one kernel.
    #[cfg(feature = "cuda")]
    pub fn decode_kernel_active(&self) -> bool {
        self.gpu.as_ref().is_some_and(|g| g.last_step_kernel)
    }

    /// Forces decode steps to run as one persistent kernel (`true`) or as the per-op sequence
    /// (`false`); see [`Llama3::set_decode_kernel_mode`].
    #[cfg(feature = "cuda")]
    pub fn set_decode_kernel(&mut self, on: bool) -> Result<()> {
        self.set_decode_kernel_mode(if on { DecodeKernel::OneKernel } else { DecodeKernel::PerOp })
    }

    /// Which implementation decode steps run: [`DecodeKernel::Auto`] (the default unless
    /// `INFER_DECODE_KERNEL=0|1`) takes the one-kernel step at short and medium contexts on GPUs
    /// with fast memory (H200 class, see `decode_step::AUTO_MIN_PEAK_BW`) and the per-op step on
    /// long contexts and slower-memory GPUs (H100). The kernel needs bf16 weights, an sm_90 GPU
    /// and Llama-shaped sizes (multiples of 512); other models keep the per-op step in every mode.
    #[cfg(feature = "cuda")]
    pub fn set_decode_kernel_mode(&mut self, mode: DecodeKernel) -> Result<()> {
        // The graphs of both paths are kept (one slot each) and share the caches and buffers on
        // one stream, so steps in flight stay valid: the next step picks its graph by `mode`.
        if let Some(g) = self.gpu.as_mut() {
            g.decode_kernel = mode;
        }
        Ok(())
    }

    #[cfg(feature = "cuda")]
    fn decode_outputs(&mut self, want_logits: bool) -> Result<u32> {
        let g = self.gpu.as_mut().ok_or_else(|| Error::op("decode", "no GPU state"))?;
        let (next, out_pos) = g.pop_readback()?;
        let next = u32::try_from(next)
            .map_err(|_| Error::InvalidArgument("sampler: none of the logits is selectable (NaN or -inf)".into()))?;
        // With a newer step in flight, `ids` holds (or will hold) that step's result instead.
        g.device_next = (g.in_flight() == 0).then_some(next);
        if want_logits {
            if g.in_flight() > 0 {
                return Err(Error::op("decode", "logits asked for while a newer step is in flight"));
            }
            let host = g.logits.to_host()?;
            self.ws.logits.as_f32_mut()?.copy_from_slice(host.as_f32()?);
        }
        // A step queued behind this one already took position out_pos with a placeholder id.
        if let Some(slot) = self.cached_ids.get_mut(out_pos) {
            *slot = next;
        }
        Ok(next)
    }
}

/// Extra EOS ids from `generation_config.json` (absent file = none).
fn generation_eos_ids(path: &Path) -> Result<Vec<u32>> {
    if !path.is_file() {
        return Ok(vec![]);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let v: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| Error::Config { path: path.to_path_buf(), msg: format!("not valid JSON: {e}") })?;
    Ok(match v.get("eos_token_id") {
        Some(serde_json::Value::Array(a)) => a.iter().filter_map(|x| x.as_u64()).map(|x| x as u32).collect(),
        Some(x) => x.as_u64().map(|x| vec![x as u32]).unwrap_or_default(),
        None => vec![],
    })
}

fn progress_bar(enabled: bool, total: u64) -> ProgressBar {
    if !enabled || !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template("loading weights {bar:40} {bytes}/{total_bytes} {bytes_per_sec}") {
        bar.set_style(style);
    }
    bar
}

impl Model for Llama3 {
    fn init(&mut self, device_type: DeviceType) -> Result<()> {
        check_device(device_type)?;
        self.device = device_type;
        self.reset();
        Ok(())
    }

    /// `input`: token ids `[seq]` as integral f32 values; `pos`: their positions `[seq]`
    /// (consecutive, starting where the cache ends or earlier). Returns the last logits `[vocab]`.
    fn forward(&mut self, input: &Tensor, pos: &Tensor) -> Result<Tensor> {
        let to_ids = |t: &Tensor, what: &str| -> Result<Vec<u32>> {
            t.as_f32()?
                .iter()
                .map(|&x| {
                    (x >= 0.0 && x.fract() == 0.0 && x < 16_777_216.0).then_some(x as u32).ok_or_else(|| {
                        Error::InvalidArgument(format!("{what} must hold non-negative integers, got {x}"))
                    })
                })
                .collect()
        };
        let ids = to_ids(input, "input ids")?;
        let pos = to_ids(pos, "positions")?;
        let pos0 = *pos.first().ok_or_else(|| Error::InvalidArgument("empty positions".into()))? as usize;
        if pos.len() != ids.len() || pos.iter().enumerate().any(|(i, &p)| p as usize != pos0 + i) {
            return Err(Error::InvalidArgument("positions must be consecutive and as many as the ids".into()));
        }
        if pos0 > self.cached_ids.len() {
            return Err(Error::InvalidArgument(format!(
                "position {pos0} skips past the {} cached tokens",
                self.cached_ids.len()
            )));
        }
        let vocab = self.config.vocab_size;
        let logits = self.forward_tokens(&ids, pos0, false)?;
        Tensor::from_f32(&[vocab], logits.as_f32()?.to_vec())
    }

    fn tokenizer(&self) -> &dyn Tokenizer {
        &self.tokenizer
    }

    fn is_eos_token(&self, token_id: u32) -> bool {
        self.eos_ids.contains(&token_id)
    }

    fn slice_kv_cache(&self, layer_idx: usize, start_pos: usize, end_pos: usize) -> Result<(Tensor, Tensor)> {
        self.cache.slice(layer_idx, start_pos, end_pos)
    }
}
