//! ggml quantised block types (as stored in GGUF files) and scalar reference dequantizers.
//!
//! Contract: a row of `n` values of type `t` is `n / t.block_size()` whole blocks of
//! `t.block_bytes()` bytes each, values in row order. [`dequantize_row`] converts such bytes to `f32`
//! with the same float32 operation order as ggml's `dequantize_row_*` (so the results match llama.cpp
//! bit for bit; checked against the `gguf-mixtral-a` fixtures). Layouts: ggml's `ggml-common.h`;
//! see `tests/fixtures/gguf-mixtral-a/README.md`, "Block layouts".

#[cfg(target_arch = "x86_64")]
mod avx2;
mod quantize;
mod reference;

pub use quantize::{quantize_row, QUANTIZE_TYPES};
pub use reference::dequantize_row;

/// A dot product of one activation row with four quantised rows of type `t` that gives the bits
/// of dequantizing the rows and taking [`crate::dot::dot4`], where the CPU and the type have one.
pub fn fused_dot4(t: GgmlType) -> Option<FusedDot4> {
    #[cfg(target_arch = "x86_64")]
    if crate::dot::has_avx2() {
        // A non-capturing closure per type, so each is a plain fn pointer.
        macro_rules! checked {
            ($t:ident, $kernel:ident) => {
                Some(|x, r| {
                    // SAFETY: AVX2, FMA and F16C are present (checked when this was picked);
                    // every row holds the blocks of `x.len()` values (checked here).
                    rows_fit(GgmlType::$t, x, &r).then(|| unsafe { avx2::$kernel(x, r) })
                })
            };
        }
        return match t {
            GgmlType::Q8_0 => checked!(Q8_0, dot4_q8_0),
            GgmlType::Q4_0 => checked!(Q4_0, dot4_q4_0),
            GgmlType::Q4_1 => checked!(Q4_1, dot4_q4_1),
            GgmlType::Q5_0 => checked!(Q5_0, dot4_q5_0),
            GgmlType::Q5_1 => checked!(Q5_1, dot4_q5_1),
            GgmlType::Q2_K => checked!(Q2_K, dot4_q2_k),
            GgmlType::Q3_K => checked!(Q3_K, dot4_q3_k),
            GgmlType::Q4_K => checked!(Q4_K, dot4_q4_k),
            GgmlType::Q5_K => checked!(Q5_K, dot4_q5_k),
            GgmlType::Q6_K => checked!(Q6_K, dot4_q6_k),
            GgmlType::IQ4_NL => checked!(IQ4_NL, dot4_iq4_nl),
            GgmlType::IQ4_XS => checked!(IQ4_XS, dot4_iq4_xs),
            // The float types have their own dot kernels.
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => None,
        };
    }
    None
}

/// Four quantised rows dotted with `x`; `None` when a row does not hold `x.len()` values.
pub type FusedDot4 = fn(&[f32], [&[u8]; 4]) -> Option<[f32; 4]>;

fn rows_fit(t: GgmlType, x: &[f32], rows: &[&[u8]; 4]) -> bool {
    t.bytes_for(x.len())
        .is_some_and(|b| rows.iter().all(|r| r.len() == b))
}

/// [`dequantize_row`], vectorised where the CPU and the type allow it (the same bits).
pub fn dequantize_row_fast(t: GgmlType, bytes: &[u8], out: &mut [f32]) -> Result<(), KernelError> {
    #[cfg(target_arch = "x86_64")]
    if crate::dot::has_avx2() {
        let f: Option<unsafe fn(&[u8], &mut [f32])> = match t {
            GgmlType::Q8_0 => Some(avx2::q8_0),
            GgmlType::Q4_0 => Some(avx2::q4_0),
            GgmlType::Q4_1 => Some(avx2::q4_1),
            GgmlType::Q5_0 => Some(avx2::q5_0),
            GgmlType::Q5_1 => Some(avx2::q5_1),
            GgmlType::Q2_K => Some(avx2::q2_k),
            GgmlType::Q3_K => Some(avx2::q3_k),
            GgmlType::Q4_K => Some(avx2::q4_k),
            GgmlType::Q5_K => Some(avx2::q5_k),
            GgmlType::Q6_K => Some(avx2::q6_k),
            GgmlType::IQ4_NL => Some(avx2::iq4_nl),
            GgmlType::IQ4_XS => Some(avx2::iq4_xs),
            // Widening a float row is the reference's one conversion per value already.
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => None,
        };
        if let Some(f) = f {
            check_row(t, bytes.len(), out.len())?;
            // SAFETY: AVX2, FMA and F16C are present (checked above) and `bytes` holds exactly
            // the blocks of `out` (checked by `check_row`).
            unsafe { f(bytes, out) };
            return Ok(());
        }
    }
    dequantize_row(t, bytes, out)
}

