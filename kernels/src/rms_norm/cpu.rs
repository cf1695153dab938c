use super::RmsNorm;
use crate::{check_len, KernelError, WeightData};

fn check(p: &RmsNorm, x: &[f32], w: &WeightData, out: &[f32]) -> Result<(), KernelError> {
    check_len("rms_norm", "w", w.len(), p.hidden)?;
    check_len("rms_norm", "out", out.len(), x.len())?;
    if p.hidden == 0 || x.len() % p.hidden != 0 {
        return Err(KernelError::Invalid {
            op: "rms_norm",
            message: format!(
                "x has {} elements, not a multiple of hidden {}",
                x.len(),
                p.hidden
            ),
        });
    }
    Ok(())
}

/// The sum of squares in f64, over four interleaved lanes (element `i` in lane `i % 4`, the lanes
/// added in pairs at the end): four independent chains instead of one, which a decode step waits
/// on twice per layer.
fn sum_of_squares(x: &[f32]) -> f64 {
    let mut lanes = [0f64; 4];
    let chunks = x.chunks_exact(4);
    let tail = chunks.remainder();
    for c in chunks {
        for (l, &v) in lanes.iter_mut().zip(c) {
            *l += v as f64 * v as f64;
        }
    }
    for (l, &v) in lanes.iter_mut().zip(tail) {
        *l += v as f64 * v as f64;
    }
    (lanes[0] + lanes[1]) + (lanes[2] + lanes[3])
}

#[inline]
fn norm_row(p: &RmsNorm, x: &[f32], w: &WeightData, out: &mut [f32]) {
    let ss = sum_of_squares(x);
    let inv = 1.0 / ((ss / p.hidden as f64) as f32 + p.eps).sqrt();
    // One loop per dtype, so each is a plain vectorisable loop.
    match w {
        WeightData::F32(w) => {
            for ((o, &v), &g) in out.iter_mut().zip(x).zip(w.iter()) {
                *o = g * (v * inv);
            }
        }
        WeightData::BF16(w) => {
            for ((o, &v), &g) in out.iter_mut().zip(x).zip(w.iter()) {
                *o = g.to_f32() * (v * inv);
            }
        }
        WeightData::F16(w) => {
            for ((o, &v), &g) in out.iter_mut().zip(x).zip(w.iter()) {
                *o = g.to_f32() * (v * inv);
            }
        }
        WeightData::Quant(q) => {
            let mut g = vec![0f32; out.len()];
            q.to_f32_into(0, &mut g);
            for ((o, &v), &g) in out.iter_mut().zip(x).zip(&g) {
                *o = g * (v * inv);
            }
        }
    }
}

/// Reference: one row at a time, one element at a time.
pub fn reference(
    p: &RmsNorm,
    x: &[f32],
    w: &WeightData,
    out: &mut [f32],
) -> Result<(), KernelError> {
    check(p, x, w, out)?;
    for (xr, or) in x.chunks(p.hidden).zip(out.chunks_mut(p.hidden)) {
        let ss: f64 = xr.iter().map(|&v| (v as f64) * (v as f64)).sum();
        let inv = 1.0 / ((ss / p.hidden as f64) as f32 + p.eps).sqrt();
        for (i, (o, &v)) in or.iter_mut().zip(xr).enumerate() {
            *o = w.get(i) * (v * inv);
        }
    }
    Ok(())
}

/// Rows in parallel once there are enough of them to pay for the split.
pub fn run(p: &RmsNorm, x: &[f32], w: &WeightData, out: &mut [f32]) -> Result<(), KernelError> {
    check(p, x, w, out)?;
    let h = p.hidden;
    if x.len() / h < 16 {
        for (xr, or) in x.chunks(h).zip(out.chunks_mut(h)) {
            norm_row(p, xr, w, or);
        }
        return Ok(());
    }
    crate::team::parallel_for_rows(out, h, |r, or| norm_row(p, &x[r * h..(r + 1) * h], w, or));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use half::{bf16, f16};

    #[test]
    fn fast_rows_match_the_reference_for_every_dtype_and_width() {
        for hidden in [1usize, 6, 37, 1024] {
            for rows in [1usize, 3, 20] {
                let x: Vec<f32> = (0..rows * hidden)
                    .map(|i| ((i * 29 + 3) % 97) as f32 / 24.0 - 2.0)
                    .collect();
                let g: Vec<f32> = (0..hidden).map(|i| 0.5 + (i % 7) as f32 / 8.0).collect();
                let gb: Vec<bf16> = g.iter().map(|&v| bf16::from_f32(v)).collect();
                let gh: Vec<f16> = g.iter().map(|&v| f16::from_f32(v)).collect();
                let p = RmsNorm { hidden, eps: 1e-5 };
                for w in [
                    WeightData::F32(&g),
                    WeightData::BF16(&gb),
                    WeightData::F16(&gh),
                ] {
                    let (mut want, mut got) = (vec![0f32; x.len()], vec![0f32; x.len()]);
                    reference(&p, &x, &w, &mut want).unwrap();
                    run(&p, &x, &w, &mut got).unwrap();
                    for (i, (a, b)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (a - b).abs() <= 1e-6 * (1.0 + b.abs()),
                            "hidden {hidden} rows {rows} {:?} element {i}: {a} vs {b}",
                            w.dtype()
                        );
                    }
                }
            }
        }
        let p = RmsNorm {
            hidden: 4,
            eps: 1e-5,
        };
        let g = [1f32; 3];
        assert!(run(&p, &[1.0; 8], &WeightData::F32(&g), &mut [0.0; 8]).is_err());
    }
}
