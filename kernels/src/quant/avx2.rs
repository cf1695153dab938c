//! AVX2 dequantizers and fused four-row dot products of the quantised types: eight values per
//! instruction, with the reference's float operations in its order (a product, then a sum or
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

/// A block type whose values come out eight at a time, in column order, each vector holding the
/// reference's bits: one description of the block serves both the dequantizer ([`dequantize`])
/// and the fused dot product ([`dot4`]), so the two cannot drift apart. The helpers carry the
/// target features themselves (rather than `#[inline(always)]` alone) so the intrinsics, and the
/// closures that inherit the features, inline whatever order the inliner visits them in: one
/// call left in the loop cost Q5_0's dequantizer 30 times its time.
pub(super) trait Block {
    /// Values per block.
    const VALUES: usize;
    /// Bytes per block.
    const BYTES: usize;
    /// Calls `f(o, w)` for `o = 0, 8, .., VALUES − 8` in that order, `w` the block's values
    /// `o..o + 8`.
    ///
    /// # Safety
    /// AVX2, FMA and F16C; `p` points at `BYTES` readable bytes.
    unsafe fn each(p: *const u8, f: impl FnMut(usize, __m256));
}

/// Dequantizes whole blocks of `B`.
///
/// # Safety
/// AVX2, FMA and F16C; `b` holds `y.len() / B::VALUES` blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dequantize<B: Block>(b: &[u8], y: &mut [f32]) {
    for (blk, out) in b.chunks_exact(B::BYTES).zip(y.chunks_exact_mut(B::VALUES)) {
        let out = out.as_mut_ptr();
        B::each(blk.as_ptr(), |o, w| _mm256_storeu_ps(out.add(o), w));
    }
}

/// `[x · w_r]` for four rows of `B`, each `x.len()` values (whole blocks), summed as the f32
/// `dot4` sums the dequantized rows: one 8-lane accumulator per row, an FMA per 8 columns in
/// column order, the same reduction.
///
/// # Safety
/// AVX2, FMA and F16C; each row holds `x.len() / B::VALUES` blocks.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot4<B: Block>(x: &[f32], rows: [&[u8]; 4]) -> [f32; 4] {
    let xp = x.as_ptr();
    let mut acc = [_mm256_setzero_ps(); 4];
    // The next quad of a matrix follows these four rows: stream it in as they are read.
    let ahead = 4 * rows[0].len();
    for b in 0..x.len() / B::VALUES {
        let xb = xp.add(B::VALUES * b);
        for (r, a) in acc.iter_mut().enumerate() {
            let blk = rows[r].as_ptr().add(B::BYTES * b);
            for line in (0..B::BYTES).step_by(64) {
                _mm_prefetch::<_MM_HINT_T0>(blk.wrapping_add(ahead + line) as *const i8);
            }
            B::each(blk, |o, w| {
                *a = _mm256_fmadd_ps(_mm256_loadu_ps(xb.add(o)), w, *a);
            });
        }
    }
    acc.map(|a| crate::dot::avx2::hsum(a))
}

/// The f16 at `p`, by F16C (exact, as the reference's conversion).
///
/// # Safety
/// F16C; two readable bytes at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn f16_ptr(p: *const u8) -> f32 {
    let bits = u16::from_le_bytes([*p, *p.add(1)]) as i32;
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
}

/// The 32 nibbles of the 16 bytes at `p` in ggml's 32-value order (value j the low nibble of
/// byte j, value j + 16 its high nibble), as four vectors of eight i32.
///
/// # Safety
/// AVX2; 16 readable bytes at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn nibbles32(p: *const u8) -> [__m256i; 4] {
    let v = _mm_loadu_si128(p as *const __m128i);
    let m = _mm_set1_epi8(0xF);
    let (lo, hi) = (_mm_and_si128(v, m), _mm_and_si128(_mm_srli_epi16(v, 4), m));
    [lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)].map(|h| _mm256_cvtepu8_epi32(h))
}

