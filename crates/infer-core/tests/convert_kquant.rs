//! K-quant conversion without fallbacks: the tiny fixture's rows (64, 192) are not whole
//! 256-element blocks, so this test writes its own small Llama checkpoint (hidden 256, FFN 512,
//! 2 layers, 4 query / 2 KV heads, an untied `lm_head`, a 256-token byte-level BPE tokenizer,
//! f32 safetensors) and converts it to Q4_K and Q6_K.

use std::path::{Path, PathBuf};

use infer_core::model::gguf::{ConvertOptions, GgufFile, convert_hf_to_gguf};
use infer_core::{DType, Llama3, LoadOptions};

const HIDDEN: usize = 256;
const FFN: usize = 512;
const LAYERS: usize = 2;
const VOCAB: usize = 256;

/// GPT-2's byte → printable character map (byte-level BPE's alphabet).
fn byte_chars() -> Vec<char> {
    let mut printable: Vec<u32> = (33..=126).chain(161..=172).chain(174..=255).collect();
    let mut chars: Vec<u32> = printable.clone();
    let mut extra = 0;
    for b in 0..256u32 {
        if !printable.contains(&b) {
            printable.push(b);
            chars.push(256 + extra);
            extra += 1;
        }
    }
    let mut map = vec!['\0'; 256];
    for (b, c) in printable.iter().zip(chars) {
        map[*b as usize] = char::from_u32(c).unwrap();
    }
    map
}

/// Deterministic uniform values in [-scale, scale] (xorshift).
fn random(n: usize, seed: u64, scale: f32) -> Vec<f32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Writes the checkpoint (config.json, model.safetensors, tokenizer.json) into a fresh directory.
fn write_checkpoint() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("rustinfer-kquant-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = serde_json::json!({
        "model_type": "llama", "hidden_size": HIDDEN, "intermediate_size": FFN, "num_hidden_layers": LAYERS,
        "num_attention_heads": 4, "num_key_value_heads": 2, "vocab_size": VOCAB, "max_position_embeddings": 512,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": false, "eos_token_id": 10,
    });
    std::fs::write(dir.join("config.json"), config.to_string()).unwrap();
    let chars = byte_chars();
    let vocab: serde_json::Map<String, serde_json::Value> =
        chars.iter().enumerate().map(|(i, c)| (c.to_string(), serde_json::json!(i))).collect();
    let tok = serde_json::json!({
        "version": "1.0", "added_tokens": [], "normalizer": null, "post_processor": null,
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "vocab": vocab, "merges": []},
    });
    std::fs::write(dir.join("tokenizer.json"), tok.to_string()).unwrap();

    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = Vec::new();
    let mut add = |name: String, shape: Vec<usize>, scale: f32| {
        let n = shape.iter().product();
        let seed = tensors.len() as u64 + 1;
        let data = if shape.len() == 1 {
            random(n, seed, 0.1).iter().map(|x| 1.0 + x).collect()
        } else {
            random(n, seed, scale)
        };
        tensors.push((name, shape, data));
    };
    let w = |fan_in: usize| (3.0 / fan_in as f32).sqrt();
    add("model.embed_tokens.weight".into(), vec![VOCAB, HIDDEN], 1.0);
    for l in 0..LAYERS {
        let p = |s: &str| format!("model.layers.{l}.{s}.weight");
        add(p("input_layernorm"), vec![HIDDEN], 0.0);
        add(p("self_attn.q_proj"), vec![HIDDEN, HIDDEN], w(HIDDEN));
        add(p("self_attn.k_proj"), vec![128, HIDDEN], w(HIDDEN));
        add(p("self_attn.v_proj"), vec![128, HIDDEN], w(HIDDEN));
        add(p("self_attn.o_proj"), vec![HIDDEN, HIDDEN], w(HIDDEN));
        add(p("post_attention_layernorm"), vec![HIDDEN], 0.0);
        add(p("mlp.gate_proj"), vec![FFN, HIDDEN], w(HIDDEN));
        add(p("mlp.up_proj"), vec![FFN, HIDDEN], w(HIDDEN));
        add(p("mlp.down_proj"), vec![HIDDEN, FFN], w(FFN));
    }
    add("model.norm.weight".into(), vec![HIDDEN], 0.0);
    add("lm_head.weight".into(), vec![VOCAB, HIDDEN], 4.0 * w(HIDDEN));
    // safetensors: u64 header length, JSON header, data.
    let (mut header, mut data) = (serde_json::Map::new(), Vec::new());
    for (name, shape, values) in &tensors {
        let start = data.len();
        data.extend(values.iter().flat_map(|v| v.to_le_bytes()));
        header.insert(
            name.clone(),
            serde_json::json!({"dtype": "F32", "shape": shape, "data_offsets": [start, data.len()]}),
        );
    }
    let mut h = serde_json::Value::Object(header).to_string().into_bytes();
    h.resize(h.len().next_multiple_of(8), b' ');
    let mut file = (h.len() as u64).to_le_bytes().to_vec();
    file.extend(h);
    file.extend(data);
    std::fs::write(dir.join("model.safetensors"), file).unwrap();
    dir
}

