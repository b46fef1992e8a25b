//! Decode matvecs on block-quantized weights: one activation row, quantized once (with its
//! refinement residual, see the module docs of [`super`]) for every matrix that reads it
//! (`q | k | v`, `gate | up`), and one pool dispatch over all their rows.

use super::{ActRow, QActs, rows_kernel};
use crate::base::{Error, Result};
use crate::op::cpu::simd::Isa;
use crate::op::cpu::tuning::Knob;
use crate::tensor::DType;

/// `out = [w₀; w₁; …] · x` for the row `x` (`k = x.len()` values): part `i` is `(dtype, blocks)`,
/// `[nᵢ, k]` in whole blocks, and fills `out[Σ_{j<i} nⱼ ..][..nᵢ]`; `out.len()` must be `Σnᵢ`.
pub(crate) fn matvec_parts(isa: Isa, parts: &[(DType, &[u8])], x: &[f32], out: &mut [f32]) -> Result<()> {
    let k = x.len();
    let bad = |msg: String| Err(Error::op("matmul", msg));
    // (dtype, blocks, row bytes, first output row) per part.
    let mut layout = Vec::with_capacity(parts.len());
    let mut total = 0;
    for &(dtype, w) in parts {
        let Some(rb) = dtype.bytes_for(k).filter(|&rb| dtype.is_quantized() && rb > 0) else {
            return bad(format!("{dtype} weight rows of {k} elements are not whole blocks"));
        };
        // Q4_Kx8 matrices hold whole groups of 8 rows (`tensor::repack`).
        let unit = if dtype == DType::Q4_Kx8 { rb * crate::tensor::repack::GROUP } else { rb };
        if w.len() % unit != 0 {
            return bad(format!("{dtype} weights of {} bytes are not whole rows (groups) of {unit}", w.len()));
        }
        layout.push((dtype, w, rb, total));
        total += w.len() / rb;
    }
    if out.len() != total {
        return bad(format!("matvec of {total} weight rows into an output of {}", out.len()));
    }
    if total == 0 {
        return Ok(());
    }
    // One refined quantization per activation format the parts use (32- or 256-blocks).
    let acts32 = layout.iter().any(|p| QActs::block_for(p.0) == 32).then(|| QActs::quantize_refined(x, k, 32));
    let acts256 = layout.iter().any(|p| QActs::block_for(p.0) == 256).then(|| QActs::quantize_refined(x, k, 256));
    let (rows32, rows256) = (pair(acts32.as_ref()), pair(acts256.as_ref()));
    // Tasks over the concatenated rows: `QuantDecodeTasks` per thread (0: 64-row tasks).
    let threads = rayon::current_num_threads();
    let per_thread = Knob::QuantDecodeTasks.get();
    let per_task = if per_thread == 0 {
        (total / (4 * threads)).clamp(1, 64)
    } else {
        total.div_ceil(per_thread * threads).max(1)
    };
    // Tasks start on group boundaries when a part is interleaved (every part's rows then are
    // whole groups too, or the group kernel's rows would straddle tasks).
    let grouped = layout.iter().any(|p| p.0 == DType::Q4_Kx8);
    if grouped && layout.iter().any(|p| (p.1.len() / p.2) % crate::tensor::repack::GROUP != 0) {
        return bad("q4_k_x8 with other parts whose row counts are not multiples of 8".into());
    }
    let per_task = if grouped { per_task.next_multiple_of(crate::tensor::repack::GROUP) } else { per_task };
    let run_rows = rows_kernel(isa);
    let mut outs: Vec<&mut [f32]> = out.chunks_mut(per_task).collect();
    crate::op::cpu::pool::for_each_mut(&mut outs, |t, o| {
        let (t0, t1) = (t * per_task, t * per_task + o.len()); // this task's rows of `out`
        for &(dtype, w, rb, p0) in &layout {
            let (lo, hi) = (t0.max(p0), t1.min(p0 + w.len() / rb));
            let rows = if QActs::block_for(dtype) == 32 { &rows32 } else { &rows256 };
            if let (true, Some(rows)) = (lo < hi, rows) {
                run_rows(dtype, &w[(lo - p0) * rb..(hi - p0) * rb], rb, rows, &mut o[lo - t0..hi - t0]);
            }
        }
    });
    Ok(())
}

/// The value row and the residual row of a refined one-row [`QActs`].
fn pair(a: Option<&QActs>) -> Option<[ActRow<'_>; 2]> {
    a.map(|a| [a.row(0), a.row(1)])
}
