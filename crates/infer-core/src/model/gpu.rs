//! What a model needs on a CUDA device beyond the shared forward pass: weights uploaded once
//! (bf16, projections fused), positions/ids in device memory, and the decode step captured as a
//! CUDA graph and replayed.

use std::collections::VecDeque;
use std::sync::Arc;

use cudarc::driver::{CudaEvent, CudaGraph, PinnedHostSlice, sys};
use half::bf16;

use super::llama3::{LayerWeights, Weights};
use crate::base::{DeviceType, Error, Result};
use crate::cuda::decode_step::DecodeKernel;
use crate::cuda::device::{driver_err, mapped_host_i32};
use crate::cuda::sample::DeviceSampler;
use crate::cuda::{CudaDevice, DeviceI32};
use crate::tensor::{DType, Tensor};

/// How a decode step picks its next id on the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Select {
    /// Argmax of the logits.
    Greedy = 0,
    /// [`DeviceSampler`] with its current parameters and uniform.
    Sample = 1,
}

/// The graph slot of a decode step: its selection, whether it is the one-kernel step, and its
/// position range (`op::attention::decode_range`: the attention of a graph picks its work split
/// by the range it serves).
pub(crate) fn graph_slot(select: Select, one_kernel: bool, pos: usize) -> usize {
    select as usize + 2 * usize::from(one_kernel) + 4 * crate::op::attention::decode_range(pos)
}

/// Decode graphs kept: 2 selections x 2 step kinds x 3 position ranges.
const GRAPH_SLOTS: usize = 12;

/// Device-side state of a model on a GPU.
pub(crate) struct GpuState {
    pub dev: Arc<CudaDevice>,
    /// Start position of the current chunk (kernels read it).
    pub pos: DeviceI32,
    /// Token ids of the current chunk (up to the prefill chunk length).
    pub ids: DeviceI32,
    /// Logits of the decode step, `[1, vocab]` f32.
    pub logits: Tensor,
    /// The captured decode steps (indexed by [`graph_slot`]: selection, per-op or one-kernel step,
    /// position range) and the (workspace capacity, scratch epoch) each was captured with.
    pub graphs: [Option<(CudaGraph, (usize, u64))>; GRAPH_SLOTS],
    /// Sampling state for non-greedy decoding on the device.
    pub sampler: DeviceSampler,
    /// Decode steps run eagerly so far (the first one sizes scratch buffers before capture).
    pub eager_steps: usize,
    /// The id the last decode step's argmax left in `ids` (so the next step need not upload it).
    pub device_next: Option<u32>,
    /// Page-locked host slots that receive the decode steps' next ids: two slots, so a second
    /// step can be queued before the first one's id is read (greedy generation keeps two steps
    /// in flight; see `Llama3::greedy_launch_next`). A step producing the id of position p uses
    /// slot p & 1. Mapped into the device: the step's last kernel writes the id there itself
    /// (`advance_on_device`), else a copy after the step does.
    readback: [PinnedHostSlice<i32>; 2],
    /// Device addresses of `readback`.
    readback_dev: [u64; 2],
    /// Whether each decode step ends with `infer_decode_advance` (the id to its host slot, the
    /// device position advanced by one), so consecutive steps need no copies between their
    /// graphs. Off with `INFER_DECODE_COPIES=1` (a position upload before and an id copy after
    /// every step; A/B timing).
    pub advance_on_device: bool,
    /// The value `pos` holds once the work queued so far completes (`None`: unknown).
    device_pos: Option<usize>,
    /// Recorded after each step that fills the slot of the same index (after its copy, without
    /// `advance_on_device`). (The slots' own events are not recorded: the context runs without
    /// cudarc's event tracking, see `cuda::device`.)
    readback_done: [CudaEvent; 2],
    /// Steps in flight, oldest first: (readback slot, position the id they produce will take).
    inflight: VecDeque<(usize, usize)>,
    /// Which decode-step implementation runs (see `cuda::decode_step::DecodeKernel`).
    pub decode_kernel: DecodeKernel,
    /// Whether the last decode step queued was the one-kernel step.
    pub last_step_kernel: bool,
    /// That kernel's tables for this model: `None` until first used, `Some(None)` when the
    /// kernel cannot run this model (the per-op step runs instead).
    pub decode_step: Option<Option<crate::cuda::decode_step::DecodeStep>>,
}

// SAFETY: the only non-`Send` members are cudarc's `CudaGraph`s (raw CUgraph/CUgraphExec
// handles). A CUDA graph belongs to its context, not to a thread: it may be launched and
// destroyed from any thread (cudarc's `CudaGraph::launch` makes the context current first;
// cuGraphExecDestroy/cuGraphDestroy need no current context). `GpuState` has no shared
// interior mutability, so moving it (with the model, e.g. to the engine's thread) is sound.
unsafe impl Send for GpuState {}

