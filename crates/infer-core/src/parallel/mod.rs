//! Tensor parallelism (Megatron-style) over the ranks of one host.
//!
//! * [`shard`]: which rows/columns of every weight a rank holds ([`ShardPlan`]).
//! * [`comm`]: the [`Communicator`] trait and [`CpuComm`] (ranks as threads of one process);
//!   `nccl` (feature `nccl`): [`NcclComm`] over NVIDIA NCCL, one GPU per rank.
//! * [`tp`]: [`Llama3::load_tensor_parallel`](crate::Llama3::load_tensor_parallel): one rank
//!   per thread, each with its shard, KV cache (its KV heads) and workspace; rank 0 is the
//!   model the caller holds and drives the others, so generation, chat and scoring run
//!   unchanged on top.
//!
//! The layer loop is the model's own (`Llama3::run_layers`): with a communicator the o_proj and
//! down_proj products are partial sums that are all-reduced before the residual add.

pub mod comm;
mod load;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod shard;
pub mod tp;

pub use comm::{Communicator, CpuComm};
#[cfg(feature = "nccl")]
pub use nccl::NcclComm;
pub use shard::ShardPlan;
pub use tp::CommKind;
pub(crate) use tp::{TpLink, reduce_add};

/// A tensor-parallel layout that does not fit the model or the weights.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ShardError {
    #[error("the world size must be at least 1")]
    EmptyWorld,
    #[error("{what} = {value} is not divisible by the world size {world_size}")]
    NotDivisible { what: &'static str, value: usize, world_size: usize },
    #[error("rank {rank} is outside a world of {world_size}")]
    RankOutOfRange { rank: usize, world_size: usize },
    #[error("{tensor}: {cols} columns from column {start} are not whole {dtype} blocks")]
    BlockMisaligned { tensor: String, dtype: String, start: usize, cols: usize },
}

#[cfg(test)]
mod tests;
