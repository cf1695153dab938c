//! Quantizers from f32 rows into ggml blocks, as llama.cpp's `quantize_row_*_ref` round (for
//! in-situ quantisation of a safetensors checkpoint at load).

use super::{check_row, GgmlType};
use crate::KernelError;
use half::f16;

/// The types [`quantize_row`] writes.
pub const QUANTIZE_TYPES: [GgmlType; 5] = [
    GgmlType::Q8_0,
    GgmlType::Q4_0,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
];

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
        GgmlType::Q4_K => x.chunks_exact(256).for_each(|b| q4_k_block(b, out)),
        GgmlType::Q5_K => x.chunks_exact(256).for_each(|b| q5_k_block(b, out)),
        GgmlType::Q6_K => x.chunks_exact(256).for_each(|b| q6_k_block(b, out)),
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

/// Least-squares `(scale, offset)` of `x ≈ scale·q + offset` for fixed codes `q`; with
/// `offset_at_most_zero` the offset is held at zero when the free fit would make it positive (the
/// K-quant formats store a non-negative `min` subtracted from every value).
fn fit_affine(x: &[f32], q: &[u8], offset_at_most_zero: bool) -> (f32, f32) {
    let n = x.len() as f32;
    let (mut sq, mut sq2, mut sx, mut sqx) = (0f32, 0f32, 0f32, 0f32);
    for (&v, &c) in x.iter().zip(q) {
        let c = c as f32;
        sq += c;
        sq2 += c * c;
        sx += v;
        sqx += c * v;
    }
    let det = n * sq2 - sq * sq;
    if det > 0.0 {
        let scale = (n * sqx - sq * sx) / det;
        let offset = (sq2 * sx - sq * sqx) / det;
        if scale > 0.0 && (offset <= 0.0 || !offset_at_most_zero) {
            return (scale, offset);
        }
    }
    if sq2 > 0.0 {
        ((sqx / sq2).max(0.0), 0.0)
    } else {
        (0.0, 0.0)
    }
}

/// The sub-block fit of the Q4_K/Q5_K formats: codes `0..=nmax`, `x ≈ scale·q − min` with
/// `scale, min ≥ 0`. Tries a range of code spacings around the plain min-max one, refits each
/// by least squares and keeps the one of least squared error.
fn fit_sub_block(x: &[f32], nmax: u8) -> (f32, f32) {
    let lo = x.iter().fold(0f32, |m, &v| m.min(v));
    let hi = x.iter().fold(f32::MIN, |m, &v| m.max(v));
    if hi <= lo {
        return (0.0, -lo);
    }
    let mut q = [0u8; 32];
    let q = &mut q[..x.len()];
    let err = |scale: f32, min: f32, q: &[u8]| -> f32 {
        x.iter()
            .zip(q)
            .map(|(&v, &c)| (scale * c as f32 - min - v).powi(2))
            .sum()
    };
    let mut best = ((hi - lo) / nmax as f32, -lo);
    let mut best_err = f32::INFINITY;
    for step in -10..=10 {
        let iscale = (nmax as f32 + 0.1 * step as f32) / (hi - lo);
        for (c, &v) in q.iter_mut().zip(x) {
            *c = ((v - lo) * iscale).round().clamp(0.0, nmax as f32) as u8;
        }
        let (scale, offset) = fit_affine(x, q, true);
        let e = err(scale, -offset, q);
        if e < best_err {
            best_err = e;
            best = (scale, -offset);
        }
    }
    best
}

/// Scales (`d·sc`) and mins (`dmin·m`) of eight sub-blocks as six-bit codes, packed as
/// `get_scale_min_k4` reads them; returns `d`, `dmin` and the codes.
fn pack_scales_mins(scales: &[f32; 8], mins: &[f32; 8]) -> (f16, f16, [u8; 8], [u8; 8], [u8; 12]) {
    let smax = scales.iter().fold(0f32, |m, &v| m.max(v));
    let mmax = mins.iter().fold(0f32, |m, &v| m.max(v));
    let d = f16::from_f32(smax / 63.0);
    let dmin = f16::from_f32(mmax / 63.0);
    let code = |v: f32, unit: f32| {
        if unit > 0.0 {
            (v / unit).round().clamp(0.0, 63.0) as u8
        } else {
            0
        }
    };
    let sc = scales.map(|s| code(s, d.to_f32()));
    let mn = mins.map(|m| code(m, dmin.to_f32()));
    let mut packed = [0u8; 12];
    for j in 0..4 {
        packed[j] = sc[j] | ((sc[j + 4] >> 4) << 6);
        packed[j + 4] = mn[j] | ((mn[j + 4] >> 4) << 6);
        packed[j + 8] = (sc[j + 4] & 0xF) | ((mn[j + 4] & 0xF) << 4);
    }
    (d, dmin, sc, mn, packed)
}

