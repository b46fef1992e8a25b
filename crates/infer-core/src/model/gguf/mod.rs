//! GGUF model files (llama.cpp's format): one file holding metadata (hyper-parameters,
//! tokenizer, chat template) and tensors, possibly block-quantized.
//!
//! [`GgufFile`] maps the file, parses its header ([`reader`]) and serves tensors by Hugging Face
//! name through [`WeightSource`] ([`names`]): zero-copy windows of the map, except `q_proj` /
//! `k_proj`, whose rows are un-permuted from llama.cpp's RoPE layout into an owned copy.
//! Quantized tensors keep their GGML blocks (dtypes Q8_0, Q4_0, Q4_1, Q4_K, Q6_K).
//! [`convert`] writes such files from Hugging Face safetensors checkpoints.

pub mod config;
pub mod convert;
pub mod hf_vocab;
pub mod names;
pub mod reader;
pub mod tokenizer;
pub mod value;
pub mod writer;

use std::collections::HashMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;

use super::config::LlamaConfig;
use super::weights::WeightSource;
use crate::base::{Error, Result};
use crate::tensor::{DType, Tensor};
pub use convert::{ConvertOptions, ConvertReport, convert_hf_to_gguf};
pub use names::{RopeRows, gguf_to_hf, hf_to_gguf, permute_rows};
pub use reader::{Header, TensorInfo, Value, ValueType};
pub use writer::{GgufWriter, StreamedTensor};

/// Whether `path` is a file that starts with the GGUF magic.
pub fn is_gguf_file(path: &Path) -> bool {
    let mut magic = [0u8; 4];
    path.is_file() && File::open(path).and_then(|mut f| f.read_exact(&mut magic)).is_ok() && magic == reader::MAGIC
}

/// A memory-mapped GGUF file.
pub struct GgufFile {
    path: PathBuf,
    map: Arc<Mmap>,
    header: Header,
    /// Index into `header.tensors` by GGUF name.
    by_name: HashMap<String, usize>,
    /// Query and key heads, for un-permuting `q_proj` / `k_proj` (llama architecture only).
    heads: Option<(usize, usize)>,
}

impl std::fmt::Debug for GgufFile {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufFile")
            .field("path", &self.path)
            .field("version", &self.header.version)
            .field("tensors", &self.header.tensors.len())
            .field("metadata", &self.header.metadata.len())
            .finish()
    }
}

