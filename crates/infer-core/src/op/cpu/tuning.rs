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
}

impl Knob {
    /// Every knob, for parsing names.
    pub const ALL: [Knob; 2] = [Knob::DecodeTaskBytes, Knob::GemvPrefetchBytes];

    /// The default (measured best) value.
    pub const fn default_value(self) -> usize {
        match self {
            Knob::DecodeTaskBytes => 4 << 20,
            Knob::GemvPrefetchBytes => 0,
        }
    }

    /// The knob's name in `snake_case` (as the A/B harness takes it).
    pub const fn name(self) -> &'static str {
        match self {
            Knob::DecodeTaskBytes => "decode_task_bytes",
            Knob::GemvPrefetchBytes => "gemv_prefetch_bytes",
        }
    }

    /// The knob called `name`, if any.
    pub fn from_name(name: &str) -> Option<Knob> {
        Knob::ALL.into_iter().find(|k| k.name() == name)
    }

    fn slot(self) -> &'static AtomicUsize {
        static SLOTS: [AtomicUsize; 2] = [
            AtomicUsize::new(Knob::DecodeTaskBytes.default_value()),
            AtomicUsize::new(Knob::GemvPrefetchBytes.default_value()),
        ];
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
