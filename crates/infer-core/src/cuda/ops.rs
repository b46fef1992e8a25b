//! Device implementations of the ops in `crate::op`. Each op file checks shapes first and then
//! calls in here when its tensors live on a GPU; these functions check dtypes/devices, take raw
//! device pointers and launch one kernel (or cuBLASLt) on the device's stream. They never
//! synchronise or allocate on the decode path (except where noted).

use std::ffi::c_void;
use std::sync::Arc;

use cudarc::cublaslt::{Matmul, MatmulConfig};
use cudarc::driver::CudaSlice;
use half::bf16;

use super::device::{CudaDevice, DeviceI32, driver_err};
use super::ffi;
use super::storage::{CudaData, CudaStorage};
use crate::base::{Error, Result};
use crate::op::Positions;
use crate::op::rope::RopeTable;
use crate::tensor::{DType, Tensor};

pub(super) fn dev_of(op: &'static str, t: &Tensor) -> Result<Arc<CudaDevice>> {
    let dev = t.cuda_storage().map_err(|e| Error::op(op, e.to_string()))?.dev.clone();
    dev.bind()?;
    Ok(dev)
}

/// Checks that `t` is a CUDA tensor of `dtype` on `dev`.
pub(super) fn expect(op: &'static str, what: &str, t: &Tensor, dtype: DType, dev: &CudaDevice) -> Result<()> {
    let s =
        t.cuda_storage().map_err(|_| Error::op(op, format!("{what} must be on {}, found on cpu", dev_name(dev))))?;
    if s.dev.ordinal != dev.ordinal {
        return Err(Error::op(op, format!("{what} is on cuda:{}, expected {}", s.dev.ordinal, dev_name(dev))));
    }
    if t.dtype() != dtype {
        return Err(Error::op(op, format!("{what} must be {dtype} on CUDA, got {}", t.dtype())));
    }
    Ok(())
}

fn dev_name(dev: &CudaDevice) -> String {
    format!("cuda:{}", dev.ordinal)
}

pub(super) fn ptr(t: &Tensor) -> Result<*const c_void> {
    Ok(t.cuda_storage()?.ptr())
}

pub(super) fn ptr_mut(t: &mut Tensor) -> Result<*mut c_void> {
    Ok(t.cuda_storage_mut()?.ptr_mut())
}

pub(super) fn int(op: &'static str, v: usize) -> Result<i32> {
    i32::try_from(v).map_err(|_| Error::op(op, format!("size {v} exceeds the kernels' i32 range")))
}

/// The device copy of `pos.start`: the caller's buffer (graph replay) or a fresh upload.
pub(super) fn device_pos<'a>(
    pos: &'a Positions,
    dev: &Arc<CudaDevice>,
    tmp: &'a mut Option<DeviceI32>,
) -> Result<*const i32> {
    if let Some(d) = pos.device {
        return Ok(d.ptr());
    }
    let start = int("positions", pos.start)?;
    Ok(tmp.insert(DeviceI32::new(dev, &[start])?).ptr())
}

/// Token ids → f32 rows of the bf16 table (ids uploaded from the host).
pub fn embedding(ids: &[u32], table: &Tensor, out: &mut Tensor) -> Result<()> {
    const OP: &str = "embedding";
    let dev = dev_of(OP, table)?;
    let ids: Vec<i32> = ids.iter().map(|&i| int(OP, i as usize)).collect::<Result<_>>()?;
    let ids_dev = DeviceI32::new(&dev, &ids)?;
    embedding_dev(&ids_dev, ids.len(), table, out)
}

/// Like [`embedding`] with the ids already in device memory (CUDA-graph decode).
pub fn embedding_dev(ids: &DeviceI32, n: usize, table: &Tensor, out: &mut Tensor) -> Result<()> {
    const OP: &str = "embedding";
    let dev = dev_of(OP, table)?;
    let (vocab, hidden) = table.dims2(OP)?;
    if table.dtype().is_quantized() {
        return super::quant::embedding_quant(&dev, ids, n, table, out, hidden, vocab);
    }
    expect(OP, "table", table, DType::BF16, &dev)?;
    expect(OP, "output", out, DType::F32, &dev)?;
    // SAFETY: ids holds n i32 on this device; table is [vocab, hidden] bf16 and out [n, hidden]
    // f32 device buffers (shapes checked by the op), all on the device's stream.
    let st = unsafe {
        ffi::infer_embedding_bf16(
            ids.ptr(),
            ptr(table)?,
            ptr_mut(out)? as *mut f32,
            int(OP, n)?,
            int(OP, hidden)?,
            int(OP, vocab)?,
            dev.stream.cu_stream() as _,
        )
    };
    ffi::check(OP, st)
}

