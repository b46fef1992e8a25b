//! [`NcclComm`]: the [`Communicator`] over NVIDIA NCCL (feature `nccl`), one GPU per rank, its
//! collectives queued on the device's stream after the kernels that produce their input.

use cudarc::nccl::safe::{Comm, Id, ReduceOp};

use super::Communicator;
use crate::base::{DeviceType, Error, Result};
use crate::cuda::CudaData;
use crate::tensor::Tensor;

/// One rank of an NCCL communicator on `cuda:ordinal`.
#[derive(Debug)]
pub struct NcclComm {
    comm: Comm,
    ordinal: usize,
}

// SAFETY: an NCCL communicator is not bound to the thread that created it, only to its device
// (whose context `crate::cuda::CudaDevice` binds before use); NCCL requires that one
// communicator is not used by two threads at once, which holds because `NcclComm` is not
// `Sync` (every method takes `&self`, and `&NcclComm` cannot cross threads).
unsafe impl Send for NcclComm {}

fn unavailable(device: &str, msg: String) -> Error {
    Error::DeviceUnavailable { device: device.into(), msg }
}

impl NcclComm {
    /// A fresh group id (rank 0 makes it; every rank of the group joins with the same one).
    /// Loading libnccl is done here: a missing library is an error, not a panic.
    pub fn unique_id() -> Result<Id> {
        let got = std::panic::catch_unwind(Id::new).map_err(|_| {
            unavailable(
                "nccl",
                "libnccl.so could not be loaded: install the nvidia-nccl-cu13 wheel (scripts/install-cuda-toolkit.sh \
                 links libnccl.so next to its libnccl.so.2) and put that directory on LD_LIBRARY_PATH"
                    .into(),
            )
        })?;
        got.map_err(|e| unavailable("nccl", format!("ncclGetUniqueId: {e:?}")))
    }

    /// Joins group `id` as `rank` of `world_size` on `cuda:ordinal`, using that device's stream.
    /// Blocks until every rank has joined (call it from each rank's thread concurrently).
    pub fn new(ordinal: usize, rank: usize, world_size: usize, id: Id) -> Result<Self> {
        let dev = crate::cuda::device(ordinal)?;
        dev.bind()?;
        let comm = Comm::from_rank(dev.stream.clone(), rank, world_size, id)
            .map_err(|e| unavailable(&format!("cuda:{ordinal}"), format!("ncclCommInitRank: {e:?}")))?;
        Ok(NcclComm { comm, ordinal })
    }
}

impl Communicator for NcclComm {
    fn rank(&self) -> usize {
        self.comm.rank()
    }

    fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    /// `ncclAllReduce` (sum) in place over the tensor's first `numel` elements (f32 or bf16),
    /// queued on the device's stream.
    fn all_reduce_sum(&self, t: &mut Tensor) -> Result<()> {
        let n = t.numel();
        let s = t.cuda_storage_mut().map_err(|e| Error::op("all_reduce", e.to_string()))?;
        if s.dev.ordinal != self.ordinal {
            return Err(Error::op(
                "all_reduce",
                format!("tensor on cuda:{}, communicator on cuda:{}", s.dev.ordinal, self.ordinal),
            ));
        }
        let status = match &mut s.data {
            CudaData::F32(d) => self.comm.all_reduce_in_place(&mut d.slice_mut(..n), &ReduceOp::Sum),
            CudaData::BF16(d) => self.comm.all_reduce_in_place(&mut d.slice_mut(..n), &ReduceOp::Sum),
            CudaData::Quant(d, _) => return Err(Error::op("all_reduce", format!("cannot sum {d} blocks"))),
        };
        status
            .map(|_| ())
            .map_err(|e| Error::op("all_reduce", format!("ncclAllReduce on cuda:{}: {e:?}", self.ordinal)))
    }

    /// Nothing to do: NCCL reports errors from the calls themselves, and a rank never waits on
    /// the host inside a collective (the kernels wait on the device).
    fn abort(&self, _reason: &str) {}
}

/// One NCCL communicator constructor per rank; the ranks must be distinct GPUs (NCCL does not
/// put two ranks of a group on one device).
pub(crate) fn makers(devices: &[DeviceType]) -> Result<Vec<super::load::MakeComm>> {
    let mut ordinals = Vec::with_capacity(devices.len());
    for d in devices {
        match d {
            DeviceType::Cuda(k) if !ordinals.contains(k) => ordinals.push(*k),
            other => {
                return Err(Error::InvalidArgument(format!(
                    "NCCL ranks must be distinct GPUs, got {other} in {devices:?} (CommKind::Cpu shares a device)"
                )));
            }
        }
    }
    let id = NcclComm::unique_id()?;
    let n = ordinals.len();
    Ok(ordinals
        .into_iter()
        .enumerate()
        .map(|(rank, k)| {
            Box::new(move || NcclComm::new(k, rank, n, id).map(|c| Box::new(c) as Box<dyn Communicator>))
                as super::load::MakeComm
        })
        .collect())
}
