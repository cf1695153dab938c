//! Dot products of an f32 activation row with a weight row in its checkpoint dtype.
//!
//! Weights are widened to f32 in registers (bf16: shift into the high half; f16: F16C), never
//! copied. AVX2+FMA is chosen at run time; other machines take the portable path, which keeps eight
//! partial sums so the compiler can vectorise it.

use crate::WeightData;
use half::{bf16, f16};

/// `x · w` over `x.len()` elements.
#[inline]
pub fn dot(x: &[f32], w: WeightData) -> f32 {
    // Checked in release builds too: the SIMD paths below read `x.len()` elements of `w`.
    assert_eq!(
        x.len(),
        w.len(),
        "dot: activation and weight row lengths differ"
    );
    if let WeightData::Quant(q) = w {
        return dot_quant(x, q);
    }
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: the CPU supports AVX2, FMA and F16C (checked above); lengths match.
        return unsafe {
            match w {
                WeightData::F32(w) => avx2::dot_f32(x, w),
                WeightData::BF16(w) => avx2::dot_bf16(x, w),
                WeightData::F16(w) => avx2::dot_f16(x, w),
                WeightData::Quant(_) => unreachable!("handled above"),
            }
        };
    }
    match w {
        WeightData::F32(w) => portable_dot(x, w, |v| v),
        WeightData::BF16(w) => portable_dot(x, w, |v| v.to_f32()),
        WeightData::F16(w) => portable_dot(x, w, |v| v.to_f32()),
        WeightData::Quant(_) => unreachable!("handled above"),
    }
}

/// `x · w` for quantised `w`: 256 values at a time dequantized on the stack, then an f32 dot
/// product (exact arithmetic on the stored values, as the float64 GGUF reference computes; not
/// llama.cpp's 8-bit rounding of the activations).
fn dot_quant(x: &[f32], w: crate::QuantData) -> f32 {
    const CHUNK: usize = 256;
    let mut buf = [0f32; CHUNK];
    let mut sum = 0f32;
    let mut at = 0;
    while at < x.len() {
        let n = CHUNK.min(x.len() - at);
        w.to_f32_into(at, &mut buf[..n]);
        sum += dot(&x[at..at + n], WeightData::F32(&buf[..n]));
        at += n;
    }
    sum
}

/// How far ahead of the quad being read a matrix-vector product prefetches, at least: a quad
/// (rows of 1024 bf16: 8 KiB) prefetched just one quad ahead reaches its last row only ≈ 2 KiB
/// before it is read, too late at these bandwidths (a matrix-vector product over 1024-wide
/// bf16 rows streamed ×1.03–1.07 faster with the lines 12 KiB ahead, decode ×1.06–1.07;
/// 16 KiB was slower again, and f32 quads, 16 KiB already, gained nothing from more).
#[cfg(target_arch = "x86_64")]
const MIN_PREFETCH_AHEAD_BYTES: usize = 12 << 10;

/// The largest quad of rows a matrix-vector product prefetches with the non-temporal hint: half
/// of the smallest L1 data cache it meets (32 KiB), since the prefetch runs about a quad ahead
/// (at least [`MIN_PREFETCH_AHEAD_BYTES`]). Larger quads (rows over 1024 elements in f32, over
/// 2048 in bf16/f16) take `_MM_HINT_T0`, so their lines wait in L2 instead.
#[cfg(target_arch = "x86_64")]
const NON_TEMPORAL_QUAD_BYTES: usize = 16 << 10;

/// How a matrix-vector product (each weight read once) prefetches the rows after a quad of
/// `quad_bytes`: how many bytes past the quad's start, whether non-temporally, and how far ahead
/// a second prefetch brings lines into L2 only (none: no second prefetch).
#[cfg(target_arch = "x86_64")]
#[derive(Clone, Copy)]
struct MatvecPrefetch {
    ahead: usize,
    non_temporal: bool,
    l2_ahead: Option<usize>,
}

/// How far ahead of the quad being read the second, L2-only prefetch reaches where one is
/// issued. Intel Xeon (Emerald Rapids), bench checkpoint, 2 threads, f32 decode in four
/// alternated rounds: `T0` alone 25.4–28.8 tok/s, `T2` alone 28.8–31.5, with `T1` 32 KiB ahead
/// 25.5–30.2, 64 KiB ahead 29.6–33.1; three more rounds: `T2` alone 30.9–32.5, 32 KiB
/// 31.1–33.2, 64 KiB 34.5–36.1 (bf16 level among the three: 59.6–62.2).
#[cfg(target_arch = "x86_64")]
const L2_PREFETCH_AHEAD_BYTES: usize = 64 << 10;

#[cfg(target_arch = "x86_64")]
fn matvec_prefetch(quad_bytes: usize) -> MatvecPrefetch {
    let ahead = quad_bytes.max(MIN_PREFETCH_AHEAD_BYTES);
    if prefetches_non_temporally() {
        MatvecPrefetch {
            ahead,
            non_temporal: quad_bytes <= NON_TEMPORAL_QUAD_BYTES,
            l2_ahead: None,
        }
    } else {
        MatvecPrefetch {
            ahead,
            non_temporal: false,
            l2_ahead: Some(L2_PREFETCH_AHEAD_BYTES.max(2 * ahead)),
        }
    }
}

/// Whether matrix-vector products prefetch the rows they stream with the non-temporal hint (one
/// prefetch a line) or to L1 and, further ahead, to L2 (two). On AMD (Zen 5) the non-temporal
/// hint streamed ×1.03–1.04 faster than `_MM_HINT_T0` at the same reach, and an added `T1`
/// prefetch 64 or 128 KiB ahead made decode slower (×0.925, ×0.950); on Intel (Xeon,
/// Sapphire/Emerald Rapids) the non-temporal hint made decode ×0.50–0.63 as fast as `T0`
/// (bench checkpoint, 2 threads, alternated: bf16 25.6–30.8 against 45.7–48.6 tok/s, f32
/// 11.3–12.7 against 24.1–25.4), since there a non-temporal line skips L2 and is fetched again
/// from memory once L1 evicts it before its read. `MOE_PREFETCH=nta|t0` overrides the choice
/// (`t0`: the two prefetches). Checked once.
#[cfg(target_arch = "x86_64")]
fn prefetches_non_temporally() -> bool {
    use std::sync::OnceLock;
    static NTA: OnceLock<bool> = OnceLock::new();
    *NTA.get_or_init(|| {
        crate::tuning::tuning()
            .prefetch_non_temporal
            .unwrap_or_else(|| cpu_vendor_family().0 == *b"AuthenticAMD")
    })
}

/// The CPU's vendor string and family (CPUID leaves 0 and 1).
#[cfg(target_arch = "x86_64")]
fn cpu_vendor_family() -> ([u8; 12], u32) {
    // SAFETY: CPUID leaves 0 and 1 exist on every x86_64 CPU (the call is safe from Rust 1.87 on;
    // `unsafe` keeps older toolchains building).
    #[allow(unused_unsafe)]
    let (v, signature) = unsafe {
        (
            std::arch::x86_64::__cpuid(0),
            std::arch::x86_64::__cpuid(1).eax,
        )
    };
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&v.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&v.edx.to_le_bytes());
    vendor[8..].copy_from_slice(&v.ecx.to_le_bytes());
    let family = match (signature >> 8) & 0xF {
        0xF => 0xF + ((signature >> 20) & 0xFF),
        f => f,
    };
    (vendor, family)
}

/// Four dot products of one activation row with four weight rows of the same dtype; the row of
/// `x` is loaded once for all four.
#[inline]
pub fn dot4(x: &[f32], w: [WeightData; 4]) -> [f32; 4] {
    dot4_impl::<false>(x, w)
}

