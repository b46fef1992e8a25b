//! CUDA paged-KV ops: RoPE + K/V write into block slots, and batched attention over block
//! tables (kernels in `kernels/paged.cu`).
//!
//! Shapes, dtypes and every index of the metadata are validated by the callers in `crate::op`
//! before these run (and the kernels bound-check the device copies again, so a stale or corrupt
//! device copy gives wrong rows, never an out-of-bounds access). The metadata reaches the kernels
//! through a [`DevicePagedMeta`]: the caller's (`meta.device`, which a captured CUDA graph reads
//! at fixed addresses) or, when that is `None`, a fresh upload made by the op.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, DevicePtr};

use super::device::{CudaDevice, driver_err};
use super::ffi;
use super::ops::{dev_of, expect, int, ptr, ptr_mut};
use crate::base::{Error, Result};
use crate::op::paged::PagedMeta;
use crate::op::rope::RopeTable;
use crate::tensor::{DType, Tensor};

/// The device copy of a [`PagedMeta`]'s arrays, reused across steps: one packed `i32` buffer
/// `[positions | slots | row_seq | block_tables]` filled by one host-to-device copy per step.
///
/// The buffer only grows (in [`upload`](Self::upload) or [`reserve`](Self::reserve)), so its
/// address is stable once it is large enough: reserve the largest step before capturing a CUDA
/// graph, then re-upload before each replay.
pub struct DevicePagedMeta {
    dev: Arc<CudaDevice>,
    buf: Option<CudaSlice<i32>>,
    staging: Vec<i32>,
    rows: usize,
    seqs: usize,
    max_blocks: usize,
    block_size: usize,
}

impl std::fmt::Debug for DevicePagedMeta {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "DevicePagedMeta(cuda:{}, {} rows, {} seqs x {} blocks of {}, capacity {})",
            self.dev.ordinal,
            self.rows,
            self.seqs,
            self.max_blocks,
            self.block_size,
            self.capacity()
        )
    }
}

impl DevicePagedMeta {
    /// An empty copy on `dev` (nothing allocated until the first upload).
    pub fn new(dev: &Arc<CudaDevice>) -> Result<Self> {
        Ok(DevicePagedMeta {
            dev: dev.clone(),
            buf: None,
            staging: Vec::new(),
            rows: 0,
            seqs: 0,
            max_blocks: 0,
            block_size: 0,
        })
    }

    /// `i32` entries the device buffer holds.
    pub fn capacity(&self) -> usize {
        self.buf.as_ref().map_or(0, |b| b.len())
    }

    /// Grows the device buffer to at least `len` `i32` entries (`3 * rows + n_seqs * max_blocks`
    /// for a step); reallocating changes its address, so do it before graph capture.
    pub fn reserve(&mut self, len: usize) -> Result<()> {
        if self.capacity() < len {
            self.dev.bind()?;
            self.buf = Some(self.dev.stream.alloc_zeros::<i32>(len).map_err(|e| driver_err("paged meta alloc", e))?);
        }
        Ok(())
    }

    /// Copies `meta`'s arrays to the device (one stream-ordered copy), growing the buffer first
    /// when needed. Kernels queued after this on the device's stream read these values.
    pub fn upload(&mut self, meta: &PagedMeta) -> Result<()> {
        let rows = meta.rows();
        if meta.slots.len() != rows || meta.row_seq.len() != rows {
            return Err(Error::InvalidArgument(format!(
                "paged meta: {rows} positions but {} slots and {} row_seq entries",
                meta.slots.len(),
                meta.row_seq.len()
            )));
        }
        if meta.max_blocks == 0 || !meta.block_tables.len().is_multiple_of(meta.max_blocks) {
            return Err(Error::InvalidArgument(format!(
                "paged meta: block table length {} is not a positive multiple of max_blocks {}",
                meta.block_tables.len(),
                meta.max_blocks
            )));
        }
        let len = 3 * rows + meta.block_tables.len();
        self.staging.clear();
        self.staging.reserve(len);
        for part in [meta.positions, meta.slots, meta.row_seq, meta.block_tables] {
            self.staging.extend_from_slice(part);
        }
        self.reserve(len.max(1))?;
        let buf = self.buf.as_mut().ok_or_else(|| Error::op("paged meta", "missing device buffer"))?;
        if len > 0 {
            let mut view = buf.slice_mut(..len);
            self.dev.stream.memcpy_htod(&self.staging, &mut view).map_err(|e| driver_err("paged meta upload", e))?;
        }
        (self.rows, self.seqs, self.max_blocks, self.block_size) =
            (rows, meta.seqs(), meta.max_blocks, meta.block_size);
        Ok(())
    }

