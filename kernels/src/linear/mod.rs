//! `linear`: `y = x · Wᵀ` (PyTorch `nn.Linear` without bias).
//!
//! - `x`: `[n_tokens, in]` f32, row-major
//! - `w`: `[out, in]` in the checkpoint dtype, read in place
//! - `y`: `[n_tokens, out]` f32, overwritten
//!
//! Also `swiglu`: `act = silu(x · W1ᵀ) ⊙ (x · W3ᵀ)` in one pass over both matrices, the first half
//! of a Mixtral expert.

pub mod cpu;
pub mod cuda;

use crate::{check_len, KernelError, Mat};

pub(crate) fn check(x: &[f32], n: usize, w: &Mat, y: &[f32]) -> Result<(), KernelError> {
    check_len("linear", "x", x.len(), n * w.cols)?;
    check_len("linear", "y", y.len(), n * w.rows)?;
    check_len("linear", "w", w.data.len(), w.rows * w.cols)
}

/// `silu(g) = g · sigmoid(g)`, in f32.
#[inline]
pub fn silu(g: f32) -> f32 {
    g / (1.0 + (-g).exp())
}
