//! The x86 integer dot kernels, written once and instantiated by `avx2.rs` (AVX2:
//! `vpmaddubsw` + `vpmaddwd`) and `avx512.rs` (AVX-512 VNNI: `vpdpbusd` on 256-bit vectors):
//! [`quant_kernels!`] expands to the kernels compiled for the given target features, calling
//! the instantiating module's `mul_sum(u, s)`: eight i32 lanes, lane `i` the sum of the four
//! products `u[4i..4i+4] · s[4i..4i+4]` of unsigned bytes `u` and signed bytes `s`.
//!
//! Every kernel takes one weight row (whole blocks), `R` activation rows and `R` outputs.
//! Per 32 weights: unpack to unsigned bytes (sign trick for Q8_0: |w| and sign(w)·a), one
//! `mul_sum` per activation row, then an f32 FMA with the block's scale (K-quants first
//! scale the i32 lanes by their sub-block scales). Offsets (Q4_0's 8, Q6_K's 32) and mins
//! (Q4_1, Q4_K) are applied per block through the activation block sums.
//!
//! All loads go through bounds-checked slices of exactly the loaded size.

/// Runs kernel `$k` with `R = $a.len()` (1..=4; more panics in the kernel's row check).
macro_rules! by_rows {
    ($k:ident, $w:expr, $a:expr, $o:expr) => {
        match $a.len() {
            1 => $k::<1>($w, $a, $o),
            2 => $k::<2>($w, $a, $o),
            3 => $k::<3>($w, $a, $o),
            _ => $k::<4>($w, $a, $o),
        }
    };
    ($k:ident, $t:literal, $w:expr, $a:expr, $o:expr) => {
        match $a.len() {
            1 => $k::<1, $t>($w, $a, $o),
            2 => $k::<2, $t>($w, $a, $o),
            3 => $k::<3, $t>($w, $a, $o),
            _ => $k::<4, $t>($w, $a, $o),
        }
    };
}

