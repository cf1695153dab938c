//! AVX2 dequantizers of the types decode reads most (Q8_0, Q4_0, Q4_K, Q5_K, Q6_K): eight values
//! per instruction, with the reference's float operations in its order (a product, then a
//! difference; never a fused multiply-add), so every value is the reference's bits.

#[cfg(target_arch = "x86_64")]
use std::arch::x86_64::*;

use super::reference::scale_min_k4;
use half::f16;

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

/// [`f16_at`] by F16C (exact either way; the `half` crate's portable conversion costs more than
/// a 32-value block's other work).
///
/// # Safety
/// F16C.
#[inline]
#[target_feature(enable = "f16c")]
unsafe fn f16c_at(b: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([b[at], b[at + 1]]) as i32;
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
}

/// Eight bytes at `p` widened to eight i32 lanes, unsigned.
///
/// # Safety
/// AVX2; `p` has eight readable bytes.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn u8x8(p: *const u8) -> __m256i {
    _mm256_cvtepu8_epi32(_mm_loadl_epi64(p as *const __m128i))
}

/// `out[..8] = float(q) · d`.
///
/// # Safety
/// AVX2; `out` has eight writable values.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store_mul(out: *mut f32, q: __m256i, d: __m256) {
    _mm256_storeu_ps(out, _mm256_mul_ps(_mm256_cvtepi32_ps(q), d));
}

/// `out[..8] = d · float(q) − m`.
///
/// # Safety
/// AVX2; `out` has eight writable values.
#[inline]
#[target_feature(enable = "avx2")]
unsafe fn store_mul_sub(out: *mut f32, q: __m256i, d: __m256, m: __m256) {
    _mm256_storeu_ps(
        out,
        _mm256_sub_ps(_mm256_mul_ps(d, _mm256_cvtepi32_ps(q)), m),
    );
}

/// # Safety
/// AVX2 and F16C; `b` holds `y.len() / 32` blocks.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn q8_0(b: &[u8], y: &mut [f32]) {
    for (blk, out) in b.chunks_exact(34).zip(y.chunks_exact_mut(32)) {
        let d = _mm256_set1_ps(f16c_at(blk, 0));
        for g in 0..4 {
            let q =
                _mm256_cvtepi8_epi32(_mm_loadl_epi64(blk[2 + 8 * g..].as_ptr() as *const __m128i));
            store_mul(out[8 * g..].as_mut_ptr(), q, d);
        }
    }
}

/// # Safety
/// AVX2 and F16C; `b` holds `y.len() / 32` blocks.
#[target_feature(enable = "avx2,f16c")]
pub unsafe fn q4_0(b: &[u8], y: &mut [f32]) {
    let (mask, eight) = (_mm256_set1_epi32(0xF), _mm256_set1_epi32(8));
    for (blk, out) in b.chunks_exact(18).zip(y.chunks_exact_mut(32)) {
        let d = _mm256_set1_ps(f16c_at(blk, 0));
        for g in 0..2 {
            let q = u8x8(blk[2 + 8 * g..].as_ptr());
            let lo = _mm256_sub_epi32(_mm256_and_si256(q, mask), eight);
            let hi = _mm256_sub_epi32(_mm256_srli_epi32(q, 4), eight);
            store_mul(out[8 * g..].as_mut_ptr(), lo, d);
            store_mul(out[16 + 8 * g..].as_mut_ptr(), hi, d);
        }
    }
}

/// # Safety
/// AVX2; `b` holds `y.len() / 256` blocks.
#[target_feature(enable = "avx2")]
pub unsafe fn q4_k(b: &[u8], y: &mut [f32]) {
    let mask = _mm256_set1_epi32(0xF);
    for (blk, out) in b.chunks_exact(144).zip(y.chunks_exact_mut(256)) {
        let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
        let sc = &blk[4..16];
        for c in 0..4 {
            let q = &blk[16 + 32 * c..16 + 32 * c + 32];
            let (s1, m1) = scale_min_k4(2 * c, sc);
            let (s2, m2) = scale_min_k4(2 * c + 1, sc);
            let (d1, m1) = (
                _mm256_set1_ps(d * s1 as f32),
                _mm256_set1_ps(dmin * m1 as f32),
            );
            let (d2, m2) = (
                _mm256_set1_ps(d * s2 as f32),
                _mm256_set1_ps(dmin * m2 as f32),
            );
            let y = &mut out[64 * c..64 * c + 64];
            for g in 0..4 {
                let v = u8x8(q[8 * g..].as_ptr());
                store_mul_sub(y[8 * g..].as_mut_ptr(), _mm256_and_si256(v, mask), d1, m1);
                store_mul_sub(
                    y[32 + 8 * g..].as_mut_ptr(),
                    _mm256_srli_epi32(v, 4),
                    d2,
                    m2,
                );
            }
        }
    }
}

