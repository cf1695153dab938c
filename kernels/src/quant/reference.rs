//! Scalar reference dequantizers, one block at a time, in ggml's float32 operation order.

use half::f16;

use super::{check_row, GgmlType};
use crate::KernelError;

/// IQ4_NL / IQ4_XS non-linear code book (`kvalues_iq4nl`).
pub(super) const KVALUES_IQ4NL: [i8; 16] = [
    -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113,
];

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// Dequantizes `out.len()` values of type `t` from `bytes` (exactly `out.len() / block_size` blocks).
pub fn dequantize_row(t: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), KernelError> {
    check_row(t, bytes.len(), out.len())?;
    let (bs, bb) = (t.block_size(), t.block_bytes());
    let block: fn(&[u8], &mut [f32]) = match t {
        GgmlType::F32 => |b, y| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        GgmlType::F16 => |b, y| y[0] = f16_at(b, 0),
        GgmlType::BF16 => {
            |b, y| y[0] = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16)
        }
        GgmlType::Q4_0 => q4_0,
        GgmlType::Q4_1 => q4_1,
        GgmlType::Q5_0 => q5_0,
        GgmlType::Q5_1 => q5_1,
        GgmlType::Q8_0 => q8_0,
        GgmlType::Q2_K => q2_k,
        GgmlType::Q3_K => q3_k,
        GgmlType::Q4_K => q4_k,
        GgmlType::Q5_K => q5_k,
        GgmlType::Q6_K => q6_k,
        GgmlType::IQ4_NL => iq4_nl,
        GgmlType::IQ4_XS => iq4_xs,
    };
    for (b, y) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(bs)) {
        block(b, y);
    }
    Ok(())
}

fn q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        y[j] = ((q & 0xF) as i32 - 8) as f32 * d;
        y[j + 16] = ((q >> 4) as i32 - 8) as f32 * d;
    }
}

fn q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for j in 0..16 {
        let q = b[4 + j];
        y[j] = (q & 0xF) as f32 * d + m;
        y[j + 16] = (q >> 4) as f32 * d + m;
    }
}

fn q5_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let qh = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    for j in 0..16 {
        let q = b[6 + j];
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = (((q & 0xF) as u32 | h0) as i32 - 16) as f32 * d;
        y[j + 16] = (((q >> 4) as u32 | h1) as i32 - 16) as f32 * d;
    }
}

fn q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    let qh = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    for j in 0..16 {
        let q = b[8 + j];
        let h0 = ((qh >> j) & 1) << 4;
        let h1 = ((qh >> (j + 16)) & 1) << 4;
        y[j] = ((q & 0xF) as u32 | h0) as f32 * d + m;
        y[j + 16] = ((q >> 4) as u32 | h1) as f32 * d + m;
    }
}

fn q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..32 {
        y[j] = (b[2 + j] as i8) as f32 * d;
    }
}

fn q2_k(b: &[u8], y: &mut [f32]) {
    let scales = &b[0..16];
    let d = f16_at(b, 80);
    let dmin = f16_at(b, 82);
    let mut is = 0;
    for n in 0..2 {
        let q = &b[16 + 32 * n..16 + 32 * n + 32];
        let y = &mut y[128 * n..128 * n + 128];
        for j in 0..4 {
            let shift = 2 * j;
            for half in 0..2 {
                let sc = scales[is];
                is += 1;
                let dl = d * (sc & 0xF) as f32;
                let ml = dmin * (sc >> 4) as f32;
                for l in 0..16 {
                    let v = (q[16 * half + l] >> shift) & 3;
                    y[32 * j + 16 * half + l] = dl * v as f32 - ml;
                }
            }
        }
    }
}

/// The 16 six-bit Q3_K scales (0..63) from their 12-byte packing.
pub(super) fn q3_k_scales(s: &[u8]) -> [i32; 16] {
    let mut out = [0i32; 16];
    for (k, o) in out.iter_mut().enumerate() {
        let low = if k < 8 { s[k] & 0xF } else { s[k - 8] >> 4 };
        let high = (s[8 + k % 4] >> (2 * (k / 4))) & 3;
        *o = (low | (high << 4)) as i32;
    }
    out
}

