//! Batched decode steps on a GPU as CUDA graphs, one per batch-size bucket: a step of `n` decode
//! rows runs as the smallest bucket `>= n`, padded with rows on the cache's pad block. Ids and
//! paged metadata are uploaded into fixed device buffers before each replay; a bucket's first
//! step runs eagerly (sizing scratch buffers), its second is captured.

use std::sync::Arc;

use cudarc::driver::{CudaGraph, sys};

use super::batch::BatchItem;
use super::llama3::{Kv, Llama3};
use super::paged_kv::PagedKvCache;
use crate::base::{DeviceType, Error, Result};
use crate::cuda::paged::DevicePagedMeta;
use crate::cuda::{CudaDevice, DeviceI32, device::driver_err};
use crate::op::matmul::matmul;
use crate::op::paged::PagedMeta;
use crate::tensor::{DType, Tensor};

/// Batch sizes with their own graph.
pub const BUCKETS: [usize; 9] = [1, 2, 4, 8, 16, 32, 64, 128, 256];

/// Whether batched decode steps use graphs (`INFER_BATCH_GRAPHS=0` turns them off for A/B runs).
fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var("INFER_BATCH_GRAPHS").map(|v| v.trim() != "0").unwrap_or(true))
}

/// What a captured graph depends on besides its fixed buffers: workspace capacity and scratch.
type Key = (usize, u64);

enum Slot {
    /// Not run yet at this bucket.
    Cold,
    /// Run eagerly once; capture next time.
    Warm,
    Captured(CudaGraph, Key),
    /// Capture failed (an op that cannot be captured): always eager.
    Eager,
}

pub(crate) struct BatchGraphs {
    dev: Arc<CudaDevice>,
    ids: DeviceI32,
    meta: DevicePagedMeta,
    logits: Vec<Tensor>,
    slots: Vec<Slot>,
    max_blocks: usize,
}

// SAFETY: the only non-Send fields are the captured graphs' raw CUgraph/CUgraphExec handles,
// owned exclusively here; driver handles belong to a context, not a thread, and the engine thread
// that takes the model over binds the device's context before replaying (see `GpuState`).
unsafe impl Send for BatchGraphs {}

impl BatchGraphs {
    fn new(dev: &Arc<CudaDevice>, ordinal: usize, vocab: usize, max_blocks: usize) -> Result<Self> {
        let top = BUCKETS[BUCKETS.len() - 1];
        let mut meta = DevicePagedMeta::new(dev)?;
        meta.reserve(3 * top + top * max_blocks)?; // never reallocated: captured addresses stay valid
        let logits = BUCKETS
            .iter()
            .map(|&b| Tensor::zeros_on(&[b, vocab], DType::F32, DeviceType::Cuda(ordinal)))
            .collect::<Result<Vec<_>>>()?;
        Ok(BatchGraphs {
            dev: dev.clone(),
            ids: DeviceI32::new(dev, &vec![0; top])?,
            meta,
            logits,
            slots: BUCKETS.iter().map(|_| Slot::Cold).collect(),
            max_blocks,
        })
    }
}

impl Llama3 {
    /// Whether [`Llama3::decode_batch_graph`] takes this batch.
    pub(crate) fn batch_graph_fits(&self, items: &[BatchItem]) -> bool {
        enabled()
            && self.gpu_dev().is_some()
            && items.len() <= BUCKETS[BUCKETS.len() - 1]
            && items.iter().all(|it| it.ids.len() == 1 && it.logits)
    }

