//! Borrowed weights in their checkpoint dtype: floats, or ggml's quantised blocks (GGUF files),
//! which stay quantised in memory.

use crate::quant::{dequantize_row_fast as dequantize_row, GgmlType};
use half::{bf16, f16};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDType {
    F32,
    BF16,
    F16,
    /// ggml blocks of a quantised type (`GgmlType::is_quantized`).
    Quant(GgmlType),
}

impl WeightDType {
    /// Bytes of one element of a float type; for a quantised type, of one block.
    pub fn size(self) -> usize {
        match self {
            WeightDType::F32 => 4,
            WeightDType::BF16 | WeightDType::F16 => 2,
            WeightDType::Quant(t) => t.block_bytes(),
        }
    }

    /// Elements per block (1 for the float types).
    pub fn block_size(self) -> usize {
        match self {
            WeightDType::Quant(t) => t.block_size(),
            _ => 1,
        }
    }

    /// Bytes of `n` elements, or `None` where `n` is not a whole number of blocks.
    pub fn bytes_for(self, n: usize) -> Option<usize> {
        if n % self.block_size() != 0 {
            return None;
        }
        (n / self.block_size()).checked_mul(self.size())
    }
}

/// Whole blocks of a quantised type: `len` values in `bytes`.
#[derive(Clone, Copy, Debug)]
pub struct QuantData<'a> {
    pub ty: GgmlType,
    pub bytes: &'a [u8],
    pub len: usize,
}

impl<'a> QuantData<'a> {
    /// `len` values of type `ty` in `bytes`, or `None` where the sizes disagree.
    pub fn new(ty: GgmlType, bytes: &'a [u8], len: usize) -> Option<Self> {
        (ty.is_quantized() && ty.bytes_for(len) == Some(bytes.len())).then_some(QuantData {
            ty,
            bytes,
            len,
        })
    }

    /// Values `[start, start + len)`; both must fall on block boundaries (rows of a matrix whose
    /// width is a whole number of blocks, which loading checks).
    pub fn slice(&self, start: usize, len: usize) -> QuantData<'a> {
        let bs = self.ty.block_size();
        assert!(
            start % bs == 0 && len % bs == 0 && start + len <= self.len,
            "{} slice [{start}, +{len}) is not whole blocks of {bs} within {}",
            self.ty,
            self.len
        );
        let bb = self.ty.block_bytes();
        QuantData {
            ty: self.ty,
            bytes: &self.bytes[start / bs * bb..(start + len) / bs * bb],
            len,
        }
    }

    /// Dequantizes the values `[start, start + out.len())`, any alignment.
    pub fn to_f32_into(&self, start: usize, out: &mut [f32]) {
        let (bs, bb) = (self.ty.block_size(), self.ty.block_bytes());
        let end = start + out.len();
        if start % bs == 0 && end % bs == 0 {
            // Whole blocks: one call over all of them.
            let _ = dequantize_row(self.ty, &self.bytes[start / bs * bb..end / bs * bb], out);
            return;
        }
        let mut block = [0f32; 256];
        let mut at = start;
        while at < end {
            let b = at / bs;
            let from = at - b * bs;
            let take = (bs - from).min(end - at);
            let o = &mut out[at - start..at - start + take];
            if from == 0 && take == bs {
                // A whole block straight into the output.
                let _ = dequantize_row(self.ty, &self.bytes[b * bb..(b + 1) * bb], o);
            } else {
                let _ =
                    dequantize_row(self.ty, &self.bytes[b * bb..(b + 1) * bb], &mut block[..bs]);
                o.copy_from_slice(&block[from..from + take]);
            }
            at += take;
        }
    }
}

/// Elements of a weight tensor, read in place (from an mmap or a static buffer).
#[derive(Clone, Copy, Debug)]
pub enum WeightData<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
    Quant(QuantData<'a>),
}

impl<'a> WeightData<'a> {
    pub fn len(&self) -> usize {
        match self {
            WeightData::F32(s) => s.len(),
            WeightData::BF16(s) => s.len(),
            WeightData::F16(s) => s.len(),
            WeightData::Quant(q) => q.len,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn dtype(&self) -> WeightDType {
        match self {
            WeightData::F32(_) => WeightDType::F32,
            WeightData::BF16(_) => WeightDType::BF16,
            WeightData::F16(_) => WeightDType::F16,
            WeightData::Quant(q) => WeightDType::Quant(q.ty),
        }
    }

    /// Elements `[start, start + len)`.
    pub fn slice(&self, start: usize, len: usize) -> WeightData<'a> {
        match self {
            WeightData::F32(s) => WeightData::F32(&s[start..start + len]),
            WeightData::BF16(s) => WeightData::BF16(&s[start..start + len]),
            WeightData::F16(s) => WeightData::F16(&s[start..start + len]),
            WeightData::Quant(q) => WeightData::Quant(q.slice(start, len)),
        }
    }

    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            WeightData::F32(s) => s[i],
            WeightData::BF16(s) => s[i].to_f32(),
            WeightData::F16(s) => s[i].to_f32(),
            WeightData::Quant(q) => {
                let mut v = [0f32];
                q.to_f32_into(i, &mut v);
                v[0]
            }
        }
    }

    /// Converts `out.len()` elements starting at `start` to f32.
    pub fn to_f32_into(&self, start: usize, out: &mut [f32]) {
        let n = out.len();
        match self {
            WeightData::F32(s) => out.copy_from_slice(&s[start..start + n]),
            WeightData::BF16(s) => {
                for (o, v) in out.iter_mut().zip(&s[start..start + n]) {
                    *o = v.to_f32();
                }
            }
            WeightData::F16(s) => {
                for (o, v) in out.iter_mut().zip(&s[start..start + n]) {
                    *o = v.to_f32();
                }
            }
            WeightData::Quant(q) => q.to_f32_into(start, out),
        }
    }
}

/// A row-major matrix `[rows, cols]` of weights (PyTorch `nn.Linear` layout: `[out, in]`).
#[derive(Clone, Copy, Debug)]
pub struct Mat<'a> {
    pub data: WeightData<'a>,
    pub rows: usize,
    pub cols: usize,
    /// Products with bf16 weights round the activations to bf16 first (pairwise bf16 dot
    /// products where the CPU has them: about twice the arithmetic rate, transformers' bf16
    /// numerics); otherwise activations stay f32.
    pub bf16_activations: bool,
}

impl<'a> Mat<'a> {
    pub fn new(data: WeightData<'a>, rows: usize, cols: usize) -> Self {
        debug_assert_eq!(data.len(), rows * cols);
        Mat {
            data,
            rows,
            cols,
            bf16_activations: false,
        }
    }

    pub fn with_bf16_activations(self, on: bool) -> Self {
        Mat {
            bf16_activations: on,
            ..self
        }
    }

    pub fn row(&self, r: usize) -> WeightData<'a> {
        self.data.slice(r * self.cols, self.cols)
    }

    /// Rows `[start, start + n)` as a matrix.
    pub fn rows_range(&self, start: usize, n: usize) -> Mat<'a> {
        Mat {
            data: self.data.slice(start * self.cols, n * self.cols),
            rows: n,
            ..*self
        }
    }
}
