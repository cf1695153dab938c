//! CPU `linear` and `swiglu`.
//!
//! Work is split over blocks of output rows (one task each). Four weight rows at a time are
//! dotted, in place in the checkpoint's dtype, with every token: one token streams the weights
//! and prefetches the next four rows; several tokens share each weight load (`dot4_tokens`), and
//! every token's result is the same bits either way.

use super::{check, silu};
use crate::dot::{
    dot, dot4, dot4_then_next, dot4_tokens, dot4_tokens_bf16, dot8_tokens_f32, has_avx512_bf16,
    round_to_bf16,
};
use crate::scratch::with_scratch;
use crate::{check_len, KernelError, Mat, SendPtr, WeightData};

/// Plain reference: f64 accumulation, one output at a time.
pub fn reference(x: &[f32], n: usize, w: &Mat, y: &mut [f32]) -> Result<(), KernelError> {
    check(x, n, w, y)?;
    for t in 0..n {
        for o in 0..w.rows {
            let mut s = 0f64;
            for i in 0..w.cols {
                s += x[t * w.cols + i] as f64 * w.data.get(o * w.cols + i) as f64;
            }
            y[t * w.rows + o] = s as f32;
        }
    }
    Ok(())
}

/// Rows of the weight per task: enough tasks to balance the threads, few enough that each
/// one amortises its scheduling.
fn rows_per_task(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let target = rows.div_ceil(threads * 4);
    target.clamp(16, 256).div_ceil(4) * 4
}

/// Runs `f(row_start, row_end)` over blocks of output rows in parallel.
fn for_row_blocks(rows: usize, f: impl Fn(usize, usize) + Sync + Send) {
    let block = rows_per_task(rows);
    crate::team::parallel_for(rows.div_ceil(block), |t| {
        f(t * block, ((t + 1) * block).min(rows))
    });
}

/// One task of a fused region: rows `[start, end)` of matrix `mat`.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RowBlock {
    pub mat: usize,
    pub start: usize,
    pub end: usize,
}

/// The row blocks of several matrices of one width (`(m, rows)`: matrix `m` has `rows` output
/// rows), all cut into blocks of the same number of rows, the fewest [`rows_per_task`] gives any
/// of them: the threads' runs are cut by block count, so blocks of equal weight give each thread
/// an equal share (q's 128-row blocks next to k's and v's 32-row ones left one thread three times
/// the other's bytes, evened out only by taking q's large blocks from it at the end). Into `out`
/// (cleared first), so a caller that keeps `out` allocates nothing. Block sizes are multiples of
/// four, so every row is computed the same way as [`for_row_blocks`] computes it.
pub(crate) fn row_blocks_into(
    out: &mut Vec<RowBlock>,
    rows: impl IntoIterator<Item = (usize, usize)> + Clone,
) {
    out.clear();
    let Some(block) = rows
        .clone()
        .into_iter()
        .map(|(_, r)| rows_per_task(r))
        .min()
    else {
        return;
    };
    for (mat, rows) in rows {
        let mut start = 0;
        while start < rows {
            let end = (start + block).min(rows);
            out.push(RowBlock { mat, start, end });
            start = end;
        }
    }
}

/// Runs `f` over every block in one parallel region (one fork/join instead of one per matrix).
pub(crate) fn for_blocks(blocks: &[RowBlock], f: impl Fn(RowBlock) + Sync + Send) {
    crate::team::parallel_for(blocks.len(), |i| f(blocks[i]));
}

/// The output rows `[r0, r1)` in the order the products take them: `(r, true)` for each quad
/// `r..r + 4`, then `(r, false)` for each row left over.
fn quads_then_rows(r0: usize, r1: usize) -> impl Iterator<Item = (usize, bool)> {
    let quads_end = r0 + (r1 - r0) / 4 * 4;
    (r0..quads_end)
        .step_by(4)
        .map(|r| (r, true))
        .chain((quads_end..r1).map(|r| (r, false)))
}