/// [`dot4`] for four consecutive rows of a matrix that has four more rows after them: those are
/// prefetched while these are read (memory-bound matrix-vector products).
#[inline]
pub fn dot4_then_next(x: &[f32], w: [WeightData; 4]) -> [f32; 4] {
    dot4_impl::<true>(x, w)
}

#[inline]
fn dot4_impl<const PREFETCH: bool>(x: &[f32], w: [WeightData; 4]) -> [f32; 4] {
    assert!(
        w.iter().all(|r| r.len() == x.len()),
        "dot4: a weight row's length differs from the activation's"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: features checked; all four rows come from one matrix, so they share a dtype and
        // have x.len() elements.
        unsafe {
            match (w[0], w[1], w[2], w[3]) {
                (
                    WeightData::F32(a),
                    WeightData::F32(b),
                    WeightData::F32(c),
                    WeightData::F32(d),
                ) => {
                    return avx2::dot4_f32::<PREFETCH>(x, [a, b, c, d]);
                }
                (
                    WeightData::BF16(a),
                    WeightData::BF16(b),
                    WeightData::BF16(c),
                    WeightData::BF16(d),
                ) => return avx2::dot4_bf16::<PREFETCH>(x, [a, b, c, d]),
                (
                    WeightData::F16(a),
                    WeightData::F16(b),
                    WeightData::F16(c),
                    WeightData::F16(d),
                ) => {
                    return avx2::dot4_f16::<PREFETCH>(x, [a, b, c, d]);
                }
                _ => {}
            }
        }
    }
    [dot(x, w[0]), dot(x, w[1]), dot(x, w[2]), dot(x, w[3])]
}

/// [`dot4`] of each of `n` tokens (rows of `x`, `k = x.len() / n` long) with four weight rows:
/// `emit(t, dot4(x_t, w))`, bit for bit, so a token's result never depends on how many tokens
/// share the call. Several tokens are computed per pass over the rows (the weight vectors are
/// loaded once for all of them), which turns the load-bound dot product into an FMA-bound one.
/// With `next_quad_follows` (four more rows of the same matrix follow these in memory), the first
/// pass streams them in, as [`dot4_then_next`] does: a few tokens per expert are memory-bound.
pub fn dot4_tokens(
    x: &[f32],
    n: usize,
    w: [WeightData; 4],
    next_quad_follows: bool,
    mut emit: impl FnMut(usize, [f32; 4]),
) {
    let k = if n == 0 { 0 } else { x.len() / n };
    assert!(
        k * n == x.len() && w.iter().all(|r| r.len() == k),
        "dot4_tokens: {} activations are not {n} rows of the weight rows' length",
        x.len()
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        let (pairs, wide) = (takes_pair_tiles(), has_avx512());
        let mut out = [[0f32; 4]; 8];
        let mut t = 0;
        while t < n {
            let xt = &x[t * k..];
            let step = (n - t).min(if pairs {
                8
            } else if wide {
                6
            } else {
                3
            });
            macro_rules! run {
                ($tile:ident, $tile_vl:ident, $tile_pairs:ident, $a:expr, $b:expr, $c:expr, $d:expr) => {{
                    let ws = [$a, $b, $c, $d];
                    macro_rules! by_height {
                        ($prefetch:literal) => {
                            match (pairs, wide, step) {
                                (true, _, 8) => {
                                    avx2::$tile_pairs::<8, $prefetch>(xt, k, ws, &mut out)
                                }
                                (true, _, 7) => {
                                    avx2::$tile_pairs::<7, $prefetch>(xt, k, ws, &mut out)
                                }
                                (true, _, 6) => {
                                    avx2::$tile_pairs::<6, $prefetch>(xt, k, ws, &mut out)
                                }
                                (true, _, 5) => {
                                    avx2::$tile_pairs::<5, $prefetch>(xt, k, ws, &mut out)
                                }
                                (true, _, 4) => {
                                    avx2::$tile_pairs::<4, $prefetch>(xt, k, ws, &mut out)
                                }
                                (true, _, 3) => {
                                    avx2::$tile_pairs::<3, $prefetch>(xt, k, ws, &mut out)
                                }
                                (true, _, 2) => {
                                    avx2::$tile_pairs::<2, $prefetch>(xt, k, ws, &mut out)
                                }
                                (true, _, _) => {
                                    avx2::$tile_pairs::<1, $prefetch>(xt, k, ws, &mut out)
                                }
                                (_, true, 6) => avx2::$tile_vl::<6, $prefetch>(xt, k, ws, &mut out),
                                (_, true, 5) => avx2::$tile_vl::<5, $prefetch>(xt, k, ws, &mut out),
                                (_, true, 4) => avx2::$tile_vl::<4, $prefetch>(xt, k, ws, &mut out),
                                (_, _, 3) => avx2::$tile::<3, $prefetch>(xt, k, ws, &mut out),
                                (_, _, 2) => avx2::$tile::<2, $prefetch>(xt, k, ws, &mut out),
                                _ => avx2::$tile::<1, $prefetch>(xt, k, ws, &mut out),
                            }
                        };
                    }
                    // SAFETY: features checked; `xt` holds `step` rows of `k`; the rows of one
                    // matrix share a dtype and have `k` elements.
                    unsafe {
                        if t == 0 && next_quad_follows {
                            by_height!(true)
                        } else {
                            by_height!(false)
                        }
                    }
                }};
            }
            match (w[0], w[1], w[2], w[3]) {
                (
                    WeightData::F32(a),
                    WeightData::F32(b),
                    WeightData::F32(c),
                    WeightData::F32(d),
                ) => {
                    run!(tile_f32, tile_f32_vl, tile_f32_pairs, a, b, c, d)
                }
                (
                    WeightData::BF16(a),
                    WeightData::BF16(b),
                    WeightData::BF16(c),
                    WeightData::BF16(d),
                ) => run!(tile_bf16, tile_bf16_vl, tile_bf16_pairs, a, b, c, d),
                (
                    WeightData::F16(a),
                    WeightData::F16(b),
                    WeightData::F16(c),
                    WeightData::F16(d),
                ) => {
                    run!(tile_f16, tile_f16_vl, tile_f16_pairs, a, b, c, d)
                }
                _ => {
                    for (m, o) in out.iter_mut().enumerate().take(step) {
                        *o = dot4(&xt[m * k..(m + 1) * k], w);
                    }
                }
            }
            for (m, o) in out.iter().enumerate().take(step) {
                emit(t + m, *o);
            }
            t += step;
        }
        return;
    }
    for t in 0..n {
        emit(t, dot4(&x[t * k..(t + 1) * k], w));
    }
}

