//! A GGUF v3 writer: metadata key/values and tensors, each tensor's data aligned to
//! `general.alignment` (default 32), exactly as llama.cpp lays files out.
//!
//! Tensors are given in row-major (PyTorch) shape and stored with GGML dims (`ne[0]` = last
//! dim). The writer stores bytes as given: permuting Q/K rows for llama.cpp's RoPE layout, if
//! wanted, is the caller's business ([`super::names::permute_rows`]).

use std::io::Write;
use std::path::Path;

use super::reader::{DEFAULT_ALIGNMENT, MAGIC, Value, ValueType};
use crate::base::{Error, Result};
use crate::tensor::DType;

struct PendingTensor {
    name: String,
    dims: Vec<u64>,
    ggml_type: u32,
    data: Vec<u8>,
}

/// Collects metadata and tensors, then writes a GGUF v3 file.
#[derive(Default)]
pub struct GgufWriter {
    metadata: Vec<(String, Value)>,
    tensors: Vec<PendingTensor>,
}

impl std::fmt::Debug for GgufWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GgufWriter")
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl GgufWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets `key` (replacing an earlier value of the same key, keeping its position).
    pub fn set(&mut self, key: &str, value: Value) -> &mut Self {
        match self.metadata.iter_mut().find(|(k, _)| k == key) {
            Some(slot) => slot.1 = value,
            None => self.metadata.push((key.to_string(), value)),
        }
        self
    }

    /// Sets `key` to a string.
    pub fn set_str(&mut self, key: &str, value: &str) -> &mut Self {
        self.set(key, Value::String(value.to_string()))
    }

    /// Sets `key` to an array of strings.
    pub fn set_str_array<S: AsRef<str>>(&mut self, key: &str, values: &[S]) -> &mut Self {
        let items = values.iter().map(|s| Value::String(s.as_ref().to_string())).collect();
        self.set(key, Value::Array(ValueType::String, items))
    }

    /// Adds a tensor of row-major `shape` whose `data` holds its elements in `dtype`'s layout
    /// (little-endian floats, or whole GGML blocks per row).
    pub fn add_tensor(&mut self, name: &str, dtype: DType, shape: &[usize], data: Vec<u8>) -> Result<&mut Self> {
        let n: usize = shape.iter().product();
        let rows_ok = shape.last().is_some_and(|&l| l.is_multiple_of(dtype.block_size()));
        if !rows_ok || dtype.bytes_for(n) != Some(data.len()) {
            return Err(Error::InvalidArgument(format!(
                "GGUF writer: tensor `{name}` of shape {shape:?} and dtype {dtype} cannot hold {} bytes",
                data.len()
            )));
        }
        let dims = shape.iter().rev().map(|&d| d as u64).collect();
        Ok(self.add_raw_tensor(name, dims, dtype.ggml_type(), data))
    }

    /// Adds a tensor without any check: GGML `dims` (`ne[0]` first), any type number, any bytes.
    /// For writing files in formats this engine cannot read (and for testing the reader).
    pub fn add_raw_tensor(&mut self, name: &str, dims: Vec<u64>, ggml_type: u32, data: Vec<u8>) -> &mut Self {
        self.tensors.push(PendingTensor { name: name.to_string(), dims, ggml_type, data });
        self
    }

    fn alignment(&self) -> Result<u64> {
        match self.metadata.iter().find(|(k, _)| k == "general.alignment") {
            None => Ok(DEFAULT_ALIGNMENT),
            Some((_, v)) => v.as_u64().filter(|a| a.is_power_of_two()).ok_or_else(|| {
                Error::InvalidArgument(format!("GGUF writer: general.alignment must be a power of two, got {v:?}"))
            }),
        }
    }

    /// The header (magic, counts, metadata, tensor infos) padded to the alignment, for tensors
    /// given as (name, GGML dims, ggml type, data bytes); returns it with each tensor's offset
    /// from the start of the data section.
    fn header<'a>(
        &self,
        tensors: impl Iterator<Item = (&'a str, &'a [u64], u32, usize)>,
    ) -> Result<(Vec<u8>, Vec<usize>)> {
        let align = self.alignment()? as usize;
        let tensors: Vec<_> = tensors.collect();
        let mut out = Vec::new();
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&3u32.to_le_bytes());
        out.extend_from_slice(&(tensors.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut out, key);
            out.extend_from_slice(&(value_type(value) as u32).to_le_bytes());
            put_value(&mut out, value);
        }
        let mut offset = 0usize;
        let mut offsets = Vec::with_capacity(tensors.len());
        for (name, dims, ggml_type, n_bytes) in tensors {
            put_str(&mut out, name);
            out.extend_from_slice(&(dims.len() as u32).to_le_bytes());
            for d in dims {
                out.extend_from_slice(&d.to_le_bytes());
            }
            out.extend_from_slice(&ggml_type.to_le_bytes());
            out.extend_from_slice(&(offset as u64).to_le_bytes());
            offsets.push(offset);
            offset = (offset + n_bytes).next_multiple_of(align);
        }
        out.resize(out.len().next_multiple_of(align), 0);
        Ok((out, offsets))
    }

    /// The whole file in memory.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let infos = self.tensors.iter().map(|t| (t.name.as_str(), &t.dims[..], t.ggml_type, t.data.len()));
        let (mut out, offsets) = self.header(infos)?;
        let data_start = out.len();
        for (t, off) in self.tensors.iter().zip(offsets) {
            out.resize(data_start + off, 0);
            out.extend_from_slice(&t.data);
        }
        Ok(out)
    }

    /// Writes the file to `path`.
    pub fn write(&self, path: &Path) -> Result<()> {
        std::fs::write(path, self.to_bytes()?).map_err(|e| Error::io(path, e))
    }

    /// Writes the metadata and `tensors` to the file `path`, asking `data(i)` for tensor `i`'s
    /// bytes only when its turn comes, so that one tensor's data is in memory at a time. The
    /// writer must hold no tensors of its own ([`GgufWriter::add_tensor`]). The file is created
    /// before any data is asked for (an unwritable path fails first) and removed again if
    /// anything fails. Returns the bytes written.
    pub fn write_streamed(
        &self,
        path: &Path,
        tensors: &[StreamedTensor],
        data: impl FnMut(usize) -> Result<Vec<u8>>,
    ) -> Result<u64> {
        let file = std::fs::File::create(path).map_err(|e| Error::io(path, e))?;
        let mut out = std::io::BufWriter::new(file);
        let r = self.stream_to(&mut out, path, tensors, data).and_then(|n| {
            out.flush().map_err(|e| Error::io(path, e))?;
            Ok(n)
        });
        drop(out);
        if r.is_err() {
            // Best effort: the error that matters is the one returned.
            let _ = std::fs::remove_file(path);
        }
        r
    }

    fn stream_to(
        &self,
        out: &mut impl Write,
        path: &Path,
        tensors: &[StreamedTensor],
        mut data: impl FnMut(usize) -> Result<Vec<u8>>,
    ) -> Result<u64> {
        if !self.tensors.is_empty() {
            return Err(Error::InvalidArgument("GGUF writer: streamed tensors cannot follow added tensors".into()));
        }
        let mut sizes = Vec::with_capacity(tensors.len());
        for t in tensors {
            let n: usize = t.shape.iter().product();
            let rows_ok = t.shape.last().is_some_and(|&l| l.is_multiple_of(t.dtype.block_size()));
            match t.dtype.bytes_for(n).filter(|_| rows_ok) {
                Some(b) => sizes.push(b),
                None => {
                    return Err(Error::InvalidArgument(format!(
                        "GGUF writer: tensor `{}` of shape {:?} is not whole rows of {} blocks",
                        t.name, t.shape, t.dtype
                    )));
                }
            }
        }
        let dims: Vec<Vec<u64>> = tensors.iter().map(|t| t.shape.iter().rev().map(|&d| d as u64).collect()).collect();
        let infos =
            tensors.iter().zip(&dims).zip(&sizes).map(|((t, d), &n)| (t.name.as_str(), &d[..], t.dtype.ggml_type(), n));
        let (header, offsets) = self.header(infos)?;
        let io = |e: std::io::Error| Error::io(path, e);
        out.write_all(&header).map_err(io)?;
        let mut written = 0usize;
        for (i, t) in tensors.iter().enumerate() {
            let pad = offsets[i] - written;
            out.write_all(&vec![0u8; pad]).map_err(io)?;
            let bytes = data(i)?;
            if bytes.len() != sizes[i] {
                return Err(Error::InvalidArgument(format!(
                    "GGUF writer: tensor `{}` produced {} bytes, expected {}",
                    t.name,
                    bytes.len(),
                    sizes[i]
                )));
            }
            out.write_all(&bytes).map_err(io)?;
            written = offsets[i] + bytes.len();
        }
        Ok((header.len() + written) as u64)
    }
}

