//! The tensor-parallel group at run time: rank 0 (the [`Llama3`] the caller holds) hands every
//! chunk of ids to the other ranks' threads, runs its own shard, and collects their results.

use std::sync::mpsc::{Receiver, Sender};
use std::thread::JoinHandle;

use super::Communicator;
use crate::base::{Error, Result};
use crate::model::llama3::Llama3;
use crate::op::{Precision, add::add_inplace, matmul::matmul_with_precision};
use crate::tensor::Tensor;

/// Which [`Communicator`] connects the ranks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CommKind {
    /// [`super::CpuComm`]: threads of this process (host tensors; device tensors are staged
    /// through the host).
    Cpu,
    /// NVIDIA NCCL, one distinct GPU per rank (needs the `nccl` feature).
    Nccl,
}

/// `x += Σ_ranks a_r · w_rᵀ`: this rank's partial product into `scratch` (`[rows, n]`, the
/// activation dtype), summed over the group in place, then added to the f32 residual `x`
/// (`[rows, n]`). `a`: `[rows, k / N]`, `w`: the row-parallel shard `[n, k / N]`.
pub(crate) fn reduce_add(
    comm: &dyn Communicator,
    a: &Tensor,
    w: &Tensor,
    scratch: &mut Tensor,
    x: &mut Tensor,
    precision: Precision,
) -> Result<()> {
    matmul_with_precision(a, w, scratch, precision)?; // [rows, n] partial
    comm.all_reduce_sum(scratch)?; // [rows, n] full
    #[cfg(feature = "cuda")]
    if x.is_cuda() {
        return crate::cuda::fused::add_bf16_to_f32(x, scratch);
    }
    add_inplace(x, scratch)
}

/// A chunk for a worker rank: ids at positions `pos0..` of its own KV cache.
pub(crate) struct Job {
    pub ids: Vec<u32>,
    pub pos0: usize,
}

/// Rank 0's handle on one worker rank's thread.
pub(crate) struct Worker {
    pub rank: usize,
    pub jobs: Sender<Job>,
    pub done: Receiver<Result<()>>,
    pub handle: JoinHandle<()>,
}

/// A rank's link to its group: its communicator and, on rank 0, the other ranks' threads.
pub(crate) struct TpLink {
    pub comm: Box<dyn Communicator>,
    pub workers: Vec<Worker>,
}

fn gone(rank: usize) -> Error {
    Error::op("tensor_parallel", format!("rank {rank}'s thread has exited"))
}

impl TpLink {
    pub fn world_size(&self) -> usize {
        self.comm.world_size()
    }

    /// Runs `f` (this rank's layers) with the communicator. On rank 0 the other ranks first get
    /// the same chunk (`own_pos`: its start in the model's own KV cache; `None`, a serving
    /// engine's paged cache, is not supported with several ranks) and their results are
    /// collected after. A failing rank aborts the group so no rank waits forever.
    pub fn run(
        &self,
        ids: &[u32],
        own_pos: Option<usize>,
        f: impl FnOnce(&dyn Communicator) -> Result<()>,
    ) -> Result<()> {
        let mut sent = 0;
        if !self.workers.is_empty() {
            let Some(pos0) = own_pos else {
                return Err(Error::InvalidArgument(
                    "a paged KV cache (serving engine) is not supported with tensor parallelism".into(),
                ));
            };
            for w in &self.workers {
                if w.jobs.send(Job { ids: ids.to_vec(), pos0 }).is_err() {
                    break;
                }
                sent += 1;
            }
        }
        let mut out =
            if sent < self.workers.len() { Err(gone(self.workers[sent].rank)) } else { f(self.comm.as_ref()) };
        if let Err(e) = &out {
            self.comm.abort(&e.to_string());
        }
        for w in &self.workers[..sent] {
            let r = w.done.recv().unwrap_or_else(|_| Err(gone(w.rank)));
            if let (Ok(()), Err(e)) = (&out, r) {
                self.comm.abort(&e.to_string());
                out = Err(e);
            }
        }
        out
    }
}

impl Drop for TpLink {
    /// Closes the workers' job channels and waits for their threads to end.
    fn drop(&mut self) {
        let handles: Vec<JoinHandle<()>> = std::mem::take(&mut self.workers).into_iter().map(|w| w.handle).collect();
        for h in handles {
            let _ = h.join();
        }
    }
}

/// A worker rank's thread body after its model is built: run chunks until rank 0 hangs up.
pub(crate) fn serve(mut model: Llama3, jobs: Receiver<Job>, done: Sender<Result<()>>) {
    while let Ok(job) = jobs.recv() {
        if done.send(model.forward_chunk(&job.ids, job.pos0)).is_err() {
            break;
        }
    }
}

impl Llama3 {
    /// Ranks in this model's tensor-parallel group (1 without tensor parallelism).
    pub fn tensor_parallel_size(&self) -> usize {
        self.tp.as_ref().map_or(1, TpLink::world_size)
    }
}