/// [`nibbles32`] looked up in the IQ4 code book (`kvalues_iq4nl`), as floats.
///
/// # Safety
/// AVX2; 16 readable bytes at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn iq4_values32(p: *const u8) -> [__m256; 4] {
    let book = _mm_loadu_si128(super::reference::KVALUES_IQ4NL.as_ptr() as *const __m128i);
    let v = _mm_loadu_si128(p as *const __m128i);
    let m = _mm_set1_epi8(0xF);
    let lo = _mm_shuffle_epi8(book, _mm_and_si128(v, m));
    let hi = _mm_shuffle_epi8(book, _mm_and_si128(_mm_srli_epi16(v, 4), m));
    [lo, _mm_srli_si128(lo, 8), hi, _mm_srli_si128(hi, 8)]
        .map(|h| _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(h)))
}

/// Bit `j` of the u32 `qh` at `p` shifted to bit 4, for values `j = 0..32` (Q5_0 / Q5_1's fifth
/// bits), as four vectors of eight i32.
///
/// # Safety
/// AVX2; four readable bytes at `p`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn fifth_bits32(p: *const u8) -> [__m256i; 4] {
    let qh = _mm256_set1_epi32(i32::from_le_bytes([*p, *p.add(1), *p.add(2), *p.add(3)]));
    let (one, lanes) = (
        _mm256_set1_epi32(1),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    );
    [0, 8, 16, 24].map(|g| {
        let s = _mm256_add_epi32(lanes, _mm256_set1_epi32(g));
        _mm256_slli_epi32(_mm256_and_si256(_mm256_srlv_epi32(qh, s), one), 4)
    })
}

pub(super) struct Q4_1;
impl Block for Q4_1 {
    const VALUES: usize = 32;
    const BYTES: usize = 20;
    /// `float(q) · d + m` (a product, then a sum, as the reference).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn each(p: *const u8, mut f: impl FnMut(usize, __m256)) {
        let (d, m) = (
            _mm256_set1_ps(f16_ptr(p)),
            _mm256_set1_ps(f16_ptr(p.add(2))),
        );
        for (g, q) in nibbles32(p.add(4)).into_iter().enumerate() {
            f(
                8 * g,
                _mm256_add_ps(_mm256_mul_ps(_mm256_cvtepi32_ps(q), d), m),
            );
        }
    }
}

pub(super) struct Q5_0;
impl Block for Q5_0 {
    const VALUES: usize = 32;
    const BYTES: usize = 22;
    /// `float((nibble | fifth bit) − 16) · d`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn each(p: *const u8, mut f: impl FnMut(usize, __m256)) {
        let (d, sixteen) = (_mm256_set1_ps(f16_ptr(p)), _mm256_set1_epi32(16));
        let h = fifth_bits32(p.add(2));
        for (g, q) in nibbles32(p.add(6)).into_iter().enumerate() {
            let q = _mm256_sub_epi32(_mm256_or_si256(q, h[g]), sixteen);
            f(8 * g, _mm256_mul_ps(_mm256_cvtepi32_ps(q), d));
        }
    }
}

pub(super) struct Q5_1;
impl Block for Q5_1 {
    const VALUES: usize = 32;
    const BYTES: usize = 24;
    /// `float(nibble | fifth bit) · d + m`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn each(p: *const u8, mut f: impl FnMut(usize, __m256)) {
        let (d, m) = (
            _mm256_set1_ps(f16_ptr(p)),
            _mm256_set1_ps(f16_ptr(p.add(2))),
        );
        let h = fifth_bits32(p.add(4));
        for (g, q) in nibbles32(p.add(8)).into_iter().enumerate() {
            let q = _mm256_cvtepi32_ps(_mm256_or_si256(q, h[g]));
            f(8 * g, _mm256_add_ps(_mm256_mul_ps(q, d), m));
        }
    }
}

