//! Loading a model as a tensor-parallel group: one thread per rank (rank 0 is the caller's),
//! each with its shard of the weights, its KV heads' cache, its workspace and communicator.

use std::path::Path;
use std::sync::{Arc, mpsc};
use std::time::Instant;

use super::tp::{Job, TpLink, Worker, serve};
use super::{CommKind, Communicator, CpuComm, ShardPlan};
use crate::base::{DeviceType, Error, Result};
use crate::model::config::LlamaConfig;
use crate::model::llama3::{Llama3, LoadOptions, ModelMeta, ModelParts, Weights, check_device};

/// Builds one rank's communicator on the rank's own thread (NCCL joins its group there).
pub(crate) type MakeComm = Box<dyn FnOnce() -> Result<Box<dyn Communicator>> + Send>;

impl Llama3 {
    /// Loads `path` split over `world_size` ranks (Megatron-style, see [`crate::parallel`]):
    /// on the CPU `world_size` threads joined by [`CpuComm`]; on `cuda:k` the GPUs
    /// `k..k + world_size`, one thread each with its own stream and NCCL communicator (the
    /// `nccl` feature). The returned model is rank 0: generate, chat and score as usual. CUDA
    /// ranks run the eager path (no CUDA graphs; sampling on the host).
    pub fn load_tensor_parallel(path: impl AsRef<Path>, opts: LoadOptions, world_size: usize) -> Result<Self> {
        let (devices, kind) = match opts.device {
            DeviceType::Cpu => (vec![DeviceType::Cpu; world_size], CommKind::Cpu),
            DeviceType::Cuda(k) => ((k..k + world_size).map(DeviceType::Cuda).collect(), CommKind::Nccl),
        };
        Self::load_tensor_parallel_on(path, opts, &devices, kind)
    }

    /// [`Llama3::load_tensor_parallel`] with rank `r` on `devices[r]` and the communicator of
    /// `kind` (`opts.device` is ignored). GPU ranks must be distinct devices; [`CommKind::Cpu`]
    /// also joins GPU ranks (all-reduce staged through the host: slow, but no NCCL needed).
    pub fn load_tensor_parallel_on(
        path: impl AsRef<Path>,
        opts: LoadOptions,
        devices: &[DeviceType],
        kind: CommKind,
    ) -> Result<Self> {
        let t0 = Instant::now();
        let n = devices.len();
        let first = *devices.first().ok_or(super::ShardError::EmptyWorld)?;
        // Ranks on one GPU would share its single stream from several threads, where an op of
        // several kernels (or a scratch buffer) could interleave with another rank's.
        if let Some(d) =
            devices.iter().enumerate().find_map(|(i, d)| (!d.is_cpu() && devices[..i].contains(d)).then_some(d))
        {
            return Err(Error::InvalidArgument(format!(
                "tensor-parallel ranks need distinct GPUs; {d} appears twice in {devices:?}"
            )));
        }
        for &d in devices {
            check_device(d).map_err(|e| match e {
                Error::DeviceUnavailable { device, msg } => Error::DeviceUnavailable {
                    device,
                    msg: format!("tensor parallelism over {n} ranks needs {devices:?}: {msg}"),
                },
                e => e,
            })?;
        }
        let (meta, store) = ModelParts::open(path.as_ref(), &LoadOptions { device: first, ..opts.clone() })?;
        let plan = ShardPlan::new(&meta.config, n)?;
        let mut makers = comm_makers(kind, devices)?.into_iter();
        let make0 = makers.next().ok_or(super::ShardError::EmptyWorld)?;
        let full = Arc::new(Weights::load(store.as_ref(), &meta.config)?);
        let local = plan.local_config(&meta.config);
        let shard0 = plan.shard(&full, 0)?; // a layout error surfaces before any thread starts
        let mut workers = Vec::with_capacity(n.saturating_sub(1));
        let mut ready = Vec::with_capacity(n.saturating_sub(1));
        for (rank, make) in (1..n).zip(makers) {
            let ro = LoadOptions { device: devices[rank], progress: false, ..opts.clone() };
            let spec = RankSpec { rank, plan, meta: meta.clone(), local: local.clone(), opts: ro, t0 };
            let (worker, ready_rx) = spawn_rank(spec, make, full.clone())?;
            workers.push(worker);
            ready.push(ready_rx);
        }
        drop(full);
        // If this fails, the workers' handles are dropped unjoined: an NCCL worker may still
        // wait for rank 0 to join its group.
        let link = TpLink { comm: make0()?, workers };
        let opts0 = LoadOptions { device: first, ..opts };
        let model = Llama3::assemble(meta, shard0, Some(store), &local, Some(link), &opts0, t0)?;
        for (r, rx) in ready.into_iter().enumerate() {
            rx.recv().map_err(|_| Error::op("tensor_parallel", format!("rank {} exited while loading", r + 1)))??;
        }
        Ok(model)
    }
}

/// What a worker rank builds its model from.
struct RankSpec {
    rank: usize,
    plan: ShardPlan,
    meta: ModelMeta,
    local: LlamaConfig,
    opts: LoadOptions,
    t0: Instant,
}

/// Starts rank `spec.rank`'s thread: communicator, shard, model, then [`serve`]. The receiver
/// reports whether the model was built.
fn spawn_rank(spec: RankSpec, make: MakeComm, full: Arc<Weights>) -> Result<(Worker, mpsc::Receiver<Result<()>>)> {
    let (jobs_tx, jobs_rx) = mpsc::channel::<Job>();
    let (done_tx, done_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel();
    let rank = spec.rank;
    let handle = std::thread::Builder::new()
        .name(format!("tp-rank-{rank}"))
        .spawn(move || {
            let built = build_rank(spec, make, full);
            match built {
                Ok(model) => {
                    if ready_tx.send(Ok(())).is_ok() {
                        serve(model, jobs_rx, done_tx);
                    }
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                }
            }
        })
        .map_err(|e| Error::op("tensor_parallel", format!("cannot start rank {rank}'s thread: {e}")))?;
    Ok((Worker { rank, jobs: jobs_tx, done: done_rx, handle }, ready_rx))
}

fn build_rank(spec: RankSpec, make: MakeComm, full: Arc<Weights>) -> Result<Llama3> {
    #[cfg(feature = "cuda")]
    if let DeviceType::Cuda(k) = spec.opts.device {
        crate::cuda::device(k)?.bind()?; // this thread's kernels and NCCL calls use device k
    }
    let comm = make()?;
    let shard = spec.plan.shard(&full, spec.rank);
    drop(full);
    let link = TpLink { comm, workers: Vec::new() };
    // On a shard error the link (and its communicator) is dropped here; rank 0 reports it.
    Llama3::assemble(spec.meta, shard?, None, &spec.local, Some(link), &spec.opts, spec.t0)
}

/// One communicator constructor per rank.
fn comm_makers(kind: CommKind, devices: &[DeviceType]) -> Result<Vec<MakeComm>> {
    match kind {
        CommKind::Cpu => Ok(CpuComm::group(devices.len())
            .into_iter()
            .map(|c| Box::new(move || Ok(Box::new(c) as Box<dyn Communicator>)) as MakeComm)
            .collect()),
        #[cfg(feature = "nccl")]
        CommKind::Nccl => super::nccl::makers(devices),
        #[cfg(not(feature = "nccl"))]
        CommKind::Nccl => Err(Error::DeviceUnavailable {
            device: format!("{devices:?}"),
            msg: "tensor parallelism on GPUs needs NCCL: rebuild with `--features nccl`".into(),
        }),
    }
}
