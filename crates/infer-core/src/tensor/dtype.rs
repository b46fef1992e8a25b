//! Element types of tensors: plain floats, and GGML's block-quantized formats.
//!
//! A block-quantized dtype stores `block_size()` consecutive elements of a row in
//! `block_bytes()` bytes (scales + packed integers, GGML's exact layout). Tensors of these
//! dtypes are weights only: rows must be whole blocks, and they are read by the quantized
//! matmul kernels (or dequantized) — never written element by element.

use std::fmt;

#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DType {
    F32,
    BF16,
    F16,
    /// 32 elements: f16 scale + 32 × i8.
    Q8_0,
    /// 32 elements: f16 scale + 32 × 4-bit (offset 8).
    Q4_0,
    /// 32 elements: f16 scale, f16 min + 32 × 4-bit.
    Q4_1,
    /// 256 elements: f16 d, f16 dmin, 12 bytes of 6-bit sub-block scales/mins, 128 bytes of 4-bit.
    Q4_K,
    /// 256 elements: 128 bytes low 4 bits, 64 bytes high 2 bits, 16 × i8 scales, f16 d.
    Q6_K,
    /// Q4_K rows interleaved by eights, scales decoded (148 bytes per row and 256 values): the
    /// CPU decode layout that loading makes of Q4_K matrices (`tensor::repack`). Never in a
    /// file; tensors hold whole groups of 8 rows.
    Q4_Kx8,
}

impl DType {
    /// Every dtype a file can hold, floats first (not [`DType::Q4_Kx8`]).
    pub const ALL: [DType; 8] =
        [DType::F32, DType::BF16, DType::F16, DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q4_K, DType::Q6_K];

    /// Bytes per element of a float dtype. For a block-quantized dtype this is the size of one
    /// whole block (use [`DType::bytes_for`] to size a buffer).
    pub fn size_of(self) -> usize {
        self.block_bytes()
    }

    /// Elements per block (1 for float dtypes).
    pub fn block_size(self) -> usize {
        match self {
            DType::F32 | DType::BF16 | DType::F16 => 1,
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => 32,
            DType::Q4_K | DType::Q6_K | DType::Q4_Kx8 => 256,
        }
    }

    /// Bytes per block (the element size for float dtypes).
    pub fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::BF16 | DType::F16 => 2,
            DType::Q8_0 => 34,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
            DType::Q4_K => 144,
            DType::Q6_K => 210,
            DType::Q4_Kx8 => 148,
        }
    }

    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }

    /// Bytes taken by `n` elements, or `None` when `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        n.is_multiple_of(self.block_size()).then(|| n / self.block_size() * self.block_bytes())
    }

    /// Elements held by `bytes` bytes (whole blocks only; a partial block is not counted).
    pub fn elems_in(self, bytes: usize) -> usize {
        bytes / self.block_bytes() * self.block_size()
    }

    /// The `ggml_type` number GGUF files use for this dtype (`u32::MAX`, no type, for the
    /// in-memory [`DType::Q4_Kx8`]: files and devices take its rows unpacked to Q4_K).
    pub fn ggml_type(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q4_0 => 2,
            DType::Q4_1 => 3,
            DType::Q8_0 => 8,
            DType::Q4_K => 12,
            DType::Q6_K => 14,
            DType::BF16 => 30,
            DType::Q4_Kx8 => u32::MAX,
        }
    }

    /// The dtype of a GGUF `ggml_type` number, if we support it.
    pub fn from_ggml_type(t: u32) -> Option<Self> {
        DType::ALL.into_iter().find(|d| d.ggml_type() == t)
    }

    /// The dtype of a safetensors header entry, if we support it.
    pub fn from_safetensors(d: safetensors::Dtype) -> Option<Self> {
        match d {
            safetensors::Dtype::F32 => Some(DType::F32),
            safetensors::Dtype::BF16 => Some(DType::BF16),
            safetensors::Dtype::F16 => Some(DType::F16),
            _ => None,
        }
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            DType::F32 => "f32",
            DType::BF16 => "bf16",
            DType::F16 => "f16",
            DType::Q8_0 => "q8_0",
            DType::Q4_0 => "q4_0",
            DType::Q4_1 => "q4_1",
            DType::Q4_K => "q4_k",
            DType::Q6_K => "q6_k",
            DType::Q4_Kx8 => "q4_k_x8",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_geometry_and_ggml_ids_round_trip() {
        for d in DType::ALL {
            assert_eq!(DType::from_ggml_type(d.ggml_type()), Some(d));
            assert_eq!(d.bytes_for(d.block_size() * 3), Some(d.block_bytes() * 3));
            assert_eq!(d.elems_in(d.block_bytes() * 5 + 1), d.block_size() * 5);
        }
        assert_eq!(DType::Q4_K.bytes_for(100), None);
        assert_eq!(DType::from_ggml_type(6), None); // Q5_0: not supported
    }
}