fn q3_k(b: &[u8], y: &mut [f32]) {
    let hm = &b[0..32];
    let scales = q3_k_scales(&b[96..108]);
    let d = f16_at(b, 108);
    let mut is = 0;
    let mut m: u8 = 1;
    for n in 0..2 {
        let q = &b[32 + 32 * n..32 + 32 * n + 32];
        let y = &mut y[128 * n..128 * n + 128];
        for j in 0..4 {
            let shift = 2 * j;
            for half in 0..2 {
                let dl = d * (scales[is] - 32) as f32;
                is += 1;
                for l in 0..16 {
                    let i = 16 * half + l;
                    let v = ((q[i] >> shift) & 3) as i32 - if hm[i] & m != 0 { 0 } else { 4 };
                    y[32 * j + i] = dl * v as f32;
                }
            }
            m = m.wrapping_shl(1);
        }
    }
}

/// `get_scale_min_k4`: scale and min of sub-block `j` (0..8) from the 12 packed bytes.
#[inline]
pub(super) fn scale_min_k4(j: usize, q: &[u8]) -> (u8, u8) {
    if j < 4 {
        (q[j] & 63, q[j + 4] & 63)
    } else {
        (
            (q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4),
            (q[j + 4] >> 4) | ((q[j] >> 6) << 4),
        )
    }
}

fn q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let sc = &b[4..16];
    for c in 0..4 {
        let q = &b[16 + 32 * c..16 + 32 * c + 32];
        let (s1, m1) = scale_min_k4(2 * c, sc);
        let (s2, m2) = scale_min_k4(2 * c + 1, sc);
        let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
        let y = &mut y[64 * c..64 * c + 64];
        for l in 0..32 {
            y[l] = d1 * (q[l] & 0xF) as f32 - m1;
            y[l + 32] = d2 * (q[l] >> 4) as f32 - m2;
        }
    }
}

fn q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let sc = &b[4..16];
    let qh = &b[16..48];
    for c in 0..4 {
        let ql = &b[48 + 32 * c..48 + 32 * c + 32];
        let (s1, m1) = scale_min_k4(2 * c, sc);
        let (s2, m2) = scale_min_k4(2 * c + 1, sc);
        let (d1, m1) = (d * s1 as f32, dmin * m1 as f32);
        let (d2, m2) = (d * s2 as f32, dmin * m2 as f32);
        let (u1, u2) = (1u8 << (2 * c), 1u8 << (2 * c + 1));
        let y = &mut y[64 * c..64 * c + 64];
        for l in 0..32 {
            let h1 = if qh[l] & u1 != 0 { 16 } else { 0 };
            let h2 = if qh[l] & u2 != 0 { 16 } else { 0 };
            y[l] = d1 * ((ql[l] & 0xF) + h1) as f32 - m1;
            y[l + 32] = d2 * ((ql[l] >> 4) + h2) as f32 - m2;
        }
    }
}

fn q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for n in 0..2 {
        let ql = &b[64 * n..64 * n + 64];
        let qh = &b[128 + 32 * n..128 + 32 * n + 32];
        let sc = &b[192 + 8 * n..192 + 8 * n + 8];
        let y = &mut y[128 * n..128 * n + 128];
        for l in 0..32 {
            let is = l / 16;
            let q1 = ((ql[l] & 0xF) | ((qh[l] & 3) << 4)) as i32 - 32;
            let q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) as i32 - 32;
            let q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) as i32 - 32;
            let q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) as i32 - 32;
            y[l] = d * (sc[is] as i8) as f32 * q1 as f32;
            y[l + 32] = d * (sc[is + 2] as i8) as f32 * q2 as f32;
            y[l + 64] = d * (sc[is + 4] as i8) as f32 * q3 as f32;
            y[l + 96] = d * (sc[is + 6] as i8) as f32 * q4 as f32;
        }
    }
}

fn iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for j in 0..16 {
        let q = b[2 + j];
        y[j] = d * KVALUES_IQ4NL[(q & 0xF) as usize] as f32;
        y[j + 16] = d * KVALUES_IQ4NL[(q >> 4) as usize] as f32;
    }
}

fn iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    let sh = u16::from_le_bytes([b[2], b[3]]) as i32;
    let sl = &b[4..8];
    for ib in 0..8 {
        let ls = ((sl[ib / 2] >> (4 * (ib % 2))) & 0xF) as i32 | (((sh >> (2 * ib)) & 3) << 4);
        let dl = d * (ls - 32) as f32;
        let qs = &b[8 + 16 * ib..8 + 16 * ib + 16];
        let y = &mut y[32 * ib..32 * ib + 32];
        for j in 0..16 {
            y[j] = dl * KVALUES_IQ4NL[(qs[j] & 0xF) as usize] as f32;
            y[j + 16] = dl * KVALUES_IQ4NL[(qs[j] >> 4) as usize] as f32;
        }
    }
}

