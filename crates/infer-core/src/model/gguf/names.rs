//! GGUF ↔ Hugging Face tensor names, and llama.cpp's Q/K row permutation.
//!
//! llama.cpp's `convert_hf_to_gguf.py` permutes the rows of `q_proj`/`k_proj` of llama-architecture
//! models so that its RoPE can rotate adjacent pairs (`x[2i], x[2i+1]`); Hugging Face (and this
//! engine) rotate the two halves of each head (`x[i], x[i + head_dim/2]`). Per head, the
//! permutation moves HF row `i * head_dim/2 + j` (half `i` ∈ {0, 1}, `j` < head_dim/2) to row
//! `2j + i`: `w.reshape(n_head, 2, head_dim/2, in).swapaxes(1, 2)`. It moves whole rows, so undoing it
//! works on quantized rows too (a row is whole blocks).

use crate::base::{Error, Result};

/// Per-layer tensors: (GGUF `blk.N.` suffix, Hugging Face `model.layers.N.` suffix).
const LAYER: [(&str, &str); 9] = [
    ("attn_q.weight", "self_attn.q_proj.weight"),
    ("attn_k.weight", "self_attn.k_proj.weight"),
    ("attn_v.weight", "self_attn.v_proj.weight"),
    ("attn_output.weight", "self_attn.o_proj.weight"),
    ("ffn_gate.weight", "mlp.gate_proj.weight"),
    ("ffn_up.weight", "mlp.up_proj.weight"),
    ("ffn_down.weight", "mlp.down_proj.weight"),
    ("attn_norm.weight", "input_layernorm.weight"),
    ("ffn_norm.weight", "post_attention_layernorm.weight"),
];

/// Model-level tensors: (GGUF name, Hugging Face name).
const GLOBAL: [(&str, &str); 3] = [
    ("token_embd.weight", "model.embed_tokens.weight"),
    ("output_norm.weight", "model.norm.weight"),
    ("output.weight", "lm_head.weight"),
];

/// The Hugging Face name of GGUF tensor `name`, if it is one the Llama model uses.
pub fn gguf_to_hf(name: &str) -> Option<String> {
    if let Some((_, hf)) = GLOBAL.iter().find(|(g, _)| *g == name) {
        return Some(hf.to_string());
    }
    let rest = name.strip_prefix("blk.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (_, hf) = LAYER.iter().find(|(g, _)| *g == suffix)?;
    Some(format!("model.layers.{layer}.{hf}"))
}

/// The GGUF name of Hugging Face tensor `name`, if it has one.
pub fn hf_to_gguf(name: &str) -> Option<String> {
    if let Some((g, _)) = GLOBAL.iter().find(|(_, hf)| *hf == name) {
        return Some(g.to_string());
    }
    let rest = name.strip_prefix("model.layers.")?;
    let (layer, suffix) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok()?;
    let (g, _) = LAYER.iter().find(|(_, hf)| *hf == suffix)?;
    Some(format!("blk.{layer}.{g}"))
}

/// Which projection a Hugging Face name is, when llama.cpp permutes its rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RopeRows {
    /// `q_proj`: `num_attention_heads` heads.
    Query,
    /// `k_proj`: `num_key_value_heads` heads.
    Key,
}

/// Whether HF tensor `name` is a Q or K projection (rows permuted in llama-arch GGUF files).
pub fn rope_rows(name: &str) -> Option<RopeRows> {
    if !name.starts_with("model.layers.") {
        return None;
    }
    if name.ends_with(".self_attn.q_proj.weight") {
        Some(RopeRows::Query)
    } else if name.ends_with(".self_attn.k_proj.weight") {
        Some(RopeRows::Key)
    } else {
        None
    }
}

/// Reorders the `n_rows` equal rows of `data` for `n_head` heads: `inverse = false` applies
/// llama.cpp's permutation (HF → GGUF layout), `inverse = true` undoes it (GGUF → HF).
pub fn permute_rows(data: &[u8], n_rows: usize, n_head: usize, inverse: bool) -> Result<Vec<u8>> {
    let bad = |msg: String| Error::InvalidArgument(format!("Q/K row permutation: {msg}"));
    if n_rows == 0 || n_head == 0 || !n_rows.is_multiple_of(n_head) || !(n_rows / n_head).is_multiple_of(2) {
        return Err(bad(format!("{n_rows} rows do not split into {n_head} heads of an even size")));
    }
    if !data.len().is_multiple_of(n_rows) {
        return Err(bad(format!("{} bytes are not {n_rows} equal rows", data.len())));
    }
    let row = data.len() / n_rows;
    let head_dim = n_rows / n_head;
    let half = head_dim / 2;
    let mut out = vec![0u8; data.len()];
    for h in 0..n_head {
        for i in 0..2 {
            for j in 0..half {
                let hf = h * head_dim + i * half + j;
                let gguf = h * head_dim + 2 * j + i;
                let (src, dst) = if inverse { (gguf, hf) } else { (hf, gguf) };
                out[dst * row..(dst + 1) * row].copy_from_slice(&data[src * row..(src + 1) * row]);
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for l in [0, 7, 29] {
            for (g, hf) in LAYER {
                let (g, hf) = (format!("blk.{l}.{g}"), format!("model.layers.{l}.{hf}"));
                assert_eq!(gguf_to_hf(&g).as_deref(), Some(hf.as_str()));
                assert_eq!(hf_to_gguf(&hf).as_deref(), Some(g.as_str()));
            }
        }
        assert_eq!(gguf_to_hf("token_embd.weight").as_deref(), Some("model.embed_tokens.weight"));
        assert_eq!(hf_to_gguf("lm_head.weight").as_deref(), Some("output.weight"));
        assert_eq!(gguf_to_hf("rope_freqs.weight"), None);
        assert_eq!(gguf_to_hf("blk.x.attn_q.weight"), None);
        assert_eq!(rope_rows("model.layers.3.self_attn.k_proj.weight"), Some(RopeRows::Key));
        assert_eq!(rope_rows("model.layers.3.self_attn.v_proj.weight"), None);
    }

    #[test]
    fn permutation_matches_llama_cpp_and_inverts() {
        // 2 heads of head_dim 4, one byte per row: HF rows [0..8) → per head [0, 2, 1, 3].
        let hf: Vec<u8> = (0..8).collect();
        let g = permute_rows(&hf, 8, 2, false).unwrap();
        assert_eq!(g, [0, 2, 1, 3, 4, 6, 5, 7]);
        assert_eq!(permute_rows(&g, 8, 2, true).unwrap(), hf);
        // head_dim 6: reshape(1, 2, 3).swapaxes(1, 2) → [0, 3, 1, 4, 2, 5].
        let hf: Vec<u8> = (0..12).collect();
        let g = permute_rows(&hf, 6, 1, false).unwrap();
        assert_eq!(g, [0, 1, 6, 7, 2, 3, 8, 9, 4, 5, 10, 11]);
        assert_eq!(permute_rows(&g, 6, 1, true).unwrap(), hf);
        assert!(permute_rows(&hf, 6, 4, true).is_err());
    }
}
