//! Runtime CPU feature detection for the kernels, cached once per process.
//!
//! The best instruction set the CPU offers is picked at first use:
//!
//! | [`Isa`]          | requires                         | lanes (f32) |
//! |------------------|----------------------------------|-------------|
//! | `Avx512`         | AVX-512 F + BW + VL, FMA         | 16          |
//! | `Avx2`           | AVX2, FMA, F16C                  | 8           |
//! | `Scalar`         | nothing (portable Rust)          | -           |
//!
//! Quantized-weight kernels additionally use AVX512_VNNI under `Avx512` when present
//! ([`has_avx512_vnni`]), else the AVX2 integer kernels.
//!
//! `RUSTINFER_ISA=scalar|avx2|avx512` caps the choice (for comparisons and tests); it can never
//! select an instruction set the CPU lacks. On top of AVX-512, AVX512_BF16 (`vdpbf16ps`) serves
//! [`Precision::Fast`](crate::op::Precision) matmuls over bf16 weights (activations rounded to bf16).

use std::sync::OnceLock;

/// A family of kernels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Isa {
    /// Portable Rust (auto-vectorised at the target's baseline).
    Scalar,
    /// AVX2 + FMA + F16C, 8 f32 lanes.
    Avx2,
    /// AVX-512 F/BW/VL + FMA, 16 f32 lanes.
    Avx512,
}

impl Isa {
    /// A short lower-case name (`"avx512"`, `"avx2"`, `"scalar"`).
    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
        }
    }

    fn parse(s: &str) -> Option<Isa> {
        match s.trim().to_ascii_lowercase().as_str() {
            "scalar" | "none" => Some(Isa::Scalar),
            "avx2" => Some(Isa::Avx2),
            "avx512" => Some(Isa::Avx512),
            _ => None,
        }
    }
}

/// What the CPU supports, detected once.
#[derive(Clone, Copy, Debug)]
struct Features {
    /// Best [`Isa`] the CPU supports.
    detected: Isa,
    /// Best [`Isa`] after the `RUSTINFER_ISA` cap.
    active: Isa,
    /// AVX512_BF16 (`vdpbf16ps`) on top of [`Isa::Avx512`].
    avx512_bf16: bool,
    /// AVX512_VNNI (`vpdpbusd`) on top of the detected [`Isa::Avx512`] (ignores the cap).
    avx512_vnni: bool,
}

#[cfg(target_arch = "x86_64")]
fn detect_cpu() -> (Isa, bool, bool) {
    let avx512 = is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("fma");
    let avx2 = is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c");
    let isa = if avx512 && avx2 {
        Isa::Avx512
    } else if avx2 {
        Isa::Avx2
    } else {
        Isa::Scalar
    };
    let vnni = isa == Isa::Avx512 && is_x86_feature_detected!("avx512vnni");
    (isa, isa == Isa::Avx512 && is_x86_feature_detected!("avx512bf16"), vnni)
}

#[cfg(not(target_arch = "x86_64"))]
fn detect_cpu() -> (Isa, bool, bool) {
    (Isa::Scalar, false, false)
}

fn features() -> &'static Features {
    static FEATURES: OnceLock<Features> = OnceLock::new();
    FEATURES.get_or_init(|| {
        let (detected, bf16, vnni) = detect_cpu();
        let cap = std::env::var("RUSTINFER_ISA").ok().as_deref().and_then(Isa::parse);
        let active = cap.map_or(detected, |c| c.min(detected));
        Features { detected, active, avx512_bf16: bf16 && active == Isa::Avx512, avx512_vnni: vnni }
    })
}

/// The kernel family in use (after the `RUSTINFER_ISA` cap).
pub fn active() -> Isa {
    features().active
}

/// The best kernel family the CPU supports (ignoring `RUSTINFER_ISA`).
pub fn detected() -> Isa {
    features().detected
}

/// Name of the active kernel family for logs: `"avx512"`, `"avx512+bf16"` (with AVX512_BF16,
/// used by [`Precision::Fast`](crate::op::Precision) on bf16 weights), `"avx2"` or `"scalar"`.
pub fn isa() -> &'static str {
    if has_avx512_bf16() { "avx512+bf16" } else { active().name() }
}

/// Whether the CPU has AVX512_BF16 and the AVX-512 kernels are active.
pub fn has_avx512_bf16() -> bool {
    features().avx512_bf16
}

/// Whether the CPU has AVX-512 F/BW/VL and AVX512_VNNI (the quantized-weight kernels use
/// `vpdpbusd` when the active [`Isa`] is `Avx512`; this ignores the `RUSTINFER_ISA` cap).
pub fn has_avx512_vnni() -> bool {
    features().avx512_vnni
}

/// Every kernel family this CPU can run, slowest first (tests compare them all).
pub fn available() -> Vec<Isa> {
    [Isa::Scalar, Isa::Avx2, Isa::Avx512].into_iter().filter(|&i| i <= detected()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detection_is_consistent() {
        assert!(active() <= detected());
        assert!(available().contains(&Isa::Scalar));
        assert!(available().contains(&active()));
        assert!(["scalar", "avx2", "avx512", "avx512+bf16"].contains(&isa()));
        assert_eq!(Isa::parse(" AVX2 "), Some(Isa::Avx2));
        assert_eq!(Isa::parse("sse"), None);
    }
}