/// # Safety
/// AVX2; `b` holds `y.len() / 256` blocks.
#[target_feature(enable = "avx2")]
pub unsafe fn q5_k(b: &[u8], y: &mut [f32]) {
    let (mask, one) = (_mm256_set1_epi32(0xF), _mm256_set1_epi32(1));
    for (blk, out) in b.chunks_exact(176).zip(y.chunks_exact_mut(256)) {
        let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
        let sc = &blk[4..16];
        let qh = &blk[16..48];
        for c in 0..4 {
            let ql = &blk[48 + 32 * c..48 + 32 * c + 32];
            let (s1, m1) = scale_min_k4(2 * c, sc);
            let (s2, m2) = scale_min_k4(2 * c + 1, sc);
            let (d1, m1) = (
                _mm256_set1_ps(d * s1 as f32),
                _mm256_set1_ps(dmin * m1 as f32),
            );
            let (d2, m2) = (
                _mm256_set1_ps(d * s2 as f32),
                _mm256_set1_ps(dmin * m2 as f32),
            );
            let (sh1, sh2) = (
                _mm_cvtsi32_si128(2 * c as i32),
                _mm_cvtsi32_si128(2 * c as i32 + 1),
            );
            let y = &mut out[64 * c..64 * c + 64];
            for g in 0..4 {
                let v = u8x8(ql[8 * g..].as_ptr());
                let h = u8x8(qh[8 * g..].as_ptr());
                let h1 = _mm256_slli_epi32(_mm256_and_si256(_mm256_srl_epi32(h, sh1), one), 4);
                let h2 = _mm256_slli_epi32(_mm256_and_si256(_mm256_srl_epi32(h, sh2), one), 4);
                let lo = _mm256_add_epi32(_mm256_and_si256(v, mask), h1);
                let hi = _mm256_add_epi32(_mm256_srli_epi32(v, 4), h2);
                store_mul_sub(y[8 * g..].as_mut_ptr(), lo, d1, m1);
                store_mul_sub(y[32 + 8 * g..].as_mut_ptr(), hi, d2, m2);
            }
        }
    }
}

/// # Safety
/// AVX2; `b` holds `y.len() / 256` blocks.
#[target_feature(enable = "avx2")]
pub unsafe fn q6_k(b: &[u8], y: &mut [f32]) {
    let (mask, three, bias) = (
        _mm256_set1_epi32(0xF),
        _mm256_set1_epi32(3),
        _mm256_set1_epi32(32),
    );
    for (blk, out) in b.chunks_exact(210).zip(y.chunks_exact_mut(256)) {
        let d = f16_at(blk, 208);
        for n in 0..2 {
            let ql = &blk[64 * n..64 * n + 64];
            let qh = &blk[128 + 32 * n..128 + 32 * n + 32];
            let sc = &blk[192 + 8 * n..192 + 8 * n + 8];
            let y = &mut out[128 * n..128 * n + 128];
            for g in 0..4 {
                let l = 8 * g;
                let is = l / 16;
                let a = u8x8(ql[l..].as_ptr());
                let b2 = u8x8(ql[l + 32..].as_ptr());
                let h = u8x8(qh[l..].as_ptr());
                let h0 = _mm256_slli_epi32(_mm256_and_si256(h, three), 4);
                let h2 = _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(h, 2), three), 4);
                let h4 = _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(h, 4), three), 4);
                let h6 = _mm256_slli_epi32(_mm256_and_si256(_mm256_srli_epi32(h, 6), three), 4);
                let q1 = _mm256_sub_epi32(_mm256_or_si256(_mm256_and_si256(a, mask), h0), bias);
                let q2 = _mm256_sub_epi32(_mm256_or_si256(_mm256_and_si256(b2, mask), h2), bias);
                let q3 = _mm256_sub_epi32(_mm256_or_si256(_mm256_srli_epi32(a, 4), h4), bias);
                let q4 = _mm256_sub_epi32(_mm256_or_si256(_mm256_srli_epi32(b2, 4), h6), bias);
                let scale = [0, 2, 4, 6].map(|k| d * (sc[is + k] as i8) as f32);
                store_mul(y[l..].as_mut_ptr(), q1, _mm256_set1_ps(scale[0]));
                store_mul(y[l + 32..].as_mut_ptr(), q2, _mm256_set1_ps(scale[1]));
                store_mul(y[l + 64..].as_mut_ptr(), q3, _mm256_set1_ps(scale[2]));
                store_mul(y[l + 96..].as_mut_ptr(), q4, _mm256_set1_ps(scale[3]));
            }
        }
    }
}

