//! Block-quantized (GGML) weights on the GPU: the decode GEMV reads the blocks directly
//! (`infer_gemv_quant`, up to 8 rows of activations per launch); larger batches (prefill)
//! dequantize the matrix to bf16 once per call (`infer_dequant_bf16`) and run cuBLASLt; the
//! embedding dequantizes the looked-up rows (`infer_embedding_quant`).

use cudarc::driver::DevicePtrMut;
use half::bf16;

use super::device::{CudaDevice, DeviceI32, driver_err};
use super::ffi;
use super::ops::{cublaslt_bf16, expect, int, ptr, ptr_mut};
use crate::base::{Error, Result};
use crate::tensor::{DType, Tensor};

/// Rows of activations one quantized GEMV launch takes.
const GEMV_MAX_ROWS: usize = 8;

/// `out[m, n] = x[m, k] · dequant(w)[n, k]ᵀ`, x bf16, out bf16 or f32 (shapes checked by the op).
pub fn matmul_quant(
    dev: &CudaDevice,
    x: &Tensor,
    w: &Tensor,
    out: &mut Tensor,
    m: usize,
    n: usize,
    k: usize,
) -> Result<()> {
    const OP: &str = "matmul";
    let qtype = w.dtype();
    expect(OP, "w", w, qtype, dev)?;
    let out_f32 = out.dtype() == DType::F32;
    expect(OP, "out", out, if out_f32 { DType::F32 } else { DType::BF16 }, dev)?;
    if m <= GEMV_MAX_ROWS || out_f32 {
        let (xp, wp, op) = (ptr(x)? as *const bf16, ptr(w)?, ptr_mut(out)?);
        let osize = if out_f32 { 4 } else { 2 };
        for r0 in (0..m).step_by(GEMV_MAX_ROWS) {
            let rows = (m - r0).min(GEMV_MAX_ROWS);
            // SAFETY: x is [m, k] bf16 and out [m, n] (f32 or bf16) on this device; rows r0..r0+rows
            // lie inside both (offsets in elements of each dtype); w is [n, k] whole blocks of
            // qtype (the kernel checks k against the block size).
            let st = unsafe {
                ffi::infer_gemv_quant(
                    xp.add(r0 * k) as *const _,
                    wp,
                    qtype.ggml_type() as i32,
                    (op as *mut u8).add(r0 * n * osize) as *mut _,
                    int(OP, rows)?,
                    int(OP, n)?,
                    int(OP, k)?,
                    i32::from(out_f32),
                    dev.stream.cu_stream() as _,
                )
            };
            ffi::check(OP, st)?;
        }
        return Ok(());
    }
    // Prefill: dequantize once into a stream-ordered temporary, then the bf16 GEMM.
    let mut wb = dev.stream.alloc_zeros::<bf16>(n * k).map_err(|e| driver_err("dequantize alloc", e))?;
    {
        let (wbp, _sync) = wb.device_ptr_mut(&dev.stream);
        // SAFETY: w holds n rows of k elements as whole blocks; wb holds n*k bf16 (16-byte aligned
        // device allocation).
        let st = unsafe {
            ffi::infer_dequant_bf16(
                ptr(w)?,
                qtype.ggml_type() as i32,
                wbp as *mut _,
                int(OP, n)?,
                int(OP, k)?,
                dev.stream.cu_stream() as _,
            )
        };
        ffi::check(OP, st)?;
    }
    let xs = match &x.cuda_storage()?.data {
        super::CudaData::BF16(s) => s,
        _ => return Err(Error::op(OP, "bf16 activations expected")),
    };
    cublaslt_bf16(dev, xs, &wb, out, m, n, k)
}

/// Rows `ids[..n]` of a quantized `[vocab, hidden]` table, dequantized into f32 `out[n, hidden]`.
pub fn embedding_quant(
    dev: &CudaDevice,
    ids: &DeviceI32,
    n: usize,
    table: &Tensor,
    out: &mut Tensor,
    hidden: usize,
    vocab: usize,
) -> Result<()> {
    const OP: &str = "embedding";
    expect(OP, "table", table, table.dtype(), dev)?;
    expect(OP, "output", out, DType::F32, dev)?;
    if !hidden.is_multiple_of(table.dtype().block_size()) {
        return Err(Error::op(OP, format!("{} rows of {hidden} are not whole blocks", table.dtype())));
    }
    // SAFETY: ids holds n i32 on this device; table is [vocab, hidden] whole blocks and out
    // [n, hidden] f32 (shapes checked by the op).
    let st = unsafe {
        ffi::infer_embedding_quant(
            ids.ptr(),
            ptr(table)?,
            table.dtype().ggml_type() as i32,
            ptr_mut(out)? as *mut f32,
            int(OP, n)?,
            int(OP, hidden)?,
            int(OP, vocab)?,
            dev.stream.cu_stream() as _,
        )
    };
    ffi::check(OP, st)
}