/// `x += delta; out = rms_norm(x) * weight` with x f32, delta/weight/out bf16.
pub fn add_rms_norm(x: &mut Tensor, delta: Option<&Tensor>, weight: &Tensor, eps: f32, out: &mut Tensor) -> Result<()> {
    let x_ptr = ptr_mut(x)? as *mut f32;
    norm_launch(x, x_ptr, delta, weight, eps, out)
}

/// `out = rms_norm(x) * weight` without touching `x` (x f32, weight/out bf16).
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32, out: &mut Tensor) -> Result<()> {
    // The kernel writes x only when delta is given; here it is NULL, so x is only read.
    norm_launch(x, ptr(x)? as *mut f32, None, weight, eps, out)
}

/// The checks and launch behind [`add_rms_norm`] / [`rms_norm`]; `x_ptr` is `x`'s device address.
fn norm_launch(
    x: &Tensor,
    x_ptr: *mut f32,
    delta: Option<&Tensor>,
    weight: &Tensor,
    eps: f32,
    out: &mut Tensor,
) -> Result<()> {
    const OP: &str = "add_rms_norm";
    let dev = dev_of(OP, x)?;
    let (rows, dim) = x.dims2(OP)?;
    expect(OP, "x", x, DType::F32, &dev)?;
    expect(OP, "weight", weight, DType::BF16, &dev)?;
    expect(OP, "output", out, DType::BF16, &dev)?;
    if weight.shape() != [dim] || out.shape() != x.shape() {
        return Err(Error::op(
            OP,
            format!("weight {:?} / out {:?} do not fit x {:?}", weight.shape(), out.shape(), x.shape()),
        ));
    }
    let d = match delta {
        Some(d) => {
            expect(OP, "delta", d, DType::BF16, &dev)?;
            ptr(d)?
        }
        None => std::ptr::null(),
    };
    // SAFETY: x_ptr is x's [rows, dim] f32 buffer (written only when delta is non-NULL, and then
    // the caller holds x mutably), out [rows, dim] bf16, weight [dim] bf16, delta [rows, dim]
    // bf16 or NULL (the kernel's documented "no residual add"); all on this device's stream.
    let st = unsafe {
        ffi::infer_add_rms_norm_bf16(
            x_ptr,
            d,
            ptr(weight)?,
            ptr_mut(out)?,
            int(OP, rows)?,
            int(OP, dim)?,
            eps,
            dev.stream.cu_stream() as _,
        )
    };
    ffi::check(OP, st)
}

/// `out[m, n] = x[m, k] · w[n, k]ᵀ`: our GEMV for m ≤ 8 (f32 or bf16 out), cuBLASLt above.
pub fn matmul(x: &Tensor, w: &Tensor, out: &mut Tensor) -> Result<()> {
    const OP: &str = "matmul";
    let dev = dev_of(OP, x)?;
    let (n, k) = w.dims2(OP)?;
    let m = x.numel() / k.max(1);
    expect(OP, "x", x, DType::BF16, &dev)?;
    if w.dtype().is_quantized() {
        return super::quant::matmul_quant(&dev, x, w, out, m, n, k);
    }
    expect(OP, "w", w, DType::BF16, &dev)?;
    let out_f32 = out.dtype() == DType::F32;
    expect(OP, "out", out, if out_f32 { DType::F32 } else { DType::BF16 }, &dev)?;
    if m <= 8 || out_f32 {
        // SAFETY: x [m, k], w [n, k] bf16 and out [m, n] (bf16, or f32 when out_f32) device
        // buffers with shapes checked by the op; the kernel validates k % 8 and alignment.
        let st = unsafe {
            ffi::infer_gemv_bf16(
                ptr(x)?,
                ptr(w)?,
                ptr_mut(out)?,
                int(OP, m)?,
                int(OP, n)?,
                int(OP, k)?,
                i32::from(out_f32),
                dev.stream.cu_stream() as _,
            )
        };
        return ffi::check(OP, st);
    }
    let (xs, ws) = (bf16_slice(x)?, bf16_slice(w)?);
    cublaslt_bf16(&dev, xs, ws, out, m, n, k)
}

