//! AVX-512 VNNI integer dot kernels: `mul_sum` is one `vpdpbusd` (u8 × i8 quadruples summed
//! straight into i32 lanes, no i16 intermediate) on 256-bit vectors (AVX512VL), so the same
//! kernel bodies as AVX2 serve (`x86.rs`). Zen 4 runs 512-bit ops as two 256-bit halves, and
//! decode is bound by memory, so wider vectors would gain little for much more code.

use std::arch::x86_64::*;

use super::{ActRow, Kern};
use crate::op::cpu::simd;
use crate::tensor::DType;

/// Eight i32 lanes: lane `i` = `Σ_{j<4} u[4i+j]·s[4i+j]` (u unsigned, s signed bytes).
#[inline]
#[target_feature(enable = "avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni")]
fn mul_sum(u: __m256i, s: __m256i) -> __m256i {
    _mm256_dpbusd_epi32(_mm256_setzero_si256(), u, s)
}

mod k {
    use super::mul_sum;
    super::super::x86::quant_kernels!("avx2,fma,f16c,avx512f,avx512bw,avx512vl,avx512vnni");
}

/// The VNNI kernels, when the CPU has AVX-512 F/BW/VL and AVX512_VNNI.
pub(super) fn kernel() -> Option<Kern> {
    simd::has_avx512_vnni().then_some(run as Kern)
}

fn run(dtype: DType, w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
    if simd::has_avx512_vnni() {
        // SAFETY: AVX-512 F/BW/VL, AVX512_VNNI, AVX2, FMA and F16C were detected at runtime
        // (`has_avx512_vnni` implies the detected Isa::Avx512, which includes AVX2/FMA/F16C).
        unsafe { k::run(dtype, w, acts, out) }
    }
}
