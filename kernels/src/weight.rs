//! Borrowed weights in their checkpoint dtype.

use half::{bf16, f16};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WeightDType {
    F32,
    BF16,
    F16,
}

impl WeightDType {
    pub fn size(self) -> usize {
        match self {
            WeightDType::F32 => 4,
            WeightDType::BF16 | WeightDType::F16 => 2,
        }
    }
}

/// Elements of a weight tensor, read in place (from an mmap or a static buffer).
#[derive(Clone, Copy, Debug)]
pub enum WeightData<'a> {
    F32(&'a [f32]),
    BF16(&'a [bf16]),
    F16(&'a [f16]),
}

impl<'a> WeightData<'a> {
    pub fn len(&self) -> usize {
        match self {
            WeightData::F32(s) => s.len(),
            WeightData::BF16(s) => s.len(),
            WeightData::F16(s) => s.len(),
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
        }
    }

    /// Elements `[start, start + len)`.
    pub fn slice(&self, start: usize, len: usize) -> WeightData<'a> {
        match self {
            WeightData::F32(s) => WeightData::F32(&s[start..start + len]),
            WeightData::BF16(s) => WeightData::BF16(&s[start..start + len]),
            WeightData::F16(s) => WeightData::F16(&s[start..start + len]),
        }
    }

    #[inline]
    pub fn get(&self, i: usize) -> f32 {
        match self {
            WeightData::F32(s) => s[i],
            WeightData::BF16(s) => s[i].to_f32(),
            WeightData::F16(s) => s[i].to_f32(),
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
