//! Sampling on the GPU (`infer_sample_f32`): the parameters, the generation's penalty state
//! (counts of generated ids, flags of ids in the context) and the per-step uniform live in
//! device memory, so a captured decode graph samples without the logits leaving the device.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};

use super::device::{CudaDevice, DeviceI32, driver_err};
use super::ffi;
use super::ops::{dev_of, expect, int, ptr};
use crate::base::{Error, Result};
use crate::model::sampler::SamplerConfig;
use crate::tensor::{DType, Tensor};

const PARAM_BYTES: usize = 28;
const _: () = assert!(std::mem::size_of::<ffi::InferSampleParams>() == PARAM_BYTES);

/// Device buffers of one sampling stream (one per model on a GPU).
pub struct DeviceSampler {
    dev: Arc<CudaDevice>,
    vocab: usize,
    params: CudaSlice<u8>,
    uniform: CudaSlice<f64>,
    counts: CudaSlice<i32>,
    in_context: CudaSlice<u8>,
    work: CudaSlice<f32>,
}

impl std::fmt::Debug for DeviceSampler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceSampler(vocab {})", self.vocab)
    }
}

/// `InferSampleParams` as the kernel reads it (7 packed 4-byte fields, native endianness).
fn pack(cfg: &SamplerConfig) -> [u8; PARAM_BYTES] {
    let top_k = i32::try_from(cfg.top_k).unwrap_or(i32::MAX);
    let fields: [[u8; 4]; 7] = [
        cfg.temperature.to_ne_bytes(),
        top_k.to_ne_bytes(),
        cfg.top_p.to_ne_bytes(),
        cfg.min_p.to_ne_bytes(),
        cfg.repetition_penalty.to_ne_bytes(),
        cfg.presence_penalty.to_ne_bytes(),
        cfg.frequency_penalty.to_ne_bytes(),
    ];
    let mut out = [0u8; PARAM_BYTES];
    for (dst, src) in out.chunks_exact_mut(4).zip(fields) {
        dst.copy_from_slice(&src);
    }
    out
}

impl DeviceSampler {
    pub fn new(dev: &Arc<CudaDevice>, vocab: usize) -> Result<Self> {
        let s = &dev.stream;
        let alloc = |what| move |e| driver_err(what, e);
        Ok(DeviceSampler {
            dev: dev.clone(),
            vocab,
            params: s.alloc_zeros(PARAM_BYTES).map_err(alloc("sampler params"))?,
            uniform: s.alloc_zeros(1).map_err(alloc("sampler uniform"))?,
            counts: s.alloc_zeros(vocab).map_err(alloc("sampler counts"))?,
            in_context: s.alloc_zeros(vocab).map_err(alloc("sampler context flags"))?,
            work: s.alloc_zeros(vocab).map_err(alloc("sampler workspace"))?,
        })
    }

    /// Starts a generation: uploads `cfg`, flags the `context` ids (prompt and tokens so far)
    /// and counts the already `generated` ids (presence / frequency penalties).
    pub fn start(&mut self, cfg: &SamplerConfig, context: &[u32], generated: &[u32]) -> Result<()> {
        let n = self.vocab;
        let bad = |id: u32| Error::InvalidArgument(format!("sampler: token id {id} >= vocab size {n}"));
        let mut flags = vec![0u8; n];
        let mut counts = vec![0i32; n];
        for &id in context {
            *flags.get_mut(id as usize).ok_or_else(|| bad(id))? = 1;
        }
        for &id in generated {
            *counts.get_mut(id as usize).ok_or_else(|| bad(id))? += 1;
        }
        let s = &self.dev.stream;
        let up = |e| driver_err("sampler upload", e);
        s.memcpy_htod(&pack(cfg), &mut self.params).map_err(up)?;
        s.memcpy_htod(&flags, &mut self.in_context).map_err(up)?;
        s.memcpy_htod(&counts, &mut self.counts).map_err(up)
    }

    /// The uniform number in [0, 1) the next draw uses (stream-ordered copy).
    pub fn set_uniform(&mut self, u: f64) -> Result<()> {
        self.dev.stream.memcpy_htod(&[u], &mut self.uniform).map_err(|e| driver_err("sampler upload", e))
    }

    /// Queues one draw from `logits` `[1, vocab]` f32 into `out_id[0]` (capturable).
    pub fn launch(&mut self, logits: &Tensor, out_id: &mut DeviceI32) -> Result<()> {
        const OP: &str = "sample";
        let dev = dev_of(OP, logits)?;
        expect(OP, "logits", logits, DType::F32, &dev)?;
        if logits.numel() != self.vocab {
            return Err(Error::op(OP, format!("logits {:?} for a vocab of {}", logits.shape(), self.vocab)));
        }
        let s = &self.dev.stream;
        let (params, _g1) = self.params.device_ptr(s);
        let (uniform, _g2) = self.uniform.device_ptr(s);
        let (counts, _g3) = self.counts.device_ptr_mut(s);
        let (flags, _g4) = self.in_context.device_ptr_mut(s);
        let (work, _g5) = self.work.device_ptr_mut(s);
        let (id, _g6) = out_id.data.device_ptr_mut(s);
        // SAFETY: logits holds vocab f32 on this device (checked); params is one packed
        // InferSampleParams (size asserted at compile time), uniform one f64, counts/flags/work
        // vocab entries each, id one i32 — all allocated on this device and used on its stream.
        let st = unsafe {
            ffi::infer_sample_f32(
                ptr(logits)? as *const f32,
                int(OP, self.vocab)?,
                params as *const ffi::InferSampleParams,
                uniform as *const f64,
                counts as *mut i32,
                flags as *mut u8,
                id as *mut i32,
                work as *mut f32,
                s.cu_stream() as _,
            )
        };
        ffi::check(OP, st)
    }
}

/// Greedy ids of every row of `logits` `[rows, vocab]` f32 (first index of each row's maximum,
/// NaN ignored), computed on the device; only the ids cross to the host.
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    const OP: &str = "argmax_rows";
    let dev = dev_of(OP, logits)?;
    expect(OP, "logits", logits, DType::F32, &dev)?;
    let (rows, n) = logits.dims2(OP)?;
    let (rows_i, n_i) = (int(OP, rows)?, int(OP, n)?);
    // SAFETY: pure size computation.
    let ws = dev.scratch(unsafe { ffi::infer_argmax_rows_workspace_bytes(rows_i, n_i) })?;
    let mut ids = dev.stream.alloc_zeros::<i32>(rows.max(1)).map_err(|e| driver_err(OP, e))?;
    {
        let (id_ptr, _sync) = ids.device_ptr_mut(&dev.stream);
        // SAFETY: logits holds rows * n f32 on the device (checked above), ids holds rows device
        // i32, ws has the workspace size the kernel asked for.
        let st = unsafe {
            ffi::infer_argmax_rows_f32(
                ptr(logits)? as *const f32,
                rows_i,
                n_i,
                id_ptr as *mut i32,
                ws as *mut std::ffi::c_void,
                dev.stream.cu_stream() as _,
            )
        };
        ffi::check(OP, st)?;
    }
    let host = dev.stream.clone_dtoh(&ids).map_err(|e| driver_err(OP, e))?;
    Ok(host.into_iter().take(rows).map(|i| i.max(0) as u32).collect())
}
