//! Quantizers from f32 rows into ggml blocks, as llama.cpp's `quantize_row_*_ref` round (for
//! in-situ quantisation of a safetensors checkpoint at load).

use super::{check_row, GgmlType};
use crate::KernelError;
use half::f16;

/// The types [`quantize_row`] writes.
pub const QUANTIZE_TYPES: [GgmlType; 2] = [GgmlType::Q8_0, GgmlType::Q4_0];

/// Appends the blocks of `x` (a whole number of blocks of `t`) to `out`.
pub fn quantize_row(t: GgmlType, x: &[f32], out: &mut Vec<u8>) -> Result<(), KernelError> {
    let bytes = t.bytes_for(x.len()).ok_or_else(|| KernelError::Invalid {
        op: "quantize_row",
        message: format!("{} values are not whole {t} blocks", x.len()),
    })?;
    let start = out.len();
    match t {
        GgmlType::Q8_0 => {
            for b in x.chunks_exact(32) {
                let amax = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                let d = amax / 127.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
                out.extend(b.iter().map(|v| (v * id).round() as i8 as u8));
            }
        }
        GgmlType::Q4_0 => {
            for b in x.chunks_exact(32) {
                // The value of largest magnitude, with its sign, maps to -8.
                let max = b
                    .iter()
                    .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
                let d = max / -8.0;
                let id = if d != 0.0 { 1.0 / d } else { 0.0 };
                out.extend_from_slice(&f16::from_f32(d).to_bits().to_le_bytes());
                let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
                out.extend((0..16).map(|j| q(b[j]) | (q(b[j + 16]) << 4)));
            }
        }
        other => {
            return Err(KernelError::Invalid {
                op: "quantize_row",
                message: format!(
                    "quantising to {other} is not supported (supported: {})",
                    QUANTIZE_TYPES.map(|t| t.name()).join(", ")
                ),
            })
        }
    }
    check_row(t, out.len() - start, x.len())?;
    debug_assert_eq!(out.len() - start, bytes);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quant::dequantize_row;

    /// Each value comes back within half a quantisation step of its block (Q4_0: a whole step,
    /// its codes reach −8 on one side and only +7 on the other), plus the rounding of the block's
    /// scale to f16 (2⁻¹¹ relative, times the largest code).
    #[test]
    fn round_trips_within_half_a_step() {
        let x: Vec<f32> = (0..256)
            .map(|i| ((i * 97 % 211) as f32 - 105.0) / 37.0)
            .collect();
        for (t, levels, steps) in [
            (GgmlType::Q8_0, 127.0f32, 0.5f32),
            (GgmlType::Q4_0, 8.0, 1.0),
        ] {
            let mut q = vec![];
            quantize_row(t, &x, &mut q).unwrap();
            assert_eq!(q.len(), t.bytes_for(x.len()).unwrap());
            let mut y = vec![0f32; x.len()];
            dequantize_row(t, &q, &mut y).unwrap();
            for (bx, by) in x.chunks(32).zip(y.chunks(32)) {
                let amax = bx.iter().fold(0f32, |m, v| m.max(v.abs()));
                let step = amax / levels;
                for (a, b) in bx.iter().zip(by) {
                    assert!(
                        (a - b).abs() <= steps * step + amax / 2048.0 + 1e-6,
                        "{t}: {a} -> {b}"
                    );
                }
            }
        }
        let mut q = vec![];
        assert!(quantize_row(GgmlType::Q8_0, &x[..31], &mut q).is_err());
        assert!(quantize_row(GgmlType::Q4_K, &x, &mut q).is_err());
    }
}