/// Computes, for output rows `[r0, r1)` and every token, `x_t · w_r`, handing each to `emit(t, r, v)`;
/// the tokens go in passes of [`tokens_per_pass`], each pass over all the rows.
#[inline]
pub(crate) fn block_dots(
    x: &[f32],
    n: usize,
    w: &Mat,
    r0: usize,
    r1: usize,
    mut emit: impl FnMut(usize, usize, f32),
) {
    let chunk = tokens_per_pass(w.cols);
    if n <= chunk {
        return block_dots_tokens(x, n, w, r0, r1, emit);
    }
    let k = w.cols;
    let mut c0 = 0;
    while c0 < n {
        let c1 = (c0 + chunk).min(n);
        block_dots_tokens(&x[c0 * k..c1 * k], c1 - c0, w, r0, r1, |t, r, v| {
            emit(c0 + t, r, v)
        });
        c0 = c1;
    }
}

/// Bytes of activations one pass over a block's rows takes: each quad of rows is dotted with
/// every token of the pass, so the pass's rows of `x` are read once per quad and must stay in L2
/// (a quarter of a 2 MiB L2, leaving room for the weights streaming past). All 512 tokens of a
/// prompt at once (2 MiB at hidden 1024) were read from L3 for every quad: prefill 512 on the
/// bench checkpoint, 2 threads, three alternated rounds, f32 272.6–301.1 → 322.8–364.1 tok/s,
/// bf16 320.8–333.7 → 407.5–474.0 (256 KiB and 1 MiB per pass about the same).
const PASS_BYTES: usize = 512 << 10;

/// Tokens per pass over a block's rows for rows of `k` f32 activations: [`PASS_BYTES`] of them,
/// a multiple of eight (the tallest tile), at least eight.
fn tokens_per_pass(k: usize) -> usize {
    (PASS_BYTES / (4 * k.max(1))).max(8) / 8 * 8
}

/// [`block_dots`] for the tokens of one pass.
#[inline]
fn block_dots_tokens(
    x: &[f32],
    n: usize,
    w: &Mat,
    r0: usize,
    r1: usize,
    emit: impl FnMut(usize, usize, f32),
) {
    match (w.bf16_activations, w.data) {
        (true, WeightData::BF16(wd)) => block_dots_bf16(x, n, w, wd, r0, r1, emit),
        (_, WeightData::Quant(_)) => block_dots_quant(x, n, w, r0, r1, emit),
        _ => block_dots_f32(x, n, w, r0, r1, emit),
    }
}