#[cfg(test)]
#[allow(clippy::needless_range_loop)]
mod tests {
    use super::*;
    use crate::quant::ALL_TYPES;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_bits().to_le_bytes()
    }

    fn deq(t: GgmlType, b: &[u8]) -> Vec<f32> {
        let mut y = vec![0.0; b.len() / t.block_bytes() * t.block_size()];
        dequantize_row(t, b, &mut y).unwrap();
        y
    }

    #[test]
    fn geometry() {
        for t in ALL_TYPES {
            assert_eq!(GgmlType::from_id(t.id()), Some(t));
            assert_eq!(t.bytes_for(t.block_size() * 3), Some(3 * t.block_bytes()));
        }
        assert_eq!(GgmlType::from_id(4), None);
        assert_eq!(GgmlType::Q4_K.bytes_for(100), None);
    }

    #[test]
    fn length_mismatches_are_errors() {
        for t in ALL_TYPES {
            let b = vec![0u8; t.block_bytes() * 2];
            let mut y = vec![0.0; t.block_size() * 2];
            assert!(dequantize_row(t, &b[1..], &mut y).is_err(), "{t}");
            assert!(
                dequantize_row(t, &b, &mut y[..t.block_size()]).is_err(),
                "{t}"
            );
            if t.is_quantized() {
                let mut y = vec![0.0; t.block_size() * 2 - 1];
                assert!(dequantize_row(t, &b, &mut y).is_err(), "{t}");
            }
            assert!(dequantize_row(t, &[], &mut []).is_ok());
        }
    }

    #[test]
    fn float_types() {
        let mut b = Vec::new();
        b.extend(1.5f32.to_le_bytes());
        b.extend((-2.25f32).to_le_bytes());
        assert_eq!(deq(GgmlType::F32, &b), [1.5, -2.25]);
        let b: Vec<u8> = [h(0.5), h(-3.0)].concat();
        assert_eq!(deq(GgmlType::F16, &b), [0.5, -3.0]);
        let b: Vec<u8> = [0x3FC0u16, 0xC040]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        assert_eq!(deq(GgmlType::BF16, &b), [1.5, -3.0]);
    }

    #[test]
    fn q8_0_block() {
        let mut b = h(0.5).to_vec();
        b.extend((0..32).map(|i| (i as i8 - 16) as u8));
        let y = deq(GgmlType::Q8_0, &b);
        for (i, v) in y.iter().enumerate() {
            assert_eq!(*v, (i as f32 - 16.0) * 0.5);
        }
    }

    /// Nibble order: value j is the low nibble of byte j, value j + 16 its high nibble.
    #[test]
    fn q4_and_iq4_nl_blocks() {
        let qs: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
        let want_q = |i: usize| {
            if i < 16 {
                i as i32
            } else {
                15 - (i as i32 - 16)
            }
        };
        let b = [h(2.0).to_vec(), qs.clone()].concat();
        let y = deq(GgmlType::Q4_0, &b);
        for i in 0..32 {
            assert_eq!(y[i], (want_q(i) - 8) as f32 * 2.0);
        }
        let b = [h(2.0).to_vec(), h(-1.0).to_vec(), qs.clone()].concat();
        let y = deq(GgmlType::Q4_1, &b);
        for i in 0..32 {
            assert_eq!(y[i], want_q(i) as f32 * 2.0 - 1.0);
        }
        let b = [h(0.5).to_vec(), qs].concat();
        let y = deq(GgmlType::IQ4_NL, &b);
        for i in 0..32 {
            assert_eq!(y[i], KVALUES_IQ4NL[want_q(i) as usize] as f32 * 0.5);
        }
    }

    #[test]
    fn q5_blocks() {
        let qs: Vec<u8> = (0..16u8).map(|j| j | ((15 - j) << 4)).collect();
        let qh: u32 = 0xA5A5_0F0F;
        let want_q = |i: usize| {
            let lo = if i < 16 {
                i as u32
            } else {
                15 - (i as u32 - 16)
            };
            (lo | (((qh >> i) & 1) << 4)) as i32
        };
        let b = [h(0.25).to_vec(), qh.to_le_bytes().to_vec(), qs.clone()].concat();
        let y = deq(GgmlType::Q5_0, &b);
        for i in 0..32 {
            assert_eq!(y[i], (want_q(i) - 16) as f32 * 0.25, "{i}");
        }
        let b = [
            h(0.25).to_vec(),
            h(3.0).to_vec(),
            qh.to_le_bytes().to_vec(),
            qs,
        ]
        .concat();
        let y = deq(GgmlType::Q5_1, &b);
        for i in 0..32 {
            assert_eq!(y[i], want_q(i) as f32 * 0.25 + 3.0, "{i}");
        }
    }

    #[test]
    fn q4_k_block_uniform_scales() {
        // All sub-block scales 1 and mins 2: scale bytes 0..4 = 1, 4..8 = 2, 8..12 = 0x21.
        let mut b = [h(1.0), h(0.5)].concat();
        b.extend([1, 1, 1, 1, 2, 2, 2, 2, 0x21, 0x21, 0x21, 0x21]);
        b.extend((0..128u32).map(|i| ((i % 16) | ((15 - i % 16) << 4)) as u8));
        let y = deq(GgmlType::Q4_K, &b);
        for c in 0..4 {
            for l in 0..32 {
                let q = &b[16 + 32 * c..];
                assert_eq!(y[64 * c + l], (q[l] & 0xF) as f32 - 1.0);
                assert_eq!(y[64 * c + 32 + l], (q[l] >> 4) as f32 - 1.0);
            }
        }
    }

    #[test]
    fn q6_k_block() {
        // ql = 0, qh = 0 → q = -32 everywhere; scales s = 1..16 as i8 with a negative one.
        let mut b = vec![0u8; 192];
        let sc: [i8; 16] = [1, 2, 3, 4, 5, 6, 7, 8, -1, -2, -3, -4, -5, -6, -7, -8];
        b.extend(sc.iter().map(|s| *s as u8));
        b.extend(h(0.5));
        let y = deq(GgmlType::Q6_K, &b);
        for (i, v) in y.iter().enumerate() {
            let (n, r) = (i / 128, i % 128);
            let s = sc[8 * n + r / 16] as f32; // is + 2·quarter == (r % 32) / 16 + 2 · (r / 32)
            assert_eq!(*v, 0.5 * s * -32.0, "{i}");
        }
    }

    #[test]
    fn q2_k_and_q3_k_zero_codes() {
        // Q2_K: every q = 0 → x = -dmin·min; scales byte 0x3_2 = scale 2, min 3.
        let mut b = vec![0x32u8; 16];
        b.extend([0u8; 64]);
        b.extend(h(1.0));
        b.extend(h(0.25));
        assert!(deq(GgmlType::Q2_K, &b).iter().all(|v| *v == -0.75));
        // Q3_K: q = 0, hmask all set (no -4) → 0; hmask clear → d·(sc-32)·(-4). Scales all 33.
        let scales = [
            0x11u8, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0xAA, 0xAA, 0xAA, 0xAA,
        ];
        let mut b = vec![0u8; 32];
        b.extend([0u8; 64]);
        b.extend(scales);
        b.extend(h(2.0));
        assert!(deq(GgmlType::Q3_K, &b).iter().all(|v| *v == -8.0));
        b[..32].fill(0xFF);
        assert!(deq(GgmlType::Q3_K, &b).iter().all(|v| *v == 0.0));
    }

    #[test]
    fn iq4_xs_block() {
        // scales: ls = 33 for every sub-block (low nibble 1, high bits 2): dl = d.
        let mut b = h(0.5).to_vec();
        b.extend(0xAAAAu16.to_le_bytes());
        b.extend([0x11u8; 4]);
        b.extend((0..128u32).map(|i| ((i % 16) | ((15 - i % 16) << 4)) as u8));
        let y = deq(GgmlType::IQ4_XS, &b);
        for ib in 0..8 {
            for j in 0..16 {
                let q = b[8 + 16 * ib + j];
                assert_eq!(
                    y[32 * ib + j],
                    0.5 * KVALUES_IQ4NL[(q & 0xF) as usize] as f32
                );
                assert_eq!(
                    y[32 * ib + 16 + j],
                    0.5 * KVALUES_IQ4NL[(q >> 4) as usize] as f32
                );
            }
        }
    }
}