impl GpuState {
    pub fn new(ordinal: usize, chunk: usize, vocab: usize) -> Result<Self> {
        let dev = crate::cuda::device(ordinal)?;
        let (slot0, dev0) = mapped_host_i32(&dev)?;
        let (slot1, dev1) = mapped_host_i32(&dev)?;
        Ok(GpuState {
            pos: DeviceI32::new(&dev, &[0])?,
            ids: DeviceI32::new(&dev, &vec![0; chunk])?,
            logits: Tensor::zeros_on(&[1, vocab], DType::F32, DeviceType::Cuda(ordinal))?,
            graphs: Default::default(),
            sampler: DeviceSampler::new(&dev, vocab)?,
            eager_steps: 0,
            device_next: None,
            readback: [slot0, slot1],
            readback_dev: [dev0, dev1],
            advance_on_device: std::env::var("INFER_DECODE_COPIES").map_or(true, |v| v != "1"),
            device_pos: None,
            readback_done: [readback_event(&dev)?, readback_event(&dev)?],
            inflight: VecDeque::with_capacity(2),
            decode_kernel: crate::cuda::decode_step::requested(),
            last_step_kernel: false,
            decode_step: None,
            dev,
        })
    }

    /// Steps whose ids have not been read yet.
    pub fn in_flight(&self) -> usize {
        self.inflight.len()
    }

    /// The position the newest step in flight produces an id for.
    pub fn newest_out_pos(&self) -> Option<usize> {
        self.inflight.back().map(|&(_, p)| p)
    }

    /// Forgets the steps in flight without reading their ids (a prefill rewrites `ids`; their
    /// slots are only read again after a new copy into them completes).
    pub fn forget_in_flight(&mut self) {
        self.inflight.clear();
    }

    /// Sets the device position to `pos` (a copy, unless the queued work already leaves it there).
    pub fn set_pos(&mut self, pos: usize) -> Result<()> {
        if self.device_pos != Some(pos) {
            let v = i32::try_from(pos).map_err(|_| Error::op("decode", format!("position {pos} out of range")))?;
            self.device_pos = None; // unknown if the copy fails
            self.pos.set(&[v])?;
            self.device_pos = Some(pos);
        }
        Ok(())
    }

    /// Marks the device position unknown (before queuing work that may fail midway).
    pub fn forget_pos(&mut self) {
        self.device_pos = None;
    }

    /// Queues the end of a decode step in the step itself: with `advance_on_device`, the
    /// step's next id goes to its host slot and the device position advances by one.
    pub fn queue_advance(&mut self) -> Result<()> {
        if self.advance_on_device {
            crate::cuda::ops::decode_advance(&self.ids, &mut self.pos, self.readback_dev)?;
        }
        Ok(())
    }

    /// After a decode step at `pos` was queued: what the position will be when it completes.
    pub fn step_queued(&mut self, pos: usize) {
        self.device_pos = Some(if self.advance_on_device { pos + 1 } else { pos });
    }

    /// Makes the id of the step just launched (for position `out_pos`) readable: records the
    /// event the host waits on, after copying the id (unless the step wrote it to its slot
    /// itself). At most two steps are in flight, for consecutive positions.
    pub fn push_readback(&mut self, out_pos: usize) -> Result<()> {
        let slot = out_pos & 1;
        if self.inflight.len() >= 2 || self.inflight.iter().any(|&(s, _)| s == slot) {
            return Err(Error::op("decode", "more than two decode steps in flight, or not for consecutive positions"));
        }
        let advance = self.advance_on_device;
        let GpuState { dev, ids, readback, readback_done, .. } = self;
        if !advance {
            dev.stream
                .memcpy_dtoh(&ids.data.slice(..1), &mut readback[slot])
                .map_err(|e| driver_err("id readback", e))?;
        }
        readback_done[slot].record(&dev.stream).map_err(|e| driver_err("id readback event", e))?;
        self.inflight.push_back((slot, out_pos));
        Ok(())
    }

    /// Waits for the oldest step in flight; its next id and the position that id takes.
    pub fn pop_readback(&mut self) -> Result<(i32, usize)> {
        let (slot, out_pos) =
            self.inflight.pop_front().ok_or_else(|| Error::op("decode", "no decode step in flight"))?;
        self.readback_done[slot].synchronize().map_err(|e| driver_err("id readback wait", e))?;
        let v = self.readback[slot].as_slice().map_err(|e| driver_err("id readback", e))?;
        let id = v.first().copied().ok_or_else(|| Error::op("decode", "empty readback slot"))?;
        Ok((id, out_pos))
    }

    /// Starts capturing the stream's work into a graph.
    pub fn begin_capture(&self) -> Result<()> {
        self.dev
            .stream
            .begin_capture(sys::CUstreamCaptureMode::CU_STREAM_CAPTURE_MODE_THREAD_LOCAL)
            .map_err(|e| driver_err("begin graph capture", e))
    }

    /// Ends the capture and keeps the instantiated graph for `slot` ([`graph_slot`]).
    pub fn end_capture(&mut self, capacity: (usize, u64), slot: usize) -> Result<()> {
        let flags = sys::CUgraphInstantiate_flags::CUDA_GRAPH_INSTANTIATE_FLAG_AUTO_FREE_ON_LAUNCH;
        let graph = self.dev.stream.end_capture(flags).map_err(|e| driver_err("end graph capture", e))?;
        let graph = graph.ok_or_else(|| Error::op("cuda_graph", "stream capture produced no graph"))?;
        self.graphs[slot] = Some((graph, capacity));
        Ok(())
    }