/// Codes of a K-quant super-block of 256 values once its scales are rounded: each value's
/// nearest code under the scale and min its sub-block actually stores.
fn k_codes(x: &[f32], d: f16, dmin: f16, sc: &[u8; 8], mn: &[u8; 8], nmax: u8) -> [u8; 256] {
    let mut q = [0u8; 256];
    for (j, (xs, qs)) in x.chunks_exact(32).zip(q.chunks_exact_mut(32)).enumerate() {
        let scale = d.to_f32() * sc[j] as f32;
        let min = dmin.to_f32() * mn[j] as f32;
        if scale == 0.0 {
            continue;
        }
        for (c, &v) in qs.iter_mut().zip(xs) {
            *c = ((v + min) / scale).round().clamp(0.0, nmax as f32) as u8;
        }
    }
    q
}

fn k_super_block(x: &[f32], nmax: u8) -> (f16, f16, [u8; 12], [u8; 256]) {
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    for (j, xs) in x.chunks_exact(32).enumerate() {
        (scales[j], mins[j]) = fit_sub_block(xs, nmax);
    }
    let (d, dmin, sc, mn, packed) = pack_scales_mins(&scales, &mins);
    (d, dmin, packed, k_codes(x, d, dmin, &sc, &mn, nmax))
}

/// `block_q4_K`: `d`, `dmin`, 12 bytes of scales and mins, then 32-value sub-blocks `2c` and
/// `2c + 1` as the low and high nibbles of 32 bytes.
fn q4_k_block(x: &[f32], out: &mut Vec<u8>) {
    let (d, dmin, packed, q) = k_super_block(x, 15);
    out.extend_from_slice(&d.to_bits().to_le_bytes());
    out.extend_from_slice(&dmin.to_bits().to_le_bytes());
    out.extend_from_slice(&packed);
    for c in 0..4 {
        out.extend((0..32).map(|l| q[64 * c + l] | (q[64 * c + 32 + l] << 4)));
    }
}

/// `block_q5_K`: as Q4_K, with the fifth bit of sub-block `j`'s value `l` as bit `j` of `qh[l]`.
fn q5_k_block(x: &[f32], out: &mut Vec<u8>) {
    let (d, dmin, packed, q) = k_super_block(x, 31);
    out.extend_from_slice(&d.to_bits().to_le_bytes());
    out.extend_from_slice(&dmin.to_bits().to_le_bytes());
    out.extend_from_slice(&packed);
    out.extend((0..32).map(|l| (0..8).fold(0u8, |h, j| h | (((q[32 * j + l] >> 4) & 1) << j))));
    for c in 0..4 {
        out.extend((0..32).map(|l| (q[64 * c + l] & 0xF) | ((q[64 * c + 32 + l] & 0xF) << 4)));
    }
}

