//! Tensor storage in device memory.

use std::sync::Arc;

use cudarc::driver::{CudaSlice, DevicePtr, DevicePtrMut};
use half::bf16;

use super::device::{CudaDevice, driver_err};
use crate::base::{Error, Result, Storage};
use crate::tensor::{DType, TensorData};

/// Typed device memory.
pub enum CudaData {
    F32(CudaSlice<f32>),
    BF16(CudaSlice<bf16>),
    /// Whole blocks of a GGML block-quantized dtype (weights only).
    Quant(DType, CudaSlice<u8>),
}

/// Device memory plus the device it lives on.
pub struct CudaStorage {
    pub data: CudaData,
    pub dev: Arc<CudaDevice>,
}

impl std::fmt::Debug for CudaStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaStorage({:?}, {} {} elements)", self.dev, self.dtype(), self.len())
    }
}

impl Clone for CudaStorage {
    /// A device-to-device copy. Cloning device tensors is rare (tests); a failure to allocate
    /// aborts like any other allocation failure in `Clone`.
    fn clone(&self) -> Self {
        let data = match &self.data {
            CudaData::F32(s) => CudaData::F32(s.clone()),
            CudaData::BF16(s) => CudaData::BF16(s.clone()),
            CudaData::Quant(d, s) => CudaData::Quant(*d, s.clone()),
        };
        CudaStorage { data, dev: self.dev.clone() }
    }
}

impl CudaStorage {
    /// Zero-filled device memory for `n` elements of `dtype` (f32 or bf16).
    pub fn zeros(dev: &Arc<CudaDevice>, dtype: DType, n: usize) -> Result<Self> {
        let n = n.max(1);
        let data = match dtype {
            DType::F32 => CudaData::F32(dev.stream.alloc_zeros(n).map_err(|e| driver_err("alloc", e))?),
            DType::BF16 => CudaData::BF16(dev.stream.alloc_zeros(n).map_err(|e| driver_err("alloc", e))?),
            other => return Err(Error::InvalidArgument(format!("{other} tensors are converted to bf16 on CUDA"))),
        };
        Ok(CudaStorage { data, dev: dev.clone() })
    }

    /// Uploads host elements, as f32 (`keep_f32`) or bf16; f16 and f32 weights become bf16 once.
    pub fn upload(dev: &Arc<CudaDevice>, host: TensorData<'_>, keep_f32: bool) -> Result<Self> {
        let up = |e| driver_err("upload", e);
        let data = match (host, keep_f32) {
            (TensorData::F32(s), true) => CudaData::F32(dev.stream.clone_htod(s).map_err(up)?),
            (TensorData::BF16(s), false) => CudaData::BF16(dev.stream.clone_htod(s).map_err(up)?),
            (other, true) => {
                let mut v = vec![0f32; other.len()];
                other.copy_to_f32(0, &mut v)?;
                CudaData::F32(dev.stream.clone_htod(&v).map_err(up)?)
            }
            (other, false) => {
                let mut v = vec![0f32; other.len()];
                other.copy_to_f32(0, &mut v)?;
                let b: Vec<bf16> = v.into_iter().map(bf16::from_f32).collect();
                CudaData::BF16(dev.stream.clone_htod(&b).map_err(up)?)
            }
        };
        Ok(CudaStorage { data, dev: dev.clone() })
    }

    /// The first `n` elements copied back to host storage (synchronises the stream).
    /// Uploads whole blocks of a quantized host tensor unchanged.
    pub fn upload_quant(dev: &Arc<CudaDevice>, dtype: DType, bytes: &[u8]) -> Result<Self> {
        if dtype == DType::Q4_Kx8 {
            // The CPU's interleaved layout: the GPU kernels read GGUF blocks.
            return Err(Error::InvalidArgument(
                "q4_k_x8 (CPU-interleaved Q4_K) cannot be uploaded: load the model for the GPU from its file".into(),
            ));
        }
        let data = dev.stream.clone_htod(bytes).map_err(|e| driver_err("upload", e))?;
        Ok(CudaStorage { data: CudaData::Quant(dtype, data), dev: dev.clone() })
    }

    pub fn download(&self, n: usize) -> Result<Storage> {
        let down = |e| driver_err("download", e);
        Ok(match &self.data {
            CudaData::F32(s) => Storage::F32(self.dev.stream.clone_dtoh(&s.slice(..n)).map_err(down)?),
            CudaData::BF16(s) => Storage::BF16(self.dev.stream.clone_dtoh(&s.slice(..n)).map_err(down)?),
            CudaData::Quant(d, s) => {
                let bytes = d.bytes_for(n).unwrap_or(s.len()).min(s.len());
                Storage::Bytes(self.dev.stream.clone_dtoh(&s.slice(..bytes)).map_err(down)?)
            }
        })
    }

    pub fn dtype(&self) -> DType {
        match self.data {
            CudaData::F32(_) => DType::F32,
            CudaData::BF16(_) => DType::BF16,
            CudaData::Quant(d, _) => d,
        }
    }

    /// Capacity in elements.
    pub fn len(&self) -> usize {
        match &self.data {
            CudaData::F32(s) => s.len(),
            CudaData::BF16(s) => s.len(),
            CudaData::Quant(d, s) => d.elems_in(s.len()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Raw device address for kernels.
    pub fn ptr(&self) -> *const std::ffi::c_void {
        let s = &self.dev.stream;
        let (p, _sync) = match &self.data {
            CudaData::F32(d) => d.device_ptr(s),
            CudaData::BF16(d) => d.device_ptr(s),
            CudaData::Quant(_, d) => d.device_ptr(s),
        };
        p as *const std::ffi::c_void
    }

    /// Raw device address for kernels that write.
    pub fn ptr_mut(&mut self) -> *mut std::ffi::c_void {
        let s = self.dev.stream.clone();
        let (p, _sync) = match &mut self.data {
            CudaData::F32(d) => d.device_ptr_mut(&s),
            CudaData::BF16(d) => d.device_ptr_mut(&s),
            CudaData::Quant(_, d) => d.device_ptr_mut(&s),
        };
        p as *mut std::ffi::c_void
    }

    /// Copies `n` elements from `src[src_off..]` into `self[dst_off..]` (same dtype, same device).
    pub fn copy_from(&mut self, dst_off: usize, src: &CudaStorage, src_off: usize, n: usize) -> Result<()> {
        let s = self.dev.stream.clone();
        let e = |e| driver_err("device copy", e);
        match (&mut self.data, &src.data) {
            (CudaData::F32(d), CudaData::F32(x)) => {
                s.memcpy_dtod(&x.slice(src_off..src_off + n), &mut d.slice_mut(dst_off..dst_off + n)).map_err(e)
            }
            (CudaData::BF16(d), CudaData::BF16(x)) => {
                s.memcpy_dtod(&x.slice(src_off..src_off + n), &mut d.slice_mut(dst_off..dst_off + n)).map_err(e)
            }
            _ => Err(Error::op("copy", "dtype mismatch between device tensors")),
        }
    }
}