/// Expands to the kernels for target features `$feat` (must include AVX2, FMA and F16C).
macro_rules! quant_kernels {
    ($feat:literal) => {
        use std::arch::x86_64::*;

        use crate::op::cpu::quant::ActRow;
        use crate::tensor::quant::scale_min_k4;

        /// 32 bytes from the start of `s` (panics if shorter).
        #[inline]
        #[target_feature(enable = $feat)]
        fn ld(s: &[u8]) -> __m256i {
            let s = &s[..32];
            // SAFETY: `s` has exactly 32 readable bytes; the load is unaligned.
            unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
        }

        /// 32 signed bytes from the start of `s` (panics if shorter).
        #[inline]
        #[target_feature(enable = $feat)]
        fn ld_i8(s: &[i8]) -> __m256i {
            let s = &s[..32];
            // SAFETY: `s` has exactly 32 readable bytes; the load is unaligned.
            unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
        }

        /// 16 i32 from the start of `s` as two vectors (panics if shorter).
        #[inline]
        #[target_feature(enable = $feat)]
        fn ld_sums(s: &[i32]) -> (__m256i, __m256i) {
            let s = &s[..16];
            // SAFETY: `s` has exactly 16 readable i32 (64 bytes); the loads are unaligned.
            unsafe { (_mm256_loadu_si256(s.as_ptr().cast()), _mm256_loadu_si256(s[8..].as_ptr().cast())) }
        }

        /// 16 bytes of packed nibbles → 32 bytes: low nibbles, then high nibbles.
        #[inline]
        #[target_feature(enable = $feat)]
        fn nibbles(s: &[u8]) -> __m256i {
            let s = &s[..16];
            // SAFETY: `s` has exactly 16 readable bytes; the load is unaligned.
            let x = unsafe { _mm_loadu_si128(s.as_ptr().cast()) };
            let m = _mm_set1_epi8(0x0f);
            _mm256_set_m128i(_mm_and_si128(_mm_srli_epi16::<4>(x), m), _mm_and_si128(x, m))
        }

        /// The f16 at `b[i..i + 2]` as f32 (`vcvtph2ps`).
        #[inline]
        #[target_feature(enable = $feat)]
        fn f16le(b: &[u8], i: usize) -> f32 {
            let bits = u16::from_le_bytes([b[i], b[i + 1]]);
            _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits))))
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn hsum(a: __m256) -> f32 {
            let s = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
            let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
            _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
        }

        /// The 2 low bits of each byte of `v`, moved to bits 4-5.
        #[inline]
        #[target_feature(enable = $feat)]
        fn hi2(v: __m256i, m2: __m256i) -> __m256i {
            _mm256_slli_epi16::<4>(_mm256_and_si256(v, m2))
        }

        /// `acc + cvt(p) · d`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn fma_i32(p: __m256i, d: f32, acc: __m256) -> __m256 {
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_set1_ps(d), acc)
        }

        /// Bytes per block of the 32-element weight type `T` (0: Q8_0, 1: Q4_0, 2: Q4_1).
        const fn bytes32(t: u8) -> usize {
            match t {
                0 => 34,
                1 => 18,
                _ => 20,
            }
        }

        /// One 32-element block `blk` of type `T` (see [`bytes32`]) against block `b` of each
        /// activation row: `acc[r] += d_w·d_a · Σ q·a` in the lanes, and into `extra[r]` the
        /// offset or min term through the block sum `ds = d_a · Σ a`: Q4_0 `-8·d_w·ds` (its
        /// values are `q - 8`), Q4_1 `m·ds`. Q8_0 uses the sign trick: `|q| · (sign(q)·a)`.
        ///
        /// # Safety
        /// Every row of `acts` holds more than `b` blocks (`qs`, `d` and `ds`).
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn step32<const R: usize, const T: u8>(
            blk: &[u8],
            b: usize,
            acts: &[ActRow<'_>],
            acc: &mut [__m256; R],
            extra: &mut [f32; R],
        ) {
            let (u, sign, dw, e) = match T {
                0 => {
                    let q = ld(&blk[2..]);
                    (_mm256_sign_epi8(q, q), q, f16le(blk, 0), 0.0) // |q|: -128 → 128 as u8
                }
                1 => {
                    let dw = f16le(blk, 0);
                    (nibbles(&blk[2..]), _mm256_setzero_si256(), dw, -8.0 * dw)
                }
                _ => (nibbles(&blk[4..]), _mm256_setzero_si256(), f16le(blk, 0), f16le(blk, 2)),
            };
            for r in 0..R {
                let a = &acts[r];
                // SAFETY: the caller guarantees block `b` of every row: 32 bytes of `qs` at
                // 32·b and entry `b` of `d` and `ds`.
                let (s, da, ds) = unsafe {
                    (
                        _mm256_loadu_si256(a.qs.as_ptr().add(32 * b).cast()),
                        *a.d.get_unchecked(b),
                        *a.ds.get_unchecked(b),
                    )
                };
                let s = if T == 0 { _mm256_sign_epi8(s, sign) } else { s }; // |a| <= 127
                acc[r] = fma_i32(mul_sum(u, s), dw * da, acc[r]);
                if T != 0 {
                    extra[r] += e * ds;
                }
            }
        }

        /// Q8_0 (`T = 0`), Q4_0 (1) or Q4_1 (2) weights against 32-block activations, two blocks
        /// per step into separate accumulators (independent FMA and add chains).
        #[target_feature(enable = $feat)]
        pub(super) fn kern32<const R: usize, const T: u8>(w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
            let bb = bytes32(T);
            let nb = w.len() / bb;
            assert!(acts.len() == R && out.len() == R && w.len() == nb * bb, "the driver passes R rows, whole blocks");
            for a in acts {
                assert!(a.qs.len() >= 32 * nb && a.d.len() >= nb && a.ds.len() >= nb, "rows hold nb blocks");
            }
            let (mut acc0, mut acc1) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
            let (mut ex0, mut ex1) = ([0.0f32; R], [0.0f32; R]);
            let mut pairs = w.chunks_exact(2 * bb);
            for (i, pair) in (&mut pairs).enumerate() {
                // SAFETY: blocks 2i and 2i + 1 are < nb, which every row holds (asserted above).
                unsafe {
                    step32::<R, T>(&pair[..bb], 2 * i, acts, &mut acc0, &mut ex0);
                    step32::<R, T>(&pair[bb..], 2 * i + 1, acts, &mut acc1, &mut ex1);
                }
            }
            if !pairs.remainder().is_empty() {
                // SAFETY: the odd last block is nb - 1, which every row holds.
                unsafe { step32::<R, T>(pairs.remainder(), nb - 1, acts, &mut acc0, &mut ex0) };
            }
            for r in 0..R {
                out[r] = hsum(_mm256_add_ps(acc0[r], acc1[r])) + (ex0[r] + ex1[r]);
            }
        }

        #[target_feature(enable = $feat)]
        pub(super) fn q4_k<const R: usize>(w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
            assert!(acts.len() == R && out.len() == R, "the dispatcher passes R rows");
            let (mut acc, mut mins) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
            let m4 = _mm256_set1_epi8(0x0f);
            for (b, blk) in w.chunks_exact(144).enumerate() {
                let (dw, dmin) = (f16le(blk, 0), f16le(blk, 2));
                let (mut sc, mut mn) = ([0i32; 8], [0i32; 8]);
                for j in 0..8 {
                    let (s, m) = scale_min_k4(j, &blk[4..16]);
                    (sc[j], mn[j]) = (i32::from(s), i32::from(m));
                }
                let mut sumi = [_mm256_setzero_si256(); R];
                for c in 0..4 {
                    // 64 elements: the low then the high nibbles of 32 bytes.
                    let x = ld(&blk[16 + 32 * c..]);
                    let (lo, hi) = (_mm256_and_si256(x, m4), _mm256_and_si256(_mm256_srli_epi16::<4>(x), m4));
                    let (s0, s1) = (_mm256_set1_epi32(sc[2 * c]), _mm256_set1_epi32(sc[2 * c + 1]));
                    for r in 0..R {
                        let q = &acts[r].qs[256 * b + 64 * c..];
                        let p0 = _mm256_mullo_epi32(mul_sum(lo, ld_i8(q)), s0);
                        let p1 = _mm256_mullo_epi32(mul_sum(hi, ld_i8(&q[32..])), s1);
                        sumi[r] = _mm256_add_epi32(sumi[r], _mm256_add_epi32(p0, p1));
                    }
                }
                // Sub-block j's min applies to the activation sums 2j and 2j + 1.
                let m_lo = _mm256_setr_epi32(mn[0], mn[0], mn[1], mn[1], mn[2], mn[2], mn[3], mn[3]);
                let m_hi = _mm256_setr_epi32(mn[4], mn[4], mn[5], mn[5], mn[6], mn[6], mn[7], mn[7]);
                for r in 0..R {
                    let a = &acts[r];
                    acc[r] = fma_i32(sumi[r], dw * a.d[b], acc[r]);
                    let (s_lo, s_hi) = ld_sums(&a.sums[16 * b..]);
                    let summ = _mm256_add_epi32(_mm256_mullo_epi32(m_lo, s_lo), _mm256_mullo_epi32(m_hi, s_hi));
                    mins[r] = fma_i32(summ, dmin * a.d[b], mins[r]);
                }
            }
            for r in 0..R {
                out[r] = hsum(_mm256_sub_ps(acc[r], mins[r]));
            }
        }

        #[target_feature(enable = $feat)]
        pub(super) fn q6_k<const R: usize>(w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
            assert!(acts.len() == R && out.len() == R, "the dispatcher passes R rows");
            let mut acc = [_mm256_setzero_ps(); R];
            let (m4, m2) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(3));
            for (b, blk) in w.chunks_exact(210).enumerate() {
                let dw = f16le(blk, 208);
                let sc: [i32; 16] = std::array::from_fn(|g| i32::from(blk[192 + g] as i8));
                let mut sumi = [_mm256_setzero_si256(); R];
                for h in 0..2 {
                    // 128 elements: 4 runs of 32, each low/high nibbles of ql plus 2 bits of qh.
                    let (ql0, ql1, qh) = (ld(&blk[64 * h..]), ld(&blk[64 * h + 32..]), ld(&blk[128 + 32 * h..]));
                    let e = [
                        _mm256_or_si256(_mm256_and_si256(ql0, m4), hi2(qh, m2)),
                        _mm256_or_si256(_mm256_and_si256(ql1, m4), hi2(_mm256_srli_epi16::<2>(qh), m2)),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                            hi2(_mm256_srli_epi16::<4>(qh), m2),
                        ),
                        _mm256_or_si256(
                            _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                            hi2(_mm256_srli_epi16::<6>(qh), m2),
                        ),
                    ];
                    for (t, e) in e.into_iter().enumerate() {
                        // Lanes 0..4 cover scale group g, lanes 4..8 group g + 1.
                        let g = 8 * h + 2 * t;
                        let s = _mm256_set_m128i(_mm_set1_epi32(sc[g + 1]), _mm_set1_epi32(sc[g]));
                        for r in 0..R {
                            let p = mul_sum(e, ld_i8(&acts[r].qs[256 * b + 128 * h + 32 * t..]));
                            sumi[r] = _mm256_add_epi32(sumi[r], _mm256_mullo_epi32(p, s));
                        }
                    }
                }
                // SAFETY: `blk` is a whole 210-byte block: bytes 192..208 are the 16 scales.
                let (sc_lo, sc_hi) = unsafe {
                    (
                        _mm256_cvtepi8_epi32(_mm_loadl_epi64(blk[192..200].as_ptr().cast())),
                        _mm256_cvtepi8_epi32(_mm_loadl_epi64(blk[200..208].as_ptr().cast())),
                    )
                };
                for r in 0..R {
                    let a = &acts[r];
                    // Σ_g sc_g · Σ (q - 32)·a = Σ_g sc_g · Σ q·a - 32 · Σ_g sc_g · sum_g (in lanes).
                    let (s_lo, s_hi) = ld_sums(&a.sums[16 * b..]);
                    let off = _mm256_add_epi32(_mm256_mullo_epi32(sc_lo, s_lo), _mm256_mullo_epi32(sc_hi, s_hi));
                    let sumi = _mm256_sub_epi32(sumi[r], _mm256_slli_epi32::<5>(off));
                    acc[r] = fma_i32(sumi, dw * a.d[b], acc[r]);
                }
            }
            for r in 0..R {
                out[r] = hsum(acc[r]);
            }
        }

        /// The kernel of `dtype` with `acts.len()` (1..=4) rows. Caller: the CPU has `$feat`.
        #[target_feature(enable = $feat)]
        pub(super) fn run(dtype: crate::tensor::DType, w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
            use crate::tensor::DType;
            match dtype {
                DType::Q8_0 => crate::op::cpu::quant::x86::by_rows!(kern32, 0, w, acts, out),
                DType::Q4_0 => crate::op::cpu::quant::x86::by_rows!(kern32, 1, w, acts, out),
                DType::Q4_1 => crate::op::cpu::quant::x86::by_rows!(kern32, 2, w, acts, out),
                DType::Q4_K => crate::op::cpu::quant::x86::by_rows!(q4_k, w, acts, out),
                DType::Q6_K => crate::op::cpu::quant::x86::by_rows!(q6_k, w, acts, out),
                DType::F32 | DType::BF16 | DType::F16 => {}
            }
        }
    };
}

pub(super) use {by_rows, quant_kernels};
