//! CPU `linear` and `swiglu`.
//!
//! Work is split over blocks of output rows (one rayon task each). Four weight rows at a time are
//! dotted, in place in the checkpoint's dtype, with every token: one token streams the weights
//! and prefetches the next four rows; several tokens share each weight load (`dot4_tokens`), and
//! every token's result is the same bits either way.

use super::{check, silu};
use crate::dot::{dot, dot4_then_next, dot4_tokens};
use crate::{check_len, KernelError, Mat, SendPtr};
use rayon::prelude::*;

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

/// Rows of the weight per rayon task: enough tasks to balance the threads, few enough that each
/// one amortises its scheduling.
fn rows_per_task(rows: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    let target = rows.div_ceil(threads * 4);
    target.clamp(16, 256).div_ceil(4) * 4
}

/// Runs `f(row_start, row_end)` over blocks of output rows in parallel.
fn for_row_blocks(rows: usize, f: impl Fn(usize, usize) + Sync + Send) {
    let block = rows_per_task(rows);
    let tasks = rows.div_ceil(block);
    if tasks <= 1 {
        f(0, rows);
        return;
    }
    (0..tasks)
        .into_par_iter()
        .for_each(|t| f(t * block, ((t + 1) * block).min(rows)));
}

/// Computes, for output rows `[r0, r1)` and every token, `x_t · w_r`, handing each to `emit(t, r, v)`.
#[inline]
fn block_dots(
    x: &[f32],
    n: usize,
    w: &Mat,
    r0: usize,
    r1: usize,
    mut emit: impl FnMut(usize, usize, f32),
) {
    let k = w.cols;
    let mut r = r0;
    while r < r1 {
        if r + 4 <= r1 {
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
        } else {
            let row = w.row(r);
            for t in 0..n {
                emit(t, r, dot(&x[t * k..(t + 1) * k], row));
            }
            r += 1;
        }
    }
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
        // SAFETY (both closures): disjoint row blocks per task; indices bounded by the checks.
        block_dots(x, n, w1, r0, r1, |t, r, v| unsafe {
            *ap.at(t * ffn + r) = silu(v);
        });
        block_dots(x, n, w3, r0, r1, |t, r, v| unsafe {
            *ap.at(t * ffn + r) *= v;
        });
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
}
