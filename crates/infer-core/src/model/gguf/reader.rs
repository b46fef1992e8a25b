//! GGUF v2/v3 parser: header, metadata key/values and tensor infos, read from the mapped bytes.
//!
//! Only the metadata is copied (keys, strings, arrays); tensor data stays in the file and is
//! described by [`TensorInfo`] (absolute byte window). Every count, length and offset is checked
//! against the file size with checked arithmetic *before* anything is allocated, so a corrupt
//! file gives an [`Error::Gguf`] naming the file (and the key or tensor), never a panic, an
//! out-of-memory abort or a hang.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use super::value::{Value, ValueType};
use crate::base::{Error, Result};
use crate::tensor::DType;

/// The four bytes every GGUF file starts with.
pub const MAGIC: [u8; 4] = *b"GGUF";
/// Alignment of tensor data when `general.alignment` is absent.
pub const DEFAULT_ALIGNMENT: u64 = 32;
/// GGML tensors have at most 4 dimensions.
const MAX_DIMS: usize = 4;
/// Deepest nesting of arrays accepted (real files use 1).
const MAX_DEPTH: usize = 8;
/// Longest metadata array accepted (vocabularies and merge lists are < 2^21): parsed values
/// take ~32 bytes each, so this bounds the memory a file's metadata can ask for.
const MAX_ARRAY_LEN: u64 = 1 << 24;

/// Where one tensor's data lives in the file.
#[derive(Debug, Clone, PartialEq)]
pub struct TensorInfo {
    /// The GGUF name (`blk.0.attn_q.weight`).
    pub name: String,
    /// GGML dims, `ne[0]` first (`ne[0]` is the row length, i.e. the *last* PyTorch dim).
    pub dims: Vec<u64>,
    pub dtype: DType,
    /// Offset relative to the start of the data section, as stored.
    pub offset: u64,
    /// Absolute byte offset of the data in the file.
    pub start: usize,
    /// Size of the data in bytes.
    pub n_bytes: usize,
}

impl TensorInfo {
    /// The row-major (PyTorch) shape: the GGML dims reversed (`[ne1, ne0]` for a matrix).
    pub fn shape(&self) -> Vec<usize> {
        // Each dim was checked to fit in usize (their product does) when parsing.
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }

    /// Total element count.
    pub fn n_elements(&self) -> usize {
        self.shape().iter().product()
    }
}

/// A parsed GGUF header: version, metadata in file order, tensor infos, data layout.
#[derive(Debug, Clone)]
pub struct Header {
    pub path: PathBuf,
    pub version: u32,
    pub metadata: Vec<(String, Value)>,
    index: HashMap<String, usize>,
    pub tensors: Vec<TensorInfo>,
    /// `general.alignment` (default 32).
    pub alignment: u64,
    /// Absolute offset of the data section.
    pub data_start: usize,
}

/// The name of a GGML type number, for error messages (also types this engine cannot read).
pub fn ggml_type_name(t: u32) -> &'static str {
    const NAMES: [&str; 40] = [
        "F32",
        "F16",
        "Q4_0",
        "Q4_1",
        "Q4_2",
        "Q4_3",
        "Q5_0",
        "Q5_1",
        "Q8_0",
        "Q8_1",
        "Q2_K",
        "Q3_K",
        "Q4_K",
        "Q5_K",
        "Q6_K",
        "Q8_K",
        "IQ2_XXS",
        "IQ2_XS",
        "IQ3_XXS",
        "IQ1_S",
        "IQ4_NL",
        "IQ3_S",
        "IQ2_S",
        "IQ4_XS",
        "I8",
        "I16",
        "I32",
        "I64",
        "F64",
        "IQ1_M",
        "BF16",
        "Q4_0_4_4",
        "Q4_0_4_8",
        "Q4_0_8_8",
        "TQ1_0",
        "TQ2_0",
        "IQ4_NL_4_4",
        "IQ4_NL_4_8",
        "IQ4_NL_8_8",
        "MXFP4",
    ];
    NAMES.get(t as usize).copied().unwrap_or("unknown")
}