/// A tensor written by [`GgufWriter::write_streamed`]: row-major `shape`, data in `dtype`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamedTensor {
    /// GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    pub dtype: DType,
    pub shape: Vec<usize>,
}

fn put_str(out: &mut Vec<u8>, s: &str) {
    out.extend_from_slice(&(s.len() as u64).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn value_type(v: &Value) -> ValueType {
    match v {
        Value::U8(_) => ValueType::U8,
        Value::I8(_) => ValueType::I8,
        Value::U16(_) => ValueType::U16,
        Value::I16(_) => ValueType::I16,
        Value::U32(_) => ValueType::U32,
        Value::I32(_) => ValueType::I32,
        Value::F32(_) => ValueType::F32,
        Value::Bool(_) => ValueType::Bool,
        Value::String(_) => ValueType::String,
        Value::Array(..) => ValueType::Array,
        Value::U64(_) => ValueType::U64,
        Value::I64(_) => ValueType::I64,
        Value::F64(_) => ValueType::F64,
    }
}

/// The value's bytes without its type tag (array elements carry no tags either).
fn put_value(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::U8(x) => out.push(*x),
        Value::I8(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I16(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::U32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F32(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::Bool(x) => out.push(u8::from(*x)),
        Value::String(s) => put_str(out, s),
        Value::Array(t, items) => {
            out.extend_from_slice(&(*t as u32).to_le_bytes());
            out.extend_from_slice(&(items.len() as u64).to_le_bytes());
            for item in items {
                put_value(out, item);
            }
        }
        Value::U64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::I64(x) => out.extend_from_slice(&x.to_le_bytes()),
        Value::F64(x) => out.extend_from_slice(&x.to_le_bytes()),
    }
}