/// [`dot4_tokens`] over two quads of f32 rows at once (eight consecutive rows of one matrix,
/// `w`): `emit(t, [dot4(x_t, w[0..4]), dot4(x_t, w[4..8])])`, bit for bit, each activation vector
/// loaded once for the eight rows, so half as many are read from L2 as four rows at a time read.
/// In-process against two [`dot4_tokens`] calls (Intel Xeon, 2 threads, ten alternated rounds,
/// medians of the paired ratios): 32 tokens ×1.065 (3584×1024) and ×1.096 (1024×3584), 128
/// tokens ×1.106 and ×1.151; bf16 rows were ×0.93–1.00, so they keep the four-row tiles. Returns
/// `false`, having done nothing, where the row-pair tiles do not run. With `next_follows`, eight
/// more rows follow these and the first tile streams them in.
pub fn dot8_tokens_f32(
    x: &[f32],
    n: usize,
    w: [&[f32]; 8],
    next_follows: bool,
    emit: impl FnMut(usize, [f32; 8]),
) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        if !takes_pair_tiles() {
            return false;
        }
        let k = if n == 0 { 0 } else { x.len() / n };
        assert!(
            k * n == x.len() && w.iter().all(|r| r.len() == k),
            "dot8_tokens_f32: {} activations are not {n} rows of the weight rows' length",
            x.len()
        );
        let mut out = [[0f32; 8]; OCTET_TILE];
        for_token_tiles(n, &mut out, emit, |t, step, out| {
            let xt = &x[t * k..];
            macro_rules! by_height {
                ($pf:literal) => {
                    match step {
                        6 => avx2::tile_f32_octet::<6, $pf>(xt, k, w, out),
                        5 => avx2::tile_f32_octet::<5, $pf>(xt, k, w, out),
                        4 => avx2::tile_f32_octet::<4, $pf>(xt, k, w, out),
                        3 => avx2::tile_f32_octet::<3, $pf>(xt, k, w, out),
                        2 => avx2::tile_f32_octet::<2, $pf>(xt, k, w, out),
                        _ => avx2::tile_f32_octet::<1, $pf>(xt, k, w, out),
                    }
                };
            }
            // SAFETY: the pair tiles run here (checked above); `xt` holds `step` rows of `k`; the
            // eight rows have `k` elements.
            unsafe {
                if t == 0 && next_follows {
                    by_height!(true)
                } else {
                    by_height!(false)
                }
            }
        });
        true
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (x, n, w, next_follows, emit);
        false
    }
}

/// Runs `tile(t, step, out)` over `n` tokens in tiles of at most `out.len()` (`step` tokens from
/// token `t`, their results into `out[..step]`), then hands each token's results to `emit`.
#[cfg(target_arch = "x86_64")]
fn for_token_tiles<const R: usize>(
    n: usize,
    out: &mut [[f32; R]],
    mut emit: impl FnMut(usize, [f32; R]),
    mut tile: impl FnMut(usize, usize, &mut [[f32; R]]),
) {
    let mut t = 0;
    while t < n {
        let step = (n - t).min(out.len());
        tile(t, step, out);
        for (m, o) in out.iter().enumerate().take(step) {
            emit(t + m, *o);
        }
        t += step;
    }
}

/// Tokens per eight-row tile: 24 accumulators, four weight registers and an activation in
/// AVX-512's 32.
#[cfg(target_arch = "x86_64")]
const OCTET_TILE: usize = 6;

/// `y += a · x` over f32 rows.
#[inline]
pub fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA are present (checked above).
        return unsafe { avx2::axpy(a, x, y) };
    }
    for (yv, xv) in y.iter_mut().zip(x) {
        *yv += a * xv;
    }
}

/// `out[j] = scale · (q · k_j)` for every `j < out.len()`, key `j` being `k[j * stride..][..q.len()]`
/// (keys of one head in a cache of rows); returns the largest score. One call per block of keys,
/// so the per-key work is a few vector instructions, not a call.
pub fn scaled_scores(q: &[f32], k: &[f32], stride: usize, scale: f32, out: &mut [f32]) -> f32 {
    let n = out.len();
    if n == 0 {
        return f32::NEG_INFINITY;
    }
    assert!(
        (n - 1) * stride + q.len() <= k.len(),
        "keys past the end of the cache"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx2() && q.len() % 8 == 0 {
        // SAFETY: AVX2 and FMA are present; every key lies inside k (asserted above).
        unsafe { avx2::scaled_scores(q, k, stride, scale, out) };
        return out.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
    }
    for (j, o) in out.iter_mut().enumerate() {
        *o = dot(q, WeightData::F32(&k[j * stride..j * stride + q.len()])) * scale;
    }
    out.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v))
}

/// `acc += Σ_j e[j] · v_j`, value row `j` being `v[j * stride..][..acc.len()]`, each element summed
/// over `j` in order (the bits of one [`axpy`] per row).
pub fn accumulate_rows(e: &[f32], v: &[f32], stride: usize, acc: &mut [f32]) {
    let n = e.len();
    if n == 0 {
        return;
    }
    assert!(
        (n - 1) * stride + acc.len() <= v.len(),
        "values past the end of the cache"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA are present; every row lies inside v (asserted above).
        return unsafe { avx2::accumulate_rows(e, v, stride, acc) };
    }
    for (j, &ej) in e.iter().enumerate() {
        axpy(ej, &v[j * stride..j * stride + acc.len()], acc);
    }
}

/// `xs[i] = exp(xs[i] - shift)` for arguments ≤ 0 (softmax numerators), returning their sum.
/// Vectorised with AVX2 (a degree-6 polynomial after range reduction; arguments below -87 give
/// 0, NaN stays NaN); elsewhere `f32::exp`.
pub fn exp_shifted(xs: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if has_avx2() {
        // SAFETY: AVX2 and FMA are present (checked above).
        return unsafe { avx2::exp_shifted(xs, shift) };
    }
    let mut sum = 0f32;
    for v in xs.iter_mut() {
        *v = (*v - shift).exp();
        sum += *v;
    }
    sum
}

#[inline]
fn portable_dot<T: Copy>(x: &[f32], w: &[T], cvt: impl Fn(T) -> f32) -> f32 {
    let mut acc = [0f32; 8];
    let chunks = x.len() / 8;
    for c in 0..chunks {
        for l in 0..8 {
            acc[l] += x[c * 8 + l] * cvt(w[c * 8 + l]);
        }
    }
    let mut s: f32 = acc.iter().sum();
    for i in chunks * 8..x.len() {
        s += x[i] * cvt(w[i]);
    }
    s
}

#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_avx2() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx2")
            && is_x86_feature_detected!("fma")
            && is_x86_feature_detected!("f16c")
    })
}

/// AVX-512F and VL: 32 vector registers for the wider token tiles (checked once).
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_avx512() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl") && has_avx2()
    })
}

/// AVX-512F/VL/DQ: what the row-pair tiles need to run (checked once).
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn can_run_pair_tiles() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| has_avx512() && is_x86_feature_detected!("avx512dq"))
}

/// Whether the matrix products take the row-pair tiles: where they can run and 512-bit FMAs run
/// at full width (Intel, or AMD from Zen 5; Zen 4 splits them in two, so its 256-bit tiles are as
/// fast). `MOE_TILE_BITS=256|512` overrides the choice. Checked once.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn takes_pair_tiles() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        let capable = can_run_pair_tiles();
        match crate::tuning::tuning().tile_bits {
            Some(256) => return false,
            Some(_) => return capable,
            None => {}
        }
        let (vendor, family) = cpu_vendor_family();
        capable && (vendor != *b"AuthenticAMD" || family >= 0x1A)
    })
}

#[cfg(target_arch = "x86_64")]
pub(crate) mod avx2 {
    use super::{bf16, f16};
    use std::arch::x86_64::*;

