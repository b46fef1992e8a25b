//! One CUDA device: its context, the single stream every op runs on, the cuBLASLt handle and
//! scratch buffers. Devices are created once per ordinal and shared.

use std::sync::{Arc, Mutex, OnceLock};

use cudarc::cublaslt::CudaBlasLT;
use cudarc::driver::{CudaContext, CudaEvent, CudaSlice, CudaStream, DevicePtr, DriverError, PinnedHostSlice, sys};

use crate::base::{Error, Result};

/// A CUDA device and what every op on it needs.
pub struct CudaDevice {
    pub ordinal: usize,
    pub ctx: Arc<CudaContext>,
    /// The one stream: ops never synchronise, so everything stays ordered on it.
    pub stream: Arc<CudaStream>,
    pub blas: CudaBlasLT,
    /// f32 scratch for kernels that need it (split-KV attention, argmax). Growing it moves it:
    /// graphs captured before hold stale pointers, so they compare [`Self::scratch_epoch`].
    scratch: Mutex<Option<CudaSlice<f32>>>,
    /// Bumped whenever `scratch` is reallocated.
    scratch_epoch: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for CudaDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CudaDevice({})", self.ordinal)
    }
}

/// An i32 value (or small array) in device memory: positions and token ids read by kernels, so
/// that a captured CUDA graph can be replayed with new values.
pub struct DeviceI32 {
    pub data: CudaSlice<i32>,
    pub dev: Arc<CudaDevice>,
}

impl std::fmt::Debug for DeviceI32 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DeviceI32(len {})", self.data.len())
    }
}

impl DeviceI32 {
    pub fn new(dev: &Arc<CudaDevice>, values: &[i32]) -> Result<Self> {
        let data = dev.stream.clone_htod(values).map_err(|e| driver_err("upload", e))?;
        Ok(DeviceI32 { data, dev: dev.clone() })
    }

    /// Overwrites the first `values.len()` entries (stream-ordered copy).
    pub fn set(&mut self, values: &[i32]) -> Result<()> {
        if values.len() > self.data.len() {
            return Err(Error::InvalidArgument(format!(
                "{} values into a buffer of {}",
                values.len(),
                self.data.len()
            )));
        }
        let mut view = self.data.slice_mut(..values.len());
        self.dev.stream.memcpy_htod(values, &mut view).map_err(|e| driver_err("upload", e))
    }

    /// The first value, copied to the host (synchronises the stream).
    pub fn first(&self) -> Result<i32> {
        let v = self.dev.stream.clone_dtoh(&self.data.slice(..1)).map_err(|e| driver_err("download", e))?;
        v.first().copied().ok_or_else(|| Error::op("download", "empty device buffer"))
    }

    pub fn ptr(&self) -> *const i32 {
        let (p, _sync) = self.data.device_ptr(&self.dev.stream);
        p as *const i32
    }
}

/// A driver error as the crate's error, naming what was being done.
pub fn driver_err(what: &str, e: DriverError) -> Error {
    let msg = format!("{what}: {e:?}");
    if msg.contains("OUT_OF_MEMORY") {
        Error::OutOfMemory { device: "cuda".into(), msg }
    } else {
        Error::DeviceUnavailable { device: "cuda".into(), msg }
    }
}

static DEVICES: OnceLock<Mutex<Vec<Option<Arc<CudaDevice>>>>> = OnceLock::new();

/// The shared device `ordinal`, created on first use.
pub fn device(ordinal: usize) -> Result<Arc<CudaDevice>> {
    let reg = DEVICES.get_or_init(|| Mutex::new(Vec::new()));
    let mut reg = reg.lock().map_err(|_| Error::DeviceUnavailable {
        device: format!("cuda:{ordinal}"),
        msg: "device registry poisoned by an earlier panic".into(),
    })?;
    if let Some(Some(d)) = reg.get(ordinal) {
        return Ok(d.clone());
    }
    let unavailable = |msg: String| Error::DeviceUnavailable { device: format!("cuda:{ordinal}"), msg };
    let count = std::panic::catch_unwind(CudaContext::device_count)
        .map_err(|_| unavailable("the CUDA driver library (libcuda.so) could not be loaded".into()))?
        .map_err(|e| unavailable(format!("{e:?}")))?;
    if ordinal >= count.max(0) as usize {
        return Err(unavailable(format!("{count} CUDA device(s) visible")));
    }
    let ctx = CudaContext::new(ordinal).map_err(|e| unavailable(format!("{e:?}")))?;
    // SAFETY: every op of this crate runs on the device's single stream, in order, so cudarc's
    // cross-stream event tracking is unnecessary (and would add events inside captured graphs).
    unsafe { ctx.disable_event_tracking() };
    let stream = ctx.new_stream().map_err(|e| unavailable(format!("stream: {e:?}")))?;
    let blas = CudaBlasLT::new(stream.clone()).map_err(|e| unavailable(format!("cuBLASLt: {e:?}")))?;
    let dev = Arc::new(CudaDevice { ordinal, ctx, stream, blas, scratch: Mutex::new(None), scratch_epoch: 0.into() });
    if reg.len() <= ordinal {
        reg.resize(ordinal + 1, None);
    }
    reg[ordinal] = Some(dev.clone());
    Ok(dev)
}