use crate::KernelError;

/// The ggml tensor types this crate can decode (`enum ggml_type` in ggml.h; the discriminant is the id).
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum GgmlType {
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    IQ4_NL = 20,
    IQ4_XS = 23,
    BF16 = 30,
}

/// Every supported type, in id order.
pub const ALL_TYPES: [GgmlType; 15] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2_K,
    GgmlType::Q3_K,
    GgmlType::Q4_K,
    GgmlType::Q5_K,
    GgmlType::Q6_K,
    GgmlType::IQ4_NL,
    GgmlType::IQ4_XS,
    GgmlType::BF16,
];

/// Names of the ggml type ids that exist in ggml.h but are not decoded here (for error messages).
pub fn ggml_type_name(id: u32) -> Option<&'static str> {
    if let Some(t) = GgmlType::from_id(id) {
        return Some(t.name());
    }
    Some(match id {
        4 => "Q4_2 (removed)",
        5 => "Q4_3 (removed)",
        9 => "Q8_1",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        21 => "IQ3_S",
        22 => "IQ2_S",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        31..=33 => "Q4_0_4_4/Q4_0_4_8/Q4_0_8_8 (removed)",
        34 => "TQ1_0",
        35 => "TQ2_0",
        36..=38 => "IQ4_NL_4_4/IQ4_NL_4_8/IQ4_NL_8_8 (removed)",
        39 => "MXFP4",
        _ => return None,
    })
}

impl GgmlType {
    /// The type with ggml id `id`, if it is one this crate decodes.
    pub fn from_id(id: u32) -> Option<GgmlType> {
        ALL_TYPES.iter().copied().find(|t| *t as u32 == id)
    }