/// `[x · w_r]` for four rows of Q8_0, each `x.len()` values (a multiple of 32): the blocks are
/// dequantized in registers and summed exactly as the f32 `dot4` sums their dequantized values
/// (one accumulator per row, eight lanes, FMA in column order, the same reduction), so the result
/// is the bits of dequantize-then-`dot4`, without the buffer.
///
/// # Safety
/// AVX2, FMA and F16C; each row holds `x.len() / 32` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot4_q8_0(x: &[f32], rows: [&[u8]; 4]) -> [f32; 4] {
    let xp = x.as_ptr();
    let mut acc = [_mm256_setzero_ps(); 4];
    // The next quad of a matrix follows these four rows: stream it in as they are read.
    let ahead = 4 * rows[0].len();
    for b in 0..x.len() / 32 {
        for (r, a) in acc.iter_mut().enumerate() {
            let blk = rows[r].as_ptr().add(34 * b);
            _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(ahead) as *const i8);
            let bits = u16::from_le_bytes([*blk, *blk.add(1)]) as i32;
            let d = _mm256_set1_ps(_mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits))));
            for g in 0..4 {
                let q = _mm256_cvtepi8_epi32(_mm_loadl_epi64(blk.add(2 + 8 * g) as *const __m128i));
                let w = _mm256_mul_ps(_mm256_cvtepi32_ps(q), d);
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(32 * b + 8 * g)), w, *a);
            }
        }
    }
    acc.map(|a| crate::dot::avx2::hsum(a))
}

/// [`dot4_q8_0`] for Q4_K rows (`x.len()` a multiple of 256), the reference's `d·sc·q − dmin·m`
/// formed per value in registers.
///
/// # Safety
/// AVX2, FMA and F16C; each row holds `x.len() / 256` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot4_q4_k(x: &[f32], rows: [&[u8]; 4]) -> [f32; 4] {
    let xp = x.as_ptr();
    let mask = _mm256_set1_epi32(0xF);
    let mut acc = [_mm256_setzero_ps(); 4];
    let ahead = 4 * rows[0].len();
    for b in 0..x.len() / 256 {
        for (r, a) in acc.iter_mut().enumerate() {
            let blk = &rows[r][144 * b..144 * (b + 1)];
            for line in (0..144).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(ahead + line) as *const i8);
            }
            let (d, dmin) = (f16_at(blk, 0), f16_at(blk, 2));
            let sc = &blk[4..16];
            // Column order: chunk c holds columns 64c..64c+31 (low nibbles, sub-block 2c) then
            // 64c+32..64c+63 (high nibbles, sub-block 2c+1).
            for c in 0..4 {
                let q = blk[16 + 32 * c..].as_ptr();
                for (half, sub) in [(0, 2 * c), (1, 2 * c + 1)] {
                    let (s, m) = scale_min_k4(sub, sc);
                    let (dv, mv) = (
                        _mm256_set1_ps(d * s as f32),
                        _mm256_set1_ps(dmin * m as f32),
                    );
                    for g in 0..4 {
                        let v = u8x8(q.add(8 * g));
                        let nib = if half == 0 {
                            _mm256_and_si256(v, mask)
                        } else {
                            _mm256_srli_epi32(v, 4)
                        };
                        let w = _mm256_sub_ps(_mm256_mul_ps(dv, _mm256_cvtepi32_ps(nib)), mv);
                        let col = 256 * b + 64 * c + 32 * half + 8 * g;
                        *a = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(col)), w, *a);
                    }
                }
            }
        }
    }
    acc.map(|a| crate::dot::avx2::hsum(a))
}

