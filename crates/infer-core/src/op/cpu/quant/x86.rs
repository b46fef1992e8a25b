//! The x86 integer dot kernels, written once and instantiated by `avx2.rs` (AVX2:
//! `vpmaddubsw` + `vpmaddwd`) and `avx512.rs` (AVX-512 VNNI: `vpdpbusd` on 256-bit vectors):
//! [`quant_kernels!`] expands to the kernels compiled for the given target features, calling
//! the instantiating module's `mul_sum(u, s)`: eight i32 lanes, lane `i` the sum of the four
//! products `u[4i..4i+4] · s[4i..4i+4]` of unsigned bytes `u` and signed bytes `s`, and its
//! `dot16(acc, p, s)`: `acc` plus the i16 products `p · s` summed in pairs into i32 lanes.
//!
//! Every kernel takes one weight row (whole blocks), `R` activation rows and `R` outputs.
//! Per 32 weights: unpack to unsigned bytes once (sign trick for Q8_0: |w| and sign(w)·a),
//! then one `mul_sum` per activation row. Scaling:
//!
//! * Q8_0/Q4_0/Q4_1, one or two rows (decode: a row and its refinement residual): 8 blocks'
//!   i32 dots are reduced into one vector per row (lane = block) and multiplied by the 8
//!   weight × activation scales at once; more rows (prefill): an f32 FMA per block and row,
//!   two blocks per step into independent accumulators;
//! * Q4_K and Q6_K (llama.cpp's scheme): `vpmaddubsw` pairs in i16, then the module's
//!   `dot16(acc, p, s)` (`vpmaddwd` + add on AVX2, `vpdpwssd` with VNNI) multiplies them by the
//!   sub-block's scale in every i16 lane and sums into i32 lanes: no horizontal reduction per
//!   sub-block; then one f32 FMA per block and row.
//!
//! Offsets (Q4_0's 8, Q6_K's 32) and mins (Q4_1, Q4_K) go through the activation block sums.
//! The grouped path takes the 8 blocks' f16 scales (and mins) from the instantiating module's
//! `dm8::<T>(group)`: one word permute on AVX-512 ([`super::avx512`]), 8 scalar loads and word
//! inserts per vector on AVX2 ([`dm8_scalar`]).
//! Weight loads go through bounds-checked slices of exactly the loaded size; activation loads
//! in the 32-block kernels use raw offsets after one length check per row.

use std::arch::x86_64::*;

