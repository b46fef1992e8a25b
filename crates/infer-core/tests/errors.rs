//! Bad input gives a typed error naming the file / tensor / parameter, never a panic.

mod common;

use std::fs;
use std::path::{Path, PathBuf};

use common::tiny_dir;
use infer_core::{Error, GenerateOptions, Llama3, LoadOptions, Precision};
use safetensors::{Dtype, SafeTensors, tensor::TensorView};

/// A scratch copy of the tiny model directory (weights copied only when `with_weights`).
fn scratch(name: &str, with_weights: bool) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rustinfer-err-{}-{name}", std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json"] {
        fs::copy(tiny_dir().join(f), dir.join(f)).unwrap();
    }
    if with_weights {
        fs::copy(tiny_dir().join("model.safetensors"), dir.join("model.safetensors")).unwrap();
    }
    dir
}

fn load(dir: &Path) -> Result<Llama3, Error> {
    // Exact: `sharded_f32_checkpoint_matches_single_file` compares f32 and bf16 weights, which
    // Precision::Fast would treat differently (it rounds activations for bf16 weights only).
    let precision = Precision::Exact;
    Llama3::load(dir, LoadOptions { context_length: Some(64), progress: false, precision, ..LoadOptions::default() })
}

/// Rewrites the fixture weights with `edit` applied to (name, dtype, shape, bytes).
fn rewrite_weights(
    dir: &Path,
    edit: impl Fn(&str, Dtype, Vec<usize>, Vec<u8>) -> Option<(Dtype, Vec<usize>, Vec<u8>)>,
) {
    let bytes = fs::read(tiny_dir().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let owned: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = st
        .tensors()
        .into_iter()
        .filter_map(|(n, t)| edit(&n, t.dtype(), t.shape().to_vec(), t.data().to_vec()).map(|(d, s, b)| (n, d, s, b)))
        .collect();
    let views: Vec<(String, TensorView)> =
        owned.iter().map(|(n, d, s, b)| (n.clone(), TensorView::new(*d, s.clone(), b).unwrap())).collect();
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
}

#[test]
fn missing_directory() {
    let e = load(Path::new("/nonexistent/model")).unwrap_err();
    assert!(matches!(e, Error::ModelNotFound(_)), "{e:?}");
    assert!(e.to_string().contains("/nonexistent/model"));
}

#[test]
fn missing_weights_file() {
    let dir = scratch("noweights", false);
    let e = load(&dir).unwrap_err();
    assert!(matches!(e, Error::Io { .. }) && e.to_string().contains("model.safetensors"), "{e}");
}

#[test]
fn truncated_and_corrupt_weights() {
    let dir = scratch("truncated", false);
    let full = fs::read(tiny_dir().join("model.safetensors")).unwrap();
    for (what, bytes) in [
        ("truncated", full[..full.len() / 2].to_vec()),
        ("header only", full[..100].to_vec()),
        ("tiny", vec![1, 2, 3]),
        ("garbage header", [&(64u64).to_le_bytes()[..], &[b'x'; 200]].concat()),
        ("huge header length", [&(u64::MAX).to_le_bytes()[..], &[0u8; 64]].concat()),
    ] {
        fs::write(dir.join("model.safetensors"), bytes).unwrap();
        let e = load(&dir).unwrap_err();
        assert!(matches!(e, Error::Safetensors { .. }), "{what}: {e:?}");
        assert!(e.to_string().contains("model.safetensors"), "{what}: {e}");
    }
}

#[test]
fn wrong_shape_and_dtype_and_missing_tensor() {
    let dir = scratch("shape", false);
    let target = "model.layers.1.mlp.up_proj.weight";
    rewrite_weights(&dir, |n, d, s, b| Some(if n == target { (d, vec![s[1], s[0]], b) } else { (d, s, b) }));
    let e = load(&dir).unwrap_err();
    assert!(matches!(e, Error::TensorShape { .. }) && e.to_string().contains(target), "{e}");

    let target = "model.layers.2.input_layernorm.weight";
    rewrite_weights(&dir, |n, d, s, b| Some(if n == target { (Dtype::I16, s, b) } else { (d, s, b) }));
    let e = load(&dir).unwrap_err();
    assert!(matches!(e, Error::TensorDType { .. }) && e.to_string().contains(target), "{e}");

    rewrite_weights(&dir, |n, d, s, b| (n != "model.norm.weight").then_some((d, s, b)));
    let e = load(&dir).unwrap_err();
    assert!(matches!(e, Error::MissingTensor { .. }) && e.to_string().contains("model.norm.weight"), "{e}");
}

#[test]
fn malformed_config() {
    let dir = scratch("config", true);
    fs::write(dir.join("config.json"), "{\"hidden_size\": 64,").unwrap();
    let e = load(&dir).unwrap_err();
    assert!(matches!(e, Error::Config { .. }) && e.to_string().contains("config.json"), "{e}");
    let text = fs::read_to_string(tiny_dir().join("config.json"))
        .unwrap()
        .replace("\"use_cache\"", "\"sliding_window\": 4, \"use_cache\"");
    fs::write(dir.join("config.json"), text).unwrap();
    let e = load(&dir).unwrap_err();
    assert!(e.to_string().contains("unknown key `sliding_window`"), "{e}");
}

#[test]
fn prompt_longer_than_context() {
    let mut model = load(&tiny_dir()).unwrap();
    let ids = model.tokenize(&"hello ".repeat(100), true).unwrap();
    let opts = GenerateOptions { max_new_tokens: 8, ..GenerateOptions::default() };
    let e = model.generate_ids(&ids, &opts, &mut |_| {}).unwrap_err();
    assert!(matches!(e, Error::ContextOverflow { context_length: 64, .. }), "{e:?}");
    // Fits alone but not with the new tokens.
    let e = model.generate_ids(&ids[..60], &opts, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("context length 64"), "{e}");
    let e = model.generate_ids(&[], &opts, &mut |_| {}).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)));
    let e = model.generate_ids(&[999_999], &opts, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("999999"), "{e}");
    let e =
        Llama3::load(tiny_dir(), LoadOptions { context_length: Some(1 << 20), ..LoadOptions::default() }).unwrap_err();
    assert!(e.to_string().contains("max_position_embeddings"), "{e}");
}

