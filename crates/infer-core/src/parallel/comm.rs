//! Collective communication between the ranks of a tensor-parallel group: the
//! [`Communicator`] trait and its in-process CPU implementation ([`CpuComm`], one per thread).

use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use crate::base::{Error, Result};
use crate::tensor::Tensor;

const NAME: &str = "all_reduce";

/// One rank's handle on a group of `world_size` ranks.
pub trait Communicator: Send {
    /// This rank, `0..world_size`.
    fn rank(&self) -> usize;

    fn world_size(&self) -> usize;

    /// Replaces `t` (its `numel` leading elements) by the element-wise sum of every rank's `t`,
    /// in place; every rank must call it with the same shape, in the same order of calls.
    fn all_reduce_sum(&self, t: &mut Tensor) -> Result<()>;

    /// Marks the group failed (this rank hit an error) so ranks waiting in a collective return an
    /// error instead of waiting forever. The group is unusable afterwards.
    fn abort(&self, reason: &str);
}

/// A barrier that can be aborted: waiting ranks wake up with the reason.
#[derive(Debug)]
struct Barrier {
    n: usize,
    state: Mutex<BarrierState>,
    cv: Condvar,
}

#[derive(Debug, Default)]
struct BarrierState {
    arrived: usize,
    generation: u64,
    aborted: Option<String>,
}

fn aborted(rank: usize, reason: &str) -> Error {
    Error::op(NAME, format!("rank {rank}: the tensor-parallel group was aborted: {reason}"))
}

fn poisoned(rank: usize) -> Error {
    Error::op(NAME, format!("rank {rank}: a rank panicked inside a collective"))
}

impl Barrier {
    fn lock(&self, rank: usize) -> Result<MutexGuard<'_, BarrierState>> {
        self.state.lock().map_err(|_| poisoned(rank))
    }

    fn wait(&self, rank: usize) -> Result<()> {
        let mut s = self.lock(rank)?;
        if let Some(r) = &s.aborted {
            return Err(aborted(rank, r));
        }
        s.arrived += 1;
        if s.arrived == self.n {
            s.arrived = 0;
            s.generation += 1;
            self.cv.notify_all();
            return Ok(());
        }
        let generation = s.generation;
        while s.generation == generation && s.aborted.is_none() {
            s = self.cv.wait(s).map_err(|_| poisoned(rank))?;
        }
        match (&s.aborted, s.generation == generation) {
            (Some(r), true) => Err(aborted(rank, r)),
            _ => Ok(()),
        }
    }

    fn abort(&self, reason: &str) {
        // A poisoned lock still holds the state; record the abort either way.
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        s.aborted.get_or_insert_with(|| reason.to_string());
        self.cv.notify_all();
    }
}

#[derive(Debug)]
struct Shared {
    /// Each rank's contribution to the current all-reduce.
    slots: Vec<Mutex<Vec<f32>>>,
    barrier: Barrier,
}

/// The in-process CPU communicator: ranks are threads of one process sharing a buffer per
/// rank. An all-reduce copies this rank's tensor into its slot, waits for every rank, then
/// every rank sums the slots in rank order 0, 1, .., N-1 (so the result is bit-identical on
/// every rank and independent of thread timing), and waits again before the slots are reused.
/// Host f32 tensors; with the `cuda` feature also device tensors (staged through the host: a
/// fallback without NCCL, not a fast path — GPUs use NCCL).
#[derive(Debug)]
pub struct CpuComm {
    rank: usize,
    shared: Arc<Shared>,
}

impl CpuComm {
    /// The `world_size` communicators of one group, rank `r` at index `r`.
    pub fn group(world_size: usize) -> Vec<CpuComm> {
        let shared = Arc::new(Shared {
            slots: (0..world_size).map(|_| Mutex::new(Vec::new())).collect(),
            barrier: Barrier { n: world_size, state: Mutex::new(BarrierState::default()), cv: Condvar::new() },
        });
        (0..world_size).map(|rank| CpuComm { rank, shared: shared.clone() }).collect()
    }