pub(super) struct Iq4Nl;
impl Block for Iq4Nl {
    const VALUES: usize = 32;
    const BYTES: usize = 18;
    /// `d · book[nibble]`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn each(p: *const u8, mut f: impl FnMut(usize, __m256)) {
        let d = _mm256_set1_ps(f16_ptr(p));
        for (g, v) in iq4_values32(p.add(2)).into_iter().enumerate() {
            f(8 * g, _mm256_mul_ps(d, v));
        }
    }
}

pub(super) struct Iq4Xs;
impl Block for Iq4Xs {
    const VALUES: usize = 256;
    const BYTES: usize = 136;
    /// Eight runs of 32 IQ4_NL values, run `ib` scaled by `d · (ls − 32)` with the 6-bit `ls`
    /// split between `scales_l` (four bits) and `scales_h` (two).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn each(p: *const u8, mut f: impl FnMut(usize, __m256)) {
        let d = f16_ptr(p);
        let sh = u16::from_le_bytes([*p.add(2), *p.add(3)]) as i32;
        for ib in 0..8 {
            let low = ((*p.add(4 + ib / 2) >> (4 * (ib % 2))) & 0xF) as i32;
            let dl = _mm256_set1_ps(d * ((low | (((sh >> (2 * ib)) & 3) << 4)) - 32) as f32);
            for (g, v) in iq4_values32(p.add(8 + 16 * ib)).into_iter().enumerate() {
                f(32 * ib + 8 * g, _mm256_mul_ps(dl, v));
            }
        }
    }
}

pub(super) struct Q2K;
impl Block for Q2K {
    const VALUES: usize = 256;
    const BYTES: usize = 84;
    /// Two halves of 128 values, each four 2-bit planes (shift 2j) of 32 bytes; every 16 values
    /// have their own 4-bit scale and min: `d·sc · float(q) − dmin·m`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn each(p: *const u8, mut f: impl FnMut(usize, __m256)) {
        let (d, dmin) = (f16_ptr(p.add(80)), f16_ptr(p.add(82)));
        let three = _mm256_set1_epi32(3);
        for n in 0..2 {
            let q = p.add(16 + 32 * n);
            for j in 0..4 {
                let shift = _mm_cvtsi32_si128(2 * j as i32);
                for half in 0..2 {
                    let sc = *p.add(8 * n + 2 * j + half);
                    let dl = _mm256_set1_ps(d * (sc & 0xF) as f32);
                    let ml = _mm256_set1_ps(dmin * (sc >> 4) as f32);
                    for g in 0..2 {
                        let i = 16 * half + 8 * g;
                        let v = _mm256_and_si256(_mm256_srl_epi32(u8x8(q.add(i)), shift), three);
                        let w = _mm256_sub_ps(_mm256_mul_ps(dl, _mm256_cvtepi32_ps(v)), ml);
                        f(128 * n + 32 * j + i, w);
                    }
                }
            }
        }
    }
}

pub(super) struct Q3K;
impl Block for Q3K {
    const VALUES: usize = 256;
    const BYTES: usize = 110;
    /// Q2_K's planes with a third bit from `hmask` (bit 4n + j; a clear bit subtracts 4), every
    /// 16 values scaled by `d · (sc − 32)` with no min.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn each(p: *const u8, mut f: impl FnMut(usize, __m256)) {
        let d = f16_ptr(p.add(108));
        let scales = super::reference::q3_k_scales(std::slice::from_raw_parts(p.add(96), 12));
        let (one, three, four) = (
            _mm256_set1_epi32(1),
            _mm256_set1_epi32(3),
            _mm256_set1_epi32(4),
        );
        for n in 0..2 {
            let q = p.add(32 + 32 * n);
            for j in 0..4 {
                let shift = _mm_cvtsi32_si128(2 * j as i32);
                let hshift = _mm_cvtsi32_si128((4 * n + j) as i32);
                for half in 0..2 {
                    let dl = _mm256_set1_ps(d * (scales[8 * n + 2 * j + half] - 32) as f32);
                    for g in 0..2 {
                        let i = 16 * half + 8 * g;
                        let low = _mm256_and_si256(_mm256_srl_epi32(u8x8(q.add(i)), shift), three);
                        let hb = _mm256_and_si256(_mm256_srl_epi32(u8x8(p.add(i)), hshift), one);
                        let v =
                            _mm256_sub_epi32(_mm256_add_epi32(low, _mm256_slli_epi32(hb, 2)), four);
                        f(
                            128 * n + 32 * j + i,
                            _mm256_mul_ps(_mm256_cvtepi32_ps(v), dl),
                        );
                    }
                }
            }
        }
    }
}