    /// Device pointers to `[positions, slots, row_seq, block_tables]`, after checking that the
    /// last upload had `meta`'s sizes on `dev`.
    fn ptrs(&self, op: &'static str, meta: &PagedMeta, dev: &CudaDevice) -> Result<[*const i32; 4]> {
        if self.dev.ordinal != dev.ordinal {
            return Err(Error::op(
                op,
                format!("paged metadata is on cuda:{}, expected cuda:{}", self.dev.ordinal, dev.ordinal),
            ));
        }
        let sizes = (self.rows, self.seqs, self.max_blocks, self.block_size);
        if sizes != (meta.rows(), meta.seqs(), meta.max_blocks, meta.block_size) {
            return Err(Error::op(
                op,
                format!(
                    "device paged metadata holds {} rows, {} seqs x {} blocks of {}; the step has {} rows, {} seqs x {} blocks of {}",
                    self.rows,
                    self.seqs,
                    self.max_blocks,
                    self.block_size,
                    meta.rows(),
                    meta.seqs(),
                    meta.max_blocks,
                    meta.block_size
                ),
            ));
        }
        let buf = self.buf.as_ref().ok_or_else(|| Error::op(op, "device paged metadata was never uploaded"))?;
        let (base, _sync) = buf.device_ptr(&self.dev.stream);
        let at = |i: usize| (base + (i * std::mem::size_of::<i32>()) as u64) as *const i32;
        Ok([at(0), at(self.rows), at(2 * self.rows), at(3 * self.rows)])
    }
}

/// The device arrays of `meta`: the caller's copy, or an upload into `tmp`.
fn device_meta<'a>(
    op: &'static str,
    meta: &'a PagedMeta,
    dev: &Arc<CudaDevice>,
    tmp: &'a mut Option<DevicePagedMeta>,
) -> Result<[*const i32; 4]> {
    if let Some(d) = meta.device {
        return d.ptrs(op, meta, dev);
    }
    let mut d = DevicePagedMeta::new(dev)?;
    d.upload(meta)?;
    tmp.insert(d).ptrs(op, meta, dev)
}