impl CudaDevice {
    /// Makes this device's context current on the calling thread (kernels launched through the
    /// runtime API use the current context).
    pub fn bind(&self) -> Result<()> {
        self.ctx.bind_to_thread().map_err(|e| driver_err("bind context", e))
    }

    /// A device pointer to at least `bytes` of f32 scratch; grows (reallocates) when needed.
    pub fn scratch(&self, bytes: usize) -> Result<*mut f32> {
        let mut s = self.scratch.lock().map_err(|_| Error::op("scratch", "poisoned"))?;
        let need = bytes.div_ceil(4).max(1);
        if s.as_ref().is_none_or(|b| b.len() < need) {
            *s = Some(self.stream.alloc_zeros::<f32>(need).map_err(|e| driver_err("scratch alloc", e))?);
            self.scratch_epoch.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        }
        let buf = s.as_ref().ok_or_else(|| Error::op("scratch", "missing buffer"))?;
        let (p, _sync) = buf.device_ptr(&self.stream);
        Ok(p as *mut f32)
    }

    /// Changes whenever the scratch buffer moves (a CUDA graph captured under another epoch must
    /// be captured again).
    pub fn scratch_epoch(&self) -> u64 {
        self.scratch_epoch.load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(|e| driver_err("synchronize", e))
    }

    /// The GPU's name as the driver reports it (e.g. "NVIDIA H200").
    pub fn name(&self) -> Result<String> {
        self.ctx.name().map_err(|e| driver_err("device name", e))
    }

    /// Theoretical DRAM bandwidth in bytes/s: 2 transfers per memory clock times the bus width
    /// (H100 SXM: 3.35e12, H200: 4.8e12). Benchmarks report their bandwidth against it.
    pub fn peak_bandwidth(&self) -> Result<f64> {
        use cudarc::driver::sys::CUdevice_attribute as A;
        let get = |a, what| self.ctx.attribute(a).map_err(|e| driver_err(what, e));
        let khz = get(A::CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE, "memory clock")? as f64;
        let bits = get(A::CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH, "memory bus width")? as f64;
        Ok(2.0 * khz * 1e3 * bits / 8.0)
    }

    /// Compute capability (major, minor), e.g. (9, 0) for an H100 / H200.
    pub fn compute_capability(&self) -> Result<(i32, i32)> {
        use cudarc::driver::sys::CUdevice_attribute as A;
        let get = |a, what| self.ctx.attribute(a).map_err(|e| driver_err(what, e));
        Ok((
            get(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, "compute capability")?,
            get(A::CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, "compute capability")?,
        ))
    }

    /// Free and total device memory in bytes.
    pub fn memory_info(&self) -> Result<(usize, usize)> {
        self.bind()?;
        cudarc::driver::result::mem_get_info().map_err(|e| driver_err("mem_get_info", e))
    }
}

/// Times work queued on a device's stream with CUDA events (benchmarks without Nsight).
pub struct EventTimer {
    start: CudaEvent,
    stop: CudaEvent,
    dev: Arc<CudaDevice>,
}

impl EventTimer {
    pub fn new(dev: &Arc<CudaDevice>) -> Result<Self> {
        let ev = || dev.ctx.new_event(Some(sys::CUevent_flags::CU_EVENT_DEFAULT)).map_err(|e| driver_err("event", e));
        Ok(EventTimer { start: ev()?, stop: ev()?, dev: dev.clone() })
    }

    /// Marks the start on the stream.
    pub fn start(&self) -> Result<()> {
        self.start.record(&self.dev.stream).map_err(|e| driver_err("event record", e))
    }

    /// Marks the end, waits for it and returns the milliseconds between the two marks.
    pub fn stop_ms(&self) -> Result<f32> {
        self.stop.record(&self.dev.stream).map_err(|e| driver_err("event record", e))?;
        self.stop.synchronize().map_err(|e| driver_err("event sync", e))?;
        self.start.elapsed_ms(&self.stop).map_err(|e| driver_err("event elapsed", e))
    }
}

/// One page-locked host i32 (not write-combined: the host reads it) that kernels on `dev` may
/// write, and its device address.
pub fn mapped_host_i32(dev: &CudaDevice) -> Result<(PinnedHostSlice<i32>, sys::CUdeviceptr)> {
    // SAFETY: the slot's contents are undefined until written; callers read a slot only after
    // waiting for work that wrote it.
    let mut slot = unsafe { dev.ctx.alloc_pinned_with_flags::<i32>(1, sys::CU_MEMHOSTALLOC_DEVICEMAP) }
        .map_err(|e| driver_err("pinned host alloc", e))?;
    let host = slot.as_mut_ptr().map_err(|e| driver_err("pinned host alloc", e))?;
    let mut dptr: sys::CUdeviceptr = 0;
    // SAFETY: `host` is a live page-locked allocation made with CU_MEMHOSTALLOC_DEVICEMAP on this
    // device's context (bound by alloc_pinned_with_flags); dptr is a valid out-pointer.
    let st = unsafe { sys::cuMemHostGetDevicePointer_v2(&mut dptr, host as *mut std::ffi::c_void, 0) };
    st.result().map_err(|e| driver_err("mapped host pointer", e))?;
    Ok((slot, dptr))
}