/// [`dot4_q8_0`] for Q4_0 rows (`x.len()` a multiple of 32): values 0..15 of a block are the low
/// nibbles, 16..31 the high ones, each `(nibble − 8)·d`.
///
/// # Safety
/// AVX2, FMA and F16C; each row holds `x.len() / 32` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot4_q4_0(x: &[f32], rows: [&[u8]; 4]) -> [f32; 4] {
    let xp = x.as_ptr();
    let (mask, eight) = (_mm256_set1_epi32(0xF), _mm256_set1_epi32(8));
    let mut acc = [_mm256_setzero_ps(); 4];
    let ahead = 4 * rows[0].len();
    for b in 0..x.len() / 32 {
        for (r, a) in acc.iter_mut().enumerate() {
            let blk = rows[r].as_ptr().add(18 * b);
            _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(ahead) as *const i8);
            let d = _mm256_set1_ps(f16c_at(std::slice::from_raw_parts(blk, 2), 0));
            let v = [u8x8(blk.add(2)), u8x8(blk.add(10))];
            // Column order: the low nibbles of bytes 0..15, then their high nibbles.
            for (g, q) in [
                _mm256_and_si256(v[0], mask),
                _mm256_and_si256(v[1], mask),
                _mm256_srli_epi32(v[0], 4),
                _mm256_srli_epi32(v[1], 4),
            ]
            .into_iter()
            .enumerate()
            {
                let w = _mm256_mul_ps(_mm256_cvtepi32_ps(_mm256_sub_epi32(q, eight)), d);
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(32 * b + 8 * g)), w, *a);
            }
        }
    }
    acc.map(|a| crate::dot::avx2::hsum(a))
}

/// [`dot4_q8_0`] for Q6_K rows (`x.len()` a multiple of 256): each 8-column group's 6-bit values
/// (a nibble of `ql` and two bits of `qh`) minus 32, times `d · scale`.
///
/// # Safety
/// AVX2, FMA and F16C; each row holds `x.len() / 256` blocks.
#[target_feature(enable = "avx2,fma,f16c")]
pub unsafe fn dot4_q6_k(x: &[f32], rows: [&[u8]; 4]) -> [f32; 4] {
    let xp = x.as_ptr();
    let (mask, three, bias) = (
        _mm256_set1_epi32(0xF),
        _mm256_set1_epi32(3),
        _mm256_set1_epi32(32),
    );
    let mut acc = [_mm256_setzero_ps(); 4];
    let ahead = 4 * rows[0].len();
    for b in 0..x.len() / 256 {
        for (r, a) in acc.iter_mut().enumerate() {
            let blk = &rows[r][210 * b..210 * (b + 1)];
            for line in (0..210).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(blk.as_ptr().wrapping_add(ahead + line) as *const i8);
            }
            let d = f16_at(blk, 208);
            // Column order within a half of 128: four runs of 32 (s = 0..3), each of four
            // 8-column groups; run s reads `ql` (s even) or `ql + 32` (s odd), its low (s < 2)
            // or high nibbles, bits 2s..2s+1 of `qh`, and scale `sc[l / 16 + 2s]`.
            for n in 0..2 {
                let ql = blk[64 * n..].as_ptr();
                let qh = blk[128 + 32 * n..].as_ptr();
                let sc = &blk[192 + 8 * n..192 + 8 * n + 8];
                for s in 0..4 {
                    let shift = _mm_cvtsi32_si128(2 * s as i32);
                    for j in 0..4 {
                        let l = 8 * j;
                        let v = u8x8(ql.add(l + 32 * (s % 2)));
                        let nib = if s < 2 {
                            _mm256_and_si256(v, mask)
                        } else {
                            _mm256_srli_epi32(v, 4)
                        };
                        let hb = _mm256_slli_epi32(
                            _mm256_and_si256(_mm256_srl_epi32(u8x8(qh.add(l)), shift), three),
                            4,
                        );
                        let q = _mm256_sub_epi32(_mm256_or_si256(nib, hb), bias);
                        let scale = _mm256_set1_ps(d * (sc[l / 16 + 2 * s] as i8) as f32);
                        let w = _mm256_mul_ps(_mm256_cvtepi32_ps(q), scale);
                        let col = 256 * b + 128 * n + 32 * s + l;
                        *a = _mm256_fmadd_ps(_mm256_loadu_ps(xp.add(col)), w, *a);
                    }
                }
            }
        }
    }
    acc.map(|a| crate::dot::avx2::hsum(a))
}
