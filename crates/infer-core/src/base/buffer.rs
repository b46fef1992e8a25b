//! Host storage: owned typed vectors, or a read-only window of a memory-mapped weights file.
//! Weights stay in the file's dtype (bf16 stays bf16): nothing is widened or copied at load.

use std::sync::Arc;

use half::{bf16, f16};
use memmap2::Mmap;

use crate::tensor::DType;

/// The bytes behind a tensor.
#[derive(Debug, Clone)]
pub enum Storage {
    F32(Vec<f32>),
    BF16(Vec<bf16>),
    F16(Vec<f16>),
    /// Owned raw bytes of a block-quantized tensor (GGML block layout, see [`DType`]).
    Bytes(Vec<u8>),
    /// `len` bytes at `start` in a mapped file (shared by every tensor of that file).
    Mapped {
        map: Arc<Mmap>,
        start: usize,
        len: usize,
    },
    /// Device memory of a CUDA GPU.
    #[cfg(feature = "cuda")]
    Cuda(crate::cuda::CudaStorage),
}

impl Storage {
    /// Zeroed storage for `n` elements (for a quantized dtype, rounded up to whole blocks).
    pub fn zeros(dtype: DType, n: usize) -> Self {
        match dtype {
            DType::F32 => Storage::F32(vec![0.0; n]),
            DType::BF16 => Storage::BF16(vec![bf16::ZERO; n]),
            DType::F16 => Storage::F16(vec![f16::ZERO; n]),
            q => Storage::Bytes(vec![0; n.div_ceil(q.block_size()) * q.block_bytes()]),
        }
    }

    /// Capacity in bytes.
    pub fn byte_len(&self) -> usize {
        match self {
            Storage::F32(v) => v.len() * 4,
            Storage::BF16(v) => v.len() * 2,
            Storage::F16(v) => v.len() * 2,
            Storage::Bytes(v) => v.len(),
            Storage::Mapped { len, .. } => *len,
            #[cfg(feature = "cuda")]
            Storage::Cuda(c) => c.dtype().bytes_for(c.len()).unwrap_or(0),
        }
    }

    pub fn is_mapped(&self) -> bool {
        matches!(self, Storage::Mapped { .. })
    }

    /// The raw bytes of host storage (for mapped storage, the file window); `None` on a device.
    pub fn bytes(&self) -> Option<&[u8]> {
        match self {
            Storage::F32(v) => Some(bytemuck::cast_slice(v)),
            Storage::BF16(v) => Some(bytemuck::cast_slice(v)),
            Storage::F16(v) => Some(bytemuck::cast_slice(v)),
            Storage::Bytes(v) => Some(v),
            Storage::Mapped { map, start, len } => Some(&map[*start..*start + *len]),
            #[cfg(feature = "cuda")]
            Storage::Cuda(_) => None,
        }
    }
}