    #[inline(always)]
    unsafe fn load_f32(p: *const f32) -> __m256 {
        _mm256_loadu_ps(p)
    }
    #[inline(always)]
    unsafe fn load_bf16(p: *const bf16) -> __m256 {
        let v = _mm_loadu_si128(p as *const __m128i);
        _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16))
    }
    #[inline(always)]
    unsafe fn load_f16(p: *const f16) -> __m256 {
        _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i))
    }
    /// The lanes' sum, in the order every dot product here reduces them.
    #[inline(always)]
    pub(crate) unsafe fn hsum(v: __m256) -> f32 {
        let lo = _mm256_castps256_ps128(v);
        let hi = _mm256_extractf128_ps(v, 1);
        let s = _mm_add_ps(lo, hi);
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_shuffle_ps(s, s, 1));
        _mm_cvtss_f32(s)
    }

    /// With four more rows of the matrix after the quad that starts at `first_row` (rows of `k`
    /// elements), streams in what step `i` (elements `i..i + 8` of each row) will need of them:
    /// one cache line for 2-byte weights, two for f32. `HINT`: `_MM_HINT_NTA` for lines read
    /// once, `_MM_HINT_T0` for lines the caller may read again.
    #[inline(always)]
    unsafe fn prefetch_next_quad<T, const HINT: i32>(first_row: *const T, k: usize, i: usize) {
        prefetch_ahead::<T, HINT>(first_row, 4 * k * std::mem::size_of::<T>(), i)
    }

    /// What step `i` of a quad's product streams in: the lines at `ahead` bytes past the quad's
    /// start plus four times the step's element offset, so the quad's steps together cover a
    /// quad's worth of lines.
    /// The lines may lie past the matrix's end when `ahead` exceeds a quad; a prefetch never
    /// faults, and the address is only computed (wrapping), never read.
    #[inline(always)]
    unsafe fn prefetch_ahead<T, const HINT: i32>(first_row: *const T, ahead: usize, i: usize) {
        let at = (first_row as *const i8).wrapping_add(ahead + 4 * i * std::mem::size_of::<T>());
        _mm_prefetch::<HINT>(at);
        if std::mem::size_of::<T>() == 4 {
            _mm_prefetch::<HINT>(at.wrapping_add(64));
        }
    }

    /// Adds elements `from..` of `x` times each of four rows to the rows' sums, in order (the
    /// scalar tail after the last full vector step).
    #[inline(always)]
    fn add_tail<T: Copy>(
        s: &mut [f32; 4],
        x: &[f32],
        w: [&[T]; 4],
        from: usize,
        cvt: impl Fn(T) -> f32,
    ) {
        for j in from..x.len() {
            for r in 0..4 {
                s[r] += x[j] * cvt(w[r][j]);
            }
        }
    }

    macro_rules! dot_impl {
        ($name:ident, $name4:ident, $t:ty, $load:ident, $cvt:expr) => {
            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $name(x: &[f32], w: &[$t]) -> f32 {
                let n = x.len();
                let (xp, wp) = (x.as_ptr(), w.as_ptr());
                let mut a0 = _mm256_setzero_ps();
                let mut a1 = _mm256_setzero_ps();
                let mut i = 0;
                while i + 16 <= n {
                    a0 = _mm256_fmadd_ps(load_f32(xp.add(i)), $load(wp.add(i)), a0);
                    a1 = _mm256_fmadd_ps(load_f32(xp.add(i + 8)), $load(wp.add(i + 8)), a1);
                    i += 16;
                }
                if i + 8 <= n {
                    a0 = _mm256_fmadd_ps(load_f32(xp.add(i)), $load(wp.add(i)), a0);
                    i += 8;
                }
                let mut s = hsum(_mm256_add_ps(a0, a1));
                while i < n {
                    s += x[i] * $cvt(w[i]);
                    i += 1;
                }
                s
            }

            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $name4<const PREFETCH: bool>(x: &[f32], w: [&[$t]; 4]) -> [f32; 4] {
                let n = x.len();
                let xp = x.as_ptr();
                let (p0, p1, p2, p3) = (w[0].as_ptr(), w[1].as_ptr(), w[2].as_ptr(), w[3].as_ptr());
                let mut a0 = _mm256_setzero_ps();
                let mut a1 = _mm256_setzero_ps();
                let mut a2 = _mm256_setzero_ps();
                let mut a3 = _mm256_setzero_ps();
                let mut i = 0;
                // With PREFETCH the caller promises the next four rows follow these in memory
                // (rows of one matrix): stream them in as these are read, as a matrix-vector
                // product does.
                let plan = super::matvec_prefetch(4 * n * std::mem::size_of::<$t>());
                while i + 8 <= n {
                    if PREFETCH {
                        if plan.non_temporal {
                            prefetch_ahead::<_, _MM_HINT_NTA>(p0, plan.ahead, i);
                        } else {
                            prefetch_ahead::<_, _MM_HINT_T0>(p0, plan.ahead, i);
                        }
                        if let Some(far) = plan.l2_ahead {
                            prefetch_ahead::<_, _MM_HINT_T1>(p0, far, i);
                        }
                    }
                    let xv = load_f32(xp.add(i));
                    a0 = _mm256_fmadd_ps(xv, $load(p0.add(i)), a0);
                    a1 = _mm256_fmadd_ps(xv, $load(p1.add(i)), a1);
                    a2 = _mm256_fmadd_ps(xv, $load(p2.add(i)), a2);
                    a3 = _mm256_fmadd_ps(xv, $load(p3.add(i)), a3);
                    i += 8;
                }
                let mut s = [hsum(a0), hsum(a1), hsum(a2), hsum(a3)];
                add_tail(&mut s, x, w, i, $cvt);
                s
            }
        };
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn axpy(a: f32, x: &[f32], y: &mut [f32]) {
        let n = x.len().min(y.len());
        let (xp, yp) = (x.as_ptr(), y.as_mut_ptr());
        let av = _mm256_set1_ps(a);
        let mut i = 0;
        while i + 8 <= n {
            let v = _mm256_fmadd_ps(av, load_f32(xp.add(i)), load_f32(yp.add(i)));
            _mm256_storeu_ps(yp.add(i), v);
            i += 8;
        }
        while i < n {
            y[i] += a * x[i];
            i += 1;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn scaled_scores(q: &[f32], k: &[f32], stride: usize, scale: f32, out: &mut [f32]) {
        let (hd, n) = (q.len(), out.len());
        let (qp, kp, op) = (q.as_ptr(), k.as_ptr(), out.as_mut_ptr());
        let mut j = 0;
        while j + 4 <= n {
            let mut a = [_mm256_setzero_ps(); 4];
            let mut d = 0;
            while d < hd {
                let qv = load_f32(qp.add(d));
                for (r, acc) in a.iter_mut().enumerate() {
                    *acc = _mm256_fmadd_ps(qv, load_f32(kp.add((j + r) * stride + d)), *acc);
                }
                d += 8;
            }
            // Lane sums of the four keys: [k0, k1, k2, k3] per 128-bit half, then the halves.
            let s = _mm256_hadd_ps(_mm256_hadd_ps(a[0], a[1]), _mm256_hadd_ps(a[2], a[3]));
            let s = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
            _mm_storeu_ps(op.add(j), _mm_mul_ps(s, _mm_set1_ps(scale)));
            j += 4;
        }
        while j < n {
            let mut acc = _mm256_setzero_ps();
            let mut d = 0;
            while d < hd {
                acc = _mm256_fmadd_ps(load_f32(qp.add(d)), load_f32(kp.add(j * stride + d)), acc);
                d += 8;
            }
            *op.add(j) = hsum(acc) * scale;
            j += 1;
        }
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn accumulate_rows(e: &[f32], v: &[f32], stride: usize, acc: &mut [f32]) {
        let hd = acc.len();
        let (vp, ap) = (v.as_ptr(), acc.as_mut_ptr());
        let mut d0 = 0;
        // 64 elements at a time stay in eight registers across every row.
        while d0 + 64 <= hd {
            let mut a = [_mm256_setzero_ps(); 8];
            for (c, r) in a.iter_mut().enumerate() {
                *r = load_f32(ap.add(d0 + 8 * c));
            }
            for (j, &ej) in e.iter().enumerate() {
                let ev = _mm256_set1_ps(ej);
                let row = vp.add(j * stride + d0);
                for (c, r) in a.iter_mut().enumerate() {
                    *r = _mm256_fmadd_ps(ev, load_f32(row.add(8 * c)), *r);
                }
            }
            for (c, r) in a.iter().enumerate() {
                _mm256_storeu_ps(ap.add(d0 + 8 * c), *r);
            }
            d0 += 64;
        }
        while d0 + 8 <= hd {
            let mut r = load_f32(ap.add(d0));
            for (j, &ej) in e.iter().enumerate() {
                r = _mm256_fmadd_ps(_mm256_set1_ps(ej), load_f32(vp.add(j * stride + d0)), r);
            }
            _mm256_storeu_ps(ap.add(d0), r);
            d0 += 8;
        }
        for d in d0..hd {
            for (j, &ej) in e.iter().enumerate() {
                acc[d] += ej * v[j * stride + d];
            }
        }
    }

    /// `exp` of eight lanes: `x = n·ln2 + r` with |r| ≤ ln2/2, `exp(r)` by its Taylor polynomial
    /// to degree 6 (Horner, FMA), scaled by `2^n` through the exponent bits.
    #[inline(always)]
    unsafe fn exp8(x_in: __m256) -> __m256 {
        let floor = _mm256_set1_ps(-87.0);
        // max(floor, x) keeps a NaN x (it returns its second operand when either is NaN).
        let x = _mm256_max_ps(floor, x_in);
        let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(x, _mm256_set1_ps(std::f32::consts::LOG2_E)),
        );
        // ln 2 split in two so that n·ln2_hi is exact.
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693_145_75), x);
        let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(1.428_606_8e-6), r);
        let mut p = _mm256_set1_ps(1.0 / 720.0);
        for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
            p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(c));
        }
        let bits = _mm256_slli_epi32(
            _mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)),
            23,
        );
        let e = _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
        // Below the floor (-inf included) the result is 0.
        _mm256_andnot_ps(_mm256_cmp_ps::<_CMP_LT_OQ>(x_in, floor), e)
    }

    #[target_feature(enable = "avx2,fma")]
    pub unsafe fn exp_shifted(xs: &mut [f32], shift: f32) -> f32 {
        let n = xs.len();
        let p = xs.as_mut_ptr();
        let sv = _mm256_set1_ps(shift);
        let mut acc = _mm256_setzero_ps();
        let mut i = 0;
        while i + 8 <= n {
            let e = exp8(_mm256_sub_ps(load_f32(p.add(i)), sv));
            _mm256_storeu_ps(p.add(i), e);
            acc = _mm256_add_ps(acc, e);
            i += 8;
        }
        let mut sum = hsum(acc);
        if i < n {
            // The tail through the same polynomial, padded with arguments that give 0.
            let mut tail = [f32::NEG_INFINITY; 8];
            tail[..n - i].copy_from_slice(&xs[i..]);
            let e = exp8(_mm256_sub_ps(_mm256_loadu_ps(tail.as_ptr()), sv));
            _mm256_storeu_ps(tail.as_mut_ptr(), e);
            for (v, t) in xs[i..].iter_mut().zip(tail) {
                *v = t;
                sum += t;
            }
        }
        sum
    }

    dot_impl!(dot_f32, dot4_f32, f32, load_f32, |v: f32| v);
    dot_impl!(dot_bf16, dot4_bf16, bf16, load_bf16, |v: bf16| v.to_f32());
    dot_impl!(dot_f16, dot4_f16, f16, load_f16, |v: f16| v.to_f32());

    /// `M` tokens (rows of `x`, `k` apart) × four weight rows, each result computed in exactly
    /// the order of the four-row dot product: one 8-lane accumulator per (token, row), the same
    /// horizontal sum, the same scalar tail. Each weight vector is loaded once for `M` tokens, so
    /// `4M` FMAs need `M + 4` loads instead of `5M`.
    macro_rules! tile_impl {
        ($name:ident, $features:literal, $t:ty, $load:ident, $cvt:expr) => {
            #[target_feature(enable = $features)]
            pub unsafe fn $name<const M: usize, const PREFETCH: bool>(
                x: &[f32],
                k: usize,
                w: [&[$t]; 4],
                out: &mut [[f32; 4]],
            ) {
                let xp = x.as_ptr();
                let p = [w[0].as_ptr(), w[1].as_ptr(), w[2].as_ptr(), w[3].as_ptr()];
                let mut acc = [[_mm256_setzero_ps(); 4]; M];
                let mut i = 0;
                // As in the four-row product: the next four rows follow these; stream them in,
                // into the caches: the tiles of later tokens read each quad again.
                while i + 8 <= k {
                    if PREFETCH {
                        prefetch_next_quad::<_, _MM_HINT_T0>(p[0], k, i);
                    }
                    let mut xv = [_mm256_setzero_ps(); M];
                    for (m, v) in xv.iter_mut().enumerate() {
                        *v = load_f32(xp.add(m * k + i));
                    }
                    for r in 0..4 {
                        let wv = $load(p[r].add(i));
                        for m in 0..M {
                            acc[m][r] = _mm256_fmadd_ps(xv[m], wv, acc[m][r]);
                        }
                    }
                    i += 8;
                }
                for m in 0..M {
                    let mut s = [
                        hsum(acc[m][0]),
                        hsum(acc[m][1]),
                        hsum(acc[m][2]),
                        hsum(acc[m][3]),
                    ];
                    add_tail(&mut s, &x[m * k..(m + 1) * k], w, i, $cvt);
                    out[m] = s;
                }
            }
        };
    }

    /// Two weight rows' eight elements `i..i + 8` in one 16-lane register: row `a` low, `b` high.
    #[inline(always)]
    unsafe fn pair_f32(a: *const f32, b: *const f32) -> __m512 {
        _mm512_insertf32x8::<1>(_mm512_castps256_ps512(load_f32(a)), load_f32(b))
    }
    #[inline(always)]
    unsafe fn pair_bf16(a: *const bf16, b: *const bf16) -> __m512 {
        let v = _mm256_inserti128_si256::<1>(
            _mm256_castsi128_si256(_mm_loadu_si128(a as *const __m128i)),
            _mm_loadu_si128(b as *const __m128i),
        );
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v)))
    }
    #[inline(always)]
    unsafe fn pair_f16(a: *const f16, b: *const f16) -> __m512 {
        let v = _mm256_inserti128_si256::<1>(
            _mm256_castsi128_si256(_mm_loadu_si128(a as *const __m128i)),
            _mm_loadu_si128(b as *const __m128i),
        );
        _mm512_cvtph_ps(v)
    }

    /// The tile of `tile_impl` with 16-lane registers, each holding two rows' 8-lane accumulators
    /// (rows 0 and 1, rows 2 and 3; the token's eight activations in both halves). Every lane sums
    /// what the 8-lane tile's lane sums, in the same order, and each half gets the same horizontal
    /// sum: the same bits with half the FMA instructions, where 512-bit FMAs run at full width.
    macro_rules! tile_pairs_impl {
        ($name:ident, $t:ty, $pair:ident, $cvt:expr) => {
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512dq")]
            pub unsafe fn $name<const M: usize, const PREFETCH: bool>(
                x: &[f32],
                k: usize,
                w: [&[$t]; 4],
                out: &mut [[f32; 4]],
            ) {
                let xp = x.as_ptr();
                let p = [w[0].as_ptr(), w[1].as_ptr(), w[2].as_ptr(), w[3].as_ptr()];
                let mut acc = [[_mm512_setzero_ps(); 2]; M];
                let mut i = 0;
                while i + 8 <= k {
                    if PREFETCH {
                        prefetch_next_quad::<_, _MM_HINT_T0>(p[0], k, i);
                    }
                    let w01 = $pair(p[0].add(i), p[1].add(i));
                    let w23 = $pair(p[2].add(i), p[3].add(i));
                    for (m, a) in acc.iter_mut().enumerate() {
                        let xv = _mm512_broadcast_f32x8(load_f32(xp.add(m * k + i)));
                        a[0] = _mm512_fmadd_ps(xv, w01, a[0]);
                        a[1] = _mm512_fmadd_ps(xv, w23, a[1]);
                    }
                    i += 8;
                }
                for (m, a) in acc.iter().enumerate() {
                    let mut s = [
                        hsum(_mm512_castps512_ps256(a[0])),
                        hsum(_mm512_extractf32x8_ps::<1>(a[0])),
                        hsum(_mm512_castps512_ps256(a[1])),
                        hsum(_mm512_extractf32x8_ps::<1>(a[1])),
                    ];
                    add_tail(&mut s, &x[m * k..(m + 1) * k], w, i, $cvt);
                    out[m] = s;
                }
            }
        };
    }

    /// The row-pair tile over two quads (eight rows, four 16-lane registers per token): each
    /// (token, row) gets the lanes, order and sums of the four-row product, so the same bits,
    /// with each activation vector loaded once for eight rows instead of four. (f32 rows only:
    /// for bf16 the two extra widening shuffles per step cost more than the halved activation
    /// reads save.)
    macro_rules! tile_octet_impl {
        ($name:ident, $t:ty, $pair:ident, $cvt:expr) => {
            #[target_feature(enable = "avx2,fma,f16c,avx512f,avx512vl,avx512dq")]
            pub unsafe fn $name<const M: usize, const PREFETCH: bool>(
                x: &[f32],
                k: usize,
                w: [&[$t]; 8],
                out: &mut [[f32; 8]],
            ) {
                let xp = x.as_ptr();
                let p = w.map(|r| r.as_ptr());
                let mut acc = [[_mm512_setzero_ps(); 4]; M];
                let mut i = 0;
                while i + 8 <= k {
                    if PREFETCH {
                        // Eight rows follow these: the next two quads.
                        prefetch_next_quad::<_, _MM_HINT_T0>(p[0].wrapping_add(4 * k), k, i);
                        prefetch_next_quad::<_, _MM_HINT_T0>(p[0].wrapping_add(8 * k), k, i);
                    }
                    let wv = [
                        $pair(p[0].add(i), p[1].add(i)),
                        $pair(p[2].add(i), p[3].add(i)),
                        $pair(p[4].add(i), p[5].add(i)),
                        $pair(p[6].add(i), p[7].add(i)),
                    ];
                    for (m, a) in acc.iter_mut().enumerate() {
                        let xv = _mm512_broadcast_f32x8(load_f32(xp.add(m * k + i)));
                        for j in 0..4 {
                            a[j] = _mm512_fmadd_ps(xv, wv[j], a[j]);
                        }
                    }
                    i += 8;
                }
                for (m, a) in acc.iter().enumerate() {
                    let mut s = [0f32; 8];
                    for j in 0..4 {
                        s[2 * j] = hsum(_mm512_castps512_ps256(a[j]));
                        s[2 * j + 1] = hsum(_mm512_extractf32x8_ps::<1>(a[j]));
                    }
                    let xm = &x[m * k..(m + 1) * k];
                    let (lo, hi) = s.split_at_mut(4);
                    let lo: &mut [f32; 4] = lo.try_into().unwrap();
                    let hi: &mut [f32; 4] = hi.try_into().unwrap();
                    add_tail(lo, xm, [w[0], w[1], w[2], w[3]], i, $cvt);
                    add_tail(hi, xm, [w[4], w[5], w[6], w[7]], i, $cvt);
                    out[m] = s;
                }
            }
        };
    }

    tile_octet_impl!(tile_f32_octet, f32, pair_f32, |v: f32| v);

    tile_pairs_impl!(tile_f32_pairs, f32, pair_f32, |v: f32| v);
    tile_pairs_impl!(tile_bf16_pairs, bf16, pair_bf16, |v: bf16| v.to_f32());
    tile_pairs_impl!(tile_f16_pairs, f16, pair_f16, |v: f16| v.to_f32());

    // Three tokens fill the 16 ymm registers (12 accumulators, 3 activations, 1 weight); with
    // AVX-512VL's 32 registers, six.
    tile_impl!(tile_f32, "avx2,fma,f16c", f32, load_f32, |v: f32| v);
    tile_impl!(tile_bf16, "avx2,fma,f16c", bf16, load_bf16, |v: bf16| v
        .to_f32());
    tile_impl!(tile_f16, "avx2,fma,f16c", f16, load_f16, |v: f16| v
        .to_f32());
    tile_impl!(
        tile_f32_vl,
        "avx2,fma,f16c,avx512f,avx512vl",
        f32,
        load_f32,
        |v: f32| v
    );
    tile_impl!(
        tile_bf16_vl,
        "avx2,fma,f16c,avx512f,avx512vl",
        bf16,
        load_bf16,
        |v: bf16| v.to_f32()
    );
    tile_impl!(
        tile_f16_vl,
        "avx2,fma,f16c,avx512f,avx512vl",
        f16,
        load_f16,
        |v: f16| v.to_f32()
    );
}