#[test]
fn bad_sampler_parameters() {
    let mut model = load(&tiny_dir()).unwrap();
    let ids = model.tokenize("hi", true).unwrap();
    let mut opts = GenerateOptions { max_new_tokens: 2, ..GenerateOptions::default() };
    opts.sampler.top_p = 1.5;
    let e = model.generate_ids(&ids, &opts, &mut |_| {}).unwrap_err();
    assert!(e.to_string().contains("top_p"), "{e}");
}

#[test]
fn cuda_without_backend_is_an_error() {
    let e = Llama3::new(tiny_dir(), infer_core::DeviceType::Cuda(0), false).unwrap_err();
    assert!(matches!(e, Error::DeviceUnavailable { .. }), "{e:?}");
}

/// Sharded checkpoints (`model.safetensors.index.json`) in f32 load and give the same logits
/// as the single bf16 file (bf16 → f32 is exact, so only summation order differs).
#[test]
fn sharded_f32_checkpoint_matches_single_file() {
    let dir = scratch("sharded", false);
    let bytes = fs::read(tiny_dir().join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut names: Vec<String> = st.names().into_iter().map(|s| s.to_string()).collect();
    names.sort();
    let widened: Vec<(String, Vec<usize>, Vec<u8>)> = names
        .iter()
        .map(|n| {
            let t = st.tensor(n).unwrap();
            let f32s: Vec<u8> = t
                .data()
                .chunks_exact(2)
                .flat_map(|b| half::bf16::from_le_bytes([b[0], b[1]]).to_f32().to_le_bytes())
                .collect();
            (n.clone(), t.shape().to_vec(), f32s)
        })
        .collect();
    let half_at = widened.len() / 2;
    let mut weight_map = serde_json::Map::new();
    for (i, part) in [&widened[..half_at], &widened[half_at..]].into_iter().enumerate() {
        let file = format!("model-0000{}-of-00002.safetensors", i + 1);
        let views: Vec<(String, TensorView)> =
            part.iter().map(|(n, s, b)| (n.clone(), TensorView::new(Dtype::F32, s.clone(), b).unwrap())).collect();
        safetensors::serialize_to_file(views, None, &dir.join(&file)).unwrap();
        for (n, _, _) in part {
            weight_map.insert(n.clone(), file.clone().into());
        }
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let ids = [128000u32, 791, 6864, 315, 9822, 374];
    let mut sharded = load(&dir).unwrap();
    let mut single = load(&tiny_dir()).unwrap();
    let a = sharded.forward_tokens(&ids, 0, false).unwrap().as_f32().unwrap().to_vec();
    let b = single.forward_tokens(&ids, 0, false).unwrap().as_f32().unwrap().to_vec();
    let err = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    assert!(err < 1e-3, "sharded f32 vs single bf16 logits differ by {err}");
    // A shard listed in the index but missing on disk is an I/O error naming it.
    fs::remove_file(dir.join("model-00002-of-00002.safetensors")).unwrap();
    let e = load(&dir).unwrap_err();
    assert!(e.to_string().contains("model-00002-of-00002.safetensors"), "{e}");
}