    /// One decode step of every item (one token each, logits wanted) as a graph replay;
    /// returns the logits `[items, vocab]` (a view of the bucket's buffer).
    pub(crate) fn decode_batch_graph(&mut self, cache: &mut PagedKvCache, items: &[BatchItem]) -> Result<&mut Tensor> {
        let (n, bs) = (items.len(), cache.block_size());
        let b = BUCKETS.iter().position(|&x| x >= n).ok_or_else(|| Error::op("batch_graph", "batch too large"))?;
        let bucket = BUCKETS[b];
        let dev = self.gpu_dev().ok_or_else(|| Error::op("batch_graph", "no GPU"))?;
        let ordinal = dev.ordinal;
        let max_blocks = self.context_length().div_ceil(bs);
        let mut g = match self.batch_graphs.take() {
            Some(g) if g.max_blocks == max_blocks => g,
            _ => BatchGraphs::new(&dev, ordinal, self.config.vocab_size, max_blocks)?,
        };
        // Host metadata: one sequence per row, padding rows on the pad block.
        let pad = cache.pad_block() as i32;
        let (mut ids, mut pos, mut slots) = (vec![0i32; bucket], vec![0i32; bucket], vec![pad * bs as i32; bucket]);
        let row_seq: Vec<i32> = (0..bucket as i32).collect();
        let mut tables = vec![pad; bucket * max_blocks];
        for (r, it) in items.iter().enumerate() {
            if it.blocks.len() > max_blocks {
                self.batch_graphs = Some(g);
                return Err(Error::InvalidArgument(format!("{} blocks exceed the context", it.blocks.len())));
            }
            ids[r] = it.ids[0] as i32;
            pos[r] = it.pos0 as i32;
            slots[r] = (it.blocks[it.pos0 / bs] as usize * bs + it.pos0 % bs) as i32;
            for (j, &blk) in it.blocks.iter().enumerate() {
                tables[r * max_blocks + j] = blk as i32;
            }
        }
        let host = PagedMeta {
            block_size: bs,
            positions: &pos,
            slots: &slots,
            row_seq: &row_seq,
            block_tables: &tables,
            max_blocks,
            device: None,
        };
        let run = self.replay_bucket(&mut g, cache, b, &ids, &host);
        self.batch_graphs = Some(g);
        run?;
        let g = self.batch_graphs.as_mut().ok_or_else(|| Error::op("batch_graph", "state lost"))?;
        let out = &mut g.logits[b];
        out.reshape(&[n, self.config.vocab_size])?;
        Ok(out)
    }

    fn replay_bucket(
        &mut self,
        g: &mut BatchGraphs,
        cache: &mut PagedKvCache,
        b: usize,
        ids: &[i32],
        host: &PagedMeta,
    ) -> Result<()> {
        let bucket = BUCKETS[b];
        g.ids.set(ids)?;
        g.meta.upload(host)?;
        g.logits[b].reshape(&[bucket, self.config.vocab_size])?;
        self.ws.resize(bucket)?;
        let key = (self.ws.capacity, g.dev.scratch_epoch());
        if let Slot::Captured(graph, k) = &g.slots[b] {
            if *k == key {
                return graph.launch().map_err(|e| driver_err("batch graph launch", e));
            }
            g.slots[b] = Slot::Warm; // buffers moved since the capture
        }
        let host_ids: Vec<u32> = ids.iter().map(|&i| i as u32).collect();
        let meta = PagedMeta { device: Some(&g.meta), ..*host };
        if !matches!(g.slots[b], Slot::Warm) {
            if matches!(g.slots[b], Slot::Cold) {
                g.slots[b] = Slot::Warm;
            }
            return self.batch_step_ops(cache, &host_ids, &meta, &g.ids, &mut g.logits[b]);
        }
        let stream = &g.dev.stream;
        stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| driver_err("begin graph capture", e))?;
        let run = self.batch_step_ops(cache, &host_ids, &meta, &g.ids, &mut g.logits[b]);
        let flags = sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH;
        let ended = stream.end_capture(flags);
        match (run, ended) {
            (Ok(()), Ok(Some(graph))) => {
                graph.launch().map_err(|e| driver_err("batch graph launch", e))?;
                g.slots[b] = Slot::Captured(graph, key);
                Ok(())
            }
            _ => {
                // Something in the step cannot be captured: run this bucket eagerly from now on.
                g.slots[b] = Slot::Eager;
                self.batch_step_ops(cache, &host_ids, &meta, &g.ids, &mut g.logits[b])
            }
        }
    }

    /// The ops of a batched decode step (what a graph captures): layers, final norm, LM head.
    fn batch_step_ops(
        &mut self,
        cache: &mut PagedKvCache,
        ids: &[u32],
        meta: &PagedMeta,
        dev_ids: &DeviceI32,
        logits: &mut Tensor,
    ) -> Result<()> {
        self.run_layers(ids, Kv::Paged(cache, meta, Some(dev_ids)))?;
        let head = self.weights.lm_head.as_ref().unwrap_or(&self.weights.embed_tokens);
        matmul(&self.ws.h, head, logits) // [bucket, vocab] f32
    }
}