/// Whether the CPU has AVX-512 BF16 dot products (`vdpbf16ps`), checked once.
#[cfg(target_arch = "x86_64")]
#[inline]
pub fn has_avx512_bf16() -> bool {
    use std::sync::OnceLock;
    static HAS: OnceLock<bool> = OnceLock::new();
    *HAS.get_or_init(|| {
        is_x86_feature_detected!("avx512bf16")
            && is_x86_feature_detected!("avx512bw")
            && has_avx512()
    })
}

#[cfg(not(target_arch = "x86_64"))]
#[inline]
pub fn has_avx512_bf16() -> bool {
    false
}

/// Rows of activations rounded to bf16 (nearest even), for [`dot4_tokens_bf16`]; 16 lanes per
/// instruction where the CPU has AVX-512 BF16 (which flushes denormals to zero).
pub fn round_to_bf16(x: &[f32], out: &mut Vec<bf16>) {
    out.clear();
    #[cfg(target_arch = "x86_64")]
    if has_avx512_bf16() {
        out.resize(x.len(), bf16::ZERO);
        // SAFETY: features checked; `out` holds x.len() elements.
        unsafe { avx512bf16::round(x, out) };
        return;
    }
    out.extend(x.iter().map(|&v| bf16::from_f32(v)));
}

