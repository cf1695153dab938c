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

#[inline]
fn norm_row(p: &RmsNorm, x: &[f32], w: &WeightData, out: &mut [f32]) {
    let ss: f64 = x.iter().map(|&v| (v as f64) * (v as f64)).sum();
    let inv = 1.0 / ((ss / p.hidden as f64) as f32 + p.eps).sqrt();
    for (i, (o, &v)) in out.iter_mut().zip(x).enumerate() {
        *o = w.get(i) * (v * inv);
    }
}

/// Reference: one row at a time.
pub fn reference(
    p: &RmsNorm,
    x: &[f32],
    w: &WeightData,
    out: &mut [f32],
) -> Result<(), KernelError> {
    check(p, x, w, out)?;
    for (xr, or) in x.chunks(p.hidden).zip(out.chunks_mut(p.hidden)) {
        norm_row(p, xr, w, or);
    }
    Ok(())
}

/// Rows in parallel once there are enough of them to pay for the split.
pub fn run(p: &RmsNorm, x: &[f32], w: &WeightData, out: &mut [f32]) -> Result<(), KernelError> {
    check(p, x, w, out)?;
    if x.len() / p.hidden < 16 {
        return reference(p, x, w, out);
    }
    let h = p.hidden;
    crate::team::parallel_for_rows(out, h, |r, or| norm_row(p, &x[r * h..(r + 1) * h], w, or));
    Ok(())
}
