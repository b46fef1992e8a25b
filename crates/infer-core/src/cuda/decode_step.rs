//! The whole decode step as one persistent kernel (`kernels/decode_step.cu`): weights streamed
//! through a shared-memory ring by TMA bulk copies, phases separated by grid barriers. By default
//! ([`DecodeKernel::Auto`]) a GPU model runs it on fast-memory GPUs (H200 class, not H100) while
//! the KV cache a step reads is small next to the weights, and the per-op step otherwise (see the
//! kernel's header comment and the README for the numbers); `INFER_DECODE_KERNEL=0|1` or
//! [`crate::Llama3::set_decode_kernel_mode`] force either.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, DevicePtr};

use super::device::driver_err;
use super::ops::{int, ptr};
use super::{CudaDevice, DeviceI32, ffi};
use crate::base::{Error, Result};
use crate::model::config::LlamaConfig;
use crate::model::kv_cache::KvCache;
use crate::model::llama3::Weights;
use crate::op::rope::RopeTable;
use crate::tensor::{DType, Tensor};

const OP: &str = "decode_step";

/// Which implementation a GPU model's batch-1 decode steps run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DecodeKernel {
    /// The per-op sequence of kernels (one graph node per op).
    PerOp,
    /// The one-kernel step wherever it can run the model (sm_90, bf16 weights, Llama-shaped sizes).
    OneKernel,
    /// The one-kernel step while the k / v rows a step reads stay under [`AUTO_KV_SHARE`] of the
    /// weight bytes, the per-op step beyond (its attention is faster on long contexts), and the
    /// per-op step at every length on GPUs below [`AUTO_MIN_PEAK_BW`]. Default.
    Auto,
}

/// The crossover of [`DecodeKernel::Auto`]: KV-cache bytes read per step as a share of the weight
/// bytes. Measured on an H200 (kernel harness, graph replay, one kernel vs per-op): Llama-3.2-1B
/// 1.06x at position 144, 1.03x at 1023, 1.00x at 2047, 0.94x at 4095 (k / v reads 0.2%, 1.4%,
/// 2.7%, 5.4% of the weight bytes); Llama-3.1-8B shapes 1.13x at 1023 and 1.06x at 4095 (0.8%,
/// 3.4%). So 2.5%: Llama-3.2-1B switches to the per-op step at ~1,880 positions.
pub const AUTO_KV_SHARE: f64 = 0.025;

/// [`DecodeKernel::Auto`] runs the one-kernel step only on GPUs whose DRAM peak
/// ([`CudaDevice::peak_bandwidth`]) reaches this many bytes/s. The kernel's step is about the weight
/// stream plus the latency chain of its ~80 grid barriers and attention phases, which it overlaps
/// only partly; the per-op step pays per-kernel ramps instead, which cost more the faster the
/// stream. Measured (kernel harness, graph replay, one kernel vs per-op): on an H200 (4.8e12) the
/// kernel wins (Llama-3.2-1B 1.06x at position 144, 8B shapes 1.13x at 1023); on an H100 SXM
/// (3.35e12, session 12) it loses (1B: 0.96x at 144, 0.95x at 1023, 0.94x at 2047, 0.89x at 4095;
/// 8B shapes 1.02x at 1023, 0.99x at 4095), and the engine decoded 900.5 vs 946.6 tok/s.
pub const AUTO_MIN_PEAK_BW: f64 = 4.0e12;

/// The mode `INFER_DECODE_KERNEL` asks for: `0` per-op, `1` one kernel, unset or else [`DecodeKernel::Auto`].
pub fn requested() -> DecodeKernel {
    match std::env::var("INFER_DECODE_KERNEL").as_deref().map(str::trim) {
        Ok("0") => DecodeKernel::PerOp,
        Ok("1") => DecodeKernel::OneKernel,
        _ => DecodeKernel::Auto,
    }
}

/// The kernel's view of one model on one device: the layer table (device memory) and the
/// workspace. Built once per model; the pointers in it stay valid as long as the weights and
/// the KV cache are not reallocated (neither is after load).
pub struct DecodeStep {
    model: ffi::InferDecodeModel,
    /// Longest sequence (position + 1) [`DecodeKernel::Auto`] runs through this kernel.
    auto_max_len: usize,
    /// `[n_layers]` `InferDecodeLayerW`, read by the kernel (`model.layers` points here).
    _layers: CudaSlice<u8>,
    workspace: CudaSlice<u8>,
    dev: Arc<CudaDevice>,
}

/// A bf16 tensor on `dev` (the kernel's only weight format), else `None`.
fn bf16_ptr(t: &Tensor, dev: &CudaDevice) -> Result<Option<*const std::ffi::c_void>> {
    let s = t.cuda_storage()?;
    if t.dtype() != DType::BF16 || s.dev.ordinal != dev.ordinal || !(s.ptr() as usize).is_multiple_of(16) {
        return Ok(None);
    }
    Ok(Some(s.ptr()))
}