/// `out[m, n] = x[m, k] · w[n, k]ᵀ` on cuBLASLt, all bf16 (f32 accumulation); `out` must be bf16.
pub(super) fn cublaslt_bf16(
    dev: &CudaDevice,
    xs: &CudaSlice<bf16>,
    ws: &CudaSlice<bf16>,
    out: &mut Tensor,
    m: usize,
    n: usize,
    k: usize,
) -> Result<()> {
    const OP: &str = "matmul";
    if xs.len() < m * k || ws.len() < n * k || out.numel() != m * n {
        return Err(Error::op(OP, format!("cuBLASLt buffers do not hold [{m}, {k}] · [{n}, {k}]ᵀ")));
    }
    // Row-major out[m, n] is column-major outᵀ[n, m] = w[n, k] · x[k, m]: A = w (transposed
    // from its column-major [k, n] view), B = x as column-major [k, m].
    let cfg = MatmulConfig {
        transa: true,
        transb: false,
        transc: false,
        m: n as u64,
        n: m as u64,
        k: k as u64,
        alpha: 1.0,
        lda: k as i64,
        ldb: k as i64,
        beta: 0.0,
        ldc: n as i64,
        stride_a: None,
        stride_b: None,
        stride_c: None,
        stride_bias: None,
        batch_size: None,
    };
    let os = match &mut out.cuda_storage_mut()?.data {
        CudaData::BF16(s) => s,
        _ => return Err(Error::op(OP, "bf16 output expected")),
    };
    // SAFETY: the config describes exactly the buffers' shapes (checked above); cuBLASLt reads
    // k*n and k*m bf16 elements and writes m*n, all within the slices.
    unsafe { dev.blas.matmul(cfg, ws, xs, os, None, None) }.map_err(|e| Error::op(OP, format!("cuBLASLt: {e:?}")))
}

fn bf16_slice(t: &Tensor) -> Result<&CudaSlice<bf16>> {
    match &t.cuda_storage()?.data {
        CudaData::BF16(s) => Ok(s),
        _ => Err(Error::op("matmul", "bf16 tensor expected")),
    }
}

/// RoPE on the fused qkv projection plus the KV-cache write.
pub fn rope_kv(
    qkv: &Tensor,
    q_out: &mut Tensor,
    k_cache: &mut Tensor,
    v_cache: &mut Tensor,
    pos: &Positions,
    table: &RopeTable,
    n_heads: usize,
) -> Result<()> {
    const OP: &str = "rope_kv";
    let dev = dev_of(OP, qkv)?;
    let (seq, _) = qkv.dims2(OP)?;
    let [n_kv, ctx, hd] = k_cache.shape()[..] else { return Err(Error::op(OP, "bad cache shape")) };
    for (what, t) in [("qkv", qkv), ("q_out", &*q_out), ("k_cache", &*k_cache), ("v_cache", &*v_cache)] {
        expect(OP, what, t, DType::BF16, &dev)?;
    }
    let cos_sin = table.device_cos_sin(&dev)?;
    let mut tmp = None;
    let p = device_pos(pos, &dev, &mut tmp)?;
    // SAFETY: qkv [seq, (nh + 2 nkv) hd], q_out [seq, nh hd], caches [nkv, ctx, hd] bf16 and
    // cos_sin [table positions, hd/2, 2] f32 device buffers (shapes checked by the op, table
    // long enough for pos + seq); p points to one device i32.
    let st = unsafe {
        ffi::infer_rope_kv_bf16(
            ptr(qkv)?,
            ptr_mut(q_out)?,
            ptr_mut(k_cache)?,
            ptr_mut(v_cache)?,
            cos_sin.ptr() as *const f32,
            p,
            int(OP, seq)?,
            int(OP, n_heads)?,
            int(OP, n_kv)?,
            int(OP, hd)?,
            int(OP, ctx)?,
            dev.stream.cu_stream() as _,
        )
    };
    ffi::check(OP, st)
}