    pub fn launch(&self, slot: usize) -> Result<()> {
        match &self.graphs[slot] {
            Some((g, _)) => g.launch().map_err(|e| driver_err("graph launch", e)),
            None => Err(Error::op("cuda_graph", "no captured graph")),
        }
    }
}

/// An event that marks a readback copy done (spin-waited: the host wants the id at once).
fn readback_event(dev: &CudaDevice) -> Result<CudaEvent> {
    dev.ctx.new_event(None).map_err(|e| driver_err("event create", e))
}

/// Rows of several host tensors stacked into one tensor (fused projections): the blocks as they
/// are when every part has the same quantized dtype (rows are whole blocks), else bf16.
fn cat_rows(parts: &[Tensor]) -> Result<Tensor> {
    let dtype = parts.first().map(|p| p.dtype()).ok_or_else(|| Error::op("upload", "no parts"))?;
    if dtype.is_quantized() && parts.iter().all(|p| p.dtype() == dtype) {
        let cols = parts[0].shape()[1];
        let rows: usize = parts.iter().map(|p| p.shape()[0]).sum();
        let mut bytes = Vec::new();
        for p in parts {
            match p.data()? {
                crate::tensor::TensorData::Quant(_, b) => bytes.extend_from_slice(b),
                _ => return Err(Error::op("upload", "quantized part without blocks")),
            }
        }
        return Tensor::from_quantized(&[rows, cols], dtype, bytes);
    }
    cat_rows_bf16(parts)
}

/// Rows of several host tensors stacked into one bf16 tensor (fused projections).
fn cat_rows_bf16(parts: &[Tensor]) -> Result<Tensor> {
    let cols = parts.first().map(|p| p.shape()[1]).ok_or_else(|| Error::op("upload", "no parts"))?;
    let rows: usize = parts.iter().map(|p| p.shape()[0]).sum();
    let mut out: Vec<bf16> = Vec::with_capacity(rows * cols);
    for p in parts {
        match p.data()? {
            crate::tensor::TensorData::BF16(s) => out.extend_from_slice(s),
            other => {
                let mut v = vec![0f32; other.len()];
                other.copy_to_f32(0, &mut v)?;
                out.extend(v.into_iter().map(bf16::from_f32));
            }
        }
    }
    Tensor::from_bf16(&[rows, cols], out)
}

/// Uploads the weights to the GPU once: bf16 (f32/f16 checkpoints converted here), or the
/// blocks unchanged for block-quantized (GGUF) matrices; q/k/v and gate/up fused into one
/// matrix each.
pub(crate) fn upload_weights(w: Weights, device: DeviceType, mut progress: impl FnMut(u64)) -> Result<Weights> {
    let up = |t: &Tensor| {
        let dtype = if t.dtype().is_quantized() { t.dtype() } else { DType::BF16 };
        t.to_device_as(device, dtype)
    };
    let mut layers = Vec::with_capacity(w.layers.len());
    for l in &w.layers {
        let layer = LayerWeights {
            input_layernorm: up(&l.input_layernorm)?,
            qkv_proj: vec![up(&cat_rows(&l.qkv_proj)?)?],
            o_proj: up(&l.o_proj)?,
            post_attention_layernorm: up(&l.post_attention_layernorm)?,
            gate_up_proj: vec![up(&cat_rows(&l.gate_up_proj)?)?],
            down_proj: up(&l.down_proj)?,
        };
        let bytes = [&l.o_proj, &l.down_proj].iter().map(|t| t.storage_bytes() as u64).sum::<u64>()
            + l.qkv_proj.iter().chain(&l.gate_up_proj).map(|t| t.storage_bytes() as u64).sum::<u64>();
        progress(bytes);
        layers.push(layer);
    }
    let out = Weights {
        embed_tokens: up(&w.embed_tokens)?,
        layers,
        norm: up(&w.norm)?,
        lm_head: w.lm_head.as_ref().map(up).transpose()?,
    };
    progress(w.embed_tokens.storage_bytes() as u64);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn graph_slots_are_distinct_and_in_range() {
        let mut seen = std::collections::HashSet::new();
        for select in [Select::Greedy, Select::Sample] {
            for one_kernel in [false, true] {
                for pos in [0, 511, 512, 2047, 2048, 100_000] {
                    let slot = graph_slot(select, one_kernel, pos);
                    assert!(slot < GRAPH_SLOTS);
                    seen.insert((slot, select as usize, one_kernel, crate::op::attention::decode_range(pos)));
                }
            }
        }
        let slots: std::collections::HashSet<_> = seen.iter().map(|t| t.0).collect();
        assert_eq!(slots.len(), seen.len(), "two (selection, kind, range) share a slot");
        assert_eq!(slots.len(), GRAPH_SLOTS);
    }
}