impl GgufFile {
    /// Maps and parses `path`. Errors name the file (and the key or tensor at fault).
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| Error::io(&path, e))?;
        if file.metadata().map_err(|e| Error::io(&path, e))?.len() == 0 {
            return Err(Error::Gguf { path, msg: "truncated: the file is empty (no magic)".into() });
        }
        // SAFETY: the file is opened read-only and mapped read-only; like every mmap-based loader
        // (safetensors, llama.cpp) we assume it is not truncated by another process while mapped.
        let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(&path, e))?;
        let header = Header::parse(&map, &path)?;
        let by_name = header.tensors.iter().enumerate().map(|(i, t)| (t.name.clone(), i)).collect();
        let heads = match header.get_str("general.architecture")? {
            Some("llama") => {
                let q = header.get_u64("llama.attention.head_count")?;
                let kv = header.get_u64("llama.attention.head_count_kv")?.or(q);
                q.zip(kv).map(|(q, kv)| (q as usize, kv as usize))
            }
            _ => None,
        };
        Ok(GgufFile { path, map: Arc::new(map), header, by_name, heads })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The parsed header (metadata getters, tensor infos).
    pub fn header(&self) -> &Header {
        &self.header
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Gguf { path: self.path.clone(), msg: msg.into() }
    }

    /// The info of tensor `name` (GGUF name).
    pub fn tensor_info(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.header.tensors[i])
    }

    /// Tensor `name` (GGUF name) as stored: row-major shape `[.., ne1, ne0]`, zero copy.
    pub fn raw_tensor(&self, name: &str) -> Result<Tensor> {
        let t = self
            .tensor_info(name)
            .ok_or_else(|| Error::MissingTensor { name: name.to_string(), path: self.path.clone() })?;
        Tensor::from_mapped(self.map.clone(), t.start, t.dtype, &t.shape())
    }

    /// The model's hyper-parameters (see [`config::llama_config`]).
    pub fn llama_config(&self) -> Result<LlamaConfig> {
        let freqs = match self.tensor_info("rope_freqs.weight") {
            Some(_) => Some(self.raw_tensor("rope_freqs.weight")?.to_f32_vec()?),
            None => None,
        };
        config::llama_config(&self.header, freqs.as_deref(), self.by_name.contains_key("output.weight"))
    }

    /// The tokenizer stored in the metadata (see [`tokenizer::tokenizer_json`]).
    pub fn tokenizer(&self) -> Result<super::HfTokenizer> {
        tokenizer::hf_tokenizer(&self.header)
    }

    /// `tokenizer.chat_template`, if present.
    pub fn chat_template(&self) -> Result<Option<super::ChatTemplate>> {
        tokenizer::chat_template(&self.header)
    }

    /// Q/K rows of `info`, un-permuted from llama.cpp's layout into an owned tensor.
    fn unpermuted(&self, name: &str, info: &TensorInfo, shape: &[usize], which: RopeRows) -> Result<Tensor> {
        let (q, kv) = self.heads.ok_or_else(|| {
            self.err(format!("cannot un-permute `{name}`: no `llama.attention.head_count` in the metadata"))
        })?;
        let n_head = if which == RopeRows::Query { q } else { kv };
        let bytes = &self.map[info.start..info.start + info.n_bytes];
        let rows = permute_rows(bytes, shape[0], n_head, true).map_err(|e| self.err(format!("`{name}`: {e}")))?;
        match info.dtype {
            DType::F32 => Tensor::from_f32(shape, bytemuck::pod_collect_to_vec(&rows)),
            DType::BF16 => Tensor::from_bf16(shape, bytemuck::pod_collect_to_vec(&rows)),
            DType::F16 => Tensor::from_f16(shape, bytemuck::pod_collect_to_vec(&rows)),
            q => Tensor::from_quantized(shape, q, rows),
        }
    }
}

impl WeightSource for GgufFile {
    /// Tensor `name` by Hugging Face name (`model.layers.0.self_attn.q_proj.weight`), checked to
    /// have `shape`; in its stored dtype (quantized blocks stay blocks).
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let missing = || Error::MissingTensor { name: name.to_string(), path: self.path.clone() };
        let gguf_name = hf_to_gguf(name).ok_or_else(missing)?;
        let info = self.tensor_info(&gguf_name).ok_or_else(missing)?;
        let found = info.shape();
        if found != shape {
            return Err(Error::TensorShape { name: format!("{name} ({gguf_name})"), expected: shape.to_vec(), found });
        }
        match names::rope_rows(name) {
            Some(which) if self.heads.is_some() => self.unpermuted(name, info, shape, which),
            _ => Tensor::from_mapped(self.map.clone(), info.start, info.dtype, shape),
        }
    }

    fn contains(&self, name: &str) -> bool {
        hf_to_gguf(name).is_some_and(|g| self.by_name.contains_key(&g))
    }

    fn file_bytes(&self) -> u64 {
        self.map.len() as u64
    }

    fn prefault(&self, progress: &mut dyn FnMut(u64)) {
        const CHUNK: usize = 64 << 20;
        let mut sum = 0u8;
        for chunk in self.map.chunks(CHUNK) {
            sum = chunk.iter().step_by(4096).fold(sum, |a, b| a.wrapping_add(*b));
            progress(chunk.len() as u64);
        }
        std::hint::black_box(sum);
    }
}

/// What [`super::llama3::Llama3::load`] needs from a GGUF file.
pub(crate) fn load_parts(path: &Path) -> Result<super::llama3::ModelParts> {
    let file = GgufFile::open(path)?;
    let config = file.llama_config()?;
    let tokenizer = file.tokenizer()?;
    let chat_template = file.chat_template()?;
    let eos_ids = tokenizer::eos_ids(file.header(), &tokenizer)?;
    Ok(super::llama3::ModelParts {
        config,
        store: Box::new(file),
        tokenizer,
        chat_template,
        generation_defaults: Default::default(),
        eos_ids,
    })
}