pub(super) struct Q5K;
impl Block for Q5K {
    const VALUES: usize = 256;
    const BYTES: usize = 176;
    /// Chunk c's low nibbles (sub-block 2c) then high nibbles (2c + 1), each plus
    /// its `qh` bit as 16, `d·sc · float(q) − dmin·m`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn each(p: *const u8, mut f: impl FnMut(usize, __m256)) {
        let (d, dmin) = (f16_ptr(p), f16_ptr(p.add(2)));
        let sc = std::slice::from_raw_parts(p.add(4), 12);
        let (mask, one) = (_mm256_set1_epi32(0xF), _mm256_set1_epi32(1));
        let qh = p.add(16);
        for c in 0..4 {
            let ql = p.add(48 + 32 * c);
            for (half, sub) in [(0, 2 * c), (1, 2 * c + 1)] {
                let (s, m) = scale_min_k4(sub, sc);
                let (dv, mv) = (
                    _mm256_set1_ps(d * s as f32),
                    _mm256_set1_ps(dmin * m as f32),
                );
                let shift = _mm_cvtsi32_si128(sub as i32);
                for g in 0..4 {
                    let v = u8x8(ql.add(8 * g));
                    let nib = if half == 0 {
                        _mm256_and_si256(v, mask)
                    } else {
                        _mm256_srli_epi32(v, 4)
                    };
                    let h = _mm256_and_si256(_mm256_srl_epi32(u8x8(qh.add(8 * g)), shift), one);
                    let q = _mm256_add_epi32(nib, _mm256_slli_epi32(h, 4));
                    let w = _mm256_sub_ps(_mm256_mul_ps(dv, _mm256_cvtepi32_ps(q)), mv);
                    f(64 * c + 32 * half + 8 * g, w);
                }
            }
        }
    }
}

macro_rules! block_kernels {
    ($($block:ident: $deq:ident, $dot:ident;)*) => {$(
        /// # Safety
        /// AVX2, FMA and F16C; `b` holds `y.len() / VALUES` blocks.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $deq(b: &[u8], y: &mut [f32]) {
            dequantize::<$block>(b, y)
        }

        /// [`dot4_q8_0`] for this block type, by its [`Block`] description.
        ///
        /// # Safety
        /// AVX2, FMA and F16C; each row holds `x.len() / VALUES` blocks.
        #[target_feature(enable = "avx2,fma,f16c")]
        pub unsafe fn $dot(x: &[f32], rows: [&[u8]; 4]) -> [f32; 4] {
            dot4::<$block>(x, rows)
        }
    )*};
}

block_kernels! {
    Q4_1: q4_1, dot4_q4_1;
    Q5_0: q5_0, dot4_q5_0;
    Q5_1: q5_1, dot4_q5_1;
    Iq4Nl: iq4_nl, dot4_iq4_nl;
    Iq4Xs: iq4_xs, dot4_iq4_xs;
    Q2K: q2_k, dot4_q2_k;
    Q3K: q3_k, dot4_q3_k;
    Q5K: q5_k, dot4_q5_k;
}
