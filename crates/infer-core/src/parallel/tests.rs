//! Sharding the tiny fixture's weights: shapes per rank, and the shards put back together are
//! the full tensors.

use super::ShardPlan;
use crate::model::config::LlamaConfig;
use crate::model::llama3::Weights;
use crate::model::safetensors::WeightStore;
use crate::tensor::Tensor;

fn tiny() -> (LlamaConfig, Weights) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/tiny-llama3");
    let c = LlamaConfig::from_file(&dir.join("config.json")).unwrap();
    let store = WeightStore::open(&dir).unwrap();
    let w = Weights::load(&store, &c).unwrap();
    (c, w)
}

fn vals(parts: &[&Tensor]) -> Vec<f32> {
    parts.iter().flat_map(|t| t.to_f32_vec().unwrap()).collect()
}

/// `t` `[rows, cols]` as row-major values of its column block `start..start + n`.
fn col_block(t: &Tensor, start: usize, n: usize) -> Vec<f32> {
    let cols = t.shape()[1];
    t.to_f32_vec().unwrap().chunks_exact(cols).flat_map(|r| r[start..start + n].to_vec()).collect()
}

#[test]
fn shapes_per_rank_and_reassembly() {
    let (c, w) = tiny();
    let plan = ShardPlan::new(&c, 2).unwrap();
    let shards: Vec<Weights> = (0..2).map(|r| plan.shard(&w, r).unwrap()).collect();
    assert!(plan.shard(&w, 2).is_err());
    let (h, hd) = (c.hidden_size, c.head_dim); // 64, 16
    for s in &shards {
        assert_eq!(s.layers.len(), 3);
        let l = &s.layers[0];
        let qkv: Vec<&[usize]> = l.qkv_proj.iter().map(|t| t.shape()).collect();
        assert_eq!(qkv, vec![&[2 * hd, h][..], &[hd, h][..], &[hd, h][..]]); // 2 q heads, 1 kv head
        let gu: Vec<&[usize]> = l.gate_up_proj.iter().map(|t| t.shape()).collect();
        assert_eq!(gu, vec![&[96, h][..], &[96, h][..]]);
        assert_eq!(l.o_proj.shape(), &[h, 2 * hd]);
        assert_eq!(l.down_proj.shape(), &[h, 96]);
        assert_eq!(l.input_layernorm.shape(), &[h]);
        assert_eq!(s.embed_tokens.shape(), &[c.vocab_size, h]); // replicated
        assert!(s.embed_tokens.is_mapped(), "replicated weights are not copied");
    }
    for (full, (a, b)) in w.layers.iter().zip(shards[0].layers.iter().zip(&shards[1].layers)) {
        // q rows: rank 0's heads then rank 1's; k and v likewise.
        for (i, name) in ["q", "k", "v"].iter().enumerate() {
            let got = vals(&[&a.qkv_proj[i], &b.qkv_proj[i]]);
            assert_eq!(got, full.qkv_proj[i].to_f32_vec().unwrap(), "{name}_proj rows");
        }
        for i in 0..2 {
            assert_eq!(vals(&[&a.gate_up_proj[i], &b.gate_up_proj[i]]), full.gate_up_proj[i].to_f32_vec().unwrap());
        }
        assert_eq!(a.o_proj.to_f32_vec().unwrap(), col_block(&full.o_proj, 0, 2 * hd));
        assert_eq!(b.o_proj.to_f32_vec().unwrap(), col_block(&full.o_proj, 2 * hd, 2 * hd));
        assert_eq!(b.down_proj.to_f32_vec().unwrap(), col_block(&full.down_proj, 96, 96));
        assert_eq!(a.input_layernorm.to_f32_vec().unwrap(), full.input_layernorm.to_f32_vec().unwrap());
    }
}

#[test]
fn one_rank_keeps_the_mapped_weights() {
    let (c, w) = tiny();
    let s = ShardPlan::new(&c, 1).unwrap().shard(&w, 0).unwrap();
    let l = &s.layers[0];
    assert!(l.qkv_proj.iter().chain(&l.gate_up_proj).chain([&l.o_proj, &l.down_proj]).all(|t| t.is_mapped()));
}

#[test]
fn a_fused_projection_list_is_cut_the_same_way() {
    // On a GPU q/k/v are one fused tensor; shard the fused form and compare with the list form.
    let (c, w) = tiny();
    let plan = ShardPlan::new(&c, 2).unwrap();
    let fuse = |parts: &[Tensor]| {
        let cols = parts[0].shape()[1];
        let v = vals(&parts.iter().collect::<Vec<_>>());
        Tensor::from_f32(&[v.len() / cols, cols], v).unwrap()
    };
    let mut fused = plan.shard(&w, 0).unwrap(); // any Weights value to overwrite
    for (f, l) in fused.layers.iter_mut().zip(&w.layers) {
        f.qkv_proj = vec![fuse(&l.qkv_proj)];
        f.gate_up_proj = vec![fuse(&l.gate_up_proj)];
        f.o_proj = l.o_proj.clone();
        f.down_proj = l.down_proj.clone();
    }
    for r in 0..2 {
        let (a, b) = (plan.shard(&w, r).unwrap(), plan.shard(&fused, r).unwrap());
        let (la, lb) = (&a.layers[1], &b.layers[1]);
        assert_eq!(vals(&la.qkv_proj.iter().collect::<Vec<_>>()), vals(&lb.qkv_proj.iter().collect::<Vec<_>>()));
        assert_eq!(
            vals(&la.gate_up_proj.iter().collect::<Vec<_>>()),
            vals(&lb.gate_up_proj.iter().collect::<Vec<_>>())
        );
    }
}
