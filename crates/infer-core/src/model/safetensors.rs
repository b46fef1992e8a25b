//! Safetensors weights (single `model.safetensors` or sharded with `model.safetensors.index.json`),
//! memory-mapped: tensors are zero-copy windows of the files, in their stored dtype.

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::Mmap;
use safetensors::SafeTensors;

use crate::base::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Where one tensor lives.
#[derive(Debug, Clone)]
struct Entry {
    file: usize,
    start: usize,
    dtype: Option<DType>,
    raw_dtype: String,
    shape: Vec<usize>,
}

/// All tensors of a checkpoint, by Hugging Face name.
#[derive(Debug)]
pub struct WeightStore {
    files: Vec<(PathBuf, Arc<Mmap>)>,
    entries: HashMap<String, Entry>,
}

fn map_file(path: &Path) -> Result<Arc<Mmap>> {
    let file = File::open(path).map_err(|e| Error::io(path, e))?;
    // SAFETY: the file is opened read-only and mapped read-only; like every mmap-based loader
    // (safetensors, llama.cpp) we assume it is not truncated by another process while mapped.
    let map = unsafe { Mmap::map(&file) }.map_err(|e| Error::io(path, e))?;
    Ok(Arc::new(map))
}

impl WeightStore {
    /// Opens the safetensors weights of a model directory.
    pub fn open(dir: &Path) -> Result<Self> {
        let index = dir.join("model.safetensors.index.json");
        let single = dir.join("model.safetensors");
        let files: Vec<PathBuf> = if index.is_file() {
            shard_files(&index)?.into_iter().map(|f| dir.join(f)).collect()
        } else if single.is_file() {
            vec![single]
        } else {
            return Err(Error::io(
                single,
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no model.safetensors or model.safetensors.index.json",
                ),
            ));
        };
        let mut store = WeightStore { files: Vec::new(), entries: HashMap::new() };
        for path in files {
            store.add_file(path)?;
        }
        Ok(store)
    }

    fn add_file(&mut self, path: PathBuf) -> Result<()> {
        let map = map_file(&path)?;
        let bad = |msg: String| Error::Safetensors { path: path.clone(), msg };
        let st = SafeTensors::deserialize(&map[..]).map_err(|e| bad(e.to_string()))?;
        let base = map.as_ptr() as usize;
        let file = self.files.len();
        for (name, view) in st.iter() {
            let start = view.data().as_ptr() as usize - base;
            let dtype = DType::from_safetensors(view.dtype());
            let entry =
                Entry { file, start, dtype, raw_dtype: format!("{:?}", view.dtype()), shape: view.shape().to_vec() };
            if self.entries.insert(name.to_string(), entry).is_some() {
                return Err(bad(format!("tensor `{name}` appears in more than one file")));
            }
        }
        self.files.push((path, map));
        Ok(())
    }

    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Total size of the weight files in bytes.
    pub fn file_bytes(&self) -> u64 {
        self.files.iter().map(|(_, m)| m.len() as u64).sum()
    }

    /// The tensor `name`, checked to have `shape` and a supported dtype; zero copy.
    pub fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let e = self.entries.get(name).ok_or_else(|| Error::MissingTensor {
            name: name.to_string(),
            path: self.files.first().map(|f| f.0.clone()).unwrap_or_default(),
        })?;
        if e.shape != shape {
            return Err(Error::TensorShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: e.shape.clone(),
            });
        }
        let dtype = e.dtype.ok_or_else(|| Error::TensorDType {
            name: name.to_string(),
            expected: "F32, BF16, F16".into(),
            found: e.raw_dtype.clone(),
        })?;
        Tensor::from_mapped(self.files[e.file].1.clone(), e.start, dtype, shape)
    }

    /// Reads every page of the mapped files once so the first forward pass does not pay the
    /// page faults; `progress` receives the bytes done after each chunk.
    pub fn prefault(&self, progress: &mut dyn FnMut(u64)) {
        const CHUNK: usize = 64 << 20;
        let mut sum = 0u8;
        for (_, map) in &self.files {
            for chunk in map.chunks(CHUNK) {
                sum = chunk.iter().step_by(4096).fold(sum, |a, b| a.wrapping_add(*b));
                progress(chunk.len() as u64);
            }
        }
        std::hint::black_box(sum);
    }
}

impl super::weights::WeightSource for WeightStore {
    fn get(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        WeightStore::get(self, name, shape)
    }

    fn contains(&self, name: &str) -> bool {
        WeightStore::contains(self, name)
    }

    fn file_bytes(&self) -> u64 {
        WeightStore::file_bytes(self)
    }

    fn prefault(&self, progress: &mut dyn FnMut(u64)) {
        WeightStore::prefault(self, progress)
    }
}

/// The distinct shard file names listed by `model.safetensors.index.json`.
fn shard_files(index: &Path) -> Result<Vec<String>> {
    let text = std::fs::read_to_string(index).map_err(|e| Error::io(index, e))?;
    let bad = |msg: String| Error::Safetensors { path: index.to_path_buf(), msg };
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(format!("not valid JSON: {e}")))?;
    let map = v.get("weight_map").and_then(|m| m.as_object()).ok_or_else(|| bad("no `weight_map` object".into()))?;
    let mut files: Vec<String> = Vec::new();
    for (name, f) in map {
        let f = f.as_str().ok_or_else(|| bad(format!("`{name}` maps to a non-string {f}")))?;
        if f.contains('/') || f.contains("..") {
            return Err(bad(format!("shard name `{f}` must be a plain file name")));
        }
        if !files.iter().any(|x| x == f) {
            files.push(f.to_string());
        }
    }
    if files.is_empty() {
        return Err(bad("`weight_map` is empty".into()));
    }
    Ok(files)
}