/// A bounds-checked little-endian reader over the file bytes.
struct Cursor<'a> {
    b: &'a [u8],
    pos: usize,
    path: &'a Path,
}

impl<'a> Cursor<'a> {
    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Gguf { path: self.path.to_path_buf(), msg: msg.into() }
    }

    fn remaining(&self) -> u64 {
        (self.b.len() - self.pos) as u64
    }

    fn take(&mut self, n: u64, what: &str) -> Result<&'a [u8]> {
        if n > self.remaining() {
            return Err(self.err(format!(
                "truncated: {what} needs {n} bytes at offset {} but the file has {} bytes",
                self.pos,
                self.b.len()
            )));
        }
        let s = &self.b[self.pos..self.pos + n as usize];
        self.pos += n as usize;
        Ok(s)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N]> {
        let s = self.take(N as u64, what)?;
        let mut a = [0u8; N];
        a.copy_from_slice(s);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32> {
        Ok(u32::from_le_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &str) -> Result<u64> {
        Ok(u64::from_le_bytes(self.array(what)?))
    }

    /// Checks that `count` items of at least `min` bytes each can fit in the rest of the file.
    fn check_count(&self, count: u64, min: u64, what: &str) -> Result<()> {
        if count.checked_mul(min).is_none_or(|n| n > self.remaining()) {
            return Err(self.err(format!(
                "{what}: count {count} cannot fit in the {} bytes left of the file (truncated file or corrupt count)",
                self.remaining()
            )));
        }
        Ok(())
    }

    fn string(&mut self, what: &str) -> Result<String> {
        let len = self.u64(what)?;
        let bytes = self.take(len, what)?;
        String::from_utf8(bytes.to_vec()).map_err(|e| self.err(format!("{what} is not valid UTF-8: {e}")))
    }

    fn value(&mut self, ty: ValueType, key: &str, depth: usize) -> Result<Value> {
        Ok(match ty {
            ValueType::U8 => Value::U8(u8::from_le_bytes(self.array(key)?)),
            ValueType::I8 => Value::I8(i8::from_le_bytes(self.array(key)?)),
            ValueType::U16 => Value::U16(u16::from_le_bytes(self.array(key)?)),
            ValueType::I16 => Value::I16(i16::from_le_bytes(self.array(key)?)),
            ValueType::U32 => Value::U32(self.u32(key)?),
            ValueType::I32 => Value::I32(i32::from_le_bytes(self.array(key)?)),
            ValueType::F32 => Value::F32(f32::from_le_bytes(self.array(key)?)),
            ValueType::U64 => Value::U64(self.u64(key)?),
            ValueType::I64 => Value::I64(i64::from_le_bytes(self.array(key)?)),
            ValueType::F64 => Value::F64(f64::from_le_bytes(self.array(key)?)),
            ValueType::Bool => match self.array::<1>(key)?[0] {
                0 => Value::Bool(false),
                1 => Value::Bool(true),
                b => return Err(self.err(format!("metadata `{key}`: bool byte {b} is neither 0 nor 1"))),
            },
            ValueType::String => Value::String(self.string(&format!("metadata `{key}` string"))?),
            ValueType::Array => {
                if depth >= MAX_DEPTH {
                    return Err(self.err(format!("metadata `{key}`: arrays nested deeper than {MAX_DEPTH}")));
                }
                let t = self.u32(key)?;
                let elem = ValueType::from_u32(t)
                    .ok_or_else(|| self.err(format!("metadata `{key}`: unknown array element type {t}")))?;
                let count = self.u64(key)?;
                self.check_count(count, elem.min_bytes(), &format!("metadata `{key}` array"))?;
                if count > MAX_ARRAY_LEN {
                    return Err(self.err(format!(
                        "metadata `{key}`: array of {count} elements is longer than the {MAX_ARRAY_LEN} this reader accepts"
                    )));
                }
                // `count` is bounded by the file size (checked above), so this allocation is too.
                let mut items = Vec::with_capacity(count as usize);
                for _ in 0..count {
                    items.push(self.value(elem, key, depth + 1)?);
                }
                Value::Array(elem, items)
            }
        })
    }
}

impl Header {
    /// Parses the header of the GGUF file whose bytes are `b`; `path` names it in errors.
    pub fn parse(b: &[u8], path: &Path) -> Result<Self> {
        let mut c = Cursor { b, pos: 0, path };
        let magic = c.array::<4>("magic")?;
        if magic != MAGIC {
            return Err(c.err(format!("bad magic {magic:02x?} (a GGUF file starts with \"GGUF\")")));
        }
        let version = c.u32("version")?;
        if !(2..=3).contains(&version) {
            let hint = if version.swap_bytes() <= 3 { " (a big-endian file?)" } else { "" };
            return Err(c.err(format!("unsupported GGUF version {version}{hint}; this engine reads versions 2 and 3")));
        }
        let n_tensors = c.u64("tensor count")?;
        let n_kv = c.u64("metadata count")?;
        // Each key/value takes at least 8 (key length) + 4 (type) + 1 bytes; each tensor info
        // at least 8 (name length) + 4 (n_dims) + 4 (type) + 8 (offset).
        c.check_count(n_kv, 13, "metadata key/values")?;
        let mut metadata = Vec::new();
        let mut index = HashMap::new();
        for i in 0..n_kv {
            let key = c.string(&format!("metadata key #{i}"))?;
            let t = c.u32(&key)?;
            let ty =
                ValueType::from_u32(t).ok_or_else(|| c.err(format!("metadata `{key}`: unknown value type {t}")))?;
            let value = c.value(ty, &key, 0)?;
            if index.insert(key.clone(), metadata.len()).is_some() {
                return Err(c.err(format!("metadata key `{key}` appears twice")));
            }
            metadata.push((key, value));
        }
        c.check_count(n_tensors, 24, "tensor infos")?;
        let mut raw = Vec::new();
        for i in 0..n_tensors {
            let name = c.string(&format!("tensor #{i} name"))?;
            let n_dims = c.u32(&name)? as usize;
            if n_dims == 0 || n_dims > MAX_DIMS {
                return Err(c.err(format!("tensor `{name}` has {n_dims} dims (1..={MAX_DIMS} supported)")));
            }
            let dims = (0..n_dims).map(|_| c.u64(&name)).collect::<Result<Vec<u64>>>()?;
            let ggml_type = c.u32(&name)?;
            let offset = c.u64(&name)?;
            raw.push((name, dims, ggml_type, offset));
        }
        let mut h = Header {
            path: path.to_path_buf(),
            version,
            metadata,
            index,
            tensors: Vec::new(),
            alignment: DEFAULT_ALIGNMENT,
            data_start: 0,
        };
        if let Some(v) = h.get("general.alignment") {
            h.alignment = v
                .as_u64()
                .filter(|a| a.is_power_of_two())
                .ok_or_else(|| c.err(format!("`general.alignment` must be a power of two, got {v:?}")))?;
        }
        let data_start = (c.pos as u64)
            .checked_next_multiple_of(h.alignment)
            .ok_or_else(|| c.err("data section offset overflows"))?;
        h.data_start = usize::try_from(data_start).map_err(|_| c.err("data section offset overflows"))?;
        for (name, dims, ggml_type, offset) in raw {
            let info = h.tensor_info(name, dims, ggml_type, offset, b.len())?;
            h.tensors.push(info);
        }
        h.check_overlaps()?;
        Ok(h)
    }

    fn err(&self, msg: impl Into<String>) -> Error {
        Error::Gguf { path: self.path.clone(), msg: msg.into() }
    }

    /// Validates one tensor info against the file: type, whole blocks, alignment, bounds.
    fn tensor_info(&self, name: String, dims: Vec<u64>, ggml_type: u32, offset: u64, len: usize) -> Result<TensorInfo> {
        let dtype = DType::from_ggml_type(ggml_type).ok_or_else(|| {
            self.err(format!(
                "tensor `{name}` has ggml type {ggml_type} ({}), which this engine does not support (supported: {})",
                ggml_type_name(ggml_type),
                DType::ALL.map(|d| d.to_string()).join(", ")
            ))
        })?;
        let n = dims
            .iter()
            .try_fold(1usize, |acc, &d| usize::try_from(d).ok().filter(|&d| d > 0).and_then(|d| acc.checked_mul(d)))
            .ok_or_else(|| self.err(format!("tensor `{name}` has invalid dims {dims:?}")))?;
        if !(dims[0] as usize).is_multiple_of(dtype.block_size()) {
            return Err(self.err(format!(
                "tensor `{name}`: row length {} is not a whole number of {dtype} blocks of {}",
                dims[0],
                dtype.block_size()
            )));
        }
        let n_bytes = (n / dtype.block_size())
            .checked_mul(dtype.block_bytes())
            .ok_or_else(|| self.err(format!("tensor `{name}` of {n} {dtype} elements overflows")))?;
        if !offset.is_multiple_of(self.alignment) {
            return Err(
                self.err(format!("tensor `{name}` data offset {offset} is not aligned to {} bytes", self.alignment))
            );
        }
        let window = usize::try_from(offset)
            .ok()
            .and_then(|o| o.checked_add(self.data_start))
            .and_then(|s| s.checked_add(n_bytes).map(|e| (s, e)));
        match window {
            Some((start, end)) if end <= len => Ok(TensorInfo { name, dims, dtype, offset, start, n_bytes }),
            _ => Err(self.err(format!(
                "tensor `{name}` data ({n_bytes} bytes at data offset {offset}, data section at {}) runs past the end of the file ({len} bytes)",
                self.data_start
            ))),
        }
    }

    /// Tensors must not share bytes.
    fn check_overlaps(&self) -> Result<()> {
        let mut order: Vec<&TensorInfo> = self.tensors.iter().collect();
        order.sort_by_key(|t| t.start);
        for w in order.windows(2) {
            if w[0].start + w[0].n_bytes > w[1].start {
                return Err(self.err(format!("tensors `{}` and `{}` overlap", w[0].name, w[1].name)));
            }
        }
        let mut seen = HashMap::new();
        for t in &self.tensors {
            if seen.insert(t.name.as_str(), ()).is_some() {
                return Err(self.err(format!("tensor `{}` appears twice", t.name)));
            }
        }
        Ok(())
    }

    /// The value of `key`, if present.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.index.get(key).map(|&i| &self.metadata[i].1)
    }

    fn typed<'s, T>(&'s self, key: &str, want: &str, f: impl Fn(&'s Value) -> Option<T>) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => f(v)
                .map(Some)
                .ok_or_else(|| self.err(format!("metadata `{key}` must be {want}, found {}", v.type_name()))),
        }
    }

    /// A string value (`Ok(None)` when absent; an error naming the key when of another type).
    pub fn get_str(&self, key: &str) -> Result<Option<&str>> {
        self.typed(key, "a string", Value::as_str)
    }

    /// A non-negative integer of any width.
    pub fn get_u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "a non-negative integer", Value::as_u64)
    }

    /// A float (or integer) value.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "a number", Value::as_f64)
    }

    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "a bool", Value::as_bool)
    }

    /// An array of strings.
    pub fn get_str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        self.typed(key, "an array of strings", |v| v.as_array()?.iter().map(Value::as_str).collect())
    }

    /// An array of integers of any width.
    pub fn get_i64_array(&self, key: &str) -> Result<Option<Vec<i64>>> {
        self.typed(key, "an array of integers", |v| v.as_array()?.iter().map(Value::as_i64).collect())
    }

    /// The info of tensor `name` (GGUF name).
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensors.iter().find(|t| t.name == name)
    }
}