/// [`block_dots`] with quantised rows: one token dots each quad of rows where it lies with the
/// type's fused kernel; otherwise the quad is dequantized into a per-thread buffer (L1/L2-resident)
/// and dotted with every token by the f32 kernels. Every way gives the bits of [`dot4`] on the
/// dequantized rows ([`dot4_tokens`] and the fused kernels sum as it does), so a sequence's logits
/// do not depend on its batch.
fn block_dots_quant(
    x: &[f32],
    n: usize,
    w: &Mat,
    r0: usize,
    r1: usize,
    mut emit: impl FnMut(usize, usize, f32),
) {
    thread_local! {
        static ROWS: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let k = w.cols;
    // One token over a type with a fused kernel: its rows are dotted where they lie.
    let fused = match (n, w.data) {
        (1, WeightData::Quant(q)) => crate::quant::fused_dot4(q.ty)
            .zip(q.ty.bytes_for(k))
            .map(|(f, row_bytes)| (f, q.bytes, row_bytes)),
        _ => None,
    };
    with_scratch(&ROWS, |buf| {
        buf.clear();
        buf.resize(4 * k, 0.0);
        for (r, quad) in quads_then_rows(r0, r1) {
            if let (true, Some((dot4_fused, bytes, rb))) = (quad, fused) {
                let row = |j: usize| &bytes[(r + j) * rb..(r + j + 1) * rb];
                if let Some(v) = dot4_fused(&x[..k], [row(0), row(1), row(2), row(3)]) {
                    for (j, val) in v.into_iter().enumerate() {
                        emit(0, r + j, val);
                    }
                    continue;
                }
            }
            let height = if quad { 4 } else { 1 };
            w.data.to_f32_into(r * k, &mut buf[..height * k]);
            if !quad {
                let row = WeightData::F32(&buf[..k]);
                for t in 0..n {
                    emit(t, r, dot(&x[t * k..(t + 1) * k], row));
                }
                continue;
            }
            let rows: [WeightData; 4] =
                std::array::from_fn(|j| WeightData::F32(&buf[j * k..(j + 1) * k]));
            if n == 1 {
                for (q, val) in dot4(x, rows).into_iter().enumerate() {
                    emit(0, r + q, val);
                }
            } else {
                dot4_tokens(x, n, rows, false, |t, v| {
                    for (q, val) in v.into_iter().enumerate() {
                        emit(t, r + q, val);
                    }
                });
            }
        }
    })
}

/// [`block_dots`] with f32 activations.
#[inline]
fn block_dots_f32(
    x: &[f32],
    n: usize,
    w: &Mat,
    r0: usize,
    r1: usize,
    mut emit: impl FnMut(usize, usize, f32),
) {
    let k = w.cols;
    let quads_end = r0 + (r1 - r0) / 4 * 4;
    let mut r = r0;
    while r < quads_end {
        // Several tokens and f32 rows: two quads at once where the block holds them.
        if let (true, WeightData::F32(wd)) = (n > 1 && r + 8 <= quads_end, w.data) {
            let rows = std::array::from_fn(|j| &wd[(r + j) * k..(r + j + 1) * k]);
            if dot8_tokens_f32(x, n, rows, r + 16 <= w.rows, |t, v| {
                for (j, val) in v.into_iter().enumerate() {
                    emit(t, r + j, val);
                }
            }) {
                r += 8;
                continue;
            }
        }
        let rows = [w.row(r), w.row(r + 1), w.row(r + 2), w.row(r + 3)];
        if n == 1 && r + 8 <= w.rows {
            // A matrix-vector product streams the weights once: prefetch the next quad.
            for (q, val) in dot4_then_next(x, rows).into_iter().enumerate() {
                emit(0, r + q, val);
            }
        } else {
            dot4_tokens(x, n, rows, r + 8 <= w.rows, |t, v| {
                for (q, val) in v.into_iter().enumerate() {
                    emit(t, r + q, val);
                }
            });
        }
        r += 4;
    }
    for r in quads_end..r1 {
        let row = w.row(r);
        for t in 0..n {
            emit(t, r, dot(&x[t * k..(t + 1) * k], row));
        }
    }
}

/// [`block_dots`] with the activations rounded to bf16 (`wd`: the elements of `w`): pairwise
/// bf16 products where the CPU has them, else the f32 products of the rounded values. Either way
/// every token's result is the same bits however many tokens share the call.
fn block_dots_bf16(
    x: &[f32],
    n: usize,
    w: &Mat,
    wd: &[half::bf16],
    r0: usize,
    r1: usize,
    mut emit: impl FnMut(usize, usize, f32),
) {
    thread_local! {
        /// The rounded rows, kept per thread so a call does not allocate.
        static ROUNDED: std::cell::RefCell<Vec<half::bf16>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    with_scratch(&ROUNDED, |xb| {
        round_to_bf16(x, xb);
        if !has_avx512_bf16() {
            let xr: Vec<f32> = xb.iter().map(|v| v.to_f32()).collect();
            return block_dots_f32(&xr, n, w, r0, r1, emit);
        }
        let k = w.cols;
        let row = |r: usize| &wd[r * k..(r + 1) * k];
        for (r, quad) in quads_then_rows(r0, r1) {
            if !quad {
                for t in 0..n {
                    let xt = &xb[t * k..(t + 1) * k];
                    let v = xt
                        .iter()
                        .zip(row(r))
                        .map(|(a, b)| a.to_f32() * b.to_f32())
                        .sum();
                    emit(t, r, v);
                }
                continue;
            }
            let rows = [row(r), row(r + 1), row(r + 2), row(r + 3)];
            dot4_tokens_bf16(&xb, n, rows, r + 8 <= w.rows, |t, v| {
                for (q, val) in v.into_iter().enumerate() {
                    emit(t, r + q, val);
                }
            });
        }
    })
}

/// Fast CPU `linear`.
pub fn run(x: &[f32], n: usize, w: &Mat, y: &mut [f32]) -> Result<(), KernelError> {
    check(x, n, w, y)?;
    let out = w.rows;
    let yp = SendPtr(y.as_mut_ptr());
    for_row_blocks(out, |r0, r1| {
        block_dots(x, n, w, r0, r1, |t, r, v| {
            // SAFETY: row blocks are disjoint across tasks, so (t, r) is written by one task only;
            // t < n and r < out keep the index inside y (length checked above).
            unsafe { *yp.at(t * out + r) = v };
        });
    });
    Ok(())
}

/// `ys[m] = x · ws[m]ᵀ` for several matrices over one input, all in one parallel region; each
/// output row is the same bits as [`run`] gives it.
pub fn run_many(x: &[f32], n: usize, ws: &[Mat], ys: &mut [&mut [f32]]) -> Result<(), KernelError> {
    check_len("linear_many", "outputs", ys.len(), ws.len())?;
    for (w, y) in ws.iter().zip(ys.iter()) {
        check(x, n, w, y)?;
    }
    thread_local! {
        /// The row blocks of the last call, kept per thread so a call does not allocate.
        static BLOCKS: std::cell::RefCell<Vec<RowBlock>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    // The outputs' pointers on the stack for the usual few matrices (q, k, v).
    const ON_STACK: usize = 4;
    let mut stack = [SendPtr(std::ptr::null_mut()); ON_STACK];
    let heap: Vec<SendPtr>;
    let ptrs: &[SendPtr] = if ys.len() <= ON_STACK {
        for (p, y) in stack.iter_mut().zip(ys.iter_mut()) {
            *p = SendPtr(y.as_mut_ptr());
        }
        &stack[..ys.len()]
    } else {
        heap = ys.iter_mut().map(|y| SendPtr(y.as_mut_ptr())).collect();
        &heap
    };
    with_scratch(&BLOCKS, |blocks| {
        row_blocks_into(blocks, ws.iter().map(|w| w.rows).enumerate());
        for_blocks(blocks, |b| {
            let (w, yp) = (&ws[b.mat], ptrs[b.mat]);
            let out = w.rows;
            block_dots(x, n, w, b.start, b.end, |t, r, v| {
                // SAFETY: blocks are disjoint (matrix, rows) ranges and each matrix has its own
                // output; t < n and r < out keep the index inside ys[b.mat] (length checked
                // above).
                unsafe { *yp.at(t * out + r) = v };
            });
        })
    });
    Ok(())
}

/// Rows `[r0, r1)` of `swiglu` for `n` tokens: `act[t, r]` at `ap + t · w1.rows + r`.
///
/// # Safety
/// `ap` must point to `n · w1.rows` writable elements that no other task writes in these rows.
#[inline]
pub(crate) unsafe fn swiglu_rows(
    x: &[f32],
    n: usize,
    w1: &Mat,
    w3: &Mat,
    r0: usize,
    r1: usize,
    ap: SendPtr,
) {
    let ffn = w1.rows;
    // SAFETY (both closures): the caller's contract; t < n and r < ffn.
    block_dots(x, n, w1, r0, r1, |t, r, v| unsafe {
        *ap.at(t * ffn + r) = silu(v);
    });
    block_dots(x, n, w3, r0, r1, |t, r, v| unsafe {
        *ap.at(t * ffn + r) *= v;
    });
}

fn check_swiglu(x: &[f32], n: usize, w1: &Mat, w3: &Mat, act: &[f32]) -> Result<(), KernelError> {
    if w1.rows != w3.rows || w1.cols != w3.cols {
        return Err(KernelError::Invalid {
            op: "swiglu",
            message: format!(
                "w1 is [{}, {}] but w3 is [{}, {}]",
                w1.rows, w1.cols, w3.rows, w3.cols
            ),
        });
    }
    check_len("swiglu", "x", x.len(), n * w1.cols)?;
    check_len("swiglu", "act", act.len(), n * w1.rows)
}

/// Reference `swiglu`: `act = silu(x·W1ᵀ) ⊙ (x·W3ᵀ)`, `act`: `[n, ffn]`.
pub fn swiglu_reference(
    x: &[f32],
    n: usize,
    w1: &Mat,
    w3: &Mat,
    act: &mut [f32],
) -> Result<(), KernelError> {
    check_swiglu(x, n, w1, w3, act)?;
    let mut g = vec![0f32; act.len()];
    let mut u = vec![0f32; act.len()];
    reference(x, n, w1, &mut g)?;
    reference(x, n, w3, &mut u)?;
    for ((a, g), u) in act.iter_mut().zip(&g).zip(&u) {
        *a = silu(*g) * u;
    }
    Ok(())
}

/// Fast `swiglu`: both projections of a row block in one task, SiLU·mul applied as they finish.
pub fn swiglu(x: &[f32], n: usize, w1: &Mat, w3: &Mat, act: &mut [f32]) -> Result<(), KernelError> {
    check_swiglu(x, n, w1, w3, act)?;
    let ffn = w1.rows;
    let ap = SendPtr(act.as_mut_ptr());
    for_row_blocks(ffn, |r0, r1| {
        // SAFETY: disjoint row blocks per task; act holds n · ffn elements (checked).
        unsafe { swiglu_rows(x, n, w1, w3, r0, r1, ap) };
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::WeightData;
    use half::{bf16, f16};

    pub(crate) fn data(n: usize, seed: u64) -> Vec<f32> {
        let mut s = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
        (0..n)
            .map(|_| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 40) as f32 / (1u64 << 24) as f32) - 0.5
            })
            .collect()
    }

    fn close(got: &[f32], want: &[f32], tol: f32) {
        for (i, (g, w)) in got.iter().zip(want).enumerate() {
            assert!(
                (g - w).abs() <= tol * (1.0 + w.abs()),
                "element {i}: {g} vs {w}"
            );
        }
    }

    #[test]
    fn fast_linear_matches_reference_for_all_dtypes_and_shapes() {
        for (n, out, inn) in [
            (1, 5, 3),
            (1, 40, 24),
            (3, 17, 33),
            (70, 130, 64),
            (5, 256, 100),
        ] {
            let x = data(n * inn, 1);
            let w = data(out * inn, 2);
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            for wd in [
                WeightData::F32(&w),
                WeightData::BF16(&wb),
                WeightData::F16(&wh),
            ] {
                let m = Mat::new(wd, out, inn);
                let mut want = vec![0f32; n * out];
                let mut got = vec![0f32; n * out];
                reference(&x, n, &m, &mut want).unwrap();
                run(&x, n, &m, &mut got).unwrap();
                close(&got, &want, 1e-5);
            }
        }
    }

    /// More tokens than one pass takes (rows long enough that a pass is a few tokens, a count
    /// that does not fill the last pass): every output within 1e-4 of the reference, and each
    /// token's row the same bits as the token alone gives, for every dtype and for bf16
    /// activations.
    #[test]
    fn tokens_over_several_passes_match_the_reference_and_each_token_alone() {
        let inn = 16 << 10; // 64 KiB a token: eight tokens a pass, the fewest
        let (n, out) = (21, 9);
        assert!(n > 2 * tokens_per_pass(inn));
        let x = data(n * inn, 11);
        let w = data(out * inn, 12);
        let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
        let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
        let mats = [
            Mat::new(WeightData::F32(&w), out, inn),
            Mat::new(WeightData::BF16(&wb), out, inn),
            Mat::new(WeightData::F16(&wh), out, inn),
            Mat::new(WeightData::BF16(&wb), out, inn).with_bf16_activations(true),
        ];
        for m in mats {
            let xr: Vec<f32> = if m.bf16_activations {
                x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect()
            } else {
                x.clone()
            };
            let mut want = vec![0f32; n * out];
            reference(&xr, n, &m, &mut want).unwrap();
            let mut got = vec![0f32; n * out];
            run(&x, n, &m, &mut got).unwrap();
            // Sums of 16 Ki f32 products: rounding errors of ≈ 1.5e-5 (they grow with √k).
            close(&got, &want, 1e-4);
            for t in 0..n {
                let mut alone = vec![0f32; out];
                run(&x[t * inn..(t + 1) * inn], 1, &m, &mut alone).unwrap();
                assert_eq!(alone, got[t * out..(t + 1) * out], "token {t} of {n}");
            }
        }
    }

    /// With `bf16_activations`: each output within 1e-5 of the f64 product of the bf16-rounded
    /// activations with the weights (pairwise bf16 products are exact in f32), and every token's
    /// row the same bits whether it runs alone or in a batch (k not a multiple of 32 exercises the
    /// scalar tail, 256 rows the streamed quads).
    #[test]
    fn bf16_activations_match_the_rounded_reference_and_batching() {
        for (n, out, inn) in [(1, 5, 3), (3, 17, 33), (7, 256, 96), (13, 130, 64)] {
            let x = data(n * inn, 31);
            let wb: Vec<bf16> = data(out * inn, 32)
                .iter()
                .map(|&v| bf16::from_f32(v))
                .collect();
            let m = Mat::new(WeightData::BF16(&wb), out, inn).with_bf16_activations(true);
            let xr: Vec<f32> = x.iter().map(|&v| bf16::from_f32(v).to_f32()).collect();
            let mut want = vec![0f32; n * out];
            reference(&xr, n, &m, &mut want).unwrap();
            let mut got = vec![0f32; n * out];
            run(&x, n, &m, &mut got).unwrap();
            close(&got, &want, 1e-5);
            let plain = Mat::new(WeightData::BF16(&wb), out, inn);
            let mut f32_acts = vec![0f32; n * out];
            run(&x, n, &plain, &mut f32_acts).unwrap();
            assert_ne!(got, f32_acts, "the activations were not rounded");
            for t in 0..n {
                let mut alone = vec![0f32; out];
                run(&x[t * inn..(t + 1) * inn], 1, &m, &mut alone).unwrap();
                assert_eq!(alone, got[t * out..(t + 1) * out], "token {t} of {n}");
            }
        }
    }

    #[test]
    fn run_many_gives_each_matrix_the_bits_of_run() {
        let inn = 96;
        let outs = [300, 64, 64, 7];
        for n in [1, 2, 7] {
            let x = data(n * inn, 11);
            let ws: Vec<Vec<f32>> = outs
                .iter()
                .enumerate()
                .map(|(i, &o)| data(o * inn, 20 + i as u64))
                .collect();
            let wb: Vec<Vec<bf16>> = ws
                .iter()
                .map(|w| w.iter().map(|&v| bf16::from_f32(v)).collect())
                .collect();
            // Mixed dtypes in one call.
            let mats: Vec<Mat> = outs
                .iter()
                .enumerate()
                .map(|(i, &o)| {
                    let d = if i % 2 == 0 {
                        WeightData::F32(&ws[i])
                    } else {
                        WeightData::BF16(&wb[i])
                    };
                    Mat::new(d, o, inn)
                })
                .collect();
            let mut got: Vec<Vec<f32>> = outs.iter().map(|&o| vec![0f32; n * o]).collect();
            let mut ys: Vec<&mut [f32]> = got.iter_mut().map(|g| g.as_mut_slice()).collect();
            run_many(&x, n, &mats, &mut ys).unwrap();
            for (m, g) in mats.iter().zip(&got) {
                let mut want = vec![0f32; n * m.rows];
                run(&x, n, m, &mut want).unwrap();
                assert_eq!(g, &want);
            }
        }
    }

    #[test]
    fn fast_swiglu_matches_reference() {
        let (n, ffn, h) = (9, 40, 24);
        let x = data(n * h, 3);
        let w1 = data(ffn * h, 4);
        let w3 = data(ffn * h, 5);
        let (m1, m3) = (
            Mat::new(WeightData::F32(&w1), ffn, h),
            Mat::new(WeightData::F32(&w3), ffn, h),
        );
        let mut want = vec![0f32; n * ffn];
        let mut got = vec![0f32; n * ffn];
        swiglu_reference(&x, n, &m1, &m3, &mut want).unwrap();
        swiglu(&x, n, &m1, &m3, &mut got).unwrap();
        close(&got, &want, 1e-5);
    }

    #[test]
    fn wrong_lengths_are_errors() {
        let w = vec![0f32; 6];
        let m = Mat::new(WeightData::F32(&w), 2, 3);
        let mut y = vec![0f32; 2];
        assert!(matches!(
            run(&[0.0; 4], 1, &m, &mut y),
            Err(KernelError::Shape { what: "x", .. })
        ));
    }

    /// Quantised rows: the product is the f32 product of the dequantized matrix, bit for bit,
    /// within 1e-4 of the f64 reference, and every token gets the same bits alone (the fused
    /// one-token kernels) as in a batch.
    #[test]
    fn quantised_rows_multiply_as_their_dequantized_values() {
        use crate::quant::GgmlType;
        // Every quantised type: one token takes its fused kernel, nine the buffered path.
        for (ty, inn, scales) in [
            (GgmlType::Q8_0, 96usize, &[0usize][..]),
            (GgmlType::Q4_K, 512, &[0, 2][..]),
            (GgmlType::Q5_K, 512, &[0, 2][..]),
            (GgmlType::Q6_K, 512, &[208][..]),
            (GgmlType::Q2_K, 512, &[80, 82][..]),
            (GgmlType::Q3_K, 512, &[108][..]),
            (GgmlType::IQ4_XS, 512, &[0][..]),
            (GgmlType::Q4_0, 64, &[0][..]),
            (GgmlType::Q4_1, 64, &[0, 2][..]),
            (GgmlType::Q5_0, 64, &[0][..]),
            (GgmlType::Q5_1, 64, &[0, 2][..]),
            (GgmlType::IQ4_NL, 64, &[0][..]),
        ] {
            quantised_case(ty, 13, inn, scales);
        }
    }

    fn quantised_case(ty: crate::quant::GgmlType, out: usize, inn: usize, scales: &[usize]) {
        use crate::QuantData;
        let mut s = 7u32;
        let mut next = || {
            s = s.wrapping_mul(1664525).wrapping_add(1013904223);
            s >> 8
        };
        let blocks = out * inn / ty.block_size();
        let mut bytes: Vec<u8> = (0..blocks * ty.block_bytes())
            .map(|_| (next() % 256) as u8)
            .collect();
        for b in 0..blocks {
            for &o in scales {
                let d = half::f16::from_f32(0.001 + (next() % 1000) as f32 * 1e-5);
                bytes[b * ty.block_bytes() + o..][..2].copy_from_slice(&d.to_bits().to_le_bytes());
            }
        }
        let q = QuantData::new(ty, &bytes, out * inn).unwrap();
        let mut deq = vec![0f32; out * inn];
        q.to_f32_into(0, &mut deq);
        let n = 9;
        let x: Vec<f32> = (0..n * inn)
            .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
            .collect();
        let quant = Mat::new(WeightData::Quant(q), out, inn);
        let plain = Mat::new(WeightData::F32(&deq), out, inn);
        let (mut yq, mut yf) = (vec![0f32; n * out], vec![0f32; n * out]);
        run(&x, n, &quant, &mut yq).unwrap();
        run(&x, n, &plain, &mut yf).unwrap();
        let mut yr = vec![0f32; n * out];
        reference(&x, n, &plain, &mut yr).unwrap();
        for (a, b) in yq.iter().zip(&yr) {
            assert!((a - b).abs() <= 1e-4 * b.abs().max(1.0), "{ty}: {a} vs {b}");
        }
        for t in 0..n {
            let mut alone = vec![0f32; out];
            run(&x[t * inn..(t + 1) * inn], 1, &quant, &mut alone).unwrap();
            assert_eq!(
                alone,
                yq[t * out..(t + 1) * out],
                "token {t} alone vs batched"
            );
        }
        assert_eq!(yq, yf, "quantised rows vs their dequantized f32 matrix");
    }
}