    /// The rank-ordered sum into `out` (`out.len()` elements of every slot).
    fn sum_slots(&self, out: &mut [f32]) -> Result<()> {
        for (r, slot) in self.shared.slots.iter().enumerate() {
            let s = slot.lock().map_err(|_| poisoned(self.rank))?;
            if s.len() != out.len() {
                return Err(Error::op(
                    NAME,
                    format!("rank {r} contributed {} elements, rank {} {}", s.len(), self.rank, out.len()),
                ));
            }
            if r == 0 {
                out.copy_from_slice(&s);
            } else {
                out.iter_mut().zip(s.iter()).for_each(|(o, v)| *o += v);
            }
        }
        Ok(())
    }

    /// The whole exchange on host values: contribute, wait, sum, wait.
    fn reduce_host(&self, values: &mut [f32]) -> Result<()> {
        {
            let mut slot = self.shared.slots[self.rank].lock().map_err(|_| poisoned(self.rank))?;
            slot.clear();
            slot.extend_from_slice(values);
        }
        self.shared.barrier.wait(self.rank)?;
        let summed = self.sum_slots(values);
        if let Err(e) = &summed {
            self.abort(&e.to_string());
        }
        // Every rank must have read every slot before any rank writes its next contribution.
        self.shared.barrier.wait(self.rank)?;
        summed
    }
}

impl Communicator for CpuComm {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.slots.len()
    }

    fn all_reduce_sum(&self, t: &mut Tensor) -> Result<()> {
        #[cfg(feature = "cuda")]
        if t.is_cuda() {
            return self.reduce_device(t);
        }
        if self.world_size() == 1 {
            return Ok(()); // the sum over one rank
        }
        self.reduce_host(t.as_f32_mut()?)
    }

    fn abort(&self, reason: &str) {
        self.shared.barrier.abort(&format!("rank {}: {reason}", self.rank));
    }
}

#[cfg(feature = "cuda")]
impl CpuComm {
    /// A device tensor: download, reduce in f32 on the host, round to the tensor's dtype and
    /// write it back over the first `numel` elements.
    fn reduce_device(&self, t: &mut Tensor) -> Result<()> {
        if self.world_size() == 1 {
            return Ok(());
        }
        let (n, dtype, device) = (t.numel(), t.dtype(), t.device());
        let mut host = t.to_host()?.to_f32_vec()?;
        self.reduce_host(&mut host)?;
        let back = Tensor::from_f32(&[n], host)?.to_device_as(device, dtype)?;
        t.cuda_storage_mut()?.copy_from(0, back.cuda_storage()?, 0, n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_in_rank_order_on_every_rank() {
        let comms = CpuComm::group(3);
        let out: Vec<Vec<f32>> = std::thread::scope(|s| {
            let hs: Vec<_> = comms
                .iter()
                .map(|c| {
                    s.spawn(move || {
                        let r = c.rank() as f32;
                        let mut t = Tensor::from_f32(&[2], vec![r, 10.0 * r]).unwrap();
                        c.all_reduce_sum(&mut t).unwrap();
                        c.all_reduce_sum(&mut t).unwrap(); // a second call reuses the slots
                        t.to_f32_vec().unwrap()
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for o in out {
            assert_eq!(o, vec![9.0, 90.0]); // (0+1+2) = 3, then 3 * 3
        }
    }

    #[test]
    fn abort_wakes_waiting_ranks() {
        let comms = CpuComm::group(2);
        std::thread::scope(|s| {
            let waiting = s.spawn(|| {
                let mut t = Tensor::from_f32(&[1], vec![1.0]).unwrap();
                comms[0].all_reduce_sum(&mut t)
            });
            comms[1].abort("load failed");
            let e = waiting.join().unwrap().unwrap_err().to_string();
            assert!(e.contains("aborted") && e.contains("load failed"), "{e}");
        });
        let mut t = Tensor::from_f32(&[1], vec![1.0]).unwrap();
        assert!(comms[1].all_reduce_sum(&mut t).is_err());
    }
}