/// See [`crate::op::rope_kv_paged::rope_kv_paged`]; bf16 tensors on one device.
pub fn rope_kv_paged(
    qkv: &Tensor,
    q_out: &mut Tensor,
    k_pool: &mut Tensor,
    v_pool: &mut Tensor,
    meta: &PagedMeta,
    table: &RopeTable,
    n_heads: usize,
) -> Result<()> {
    const OP: &str = "rope_kv_paged";
    let dev = dev_of(OP, qkv)?;
    let (rows, _) = qkv.dims2(OP)?;
    if rows == 0 {
        return Ok(());
    }
    let [nb, n_kv, bs, hd] = k_pool.shape()[..] else { return Err(Error::op(OP, "bad pool shape")) };
    for (what, t) in [("qkv", qkv), ("q_out", &*q_out), ("k pool", &*k_pool), ("v pool", &*v_pool)] {
        expect(OP, what, t, DType::BF16, &dev)?;
    }
    let cos_sin = table.device_cos_sin(&dev)?;
    let mut tmp = None;
    let [positions, slots, _, _] = device_meta(OP, meta, &dev, &mut tmp)?;
    // SAFETY: qkv [rows, (nh + 2 nkv) hd], q_out [rows, nh hd] and the pools [nb, nkv, bs, hd]
    // are bf16 device buffers on this device (shapes checked by the op); cos_sin is the table's
    // [max_pos, hd/2, 2] f32 device copy; positions and slots point to `rows` device i32 each
    // (sizes checked by `ptrs`). The kernel bound-checks every position against max_pos and every
    // slot against nb * bs before forming an address.
    let st = unsafe {
        ffi::infer_rope_kv_paged_bf16(
            ptr(qkv)?,
            ptr_mut(q_out)?,
            ptr_mut(k_pool)?,
            ptr_mut(v_pool)?,
            cos_sin.ptr() as *const f32,
            int(OP, table.max_pos())?,
            positions,
            slots,
            int(OP, rows)?,
            int(OP, n_heads)?,
            int(OP, n_kv)?,
            int(OP, hd)?,
            int(OP, bs)?,
            int(OP, nb)?,
            dev.stream.cu_stream() as _,
        )
    };
    ffi::check(OP, st)
}

/// See [`crate::op::paged_attention::paged_attention`]; bf16 tensors on one device. Every row
/// (decode row or prefill-chunk row) runs the flash-decoding kernel over its block table.
pub fn paged_attention(
    q: &Tensor,
    k_pool: &Tensor,
    v_pool: &Tensor,
    meta: &PagedMeta,
    n_heads: usize,
    out: &mut Tensor,
) -> Result<()> {
    const OP: &str = "paged_attention";
    let dev = dev_of(OP, q)?;
    let (rows, _) = q.dims2(OP)?;
    if rows == 0 {
        return Ok(());
    }
    let [nb, n_kv, bs, hd] = k_pool.shape()[..] else { return Err(Error::op(OP, "bad pool shape")) };
    for (what, t) in [("q", q), ("k pool", k_pool), ("v pool", v_pool), ("output", &*out)] {
        expect(OP, what, t, DType::BF16, &dev)?;
    }
    if !matches!(hd, 32 | 64 | 128 | 256) {
        return Err(Error::op(OP, format!("head_dim {hd} not supported on CUDA (32, 64, 128 or 256)")));
    }
    let (rows_i, nh, nkv, hd_i) = (int(OP, rows)?, int(OP, n_heads)?, int(OP, n_kv)?, int(OP, hd)?);
    let (bs_i, mb) = (int(OP, bs)?, int(OP, meta.max_blocks)?);
    // SAFETY: pure size computation.
    let ws_bytes = unsafe { ffi::infer_paged_attention_workspace_bytes(rows_i, nh, nkv, hd_i, bs_i, mb) };
    let ws = dev.scratch(ws_bytes)?;
    let mut tmp = None;
    let [positions, _, row_seq, tables] = device_meta(OP, meta, &dev, &mut tmp)?;
    // SAFETY: q/out [rows, nh hd] and the pools [nb, nkv, bs, hd] are bf16 device buffers on this
    // device (shapes checked by the op); positions and row_seq point to `rows` device i32 and
    // tables to `seqs * max_blocks` (sizes checked by `ptrs`); ws has ws_bytes of device scratch.
    // The kernel bound-checks positions (< max_blocks * bs), sequences (< seqs) and block ids
    // (< nb) before forming an address.
    let st = unsafe {
        ffi::infer_paged_attention_bf16(
            ptr(q)?,
            ptr(k_pool)?,
            ptr(v_pool)?,
            ptr_mut(out)?,
            positions,
            row_seq,
            tables,
            rows_i,
            int(OP, meta.seqs())?,
            mb,
            nh,
            nkv,
            hd_i,
            bs_i,
            int(OP, nb)?,
            ws,
            ws_bytes,
            dev.stream.cu_stream() as _,
        )
    };
    ffi::check(OP, st)
}
