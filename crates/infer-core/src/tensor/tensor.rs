//! A row-major tensor over [`Storage`]. Views of the leading elements are cheap: a workspace
//! tensor allocated for the longest chunk is reshaped to the current chunk without reallocating.

use std::sync::Arc;

use half::{bf16, f16};
use memmap2::Mmap;

use super::DType;
use crate::base::{DeviceType, Error, Result, Storage};

#[derive(Debug, Clone)]
pub struct Tensor {
    storage: Storage,
    dtype: DType,
    shape: Vec<usize>,
    strides: Vec<usize>,
}

/// Typed read-only access to a tensor's elements (the first `numel`).
#[derive(Debug, Clone, Copy)]
pub enum TensorData<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
    /// Whole blocks of a block-quantized dtype (GGML layout), read by the quantized kernels.
    Quant(DType, &'a [u8]),
}

impl TensorData<'_> {
    pub fn len(&self) -> usize {
        match self {
            TensorData::F32(s) => s.len(),
            TensorData::BF16(s) => s.len(),
            TensorData::F16(s) => s.len(),
            TensorData::Quant(d, b) => d.elems_in(b.len()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Widens (or dequantizes) `out.len()` elements starting at `start` into `out`. For a
    /// quantized dtype, `start` and `out.len()` must be whole blocks (rows always are).
    pub fn copy_to_f32(&self, start: usize, out: &mut [f32]) -> Result<()> {
        let n = out.len();
        match self {
            TensorData::F32(s) => out.copy_from_slice(&s[start..start + n]),
            TensorData::BF16(s) => out.iter_mut().zip(&s[start..start + n]).for_each(|(o, v)| *o = v.to_f32()),
            TensorData::F16(s) => out.iter_mut().zip(&s[start..start + n]).for_each(|(o, v)| *o = v.to_f32()),
            TensorData::Quant(d, b) => {
                let (bs, bb) = (d.block_size(), d.block_bytes());
                if !start.is_multiple_of(bs) || !n.is_multiple_of(bs) || (start + n) / bs * bb > b.len() {
                    return Err(Error::InvalidArgument(format!(
                        "{d}: elements {start}..{} are not whole blocks of {bs} inside {} elements",
                        start + n,
                        self.len()
                    )));
                }
                super::quant::dequantize(*d, &b[start / bs * bb..(start + n) / bs * bb], out)?;
            }
        }
        Ok(())
    }
}

/// Quantized tensors hold whole blocks in every row.
fn check_whole_blocks(shape: &[usize], dtype: DType) -> Result<()> {
    let last = shape.last().copied().unwrap_or(1);
    if dtype.is_quantized() && !last.is_multiple_of(dtype.block_size()) {
        return Err(Error::InvalidArgument(format!(
            "a {dtype} tensor's rows must be whole blocks of {} elements, got shape {shape:?}",
            dtype.block_size()
        )));
    }
    Ok(())
}

fn contiguous_strides(shape: &[usize]) -> Vec<usize> {
    let mut strides = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        strides[i] = strides[i + 1] * shape[i + 1];
    }
    strides
}

impl Tensor {
    /// A zero-filled host tensor.
    pub fn zeros(shape: &[usize], dtype: DType) -> Self {
        let n = shape.iter().product();
        Tensor { storage: Storage::zeros(dtype, n), dtype, shape: shape.to_vec(), strides: contiguous_strides(shape) }
    }

    /// An f32 tensor owning `data` (`data.len()` must equal the shape's element count).
    pub fn from_f32(shape: &[usize], data: Vec<f32>) -> Result<Self> {
        Self::from_storage(Storage::F32(data), DType::F32, shape)
    }

    pub fn from_bf16(shape: &[usize], data: Vec<bf16>) -> Result<Self> {
        Self::from_storage(Storage::BF16(data), DType::BF16, shape)
    }

    pub fn from_f16(shape: &[usize], data: Vec<f16>) -> Result<Self> {
        Self::from_storage(Storage::F16(data), DType::F16, shape)
    }

    fn from_storage(storage: Storage, dtype: DType, shape: &[usize]) -> Result<Self> {
        let n: usize = shape.iter().product();
        if dtype.bytes_for(n) != Some(storage.byte_len()) {
            return Err(Error::InvalidArgument(format!(
                "shape {shape:?} ({n} elements of {dtype}) does not match a buffer of {} bytes",
                storage.byte_len()
            )));
        }
        Ok(Tensor { storage, dtype, shape: shape.to_vec(), strides: contiguous_strides(shape) })
    }

    /// A block-quantized tensor owning `bytes` (GGML block layout; the last dim must be whole blocks).
    pub fn from_quantized(shape: &[usize], dtype: DType, bytes: Vec<u8>) -> Result<Self> {
        if !dtype.is_quantized() {
            return Err(Error::InvalidArgument(format!("from_quantized needs a quantized dtype, got {dtype}")));
        }
        check_whole_blocks(shape, dtype)?;
        Self::from_storage(Storage::Bytes(bytes), dtype, shape)
    }

    /// A tensor reading `shape` elements of `dtype` from `map[start..]` in place (zero copy).
    /// If the window is not aligned for `dtype`, the data is copied into owned storage instead.
    pub fn from_mapped(map: Arc<Mmap>, start: usize, dtype: DType, shape: &[usize]) -> Result<Self> {
        check_whole_blocks(shape, dtype)?;
        let n: usize = shape.iter().product();
        let Some(len) = dtype.bytes_for(n) else {
            return Err(Error::InvalidArgument(format!("{n} elements are not whole blocks of {dtype}")));
        };
        if start.checked_add(len).is_none_or(|end| end > map.len()) {
            return Err(Error::InvalidArgument(format!(
                "tensor window {start}..{} is outside the mapped file ({} bytes)",
                start.saturating_add(len),
                map.len()
            )));
        }
        let bytes = &map[start..start + len];
        // Quantized kernels read their blocks unaligned, so any window can stay mapped.
        let aligned = dtype.is_quantized() || (bytes.as_ptr() as usize).is_multiple_of(dtype.size_of());
        if aligned {
            let storage = Storage::Mapped { map, start, len };
            return Ok(Tensor { storage, dtype, shape: shape.to_vec(), strides: contiguous_strides(shape) });
        }
        let storage = match dtype {
            DType::F32 => Storage::F32(bytemuck::pod_collect_to_vec(bytes)),
            DType::BF16 => Storage::BF16(bytemuck::pod_collect_to_vec(bytes)),
            DType::F16 => Storage::F16(bytemuck::pod_collect_to_vec(bytes)),
            _ => Storage::Bytes(bytes.to_vec()),
        };
        Self::from_storage(storage, dtype, shape)
    }

    pub fn device(&self) -> DeviceType {
        match &self.storage {
            #[cfg(feature = "cuda")]
            Storage::Cuda(c) => DeviceType::Cuda(c.dev.ordinal),
            _ => DeviceType::Cpu,
        }
    }

    /// True when the elements live in GPU memory.
    pub fn is_cuda(&self) -> bool {
        !self.device().is_cpu()
    }

    pub fn dtype(&self) -> DType {
        self.dtype
    }

    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    pub fn strides(&self) -> &[usize] {
        &self.strides
    }

    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }

    pub fn is_contiguous(&self) -> bool {
        self.strides == contiguous_strides(&self.shape)
    }

    /// True when the elements live in a memory-mapped file (not copied).
    pub fn is_mapped(&self) -> bool {
        self.storage.is_mapped()
    }

    /// Tells the OS that this tensor's window of a memory-mapped file will not be read again for
    /// a while (`MADV_DONTNEED` on the whole pages inside the window): they leave the process's
    /// resident memory, and a later read faults them back in from the file. For weights that
    /// loading copied into another layout (`model::cpu_repack`). No-op for other storage, off
    /// Unix, or where the OS refuses (the advice is a hint).
    pub(crate) fn release_mapped_pages(&self) {
        #[cfg(unix)]
        if let Storage::Mapped { map, start, len } = &self.storage {
            const PAGE: usize = 4096; // the map starts page-aligned; larger pages: EINVAL, ignored
            let (lo, hi) = (start.next_multiple_of(PAGE), (start + len) / PAGE * PAGE);
            if hi > lo {
                // SAFETY: `map` is a read-only file mapping (`Mmap`, never written through), so
                // its pages are clean copies of the file: dropping them changes no byte that any
                // live `&[u8]` view reads, the next access reads the same bytes back from the file.
                let _ = unsafe { map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, lo, hi - lo) };
            }
        }
    }

    /// The storage size in bytes (capacity, not just the current view).
    pub fn storage_bytes(&self) -> usize {
        self.storage.byte_len()
    }

    /// `(rows, cols)` of a 2-D tensor, or an op error naming `op`.
    pub fn dims2(&self, op: &'static str) -> Result<(usize, usize)> {
        match self.shape[..] {
            [r, c] => Ok((r, c)),
            _ => Err(Error::op(op, format!("expected a 2-D tensor, got shape {:?}", self.shape))),
        }
    }

    /// Changes the shape in place. The new element count may be smaller than the storage
    /// (a view of the leading elements) but never larger.
    pub fn reshape(&mut self, shape: &[usize]) -> Result<()> {
        let n: usize = shape.iter().product();
        let cap = self.dtype.elems_in(self.storage.byte_len());
        if n > cap {
            return Err(Error::InvalidArgument(format!(
                "cannot view {n} elements ({shape:?}) in a tensor with room for {cap}"
            )));
        }
        self.shape = shape.to_vec();
        self.strides = contiguous_strides(shape);
        Ok(())
    }

    /// Typed read access to the first `numel` elements of a host tensor (an error on a GPU).
    pub fn data(&self) -> Result<TensorData<'_>> {
        let n = self.numel();
        Ok(match (&self.storage, self.dtype) {
            (Storage::F32(v), _) => TensorData::F32(&v[..n]),
            (Storage::BF16(v), _) => TensorData::BF16(&v[..n]),
            (Storage::F16(v), _) => TensorData::F16(&v[..n]),
            (Storage::Bytes(v), dtype) => TensorData::Quant(
                dtype,
                &v[..dtype.elems_in(v.len()).min(n) / dtype.block_size() * dtype.block_bytes()],
            ),
            (Storage::Mapped { map, start, len }, dtype) => {
                // Alignment and bounds were checked in `from_mapped`; `cast_slice` re-checks both.
                let bytes = &map[*start..*start + dtype.bytes_for(n).unwrap_or(*len).min(*len)];
                match dtype {
                    DType::F32 => TensorData::F32(bytemuck::cast_slice(bytes)),
                    DType::BF16 => TensorData::BF16(bytemuck::cast_slice(bytes)),
                    DType::F16 => TensorData::F16(bytemuck::cast_slice(bytes)),
                    q => TensorData::Quant(q, bytes),
                }
            }
            #[cfg(feature = "cuda")]
            (Storage::Cuda(_), _) => {
                return Err(Error::InvalidArgument(format!(
                    "a {} tensor {:?} on {} has no host data (copy it with to_host)",
                    self.dtype,
                    self.shape,
                    self.device()
                )));
            }
        })
    }

    pub fn as_f32(&self) -> Result<&[f32]> {
        match self.data()? {
            TensorData::F32(s) => Ok(s),
            _ => Err(self.dtype_error(DType::F32)),
        }
    }

    pub fn as_bf16(&self) -> Result<&[bf16]> {
        match self.data()? {
            TensorData::BF16(s) => Ok(s),
            _ => Err(self.dtype_error(DType::BF16)),
        }
    }

    /// Mutable f32 access (owned host tensors only; mapped weights are read-only).
    pub fn as_f32_mut(&mut self) -> Result<&mut [f32]> {
        let n = self.numel();
        let kind = if self.storage.is_mapped() { "read-only mapped" } else { "owned" };
        let kind = if self.is_cuda() { "device" } else { kind };
        let dtype = self.dtype;
        match &mut self.storage {
            Storage::F32(v) => Ok(&mut v[..n]),
            _ => Err(Error::InvalidArgument(format!("expected a writable f32 tensor, got {kind} {dtype}"))),
        }
    }

    /// A new tensor holding rows `start..start + n` of a 2-D tensor (same dtype and device).
    pub fn copy_rows(&self, start: usize, n: usize) -> Result<Tensor> {
        let (rows, cols) = self.dims2("copy_rows")?;
        if start + n > rows {
            return Err(Error::InvalidArgument(format!("rows {start}..{} of a {rows}-row tensor", start + n)));
        }
        let (a, b) = (start * cols, (start + n) * cols);
        #[cfg(feature = "cuda")]
        if let Storage::Cuda(src) = &self.storage {
            let mut out = Tensor::zeros_on(&[n, cols], self.dtype, self.device())?;
            out.cuda_storage_mut()?.copy_from(0, src, a, b - a)?;
            return Ok(out);
        }
        match self.data()? {
            TensorData::F32(s) => Tensor::from_f32(&[n, cols], s[a..b].to_vec()),
            TensorData::BF16(s) => Tensor::from_bf16(&[n, cols], s[a..b].to_vec()),
            TensorData::F16(s) => Tensor::from_f16(&[n, cols], s[a..b].to_vec()),
            TensorData::Quant(d, bytes) => {
                let (ba, bb) = (a / d.block_size() * d.block_bytes(), b / d.block_size() * d.block_bytes());
                Tensor::from_quantized(&[n, cols], d, bytes[ba..bb].to_vec())
            }
        }
    }

    /// All elements widened to f32 (a copy; for tests and small tensors). Device tensors are
    /// downloaded first.
    pub fn to_f32_vec(&self) -> Result<Vec<f32>> {
        if self.is_cuda() {
            return self.to_host()?.to_f32_vec();
        }
        let d = self.data()?;
        let mut out = vec![0.0; d.len()];
        d.copy_to_f32(0, &mut out)?;
        Ok(out)
    }

    /// A zero-filled tensor on `device` (host tensors for `Cpu`).
    pub fn zeros_on(shape: &[usize], dtype: DType, device: DeviceType) -> Result<Self> {
        match device {
            DeviceType::Cpu => Ok(Self::zeros(shape, dtype)),
            #[cfg(feature = "cuda")]
            DeviceType::Cuda(n) => {
                let dev = crate::cuda::device(n)?;
                let storage = Storage::Cuda(crate::cuda::CudaStorage::zeros(&dev, dtype, shape.iter().product())?);
                Ok(Tensor { storage, dtype, shape: shape.to_vec(), strides: contiguous_strides(shape) })
            }
            #[cfg(not(feature = "cuda"))]
            DeviceType::Cuda(_) => Err(no_cuda(device)),
        }
    }

    /// A copy on `device` in `dtype` (on CUDA f32 or bf16; other dtypes are converted once).
    pub fn to_device_as(&self, device: DeviceType, dtype: DType) -> Result<Self> {
        match device {
            DeviceType::Cpu => {
                let host = if self.is_cuda() { self.to_host()? } else { self.clone() };
                if host.dtype == dtype {
                    return Ok(host);
                }
                let v = host.to_f32_vec()?;
                match dtype {
                    DType::F32 => Tensor::from_f32(&self.shape, v),
                    DType::BF16 => Tensor::from_bf16(&self.shape, v.into_iter().map(bf16::from_f32).collect()),
                    DType::F16 => Tensor::from_f16(&self.shape, v.into_iter().map(f16::from_f32).collect()),
                    q => Err(Error::InvalidArgument(format!(
                        "converting a {} tensor to {q} needs the quantizer (tensor::quant), not to_device_as",
                        host.dtype
                    ))),
                }
            }
            #[cfg(feature = "cuda")]
            DeviceType::Cuda(n) => {
                if dtype == DType::F16 {
                    return Err(Error::InvalidArgument("CUDA tensors are f32, bf16 or block-quantized".into()));
                }
                let host = if self.is_cuda() { self.to_host()? } else { self.clone() };
                let dev = crate::cuda::device(n)?;
                let storage = match host.data()? {
                    TensorData::Quant(d, bytes) if d == dtype => {
                        Storage::Cuda(crate::cuda::CudaStorage::upload_quant(&dev, d, bytes)?)
                    }
                    _ if dtype.is_quantized() => {
                        return Err(Error::InvalidArgument(format!(
                            "a {} tensor cannot be uploaded as {dtype} (quantize it on the host first)",
                            host.dtype
                        )));
                    }
                    data => Storage::Cuda(crate::cuda::CudaStorage::upload(&dev, data, dtype == DType::F32)?),
                };
                Ok(Tensor { storage, dtype, shape: self.shape.clone(), strides: self.strides.clone() })
            }
            #[cfg(not(feature = "cuda"))]
            DeviceType::Cuda(_) => Err(no_cuda(device)),
        }
    }

    /// A host copy (device tensors are downloaded; host tensors are cloned).
    pub fn to_host(&self) -> Result<Self> {
        match &self.storage {
            #[cfg(feature = "cuda")]
            Storage::Cuda(c) => {
                let storage = c.download(self.numel())?;
                Ok(Tensor { storage, dtype: self.dtype, shape: self.shape.clone(), strides: self.strides.clone() })
            }
            _ => Ok(self.clone()),
        }
    }

    /// The device storage of a CUDA tensor.
    #[cfg(feature = "cuda")]
    pub fn cuda_storage(&self) -> Result<&crate::cuda::CudaStorage> {
        match &self.storage {
            Storage::Cuda(c) => Ok(c),
            _ => Err(Error::InvalidArgument(format!("expected a CUDA tensor, got a host {} tensor", self.dtype))),
        }
    }

    /// The device storage of a CUDA tensor, writable.
    #[cfg(feature = "cuda")]
    pub fn cuda_storage_mut(&mut self) -> Result<&mut crate::cuda::CudaStorage> {
        let dtype = self.dtype;
        match &mut self.storage {
            Storage::Cuda(c) => Ok(c),
            _ => Err(Error::InvalidArgument(format!("expected a CUDA tensor, got a host {dtype} tensor"))),
        }
    }

    fn dtype_error(&self, want: DType) -> Error {
        Error::InvalidArgument(format!("expected a {want} tensor, got {} with shape {:?}", self.dtype, self.shape))
    }
}

#[cfg(not(feature = "cuda"))]
fn no_cuda(device: DeviceType) -> Error {
    Error::DeviceUnavailable {
        device: device.to_string(),
        msg: "this build has no CUDA support (rebuild with `--features cuda`)".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reshape_views_leading_elements() {
        let mut t = Tensor::from_f32(&[2, 3], vec![1., 2., 3., 4., 5., 6.]).unwrap();
        assert_eq!(t.strides(), &[3, 1]);
        t.reshape(&[1, 3]).unwrap();
        assert_eq!(t.as_f32().unwrap(), &[1., 2., 3.]);
        assert!(t.reshape(&[3, 3]).is_err());
        assert!(Tensor::from_f32(&[2, 2], vec![0.0; 3]).is_err());
    }

    #[test]
    fn widen_bf16() {
        let t = Tensor::from_bf16(&[2], vec![bf16::from_f32(1.5), bf16::from_f32(-2.0)]).unwrap();
        assert_eq!(t.to_f32_vec().unwrap(), vec![1.5, -2.0]);
        assert!(t.to_device_as(DeviceType::Cpu, DType::F32).unwrap().as_f32().is_ok());
        assert!(t.as_f32().is_err());
    }
}