    pub fn id(self) -> u32 {
        self as u32
    }

    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q2_K => "Q2_K",
            GgmlType::Q3_K => "Q3_K",
            GgmlType::Q4_K => "Q4_K",
            GgmlType::Q5_K => "Q5_K",
            GgmlType::Q6_K => "Q6_K",
            GgmlType::IQ4_NL => "IQ4_NL",
            GgmlType::IQ4_XS => "IQ4_XS",
            GgmlType::BF16 => "BF16",
        }
    }

    /// Values per block (1 for the float types).
    pub fn block_size(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => 1,
            GgmlType::Q4_0
            | GgmlType::Q4_1
            | GgmlType::Q5_0
            | GgmlType::Q5_1
            | GgmlType::Q8_0
            | GgmlType::IQ4_NL => 32,
            GgmlType::Q2_K
            | GgmlType::Q3_K
            | GgmlType::Q4_K
            | GgmlType::Q5_K
            | GgmlType::Q6_K
            | GgmlType::IQ4_XS => 256,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::BF16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q2_K => 84,
            GgmlType::Q3_K => 110,
            GgmlType::Q4_K => 144,
            GgmlType::Q5_K => 176,
            GgmlType::Q6_K => 210,
            GgmlType::IQ4_NL => 18,
            GgmlType::IQ4_XS => 136,
        }
    }

    /// Bytes of `n` values, or `None` when `n` is not a whole number of blocks or the size overflows.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if !n.is_multiple_of(self.block_size()) {
            return None;
        }
        (n / self.block_size()).checked_mul(self.block_bytes())
    }

    /// Whether the type is quantised (blocks of more than one value).
    pub fn is_quantized(self) -> bool {
        self.block_size() > 1
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Checks that `bytes` holds exactly the blocks of `n` values of type `t`.
pub(crate) fn check_row(t: GgmlType, bytes: usize, n: usize) -> Result<(), KernelError> {
    const OP: &str = "dequantize_row";
    if !n.is_multiple_of(t.block_size()) {
        return Err(KernelError::Invalid {
            op: OP,
            message: format!(
                "{t}: {n} output values are not a whole number of {}-value blocks",
                t.block_size()
            ),
        });
    }
    let expected = (n / t.block_size()) * t.block_bytes();
    crate::check_len(OP, "bytes", bytes, expected)
}

#[cfg(test)]
mod fast_tests {
    use super::*;

    /// Offsets of each type's f16 scales in a block (set to finite values in random blocks).
    fn scale_offsets(t: GgmlType) -> &'static [usize] {
        match t {
            // Every value is its own scale: random bits, NaNs included, take the same path.
            GgmlType::F32 | GgmlType::F16 | GgmlType::BF16 => &[],
            GgmlType::Q8_0 | GgmlType::Q4_0 | GgmlType::Q5_0 => &[0],
            GgmlType::IQ4_NL | GgmlType::IQ4_XS => &[0],
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
            GgmlType::Q2_K => &[80, 82],
            GgmlType::Q3_K => &[108],
            GgmlType::Q6_K => &[208],
        }
    }

    /// `blocks` random blocks of `t` with finite scales.
    fn random_blocks(t: GgmlType, blocks: usize, seed: u64) -> Vec<u8> {
        let mut s = seed;
        let mut byte = || {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        };
        let mut b: Vec<u8> = (0..blocks * t.block_bytes()).map(|_| byte()).collect();
        for k in 0..blocks {
            for &o in scale_offsets(t) {
                let v = half::f16::from_f32((byte() as f32 - 128.0) / 300.0);
                b[k * t.block_bytes() + o..][..2].copy_from_slice(&v.to_bits().to_le_bytes());
            }
        }
        b
    }

    fn bits(v: &[f32]) -> Vec<u32> {
        v.iter().map(|v| v.to_bits()).collect()
    }

    /// Random blocks (scales finite) of every type dequantize to the reference's bits.
    #[test]
    fn fast_dequantizers_give_the_reference_bits() {
        for t in ALL_TYPES {
            let blocks = 7;
            let b = random_blocks(t, blocks, 12345);
            let n = blocks * t.block_size();
            let (mut fast, mut slow) = (vec![0f32; n], vec![0f32; n]);
            dequantize_row_fast(t, &b, &mut fast).unwrap();
            dequantize_row(t, &b, &mut slow).unwrap();
            assert_eq!(bits(&fast), bits(&slow), "{t}");
            assert!(dequantize_row_fast(t, &b[1..], &mut fast).is_err());
        }
    }

    /// Every type's fused kernel gives the bits of dequantizing its four rows and taking
    /// [`crate::dot::dot4`], and refuses rows that do not hold `x.len()` values.
    #[test]
    fn fused_dot4_gives_the_bits_of_dequantize_then_dot4() {
        use crate::WeightData;
        for t in ALL_TYPES {
            let Some(fused) = fused_dot4(t) else {
                continue;
            };
            let blocks = 5;
            let k = blocks * t.block_size();
            let rows: Vec<Vec<u8>> = (0..4).map(|r| random_blocks(t, blocks, 99 + r)).collect();
            let deq: Vec<Vec<f32>> = rows
                .iter()
                .map(|b| {
                    let mut y = vec![0f32; k];
                    dequantize_row(t, b, &mut y).unwrap();
                    y
                })
                .collect();
            let x: Vec<f32> = (0..k)
                .map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0)
                .collect();
            let want = crate::dot::dot4(&x, std::array::from_fn(|r| WeightData::F32(&deq[r])));
            let r = |i: usize| rows[i].as_slice();
            let got = fused(&x, [r(0), r(1), r(2), r(3)]).unwrap();
            assert_eq!(bits(&got), bits(&want), "{t}");
            assert!(
                fused(&x, [r(0), r(1), &rows[2][1..], r(3)]).is_none(),
                "{t}"
            );
            assert!(
                fused(&x[..k - 8], [r(0), r(1), r(2), r(3)]).is_none(),
                "{t}"
            );
        }
    }
}