/// Causal GQA attention over the cache (split-KV decode for one row, flash attention above).
pub fn attention(q: &Tensor, k: &Tensor, v: &Tensor, pos: &Positions, n_heads: usize, out: &mut Tensor) -> Result<()> {
    const OP: &str = "attention";
    let dev = dev_of(OP, q)?;
    let (seq, _) = q.dims2(OP)?;
    let [n_kv, ctx, hd] = k.shape()[..] else { return Err(Error::op(OP, "bad cache shape")) };
    for (what, t) in [("q", q), ("k cache", k), ("v cache", v), ("output", &*out)] {
        expect(OP, what, t, DType::BF16, &dev)?;
    }
    let (nh, nkv, hd_i, ctx_i) = (int(OP, n_heads)?, int(OP, n_kv)?, int(OP, hd)?, int(OP, ctx)?);
    // SAFETY: pure size computation.
    let ws_bytes = unsafe { ffi::infer_attention_workspace_bytes(nh, hd_i, ctx_i) };
    let ws = dev.scratch(ws_bytes)?;
    let mut tmp = None;
    let p = device_pos(pos, &dev, &mut tmp)?;
    // Prefill and eager steps see their own length; a decode graph serves its position range.
    let bound = if seq == 1 { crate::op::attention::decode_len_bound(pos.start, ctx) } else { ctx };
    // SAFETY: q/out [seq, nh hd] and caches [nkv, ctx, hd] bf16 device buffers (checked by the
    // op); ws has ws_bytes of device scratch; p points to one device i32.
    let st = unsafe {
        ffi::infer_attention_bound_bf16(
            ptr(q)?,
            ptr(k)?,
            ptr(v)?,
            ptr_mut(out)?,
            p,
            int(OP, seq)?,
            nh,
            nkv,
            hd_i,
            ctx_i,
            int(OP, bound)?,
            ws,
            ws_bytes,
            dev.stream.cu_stream() as _,
        )
    };
    ffi::check(OP, st)
}

/// `out = silu(gate) * up` over the fused gate/up projection.
pub fn swiglu(gate_up: &Tensor, out: &mut Tensor) -> Result<()> {
    const OP: &str = "swiglu";
    let dev = dev_of(OP, gate_up)?;
    let (rows, inter) = out.dims2(OP)?;
    expect(OP, "gate_up", gate_up, DType::BF16, &dev)?;
    expect(OP, "output", out, DType::BF16, &dev)?;
    // SAFETY: gate_up [rows, 2 inter] and out [rows, inter] bf16 device buffers (checked by the op).
    let st = unsafe {
        ffi::infer_swiglu_bf16(
            ptr(gate_up)?,
            ptr_mut(out)?,
            int(OP, rows)?,
            int(OP, inter)?,
            dev.stream.cu_stream() as _,
        )
    };
    ffi::check(OP, st)
}

/// Greedy token on the device: `out_id[0] = argmax(logits)`; only the id crosses to the host.
pub fn argmax_dev(logits: &Tensor, out_id: &mut DeviceI32) -> Result<()> {
    const OP: &str = "argmax";
    let dev = dev_of(OP, logits)?;
    expect(OP, "logits", logits, DType::F32, &dev)?;
    let n = int(OP, logits.numel())?;
    // SAFETY: pure size computation.
    let ws = dev.scratch(unsafe { ffi::infer_argmax_workspace_bytes(n) })?;
    let (id, _sync) = cudarc::driver::DevicePtrMut::device_ptr_mut(&mut out_id.data, &dev.stream);
    // SAFETY: logits holds n f32 on the device, id points to a device i32, ws has the workspace
    // size the kernel asked for.
    let st = unsafe {
        ffi::infer_argmax_f32(
            ptr(logits)? as *const f32,
            n,
            id as *mut i32,
            ws as *mut c_void,
            dev.stream.cu_stream() as _,
        )
    };
    ffi::check(OP, st)
}

/// End of a decode step (`infer_decode_advance`): the id in `next_id` goes to host slot
/// `(pos + 1) & 1` (`host_slots`: device addresses of mapped page-locked i32s, see
/// `device::mapped_host_i32`) and the device position advances by one.
pub fn decode_advance(next_id: &DeviceI32, pos: &mut DeviceI32, host_slots: [u64; 2]) -> Result<()> {
    const OP: &str = "decode_advance";
    let dev = next_id.dev.clone();
    let (id, _s1) = cudarc::driver::DevicePtr::device_ptr(&next_id.data, &dev.stream);
    let (p, _s2) = cudarc::driver::DevicePtrMut::device_ptr_mut(&mut pos.data, &dev.stream);
    // SAFETY: id and pos point to device i32s on this device; the slots are mapped page-locked
    // host i32s of its context, kept alive by their owner (`GpuState`) while graphs use them.
    let st = unsafe {
        ffi::infer_decode_advance(
            id as *const i32,
            p as *mut i32,
            host_slots[0] as *mut i32,
            host_slots[1] as *mut i32,
            dev.stream.cu_stream() as _,
        )
    };
    ffi::check(OP, st)
}

/// Uploads the RoPE table once per device (kept by the table).
pub(crate) fn upload_cos_sin(dev: &Arc<CudaDevice>, host: &[f32]) -> Result<CudaStorage> {
    let data = dev.stream.clone_htod(host).map_err(|e| driver_err("rope table", e))?;
    Ok(CudaStorage { data: CudaData::F32(data), dev: dev.clone() })
}