/// Tokens per register tile of [`dot4_tokens_bf16`].
pub const BF16_TILE: usize = 4;

/// [`dot4_tokens`] with activations already rounded to bf16 and bf16 weights, multiplied pairwise
/// by `vdpbf16ps` (each product exact in f32, f32 sums): twice the multiply-adds per instruction
/// of f32 arithmetic on 16-lane vectors, at the cost of rounding the activations. As in
/// [`dot4_tokens`], each token's result is the same bits however many tokens share the call.
/// Callers check [`has_avx512_bf16`] first; without it this computes the same products in
/// scalar f32 (another summation order).
pub fn dot4_tokens_bf16(
    x: &[bf16],
    n: usize,
    w: [&[bf16]; 4],
    next_quad_follows: bool,
    mut emit: impl FnMut(usize, [f32; 4]),
) {
    let k = if n == 0 { 0 } else { x.len() / n };
    assert!(
        k * n == x.len() && w.iter().all(|r| r.len() == k),
        "dot4_tokens_bf16: {} activations are not {n} rows of the weight rows' length",
        x.len()
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx512_bf16() {
        let mut out = [[0f32; 4]; BF16_TILE];
        for_token_tiles(n, &mut out, emit, |t, step, out| {
            let xt = &x[t * k..];
            macro_rules! by_height {
                ($prefetch:literal) => {
                    match step {
                        4 => avx512bf16::tile::<4, $prefetch>(xt, k, w, out),
                        3 => avx512bf16::tile::<3, $prefetch>(xt, k, w, out),
                        2 => avx512bf16::tile::<2, $prefetch>(xt, k, w, out),
                        _ => avx512bf16::tile::<1, $prefetch>(xt, k, w, out),
                    }
                };
            }
            // SAFETY: features checked; `xt` holds `step` rows of `k`; each weight row has `k`
            // elements.
            unsafe {
                if t == 0 && next_quad_follows {
                    by_height!(true)
                } else {
                    by_height!(false)
                }
            }
        });
        return;
    }
    let _ = next_quad_follows;
    for t in 0..n {
        let xt = &x[t * k..(t + 1) * k];
        let mut s = [0f32; 4];
        for (r, row) in w.iter().enumerate() {
            s[r] = xt
                .iter()
                .zip(*row)
                .map(|(a, b)| a.to_f32() * b.to_f32())
                .sum();
        }
        emit(t, s);
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512bf16 {
    use super::bf16;
    use std::arch::x86_64::*;

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn round(x: &[f32], out: &mut [bf16]) {
        let n = x.len().min(out.len());
        let mut i = 0;
        while i + 16 <= n {
            let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(x.as_ptr().add(i)));
            _mm256_storeu_si256(
                out.as_mut_ptr().add(i) as *mut __m256i,
                std::mem::transmute::<__m256bh, __m256i>(v),
            );
            i += 16;
        }
        for j in i..n {
            out[j] = bf16::from_f32(x[j]);
        }
    }

    /// `M` tokens × four weight rows, 32 elements per step: one 16-lane accumulator per (token,
    /// row), each lane summing pairs of products; then a fixed-order horizontal sum and a scalar
    /// tail. With `PREFETCH` the next four rows follow these in memory and are streamed in.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    pub unsafe fn tile<const M: usize, const PREFETCH: bool>(
        x: &[bf16],
        k: usize,
        w: [&[bf16]; 4],
        out: &mut [[f32; 4]],
    ) {
        let xp = x.as_ptr();
        let p = [w[0].as_ptr(), w[1].as_ptr(), w[2].as_ptr(), w[3].as_ptr()];
        let mut acc = [[_mm512_setzero_ps(); 4]; M];
        // Only the first tile of a quad prefetches, so a one-token tile that prefetches is a
        // matrix-vector product and streams as one; taller tiles stream the next quad into the
        // caches, since later tokens' tiles read each quad again.
        let quad_bytes = 4 * k * 2;
        let plan = if M == 1 {
            super::matvec_prefetch(quad_bytes)
        } else {
            super::MatvecPrefetch {
                ahead: quad_bytes,
                non_temporal: false,
                l2_ahead: None,
            }
        };
        let ahead = (p[0] as *const i8).wrapping_add(plan.ahead);
        let far = plan.l2_ahead.map(|b| (p[0] as *const i8).wrapping_add(b));
        let mut i = 0;
        while i + 32 <= k {
            if PREFETCH {
                // 128 elements of the quad ahead per step: four lines.
                let at = ahead.wrapping_add(i * 4 * 2);
                for line in 0..4 {
                    if plan.non_temporal {
                        _mm_prefetch::<_MM_HINT_NTA>(at.wrapping_add(64 * line));
                    } else {
                        _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(64 * line));
                    }
                }
                if let Some(far) = far {
                    let at = far.wrapping_add(i * 4 * 2);
                    for line in 0..4 {
                        _mm_prefetch::<_MM_HINT_T1>(at.wrapping_add(64 * line));
                    }
                }
            }
            let mut xv = [_mm512_setzero_si512(); M];
            for (m, v) in xv.iter_mut().enumerate() {
                *v = _mm512_loadu_si512(xp.add(m * k + i) as *const __m512i);
            }
            for r in 0..4 {
                let wv: __m512bh =
                    std::mem::transmute(_mm512_loadu_si512(p[r].add(i) as *const __m512i));
                for m in 0..M {
                    let xm: __m512bh = std::mem::transmute(xv[m]);
                    acc[m][r] = _mm512_dpbf16_ps(acc[m][r], xm, wv);
                }
            }
            i += 32;
        }
        for m in 0..M {
            let mut s = [
                _mm512_reduce_add_ps(acc[m][0]),
                _mm512_reduce_add_ps(acc[m][1]),
                _mm512_reduce_add_ps(acc[m][2]),
                _mm512_reduce_add_ps(acc[m][3]),
            ];
            for j in i..k {
                let xj = (*xp.add(m * k + j)).to_f32();
                for r in 0..4 {
                    s[r] += xj * w[r][j].to_f32();
                }
            }
            out[m] = s;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize, seed: u32) -> Vec<f32> {
        (0..n)
            .map(|i| {
                (((i as u32).wrapping_mul(2654435761).wrapping_add(seed) >> 8) as f32 / 16777216.0)
                    - 0.5
            })
            .collect()
    }

    #[test]
    fn dot_matches_f64_for_every_dtype_and_length() {
        for n in [1, 7, 8, 15, 16, 17, 33, 100, 1024] {
            let x = data(n, 1);
            let w = data(n, 2);
            let wb: Vec<bf16> = w.iter().map(|&v| bf16::from_f32(v)).collect();
            let wh: Vec<f16> = w.iter().map(|&v| f16::from_f32(v)).collect();
            let cases: [(WeightData, Vec<f64>); 3] = [
                (WeightData::F32(&w), w.iter().map(|&v| v as f64).collect()),
                (
                    WeightData::BF16(&wb),
                    wb.iter().map(|v| v.to_f64()).collect(),
                ),
                (
                    WeightData::F16(&wh),
                    wh.iter().map(|v| v.to_f64()).collect(),
                ),
            ];
            for (wd, wf) in cases {
                let want: f64 = x.iter().zip(&wf).map(|(a, b)| *a as f64 * b).sum();
                let got = dot(&x, wd) as f64;
                assert!(
                    (got - want).abs() <= 1e-5 * (1.0 + want.abs()),
                    "n={n} {:?}: {got} vs {want}",
                    wd.dtype()
                );
                let quad = dot4(&x, [wd; 4]);
                for q in quad {
                    assert!((q as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()));
                }
                // The prefetching variant computes the same thing (its prefetches may point past
                // the rows; they never fault).
                assert_eq!(dot4_then_next(&x, [wd; 4]), quad);
            }
            // Several tokens at once give each token's four-row result bit for bit, whichever
            // tile width this CPU takes (four different rows, so a row mixed up shows).
            let ws: Vec<Vec<f32>> = (0..4).map(|r| data(n, 2 + r)).collect();
            let wbs: Vec<Vec<bf16>> = ws
                .iter()
                .map(|w| w.iter().map(|&v| bf16::from_f32(v)).collect())
                .collect();
            let whs: Vec<Vec<f16>> = ws
                .iter()
                .map(|w| w.iter().map(|&v| f16::from_f32(v)).collect())
                .collect();
            let quads: [[WeightData; 4]; 3] = [
                [0, 1, 2, 3].map(|r| WeightData::F32(&ws[r])),
                [0, 1, 2, 3].map(|r| WeightData::BF16(&wbs[r])),
                [0, 1, 2, 3].map(|r| WeightData::F16(&whs[r])),
            ];
            for rows in quads {
                for tokens in [1, 2, 3, 4, 5, 6, 7, 8, 9, 13, 17] {
                    let xs: Vec<f32> = (0..tokens).flat_map(|t| data(n, 10 + t as u32)).collect();
                    for follows in [false, true] {
                        let mut seen = 0;
                        dot4_tokens(&xs, tokens, rows, follows, |t, v| {
                            let xt = &xs[t * n..(t + 1) * n];
                            assert_eq!(v, dot4(xt, rows), "n={n} token {t}");
                            for (r, row) in rows.iter().enumerate() {
                                let want: f64 =
                                    (0..n).map(|i| xt[i] as f64 * row.get(i) as f64).sum();
                                assert!((v[r] as f64 - want).abs() <= 1e-5 * (1.0 + want.abs()));
                            }
                            assert_eq!(t, seen);
                            seen += 1;
                        });
                        assert_eq!(seen, tokens);
                    }
                }
            }
        }
    }

    /// The vectorised softmax numerators against f64 `exp` (relative error ≤ 4e-7 over the whole
    /// range used, lengths with and without a tail), 0 below -87 and for -inf, NaN kept.
    #[test]
    fn exp_shifted_matches_f64_and_handles_the_edges() {
        for n in [1, 7, 8, 9, 64, 100] {
            let xs: Vec<f32> = (0..n).map(|i| -90.0 * i as f32 / n as f32 + 0.25).collect();
            let mut got = xs.clone();
            let sum = exp_shifted(&mut got, 0.25);
            let mut want_sum = 0f64;
            for (g, x) in got.iter().zip(&xs) {
                let a = (*x as f64 - 0.25).max(-87.0);
                let w = if (*x as f64 - 0.25) < -87.0 {
                    0.0
                } else {
                    a.exp()
                };
                want_sum += w;
                assert!(((*g as f64) - w).abs() <= 4e-7 * w, "exp({a}): {g} vs {w}");
            }
            assert!((sum as f64 - want_sum).abs() <= 1e-6 * want_sum);
        }
        let mut edge = vec![
            f32::NEG_INFINITY,
            -100.0,
            f32::NAN,
            0.0,
            -1e-3,
            -87.5,
            -86.5,
            -20.0,
            -0.5,
        ];
        exp_shifted(&mut edge, 0.0);
        assert_eq!(&edge[..2], &[0.0, 0.0]);
        assert!(edge[2].is_nan());
        assert_eq!(edge[3], 1.0);
        assert_eq!(edge[5], 0.0);
        assert!((edge[6] as f64 - (-86.5f64).exp()).abs() <= 4e-7 * (-86.5f64).exp());
    }

    #[test]
    fn block_scores_and_value_sums_match_f64_at_any_head_width() {
        // Head widths on the vector path (multiples of 8, with and without a 64-wide chunk) and
        // off it; key counts around the four-key step.
        for hd in [8usize, 12, 64, 72, 130] {
            let stride = hd * 3 + 5;
            for n in [0usize, 1, 3, 4, 5, 9, 64] {
                let q = data(hd, 3);
                let k = data(n.max(1) * stride, 4);
                let mut out = vec![f32::NAN; n];
                let max = scaled_scores(&q, &k, stride, 0.125, &mut out);
                let mut want_max = f32::NEG_INFINITY;
                for (j, o) in out.iter().enumerate() {
                    let w: f64 = (0..hd)
                        .map(|d| q[d] as f64 * k[j * stride + d] as f64)
                        .sum::<f64>()
                        * 0.125;
                    assert!(
                        (*o as f64 - w).abs() <= 1e-6 * (1.0 + w.abs()),
                        "hd {hd} n {n}"
                    );
                    want_max = want_max.max(*o);
                }
                assert_eq!(max, want_max);

                let e = data(n, 5);
                let v = data(n.max(1) * stride, 6);
                let mut acc = data(hd, 7);
                let start = acc.clone();
                accumulate_rows(&e, &v, stride, &mut acc);
                let mut by_rows = start.clone();
                for j in 0..n {
                    axpy(e[j], &v[j * stride..j * stride + hd], &mut by_rows);
                }
                for d in 0..hd {
                    let plain: f64 = start[d] as f64
                        + (0..n)
                            .map(|j| e[j] as f64 * v[j * stride + d] as f64)
                            .sum::<f64>();
                    assert!((acc[d] as f64 - plain).abs() <= 1e-6, "hd {hd} n {n} d {d}");
                    assert_eq!(acc[d], by_rows[d], "hd {hd} n {n} d {d}");
                }
            }
        }
    }

    /// Eight f32 rows at once give each token the bits of the two four-row products, for every
    /// token count and row length (tails included), wherever the pair tiles run.
    #[test]
    fn eight_row_tiles_give_the_four_row_bits() {
        for n in [8usize, 13, 64, 1000] {
            let ws: Vec<Vec<f32>> = (0..8).map(|r| data(n, 60 + r)).collect();
            let rows: [&[f32]; 8] = std::array::from_fn(|r| ws[r].as_slice());
            let quads = [0, 4].map(|q| [0, 1, 2, 3].map(|j| WeightData::F32(rows[q + j])));
            for tokens in [1, 2, 5, 6, 7, 12, 13] {
                let xs: Vec<f32> = (0..tokens).flat_map(|t| data(n, 70 + t as u32)).collect();
                for follows in [false, true] {
                    let mut seen = 0;
                    let ran = dot8_tokens_f32(&xs, tokens, rows, follows, |t, v| {
                        let xt = &xs[t * n..(t + 1) * n];
                        assert_eq!(v[..4], dot4(xt, quads[0]), "n={n} token {t}");
                        assert_eq!(v[4..], dot4(xt, quads[1]), "n={n} token {t}");
                        assert_eq!(t, seen);
                        seen += 1;
                    });
                    assert_eq!(ran, takes_pair_tiles());
                    if ran {
                        assert_eq!(seen, tokens);
                    }
                }
            }
        }
    }

    /// The three tile kinds (8-lane, 8-lane with AVX-512VL's registers, row pairs in 16 lanes)
    /// against the four-row product, bit for bit, wherever this CPU can run them.
    #[cfg(target_arch = "x86_64")]
    #[test]
    fn every_tile_kind_gives_the_four_row_bits() {
        if !has_avx2() {
            crate::skip::skip("this CPU lacks AVX2, FMA or F16C");
            return;
        }
        let pairs = can_run_pair_tiles();
        for n in [8usize, 13, 64, 1024] {
            let ws: Vec<Vec<f32>> = (0..4).map(|r| data(n, 40 + r)).collect();
            let wbs: Vec<Vec<bf16>> = ws
                .iter()
                .map(|w| w.iter().map(|&v| bf16::from_f32(v)).collect())
                .collect();
            let xs: Vec<f32> = (0..8).flat_map(|t| data(n, 50 + t)).collect();
            let f = [0, 1, 2, 3].map(|r| ws[r].as_slice());
            let b = [0, 1, 2, 3].map(|r| wbs[r].as_slice());
            let want_f: Vec<[f32; 4]> = (0..8)
                .map(|t| dot4(&xs[t * n..(t + 1) * n], f.map(WeightData::F32)))
                .collect();
            let want_b: Vec<[f32; 4]> = (0..8)
                .map(|t| dot4(&xs[t * n..(t + 1) * n], b.map(WeightData::BF16)))
                .collect();
            let mut out = [[0f32; 4]; 8];
            macro_rules! check {
                ($m:literal) => {
                    // SAFETY: features checked; xs holds 8 rows of n.
                    unsafe {
                        avx2::tile_f32::<$m, false>(&xs, n, f, &mut out);
                        assert_eq!(&out[..$m], &want_f[..$m], "f32 M={} n={n}", $m);
                        avx2::tile_bf16::<$m, false>(&xs, n, b, &mut out);
                        assert_eq!(&out[..$m], &want_b[..$m], "bf16 M={} n={n}", $m);
                        if has_avx512() {
                            avx2::tile_f32_vl::<$m, false>(&xs, n, f, &mut out);
                            assert_eq!(&out[..$m], &want_f[..$m], "f32 vl M={} n={n}", $m);
                        }
                        if pairs {
                            avx2::tile_f32_pairs::<$m, false>(&xs, n, f, &mut out);
                            assert_eq!(&out[..$m], &want_f[..$m], "f32 pairs M={} n={n}", $m);
                            avx2::tile_bf16_pairs::<$m, false>(&xs, n, b, &mut out);
                            assert_eq!(&out[..$m], &want_b[..$m], "bf16 pairs M={} n={n}", $m);
                        }
                    }
                };
            }
            check!(1);
            check!(2);
            check!(3);
            check!(6);
            check!(8);
        }
    }
}
