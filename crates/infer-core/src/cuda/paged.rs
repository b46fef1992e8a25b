//! CUDA paged-KV ops: RoPE + K/V write into block slots, and batched attention over block
//! tables (kernels in `kernels/paged.cu`).
//!
//! CONTRACT (filled in by the CUDA paged-attention work): shapes, dtypes and every index of the
//! metadata are validated by the callers in `crate::op` before these run.

use crate::base::{Error, Result};
use crate::op::paged::PagedMeta;
use crate::op::rope::RopeTable;
use crate::tensor::Tensor;

/// The device copy of a [`PagedMeta`]'s arrays, reused across steps.
#[derive(Debug)]
pub struct DevicePagedMeta {
    _private: (),
}

impl DevicePagedMeta {
    pub fn new(_dev: &std::sync::Arc<super::CudaDevice>) -> Result<Self> {
        Ok(DevicePagedMeta { _private: () })
    }

    pub fn reserve(&mut self, _len: usize) -> Result<()> {
        Ok(())
    }

    pub fn upload(&mut self, _meta: &PagedMeta) -> Result<()> {
        Err(Error::op("paged_meta", "the CUDA paged KV cache is not built yet"))
    }
}

/// See [`crate::op::rope_kv_paged::rope_kv_paged`]; bf16 tensors on one device.
pub fn rope_kv_paged(
    _qkv: &Tensor,
    _q_out: &mut Tensor,
    _k_pool: &mut Tensor,
    _v_pool: &mut Tensor,
    _meta: &PagedMeta,
    _table: &RopeTable,
    _n_heads: usize,
) -> Result<()> {
    Err(Error::op("rope_kv_paged", "the CUDA paged KV cache is not built yet"))
}

/// See [`crate::op::paged_attention::paged_attention`]; bf16 tensors on one device.
pub fn paged_attention(
    _q: &Tensor,
    _k_pool: &Tensor,
    _v_pool: &Tensor,
    _meta: &PagedMeta,
    _n_heads: usize,
    _out: &mut Tensor,
) -> Result<()> {
    Err(Error::op("paged_attention", "the CUDA paged KV cache is not built yet"))
}