/// Runs kernel `$k::<R, $t>` with `R = $a.len()` (1..=4; more panics in the kernel's row check).
macro_rules! by_rows {
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

        /// Prefetches (into L1) the `N` cache lines from `pf` bytes past the start of `s`, the
        /// stretch of the weight stream that the kernel reaches `pf` bytes from now (none when
        /// `pf` is 0). A hint: addresses past the end of the weights are harmless.
        #[inline]
        #[target_feature(enable = $feat)]
        fn prefetch<const N: usize>(s: &[u8], pf: usize) {
            if pf > 0 {
                let p = s.as_ptr().wrapping_add(pf);
                for i in 0..N {
                    _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64 * i).cast());
                }
            }
        }

        /// 16 f32 from the start of `s` as two vectors (panics if shorter).
        #[inline]
        #[target_feature(enable = $feat)]
        fn ld_f32x16(s: &[f32]) -> (__m256, __m256) {
            let s = &s[..16];
            // SAFETY: `s` has exactly 16 readable f32 (64 bytes); the loads are unaligned.
            unsafe { (_mm256_loadu_ps(s.as_ptr()), _mm256_loadu_ps(s[8..].as_ptr())) }
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

        /// The two f16 at `b[0..4]` as f32 lanes 0 and 1 (one 32-bit load: no merge into a
        /// stale register, so no dependency on the previous block's accumulators).
        #[inline]
        #[target_feature(enable = $feat)]
        fn f16x2(b: &[u8]) -> __m128 {
            let bits = i32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            _mm_cvtph_ps(_mm_cvtsi32_si128(bits))
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

        use crate::op::cpu::quant::x86::block_bytes as bytes32;

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

        /// Lane `j` = the sum of the eight lanes of `p[j]`.
        #[inline]
        #[target_feature(enable = $feat)]
        fn reduce8(p: &[__m256i; 8]) -> __m256i {
            // hadd pairs lanes within 128-bit halves: q0 = [Σlo p0..p3 | Σhi p0..p3], q1 likewise.
            let q0 = _mm256_hadd_epi32(_mm256_hadd_epi32(p[0], p[1]), _mm256_hadd_epi32(p[2], p[3]));
            let q1 = _mm256_hadd_epi32(_mm256_hadd_epi32(p[4], p[5]), _mm256_hadd_epi32(p[6], p[7]));
            _mm256_add_epi32(_mm256_permute2x128_si256::<0x20>(q0, q1), _mm256_permute2x128_si256::<0x31>(q0, q1))
        }

        /// One or two activation rows (decode; two: a row and its refinement residual), 8 blocks
        /// per step: each row's 8 integer dots are reduced to one vector (lane = block) and scaled
        /// by 8 weight × activation scales at once, instead of a broadcast and FMA per block (the
        /// weights are unpacked once for both rows). Returns per row the f32 lanes and the
        /// offset/min lanes for the first `8·⌊nb/8⌋` blocks.
        ///
        /// # Safety
        /// Every row of `acts` (`R` of them) holds at least `nb = w.len() / bytes32(T)` blocks
        /// (`qs`, `d` and `ds`).
        #[inline]
        #[target_feature(enable = $feat)]
        unsafe fn groups8<const R: usize, const T: u8>(
            w: &[u8],
            acts: &[ActRow<'_>],
            wide: bool,
        ) -> ([__m256; R], [__m256; R]) {
            let bb = bytes32(T);
            let (mut acc, mut ex) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
            let pf = crate::op::cpu::tuning::Knob::QuantPrefetchBytes.get();
            for (gi, g) in w.chunks_exact(8 * bb).enumerate() {
                // 8 blocks: 144 (Q4_0), 160 (Q4_1) or 272 (Q8_0) bytes.
                if T == 0 {
                    prefetch::<5>(g, pf)
                } else {
                    prefetch::<3>(g, pf)
                }
                let mut p = [[_mm256_setzero_si256(); 8]; R];
                for (j, blk) in g.chunks_exact(bb).enumerate() {
                    let (u, sq) = match T {
                        0 => {
                            let q = ld(&blk[2..]);
                            (_mm256_sign_epi8(q, q), q) // |q|: -128 → 128 as u8
                        }
                        1 => (nibbles(&blk[2..]), _mm256_setzero_si256()),
                        _ => (nibbles(&blk[4..]), _mm256_setzero_si256()),
                    };
                    for r in 0..R {
                        // SAFETY: block 8·gi + j < nb, whose 32 values the caller guarantees.
                        let s = unsafe { _mm256_loadu_si256(acts[r].qs.as_ptr().add(32 * (8 * gi + j)).cast()) };
                        p[r][j] = mul_sum(u, if T == 0 { _mm256_sign_epi8(s, sq) } else { s });
                    }
                }
                // The 8 weight scales and min / offset terms (Q4_1 mins, Q4_0 -8·d; Q8_0 unused).
                let (dw, m) = if wide { dm8::<T>(g) } else { crate::op::cpu::quant::x86::dm8_scalar::<T>(g) };
                for r in 0..R {
                    let a = &acts[r];
                    // SAFETY: entries 8·gi..8·gi + 8 of `d` and `ds` are blocks < nb (caller).
                    let (da, ds) = unsafe {
                        (_mm256_loadu_ps(a.d.as_ptr().add(8 * gi)), _mm256_loadu_ps(a.ds.as_ptr().add(8 * gi)))
                    };
                    acc[r] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(reduce8(&p[r])), _mm256_mul_ps(dw, da), acc[r]);
                    if T != 0 {
                        ex[r] = _mm256_fmadd_ps(m, ds, ex[r]);
                    }
                }
            }
            (acc, ex)
        }

        /// Q8_0 (`T = 0`), Q4_0 (1) or Q4_1 (2) weights against 32-block activations: one or two
        /// rows in groups of 8 blocks ([`groups8`]), then (and for more rows) two blocks per step
        /// into separate accumulators (independent FMA and add chains). Returns per row a vector
        /// and a scalar whose lanes and value sum to the dot (one horizontal sum per use).
        #[inline]
        #[target_feature(enable = $feat)]
        fn dot32<const R: usize, const T: u8>(w: &[u8], acts: &[ActRow<'_>]) -> ([__m256; R], [f32; R]) {
            let bb = bytes32(T);
            let nb = w.len() / bb;
            assert!(acts.len() == R && w.len() == nb * bb, "the driver passes R rows, whole blocks");
            for a in acts {
                assert!(a.qs.len() >= 32 * nb && a.d.len() >= nb && a.ds.len() >= nb, "rows hold nb blocks");
            }
            let (mut acc0, mut acc1) = ([_mm256_setzero_ps(); R], [_mm256_setzero_ps(); R]);
            let (mut ex0, mut ex1) = ([0.0f32; R], [0.0f32; R]);
            let mut first = 0;
            if R == 1 || (R == 2 && crate::op::cpu::tuning::Knob::QuantGroupRows.get() >= 2) {
                // Scales gathered by the instantiation's `dm8` (a permute on AVX-512) unless the
                // A/B knob asks for the scalar gather.
                let wide = crate::op::cpu::tuning::Knob::QuantScaleGather.get() == 1;
                // SAFETY: every row holds nb blocks (asserted above).
                let (acc, ex) = unsafe { groups8::<R, T>(w, acts, wide) };
                for r in 0..R {
                    acc0[r] = _mm256_add_ps(acc[r], ex[r]); // the offset / min lanes sum in too
                }
                first = nb / 8 * 8;
            }
            let mut pairs = w[first * bb..].chunks_exact(2 * bb);
            for (i, pair) in (&mut pairs).enumerate() {
                let b = first + 2 * i;
                // SAFETY: blocks b and b + 1 are < nb, which every row holds (asserted above).
                unsafe {
                    step32::<R, T>(&pair[..bb], b, acts, &mut acc0, &mut ex0);
                    step32::<R, T>(&pair[bb..], b + 1, acts, &mut acc1, &mut ex1);
                }
            }
            if !pairs.remainder().is_empty() {
                // SAFETY: the odd last block is nb - 1, which every row holds.
                unsafe { step32::<R, T>(pairs.remainder(), nb - 1, acts, &mut acc0, &mut ex0) };
            }
            (std::array::from_fn(|r| _mm256_add_ps(acc0[r], acc1[r])), std::array::from_fn(|r| ex0[r] + ex1[r]))
        }

        /// [`dot32`], one output per row.
        #[target_feature(enable = $feat)]
        pub(super) fn kern32<const R: usize, const T: u8>(w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
            assert!(out.len() == R, "the driver passes R outputs");
            let (v, e) = dot32::<R, T>(w, acts);
            for r in 0..R {
                out[r] = hsum(v[r]) + e[r];
            }
        }

        /// Consecutive weight rows of `T` against the two rows of a refined activation (decode):
        /// `out[j]` = row j's dot with their sum, one horizontal sum per weight row and no call
        /// per row.
        #[target_feature(enable = $feat)]
        fn rows_pair32<const T: u8>(w: &[u8], row_bytes: usize, acts: &[ActRow<'_>], out: &mut [f32]) {
            for (o, wr) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
                let (v, e) = dot32::<2, T>(wr, acts);
                *o = hsum(_mm256_add_ps(v[0], v[1])) + (e[0] + e[1]);
            }
        }

        /// 4 activation bytes at `q[o..]` in every i32 lane (panics if `q` is shorter).
        #[inline]
        #[target_feature(enable = $feat)]
        fn bcast4(q: &[i8], o: usize) -> __m256i {
            let s = &q[o..o + 4];
            // SAFETY: `s` has exactly 4 readable bytes; the read is unaligned.
            _mm256_set1_epi32(unsafe { std::ptr::read_unaligned(s.as_ptr().cast::<i32>()) })
        }

        /// 8 bytes at `s[..8]` zero-extended to i32 lanes (panics if shorter).
        #[inline]
        #[target_feature(enable = $feat)]
        fn u8x8(s: &[u8]) -> __m256i {
            let s = &s[..8];
            // SAFETY: `s` has exactly 8 readable bytes; the load is unaligned.
            _mm256_cvtepu8_epi32(unsafe { _mm_loadl_epi64(s.as_ptr().cast()) })
        }

        /// 8 f16 at `s[..16]` as f32 lanes (panics if shorter).
        #[inline]
        #[target_feature(enable = $feat)]
        fn f16x8_at(s: &[u8]) -> __m256 {
            let s = &s[..16];
            // SAFETY: `s` has exactly 16 readable bytes; the load is unaligned.
            _mm256_cvtph_ps(unsafe { _mm_loadu_si128(s.as_ptr().cast()) })
        }

        /// Q4_Kx8 groups (`tensor::repack`: 8 rows interleaved, scales decoded) against `P`
        /// refined activation rows (`acts`: value and residual rows of each, `2P` in all):
        /// `out[P·j + p]` = weight row `j` dotted with activation `p`. An i32 lane per weight
        /// row: each 32 weight bytes hold 4 values of each of 8 rows for two sub-blocks (low and
        /// high nibbles), dotted with 4 activation bytes broadcast (`dpbusd`: 32 products per
        /// instruction, no reduction); the 8 rows' sub-block scales multiply the lanes once per
        /// sub-block and activation row; mins through `ds`; one f32 FMA per block for 8 rows.
        #[inline]
        #[target_feature(enable = $feat)]
        fn x8_groups<const P: usize>(w: &[u8], row_bytes: usize, acts: &[ActRow<'_>], out: &mut [f32]) {
            const GB: usize = crate::tensor::repack::GROUP_BLOCK;
            let nb = row_bytes / 148;
            assert!(
                acts.len() == 2 * P
                    && row_bytes == 148 * nb
                    && out.len() % (8 * P) == 0
                    && w.len() >= out.len() / P * row_bytes,
                "the driver passes P refined pairs and whole groups of rows"
            );
            for a in acts {
                assert!(a.qs.len() >= 256 * nb && a.d.len() >= nb && a.ds.len() >= 16 * nb, "rows hold nb blocks");
            }
            let m4 = _mm256_set1_epi8(0x0f);
            // No software prefetch: one sequential stream per task, which the hardware prefetchers
            // follow (`matvec_throughput`: 0.83-0.86x with 2-8 KiB of prefetch ahead).
            for (grp, o) in w.chunks_exact(nb * GB).zip(out.chunks_exact_mut(8 * P)) {
                let mut acc = [_mm256_setzero_ps(); P];
                for (b, gb) in grp.chunks_exact(GB).enumerate() {
                    // This block's 256 activation bytes per row, as arrays: the constant offsets
                    // below then need no bounds checks (a plain loop: closures are not inlined
                    // into target-feature functions).
                    const NONE: [i8; 256] = [0; 256];
                    let mut qb = [[&NONE; 2]; P];
                    for p in 0..P {
                        for i in 0..2 {
                            let row = &acts[2 * p + i].qs[256 * b..256 * b + 256];
                            // A 256-long slice (asserted lengths above) always converts.
                            qb[p][i] = row.try_into().unwrap_or(&NONE);
                        }
                    }
                    let mut isum = [[_mm256_setzero_si256(); 2]; P];
                    let mut mins = [_mm256_setzero_ps(); P];
                    for c in 0..4 {
                        // pr[p][i][h]: activation row 2p + i against sub-block 2c + h, lane = weight
                        // row (8 dependent dpbusd each; out-of-order execution overlaps the four
                        // chains and the next c: two accumulators per chain measured no faster).
                        let mut pr = [[[_mm256_setzero_si256(); 2]; 2]; P];
                        for t in 0..8 {
                            let v = ld(&gb[160 + (8 * c + t) * 32..]);
                            let (lo, hi) = (_mm256_and_si256(v, m4), _mm256_and_si256(_mm256_srli_epi16::<4>(v), m4));
                            let o = 64 * c + 4 * t;
                            for p in 0..P {
                                for i in 0..2 {
                                    let q = qb[p][i];
                                    pr[p][i][0] = dpbusd(pr[p][i][0], lo, bcast4(q, o));
                                    pr[p][i][1] = dpbusd(pr[p][i][1], hi, bcast4(q, o + 32));
                                }
                            }
                        }
                        let (sc0, sc1) = (u8x8(&gb[32 + 16 * c..]), u8x8(&gb[40 + 16 * c..]));
                        // Mins of sub-blocks 2c and 2c + 1.
                        let (m0, m1) = (
                            _mm256_cvtepi32_ps(u8x8(&gb[96 + 16 * c..])),
                            _mm256_cvtepi32_ps(u8x8(&gb[104 + 16 * c..])),
                        );
                        for p in 0..P {
                            for i in 0..2 {
                                let s = _mm256_add_epi32(
                                    _mm256_mullo_epi32(pr[p][i][0], sc0),
                                    _mm256_mullo_epi32(pr[p][i][1], sc1),
                                );
                                isum[p][i] = _mm256_add_epi32(isum[p][i], s);
                            }
                            // Σ over the pair of d_a·(sum over the sub-block).
                            let (da, db) =
                                (&acts[2 * p].ds[16 * b + 4 * c..][..4], &acts[2 * p + 1].ds[16 * b + 4 * c..][..4]);
                            let (s0, s1) = (da[0] + da[1] + db[0] + db[1], da[2] + da[3] + db[2] + db[3]);
                            mins[p] = _mm256_fmadd_ps(
                                m1,
                                _mm256_set1_ps(s1),
                                _mm256_fmadd_ps(m0, _mm256_set1_ps(s0), mins[p]),
                            );
                        }
                    }
                    let (d, dmin) = (f16x8_at(&gb[0..]), f16x8_at(&gb[16..]));
                    for p in 0..P {
                        let sum = _mm256_fmadd_ps(
                            _mm256_cvtepi32_ps(isum[p][0]),
                            _mm256_set1_ps(acts[2 * p].d[b]),
                            _mm256_mul_ps(_mm256_cvtepi32_ps(isum[p][1]), _mm256_set1_ps(acts[2 * p + 1].d[b])),
                        );
                        acc[p] = _mm256_fnmadd_ps(mins[p], dmin, _mm256_fmadd_ps(sum, d, acc[p]));
                    }
                }
                for p in 0..P {
                    let v = to_array(acc[p]);
                    for (l, v) in v.into_iter().enumerate() {
                        o[P * l + p] = v;
                    }
                }
            }
        }

        /// [`x8_groups`] for 1 or 2 refined activations (2 or 4 rows of `acts`); false (nothing
        /// written) for other counts. Caller: the CPU has `$feat`.
        #[target_feature(enable = $feat)]
        pub(super) fn rows_x8(w: &[u8], row_bytes: usize, acts: &[ActRow<'_>], out: &mut [f32]) -> bool {
            match acts.len() {
                2 => x8_groups::<1>(w, row_bytes, acts, out),
                4 => x8_groups::<2>(w, row_bytes, acts, out),
                _ => return false,
            }
            true
        }

        #[inline]
        #[target_feature(enable = $feat)]
        fn to_array(v: __m256) -> [f32; 8] {
            let mut a = [0.0f32; 8];
            // SAFETY: `a` is 8 writable f32; the store is unaligned.
            unsafe { _mm256_storeu_ps(a.as_mut_ptr(), v) };
            a
        }

        /// The [`RowsKern`](crate::op::cpu::quant::RowsKern) of a refined decode row (two
        /// activation rows) over Q8_0/Q4_0/Q4_1/Q4_K/Q6_K weights; false (nothing written) for other
        /// dtypes and row counts. Caller: the CPU has `$feat`.
        #[target_feature(enable = $feat)]
        pub(super) fn rows_pair(
            dtype: crate::tensor::DType,
            w: &[u8],
            row_bytes: usize,
            acts: &[ActRow<'_>],
            out: &mut [f32],
        ) -> bool {
            use crate::tensor::DType;
            assert!(w.len() >= out.len() * row_bytes, "the driver passes whole rows");
            match (dtype, acts.len()) {
                (DType::Q8_0, 2) => rows_pair32::<0>(w, row_bytes, acts, out),
                (DType::Q4_0, 2) => rows_pair32::<1>(w, row_bytes, acts, out),
                (DType::Q4_1, 2) => rows_pair32::<2>(w, row_bytes, acts, out),
                (DType::Q4_K, 2) => rows_pair_k::<4>(w, row_bytes, acts, out),
                (DType::Q6_K, 2) => rows_pair_k::<6>(w, row_bytes, acts, out),
                (DType::Q4_Kx8, 2) => return rows_x8(w, row_bytes, acts, out),
                _ => return false,
            }
            true
        }

        /// The 8 six-bit scales and mins of a Q4_K block's 12 packed bytes (see
        /// `scale_min_k4`), unpacked with ggml's 32-bit masks: byte `j` of each word is
        /// sub-block `j`'s scale (first) and min (second).
        #[inline]
        #[target_feature(enable = $feat)]
        fn scales_k4(q: &[u8]) -> (u64, u64) {
            const K1: u32 = 0x3f3f_3f3f;
            const K2: u32 = 0x0f0f_0f0f;
            const K3: u32 = 0x0303_0303;
            let u = |i: usize| u32::from_le_bytes([q[4 * i], q[4 * i + 1], q[4 * i + 2], q[4 * i + 3]]);
            let (u0, u1, u2) = (u(0), u(1), u(2));
            let sc = [u0 & K1, (u2 & K2) | (((u0 >> 6) & K3) << 4)];
            let mn = [u1 & K1, ((u2 >> 4) & K2) | (((u1 >> 6) & K3) << 4)];
            let word = |v: [u32; 2]| u64::from(v[0]) | (u64::from(v[1]) << 32);
            (word(sc), word(mn))
        }

        /// A `vpshufb` mask that broadcasts i16 lane `lo` of each 128-bit half to the low half
        /// and lane `hi` to the high half.
        #[inline]
        #[target_feature(enable = $feat)]
        fn lanes16(lo: i16, hi: i16) -> __m256i {
            let pair = |j: i16| _mm_set1_epi16(((2 * j + 1) << 8) | (2 * j));
            _mm256_set_m128i(pair(hi), pair(lo))
        }

        /// Q4_K weights against `R` 256-block activation rows: per row a vector whose lanes
        /// sum to the dot. Per 32 values one `vpmaddubsw` (nibble × activation pairs in i16:
        /// at most 2·15·127) and one [`dot16`] with the sub-block's scale in every i16 lane
        /// (i32 sums, no horizontal reduction); the mins through the activation sums; one f32
        /// FMA per block for each.
        #[inline]
        #[target_feature(enable = $feat)]
        fn dot_q4_k<const R: usize>(w: &[u8], acts: &[ActRow<'_>]) -> [__m256; R] {
            let nb = w.len() / 144;
            assert!(acts.len() == R && w.len() == 144 * nb, "the driver passes R rows, whole blocks");
            for a in acts {
                assert!(a.qs.len() >= 256 * nb && a.d.len() >= nb && a.ds.len() >= 16 * nb, "rows hold nb blocks");
            }
            let mut acc = [_mm256_setzero_ps(); R];
            let m4 = _mm256_set1_epi8(0x0f);
            let pf = crate::op::cpu::tuning::Knob::QuantPrefetchBytes.get();
            for (b, blk) in w.chunks_exact(144).enumerate() {
                prefetch::<3>(blk, pf);
                let dm = f16x2(blk); // [d, dmin, 0, 0]
                let (sc, mn) = scales_k4(&blk[4..16]);
                // The 8 scales as i16 in both halves; the mins twice each (one per 16-value sum).
                let sc16 = _mm256_broadcastsi128_si256(_mm_cvtepu8_epi16(_mm_cvtsi64_si128(sc as i64)));
                // dmin · min_j twice each (once per 16-value sum), as f32.
                let mn8 = _mm_cvtsi64_si128(mn as i64);
                let mn8 = _mm_unpacklo_epi8(mn8, mn8);
                let dmin = _mm256_broadcastss_ps(_mm_movehdup_ps(dm));
                let mn_lo = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(mn8)), dmin);
                let mn_hi = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(_mm_srli_si128::<8>(mn8))), dmin);
                let mut isum = [[_mm256_setzero_si256(); 2]; R];
                // This block's activations per row (a plain loop: `from_fn`'s closure is not
                // inlined into a target-feature function).
                let mut qs: [&[i8]; R] = [&[]; R];
                for r in 0..R {
                    qs[r] = &acts[r].qs[256 * b..256 * b + 256];
                }
                for c in 0..4 {
                    // Sub-blocks 2c (low nibbles) and 2c + 1 (high nibbles) of 32 bytes.
                    let x = ld(&blk[16 + 32 * c..]);
                    let (lo, hi) = (_mm256_and_si256(x, m4), _mm256_and_si256(_mm256_srli_epi16::<4>(x), m4));
                    let j = 2 * c as i16;
                    let (s_lo, s_hi) =
                        (_mm256_shuffle_epi8(sc16, lanes16(j, j)), _mm256_shuffle_epi8(sc16, lanes16(j + 1, j + 1)));
                    for r in 0..R {
                        let q = &qs[r][64 * c..];
                        isum[r][0] = dot16(isum[r][0], _mm256_maddubs_epi16(lo, ld_i8(q)), s_lo);
                        isum[r][1] = dot16(isum[r][1], _mm256_maddubs_epi16(hi, ld_i8(&q[32..])), s_hi);
                    }
                }
                let dw = _mm_cvtss_f32(dm);
                for r in 0..R {
                    let a = &acts[r];
                    // Lanes sum to Σ_j dmin·min_j · d_a·(sum_2j + sum_2j+1), from `ds`.
                    let (s_lo, s_hi) = ld_f32x16(&a.ds[16 * b..]);
                    let acc_r = _mm256_fnmadd_ps(mn_hi, s_hi, _mm256_fnmadd_ps(mn_lo, s_lo, acc[r]));
                    let isum = _mm256_cvtepi32_ps(_mm256_add_epi32(isum[r][0], isum[r][1]));
                    acc[r] = _mm256_fmadd_ps(isum, _mm256_set1_ps(dw * a.d[b]), acc_r);
                }
            }
            acc
        }

        /// Q6_K weights against `R` 256-block activation rows, as [`dot_q4_k`]: 6-bit values
        /// (at most 2·63·127 per i16 pair) times the signed 16-value group scales in i16 lanes;
        /// the offset 32 through the activation sums.
        #[inline]
        #[target_feature(enable = $feat)]
        fn dot_q6_k<const R: usize>(w: &[u8], acts: &[ActRow<'_>]) -> [__m256; R] {
            let nb = w.len() / 210;
            assert!(acts.len() == R && w.len() == 210 * nb, "the driver passes R rows, whole blocks");
            for a in acts {
                assert!(a.qs.len() >= 256 * nb && a.d.len() >= nb && a.ds.len() >= 16 * nb, "rows hold nb blocks");
            }
            let mut acc = [_mm256_setzero_ps(); R];
            let (m4, m2) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(3));
            let pf = crate::op::cpu::tuning::Knob::QuantPrefetchBytes.get();
            for (b, blk) in w.chunks_exact(210).enumerate() {
                prefetch::<4>(blk, pf);
                let dw = f16le(blk, 208);
                let scales = &blk[192..208];
                let mut isum = [[_mm256_setzero_si256(); 2]; R];
                for h in 0..2 {
                    // SAFETY: `scales[8 * h..]` has 8 readable bytes (16 in all).
                    let sc8 = unsafe { _mm_loadl_epi64(scales[8 * h..8 * h + 8].as_ptr().cast()) };
                    let sc16 = _mm256_broadcastsi128_si256(_mm_cvtepi8_epi16(sc8)); // groups 8h..8h+8
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
                        // Values 0..16 of the run are group 8h + 2t, values 16..32 the next one.
                        let s = _mm256_shuffle_epi8(sc16, lanes16(2 * t as i16, 2 * t as i16 + 1));
                        for r in 0..R {
                            let q = &acts[r].qs[256 * b + 128 * h + 32 * t..];
                            isum[r][t & 1] = dot16(isum[r][t & 1], _mm256_maddubs_epi16(e, ld_i8(q)), s);
                        }
                    }
                }
                // SAFETY: `scales` is 16 bytes: two 8-byte loads.
                let (sc_lo, sc_hi) = unsafe {
                    (
                        _mm256_cvtepi8_epi32(_mm_loadl_epi64(scales[..8].as_ptr().cast())),
                        _mm256_cvtepi8_epi32(_mm_loadl_epi64(scales[8..].as_ptr().cast())),
                    )
                };
                // 32·d·sc_g as f32: Σ_g sc_g · Σ (q - 32)·a = Σ_g sc_g · Σ q·a - 32 · Σ_g sc_g · sum_g.
                let d32 = _mm256_set1_ps(32.0 * dw);
                let (off_lo, off_hi) =
                    (_mm256_mul_ps(_mm256_cvtepi32_ps(sc_lo), d32), _mm256_mul_ps(_mm256_cvtepi32_ps(sc_hi), d32));
                for r in 0..R {
                    let a = &acts[r];
                    let (s_lo, s_hi) = ld_f32x16(&a.ds[16 * b..]); // d_a · sum_g
                    let acc_r = _mm256_fnmadd_ps(off_hi, s_hi, _mm256_fnmadd_ps(off_lo, s_lo, acc[r]));
                    acc[r] = fma_i32(_mm256_add_epi32(isum[r][0], isum[r][1]), dw * a.d[b], acc_r);
                }
            }
            acc
        }

        /// One weight row of a 256-block type (`K = 4`: Q4_K, `K = 6`: Q6_K), one output per
        /// activation row.
        #[target_feature(enable = $feat)]
        pub(super) fn kern_k<const R: usize, const K: u8>(w: &[u8], acts: &[ActRow<'_>], out: &mut [f32]) {
            assert!(out.len() == R, "the dispatcher passes R outputs");
            let v = if K == 4 { dot_q4_k::<R>(w, acts) } else { dot_q6_k::<R>(w, acts) };
            for r in 0..R {
                out[r] = hsum(v[r]);
            }
        }

        /// [`rows_pair32`] for the 256-block types (`K = 4`: Q4_K, `K = 6`: Q6_K).
        #[target_feature(enable = $feat)]
        fn rows_pair_k<const K: u8>(w: &[u8], row_bytes: usize, acts: &[ActRow<'_>], out: &mut [f32]) {
            for (o, wr) in out.iter_mut().zip(w.chunks_exact(row_bytes)) {
                let v = if K == 4 { dot_q4_k::<2>(wr, acts) } else { dot_q6_k::<2>(wr, acts) };
                *o = hsum(_mm256_add_ps(v[0], v[1]));
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
                DType::Q4_K => crate::op::cpu::quant::x86::by_rows!(kern_k, 4, w, acts, out),
                DType::Q6_K => crate::op::cpu::quant::x86::by_rows!(kern_k, 6, w, acts, out),
                // Drivers send Q4_Kx8 only to the row-range kernels (see `scalar::run`).
                DType::Q4_Kx8 => out.fill(f32::NAN),
                DType::F32 | DType::BF16 | DType::F16 => {}
            }
        }
    };
}

/// The f16 at byte `off` of each of the 8 consecutive `bb`-byte blocks of `g`, as f32 (8 scalar
/// loads and word inserts).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn f16x8(g: &[u8], bb: usize, off: usize) -> __m256 {
    let h = |j: usize| u16::from_le_bytes([g[j * bb + off], g[j * bb + off + 1]]) as i16;
    _mm256_cvtph_ps(_mm_setr_epi16(h(0), h(1), h(2), h(3), h(4), h(5), h(6), h(7)))
}

/// Bytes per block of the 32-element weight type `T` (0: Q8_0, 1: Q4_0, 2: Q4_1).
pub(super) const fn block_bytes(t: u8) -> usize {
    match t {
        0 => 34,
        1 => 18,
        _ => 20,
    }
}

/// The weight scales of the 8 blocks of type `T` in `g` and the per-block term that multiplies
/// the activation block sums: Q4_1 its mins, Q4_0 `-8·d` (values are `q - 8`), Q8_0 zeros.
/// Portable gather (AVX2); the VNNI kernels gather with one word permute (`avx512::dm8`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn dm8_scalar<const T: u8>(g: &[u8]) -> (__m256, __m256) {
    let bb = block_bytes(T);
    let d = f16x8(g, bb, 0);
    let m = match T {
        0 => _mm256_setzero_ps(),
        1 => _mm256_mul_ps(d, _mm256_set1_ps(-8.0)),
        _ => f16x8(g, bb, 2),
    };
    (d, m)
}

pub(super) use {by_rows, quant_kernels};
