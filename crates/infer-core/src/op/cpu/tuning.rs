//! Run-time knobs of the CPU decode kernels, for A/B timing inside one process.
//!
//! The 2-vCPU VMs we measure on drift by ±20% in memory bandwidth from one second to the next,
//! which hides 5-10% effects when two builds are timed one after the other. These knobs can be
//! changed between decode steps, so that `tests/perf_cpu.rs` (`decode_ab`) alternates variants
//! step by step and the drift hits each alike. Defaults are the measured best; set a knob only
//! to time an alternative.

use std::sync::atomic::{AtomicUsize, Ordering};

/// A tunable value of the decode kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Knob {
    /// Bytes of weight rows one decode matvec task reads (threads take tasks in order, so at
    /// any time they stream neighbouring blocks; at least one row per task whatever the value).
    DecodeTaskBytes,
    /// Software prefetch distance (bytes ahead in the weight stream) of the bf16 decode row
    /// kernel; 0 = none (the hardware prefetchers only).
    GemvPrefetchBytes,
    /// 1 (default) = the parallel loops of a prefill (matmuls of more than 4 rows, norms, RoPE,
    /// SwiGLU, attention rows) run on the spinning pool as decode's do, so no rayon worker is
    /// woken during a forward pass; 0 = on rayon. Measured in-process (`decode_ab`, `AB_PREFILL`,
    /// 40 alternating prefills each): pool 1.026-1.056x rayon at 64 and 128 tokens.
    PrefillOnPool,
    /// Most activation rows (1 or 2) that the Q8_0/Q4_0/Q4_1 kernels dot in groups of 8 blocks
    /// (lane = block, 8 scales at once); more rows go block by block. 2 (default): a decode row
    /// and its refinement residual take the grouped path.
    QuantGroupRows,
    /// 1 (default): the grouped Q8_0/Q4_0/Q4_1 path gathers 8 blocks' f16 scales with one word
    /// permute where the CPU has AVX-512 BW (`quant::avx512`); 0: 8 scalar loads and inserts.
    QuantScaleGather,
    /// Tasks per thread of a quantized decode matvec; 0: tasks of at most 64 weight rows, as a
    /// prefill's. 1 (default): measured in-process on SmolLM2-135M Q4_1 (`decode_ab`, 1,000
    /// alternating steps, two runs each): 1.14-1.18x the 64-row tasks, 1.02-1.03x two per
    /// thread, 1.06-1.08x four (each task starts a new weight stream, and the threads claim
    /// tasks through one shared counter; neither the task locks nor their cache lines mattered).
    QuantDecodeTasks,
    /// 1 (default): attention rows over a contiguous cache use the whole-row kernels of
    /// `attn_rows` where they apply (AVX-512, head_dim % 16 == 0); 0: a dot and an axpy call per
    /// cached position.
    AttnRowKernels,
    /// Fewest rows of a [`Precision::Fast`](crate::op::Precision) matmul on block-quantized
    /// weights that go through a float GEMM (weights dequantized a block at a time, to bf16 on
    /// CPUs with AVX512_BF16, else f32; `op::cpu::quant_prefill`) instead of the integer
    /// kernels; 0: never. 32 (default): measured in-process on SmolLM2-135M Q4_1 (`decode_ab`
    /// with `AB_PREFILL`, 40-45 alternating prefills): bf16 0.89x the integer kernels at 8 rows,
    /// 1.01x at 16, 3.4-4.0x at 32, 4.5-5.2x at 128; f32 (forced on the same AVX-512 CPU) 2.6x
    /// at 32, 3.0x at 128.
    QuantPrefillRows,
    /// Software prefetch distance (bytes ahead in each weight row's stream) of the quantized
    /// decode kernels; 0 = none. 2048 (default): measured in-process (`decode_ab`, alternating
    /// steps) against none / 1024: Llama-3.2-1B-shaped Q4_K GGUF 1.149x / 1.127x, Q6_K 1.130x /
    /// 1.090x, SmolLM2-135M Q4_1 1.041x / 1.025x; the integer work per byte is high enough that
    /// the hardware prefetchers alone leave the kernels waiting (L2-resident ~1.4x the streamed
    /// speed in `quant::tests::matvec_throughput`).
    QuantPrefetchBytes,
}

impl Knob {
    /// Every knob, for parsing names.
    pub const ALL: [Knob; 9] = [
        Knob::DecodeTaskBytes,
        Knob::GemvPrefetchBytes,
        Knob::PrefillOnPool,
        Knob::QuantGroupRows,
        Knob::QuantScaleGather,
        Knob::QuantDecodeTasks,
        Knob::AttnRowKernels,
        Knob::QuantPrefillRows,
        Knob::QuantPrefetchBytes,
    ];

    /// The default (measured best) value.
    pub const fn default_value(self) -> usize {
        match self {
            Knob::DecodeTaskBytes => 4 << 20,
            Knob::GemvPrefetchBytes => 0,
            Knob::PrefillOnPool => 1,
            Knob::QuantGroupRows => 2,
            Knob::QuantScaleGather => 1,
            Knob::QuantDecodeTasks => 1,
            Knob::AttnRowKernels => 1,
            Knob::QuantPrefillRows => 32,
            Knob::QuantPrefetchBytes => 2048,
        }
    }

    /// The knob's name in `snake_case` (as the A/B harness takes it).
    pub const fn name(self) -> &'static str {
        match self {
            Knob::DecodeTaskBytes => "decode_task_bytes",
            Knob::GemvPrefetchBytes => "gemv_prefetch_bytes",
            Knob::PrefillOnPool => "prefill_on_pool",
            Knob::QuantGroupRows => "quant_group_rows",
            Knob::QuantScaleGather => "quant_scale_gather",
            Knob::QuantDecodeTasks => "quant_decode_tasks",
            Knob::AttnRowKernels => "attn_row_kernels",
            Knob::QuantPrefillRows => "quant_prefill_rows",
            Knob::QuantPrefetchBytes => "quant_prefetch_bytes",
        }
    }

    /// The knob called `name`, if any.
    pub fn from_name(name: &str) -> Option<Knob> {
        Knob::ALL.into_iter().find(|k| k.name() == name)
    }

    fn slot(self) -> &'static AtomicUsize {
        // One slot per knob, in declaration order (`ALL` lists them so; tested below).
        static SLOTS: [AtomicUsize; Knob::ALL.len()] = {
            let mut slots = [const { AtomicUsize::new(0) }; Knob::ALL.len()];
            let mut i = 0;
            while i < Knob::ALL.len() {
                slots[i] = AtomicUsize::new(Knob::ALL[i].default_value());
                i += 1;
            }
            slots
        };
        &SLOTS[self as usize]
    }

    /// The current value.
    #[inline]
    pub fn get(self) -> usize {
        self.slot().load(Ordering::Relaxed)
    }

    /// Sets the value (takes effect from the next kernel call).
    pub fn set(self, value: usize) {
        self.slot().store(value, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn knobs_round_trip_by_name_and_slot() {
        for (i, k) in Knob::ALL.into_iter().enumerate() {
            assert_eq!(k as usize, i, "ALL must list the knobs in declaration order");
            assert_eq!(Knob::from_name(k.name()), Some(k));
            assert_eq!(k.get(), k.default_value());
        }
        assert_eq!(Knob::from_name("no_such_knob"), None);
    }
}