fn load(path: &Path) -> Llama3 {
    Llama3::load(path, LoadOptions { context_length: Some(256), progress: false, ..LoadOptions::default() }).unwrap()
}

/// RMS(a - b) / RMS(a) and the fraction of rows with the same argmax.
fn compare(a: &[f32], b: &[f32]) -> (f64, f64) {
    let err: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
    let scale: f64 = a.iter().map(|x| f64::from(*x).powi(2)).sum();
    let am = |r: &[f32]| infer_core::op::argmax::argmax(r).unwrap();
    let same = a.chunks_exact(VOCAB).zip(b.chunks_exact(VOCAB)).filter(|(x, y)| am(x) == am(y)).count();
    ((err / scale).sqrt(), same as f64 / (a.len() / VOCAB) as f64)
}

/// Q4_K and Q6_K files hold real K-quant blocks (no fallback), weights bit-equal to
/// `quantize_to_vec` of the checkpoint (Q/K un-permuted back), and teacher-forced logits over
/// 200 tokens close to the f32 checkpoint's.
///
/// Bounds. On these uniform weights (range ±a, RMS a/√3) weight rounding has a relative RMS
/// error of step/√12 / RMS(w): Q6_K's step ≈ a/32 → 1.6%, Q4_K's ≈ 2a/15 → 6.7% per matrix. A twin
/// file with the same weights dequantized to F32 measures what that does to the logits (3.7%
/// and 15.4%: 2.3× the per-matrix error for both types), and the quantized file against its
/// twin measures the fast kernel's 8-bit activation rounding (2.0%). Allowed: 3× the per-matrix
/// weight error plus 2% for the activations — Q6_K 7%, Q4_K 22% — activation rounding < 3%,
/// top-1 agreement ≥ 85% / 70% (measured 91.5% / 79.5%).
#[test]
fn k_quants_without_fallback() {
    use infer_core::model::WeightSource;
    use infer_core::model::safetensors::WeightStore;
    use infer_core::tensor::TensorData;
    let dir = write_checkpoint();
    let ids: Vec<u32> = random(200, 99, 1.0).iter().map(|x| ((x + 1.0) * 127.9) as u32).collect();
    let want = load(&dir).forward_tokens(&ids, 0, true).unwrap().as_f32().unwrap().to_vec();
    let st = WeightStore::open(&dir).unwrap();
    for (dtype, max_rel, min_top1) in [(DType::Q6_K, 0.07, 0.85), (DType::Q4_K, 0.22, 0.7)] {
        let path = dir.join(format!("model-{dtype}.gguf"));
        let opts = ConvertOptions { dtype, pre: None, progress: false };
        let report = convert_hf_to_gguf(&dir, &path, &opts).unwrap();
        assert_eq!((report.fallbacks().count(), report.pre.as_str()), (0, "gpt2"));
        let gg = GgufFile::open(&path).unwrap();
        assert!(gg.tensor_info("output.weight").is_some(), "untied lm_head is written");
        for t in report.tensors.iter().filter(|t| t.shape.len() == 2) {
            let hf = infer_core::model::gguf::gguf_to_hf(&t.name).unwrap();
            let x = st.get(&hf, &t.shape).unwrap().to_f32_vec().unwrap();
            let got = gg.get(&hf, &t.shape).unwrap();
            let TensorData::Quant(d, bytes) = got.data().unwrap() else { panic!("{} is not quantized", t.name) };
            assert_eq!((d, bytes), (dtype, &infer_core::tensor::quantize::quantize_to_vec(dtype, &x).unwrap()[..]));
        }
        let mut m = load(&path);
        assert_eq!(m.tokenize("hi!", false).unwrap(), [104, 105, 33], "byte ids");
        let got = m.forward_tokens(&ids, 0, true).unwrap().as_f32().unwrap().to_vec();
        let (rel, top1) = compare(&want, &got);
        println!("{dtype}: RMS relative logit error {rel:.3e}, top-1 agreement {top1:.3}");
        // The same weights dequantized to F32 (f32 activations): weight rounding alone.
        let mut w = infer_core::model::gguf::GgufWriter::new();
        for (k, v) in &gg.header().metadata {
            w.set(k, v.clone());
        }
        for t in &gg.header().tensors {
            let x = gg.raw_tensor(&t.name).unwrap().to_f32_vec().unwrap();
            w.add_tensor(&t.name, DType::F32, &t.shape(), x.iter().flat_map(|v| v.to_le_bytes()).collect()).unwrap();
        }
        let twin = dir.join(format!("model-{dtype}-f32.gguf"));
        w.write(&twin).unwrap();
        let twin_logits = load(&twin).forward_tokens(&ids, 0, true).unwrap().as_f32().unwrap().to_vec();
        let (wrel, wtop1) = compare(&want, &twin_logits);
        let (arel, atop1) = compare(&twin_logits, &got);
        println!(
            "{dtype}: weight rounding alone {wrel:.3e} (top-1 {wtop1:.3}), activation rounding {arel:.3e} (top-1 {atop1:.3})"
        );
        assert!(rel < max_rel && top1 >= min_top1, "{dtype}: error {rel:e}, top-1 {top1}");
        if dtype == DType::Q4_K {
            // Loading interleaves Q4_K by 8 rows (where the CPU has the x86 kernels) unless
            // told not to: the logits of 200 rows (dequantizing prefill: the same weights, equal),
            // 5 rows (two activations per weight pass) and 1 (decode) track the file's layout to
            // f32 summation order (the Q4_K mins cancel most of each dot, so that order shows at
            // ~1e-4 after two layers; the activations' own rounding above is 5e-3).
            let interleaved = infer_core::op::cpu::quant::interleaved_kernels();
            let layout = m.weights().layers[0].o_proj.dtype();
            assert_eq!(layout, if interleaved { DType::Q4_Kx8 } else { DType::Q4_K });
            let opts =
                LoadOptions { context_length: Some(256), progress: false, repack: false, ..LoadOptions::default() };
            let mut plain = Llama3::load(&path, opts).unwrap();
            assert_eq!(plain.weights().layers[0].o_proj.dtype(), DType::Q4_K);
            assert_eq!(plain.forward_tokens(&ids, 0, true).unwrap().as_f32().unwrap(), &got[..]);
            for n in [5, 1] {
                let a = m.forward_tokens(&ids[..n], 0, true).unwrap().as_f32().unwrap().to_vec();
                let b = plain.forward_tokens(&ids[..n], 0, true).unwrap().as_f32().unwrap().to_vec();
                let (rel, top1) = compare(&b, &a);
                println!("{n} rows: interleaved vs file layout: RMS relative {rel:.3e}, top-1 {top1:.3}");
                assert!(rel < 1e-3 && top1 == 1.0, "{n} rows: {rel:e}, top-1 {top1}");
            }
        }
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
