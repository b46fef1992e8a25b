//! The crate's error type. Every variant names what was wrong (file, tensor, op, flag).

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("model path {0} does not exist or is not a directory")]
    ModelNotFound(PathBuf),

    #[error("invalid config {path}: {msg}")]
    Config { path: PathBuf, msg: String },

    #[error("invalid safetensors file {path}: {msg}")]
    Safetensors { path: PathBuf, msg: String },

    /// A GGUF file that is malformed, or holds something this engine does not support.
    #[error("invalid GGUF file {path}: {msg}")]
    Gguf { path: PathBuf, msg: String },

    #[error("tensor `{name}` not found in the weights of {path}")]
    MissingTensor { name: String, path: PathBuf },

    #[error("tensor `{name}` has shape {found:?}, expected {expected:?}")]
    TensorShape { name: String, expected: Vec<usize>, found: Vec<usize> },

    #[error("tensor `{name}` has dtype {found}, expected one of {expected}")]
    TensorDType { name: String, expected: String, found: String },

    /// An op was called with inputs it cannot take (shape, dtype, device).
    #[error("op `{op}`: {msg}")]
    Op { op: &'static str, msg: String },

    #[error("tokenizer: {0}")]
    Tokenizer(String),

    #[error("chat template: {0}")]
    Template(String),

    #[error(
        "context length exceeded: {prompt_tokens} prompt tokens + {max_new_tokens} new tokens > context length {context_length}"
    )]
    ContextOverflow { prompt_tokens: usize, max_new_tokens: usize, context_length: usize },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("device {device} is not available: {msg}")]
    DeviceUnavailable { device: String, msg: String },

    #[error("out of memory on {device}: {msg}")]
    OutOfMemory { device: String, msg: String },

    /// A tensor-parallel layout that does not fit the model (see `parallel::ShardPlan`).
    #[error("tensor parallelism: {0}")]
    TensorParallel(#[from] crate::parallel::ShardError),
}

impl Error {
    /// An op-level error; used by every op's shape/dtype checks.
    pub fn op(op: &'static str, msg: impl Into<String>) -> Self {
        Error::Op { op, msg: msg.into() }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io { path: path.into(), source }
    }
}