impl DecodeStep {
    /// The step for these weights and caches, or `None` when the kernel cannot run them
    /// (quantized or unfused weights, an unsupported shape or a GPU older than sm_90).
    pub fn new(
        dev: &Arc<CudaDevice>,
        c: &LlamaConfig,
        w: &Weights,
        cache: &mut KvCache,
        rope: &RopeTable,
    ) -> Result<Option<Self>> {
        let mut layers = Vec::with_capacity(w.layers.len());
        for (l, lw) in w.layers.iter().enumerate() {
            let ([qkv], [gate_up]) = (&lw.qkv_proj[..], &lw.gate_up_proj[..]) else { return Ok(None) };
            let ptrs = [qkv, &lw.o_proj, gate_up, &lw.down_proj, &lw.input_layernorm, &lw.post_attention_layernorm]
                .map(|t| bf16_ptr(t, dev));
            let [Some(qkv), Some(o), Some(gate_up), Some(down), Some(attn_norm), Some(mlp_norm)] =
                ptrs.into_iter().collect::<Result<Vec<_>>>()?[..]
            else {
                return Ok(None);
            };
            let (kc, vc) = cache.layer_mut(l)?; // [n_kv_heads, ctx, head_dim] bf16
            let (Some(k_cache), Some(v_cache)) = (bf16_ptr(kc, dev)?, bf16_ptr(vc, dev)?) else { return Ok(None) };
            layers.push(ffi::InferDecodeLayerW {
                qkv,
                o,
                gate_up,
                down,
                attn_norm,
                mlp_norm,
                k_cache: k_cache as *mut _,
                v_cache: v_cache as *mut _,
            });
        }
        let head = w.lm_head.as_ref().unwrap_or(&w.embed_tokens);
        let (Some(embed), Some(final_norm), Some(lm_head)) =
            (bf16_ptr(&w.embed_tokens, dev)?, bf16_ptr(&w.norm, dev)?, bf16_ptr(head, dev)?)
        else {
            return Ok(None);
        };
        let bytes = std::mem::size_of_val(&layers[..]);
        // SAFETY: InferDecodeLayerW is a repr(C) struct of eight pointers (no padding, no
        // invalid bit patterns for u8); the slice covers exactly the vector's initialized elements.
        let raw = unsafe { std::slice::from_raw_parts(layers.as_ptr() as *const u8, bytes) };
        let table = dev.stream.clone_htod(raw).map_err(|e| driver_err("upload", e))?;
        let (table_ptr, _) = table.device_ptr(&dev.stream);
        let model = ffi::InferDecodeModel {
            n_layers: int(OP, layers.len())?,
            hidden: int(OP, c.hidden_size)?,
            n_heads: int(OP, c.num_attention_heads)?,
            n_kv_heads: int(OP, c.num_key_value_heads)?,
            head_dim: int(OP, c.head_dim)?,
            inter: int(OP, c.intermediate_size)?,
            vocab: int(OP, c.vocab_size)?,
            ctx: int(OP, cache.context())?,
            eps: c.rms_norm_eps as f32,
            layers: table_ptr as *const ffi::InferDecodeLayerW,
            embed,
            final_norm,
            lm_head,
            cos_sin: rope.device_cos_sin(dev)?.ptr() as *const f32,
        };
        dev.bind()?;
        // SAFETY: `model` is a valid struct (the functions only read it; its pointers are not
        // dereferenced by these two queries).
        let (supported, ws_bytes) =
            unsafe { (ffi::infer_decode_step_supported(&model), ffi::infer_decode_step_workspace_bytes(&model)) };
        if supported == 0 || ws_bytes == 0 {
            return Ok(None);
        }
        // Zeroed once: the kernel leaves its counters at zero after every launch.
        let workspace = dev.stream.alloc_zeros::<u8>(ws_bytes).map_err(|e| driver_err("alloc", e))?;
        // Bytes a step streams: every layer's matrices and the LM head; k and v rows per position.
        let (h, kv, q) = (c.hidden_size, c.num_key_value_heads * c.head_dim, c.num_attention_heads * c.head_dim);
        let weight_bytes =
            2.0 * (layers.len() * (h * (q + 2 * kv) + q * h + 3 * h * c.intermediate_size) + c.vocab_size * h) as f64;
        let kv_bytes_per_pos = (2 * 2 * layers.len() * kv) as f64;
        let auto_max_len = if dev.peak_bandwidth()? >= AUTO_MIN_PEAK_BW {
            (AUTO_KV_SHARE * weight_bytes / kv_bytes_per_pos) as usize
        } else {
            0
        };
        Ok(Some(DecodeStep { model, auto_max_len, _layers: table, workspace, dev: dev.clone() }))
    }

    /// Whether `mode` runs a step at `pos` through this kernel.
    pub fn runs(&self, mode: DecodeKernel, pos: usize) -> bool {
        match mode {
            DecodeKernel::PerOp => false,
            DecodeKernel::OneKernel => true,
            DecodeKernel::Auto => pos < self.auto_max_len,
        }
    }

    /// Queues one step: the id in `ids[0]` at the position in `pos`; logits `[1, vocab]` f32;
    /// with `greedy` the argmax replaces `ids[0]` (the next step's input).
    pub fn launch(&self, ids: &mut DeviceI32, pos: &DeviceI32, logits: &mut Tensor, greedy: bool) -> Result<()> {
        if logits.dtype() != DType::F32 || logits.numel() != self.model.vocab as usize {
            return Err(Error::op(
                OP,
                format!("logits {:?} {} for vocab {}", logits.shape(), logits.dtype(), self.model.vocab),
            ));
        }
        let logits_ptr = ptr(logits)? as *mut f32;
        let ids_ptr = ids.ptr() as *mut i32;
        let (ws_ptr, _) = self.workspace.device_ptr(&self.dev.stream);
        // SAFETY: `model` points at this model's bf16 weights, caches and RoPE table (checked in
        // `new`, alive as long as the model); ids / pos hold at least one i32 on this device; the
        // workspace has the size the kernel asked for and is used by one launch at a time (one
        // stream); logits holds vocab f32 (checked above). ids is read before it is written.
        let st = unsafe {
            ffi::infer_decode_step_bf16(
                &self.model,
                ids_ptr,
                pos.ptr(),
                logits_ptr,
                if greedy { ids_ptr } else { std::ptr::null_mut() },
                ws_ptr as *mut std::ffi::c_void,
                self.workspace.len(),
                self.dev.stream.cu_stream() as _,
            )
        };
        ffi::check(OP, st)
    }
}