/// `block_q6_K`: sixteen 16-value sub-blocks with signed 8-bit scales under one `d`, codes −32..31
/// stored as 6 bits (low nibbles in `ql`, high pairs in `qh`), `d` last.
fn q6_k_block(x: &[f32], out: &mut Vec<u8>) {
    // Each sub-block's scale: the signed value of largest magnitude maps near −32, refined by
    // least squares over a few spacings.
    let mut scales = [0f32; 16];
    for (j, xs) in x.chunks_exact(16).enumerate() {
        let max = xs
            .iter()
            .fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
        if max == 0.0 {
            continue;
        }
        let mut best = (max / -32.0, f32::INFINITY);
        for step in -8..=8 {
            let iscale = (-32.0 + 0.25 * step as f32) / max;
            let (mut sqx, mut sq2) = (0f32, 0f32);
            for &v in xs {
                let c = (v * iscale).round().clamp(-32.0, 31.0);
                sqx += c * v;
                sq2 += c * c;
            }
            if sq2 == 0.0 {
                continue;
            }
            let scale = sqx / sq2;
            let e: f32 = xs
                .iter()
                .map(|&v| {
                    let c = (v * iscale).round().clamp(-32.0, 31.0);
                    (scale * c - v).powi(2)
                })
                .sum();
            if e < best.1 {
                best = (scale, e);
            }
        }
        scales[j] = best.0;
    }
    let amax = scales.iter().fold(0f32, |m, &v| m.max(v.abs()));
    let d = f16::from_f32(amax / 127.0);
    let unit = d.to_f32();
    let sc: [i8; 16] = scales.map(|s| {
        if unit > 0.0 {
            (s / unit).round().clamp(-128.0, 127.0) as i8
        } else {
            0
        }
    });
    let mut q = [32u8; 256];
    for (j, (xs, qs)) in x.chunks_exact(16).zip(q.chunks_exact_mut(16)).enumerate() {
        let scale = unit * sc[j] as f32;
        if scale == 0.0 {
            continue;
        }
        for (c, &v) in qs.iter_mut().zip(xs) {
            *c = ((v / scale).round().clamp(-32.0, 31.0) + 32.0) as u8;
        }
    }
    let (mut ql, mut qh) = ([0u8; 128], [0u8; 64]);
    for n in 0..2 {
        let q = &q[128 * n..128 * n + 128];
        for l in 0..32 {
            let (q1, q2, q3, q4) = (q[l], q[l + 32], q[l + 64], q[l + 96]);
            ql[64 * n + l] = (q1 & 0xF) | ((q3 & 0xF) << 4);
            ql[64 * n + l + 32] = (q2 & 0xF) | ((q4 & 0xF) << 4);
            qh[32 * n + l] = (q1 >> 4) | ((q2 >> 4) << 2) | ((q3 >> 4) << 4) | ((q4 >> 4) << 6);
        }
    }
    out.extend_from_slice(&ql);
    out.extend_from_slice(&qh);
    out.extend(sc.iter().map(|&s| s as u8));
    out.extend_from_slice(&d.to_bits().to_le_bytes());
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
        assert!(quantize_row(GgmlType::Q4_K, &x[..128], &mut q).is_err());
        assert!(quantize_row(GgmlType::IQ4_XS, &x, &mut q).is_err());
    }

    /// K-quants round-trip with a root-mean-square error under a fraction of the data's, a
    /// fraction set by their code count (4, 5 and 6 bits: about 1/12, 1/25 and 1/55 for
    /// normal-like data, with margin); a constant block, an all-zero block and one block of a
    /// single outlier come back within the f16 rounding of their scales.
    #[test]
    fn k_quants_round_trip() {
        let mut state = 0x9e3779b97f4a7c15u64;
        let mut normal = || {
            // Sum of four uniforms: close enough to normal for an error level.
            (0..4)
                .map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
                })
                .sum::<f32>()
        };
        let x: Vec<f32> = (0..256 * 64).map(|_| normal()).collect();
        let rms = |a: &[f32]| (a.iter().map(|v| v * v).sum::<f32>() / a.len() as f32).sqrt();
        for (t, limit) in [
            (GgmlType::Q4_K, 1.0 / 10.0),
            (GgmlType::Q5_K, 1.0 / 20.0),
            (GgmlType::Q6_K, 1.0 / 40.0),
        ] {
            let mut q = vec![];
            quantize_row(t, &x, &mut q).unwrap();
            assert_eq!(q.len(), t.bytes_for(x.len()).unwrap());
            let mut y = vec![0f32; x.len()];
            dequantize_row(t, &q, &mut y).unwrap();
            let err: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a - b).collect();
            let ratio = rms(&err) / rms(&x);
            eprintln!("{t}: rms error / rms = {ratio:.4}");
            assert!(ratio < limit, "{t}: {ratio}");
            // A constant sub-block next to one with an outlier: each value within half a code
            // step of its sub-block plus what rounding the scales to six bits (eight for Q6_K)
            // can cost the largest code.
            let mut special = vec![0f32; 256];
            special[..64].fill(0.75);
            special[200] = -3.0;
            let mut q = vec![];
            quantize_row(t, &special, &mut q).unwrap();
            let mut y = vec![0f32; 256];
            dequantize_row(t, &q, &mut y).unwrap();
            let (sub, codes, scale_bits) = match t {
                GgmlType::Q6_K => (16, 32.0, 127.0),
                GgmlType::Q5_K => (32, 31.0, 63.0),
                _ => (32, 15.0, 63.0),
            };
            let range = |b: &[f32]| {
                let lo = b.iter().fold(0f32, |m, &v| m.min(v));
                b.iter().fold(0f32, |m, &v| m.max(v)) - lo
            };
            let widest = special.chunks(sub).map(range).fold(0f32, f32::max);
            for (i, (a, b)) in special.iter().zip(&y).enumerate() {
                let step = range(&special[i / sub * sub..][..sub]) / codes;
                let tol = step / 2.0 + 2.0 * widest / (2.0 * scale_bits) + 1e-6;
                assert!(
                    (a - b).abs() <= tol,
                    "{t}[{i}]: {a} -> {b} (tolerance {tol})"
                );
            }
            assert!(y[64..192].iter().all(|&v| v == 0.0), "{t}: zeros");
        }
    }
}
