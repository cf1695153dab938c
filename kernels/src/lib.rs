//! Ops on the MoE data path, with no model knowledge.
//!
//! Each op is a folder: `mod.rs` states the contract (shapes, dtypes, parameters struct), `cpu.rs`
//! holds a plain `reference` (scalar, obviously right) and a fast `run` (rayon + SIMD). Activations
//! are contiguous row-major `f32`; weights are borrowed in place in their checkpoint dtype
//! ([`Mat`]) and converted to `f32` in registers.
//!
//! ```text
//! embedding → rms_norm → linear(q,k,v) → rope → attention → linear(o) → rms_norm
//!   → linear(gate) → router_topk → permute → expert_ffn → combine
//! ```

pub mod attention;
pub mod combine;
pub mod cuda;
pub mod dot;
pub mod embedding;
pub mod expert_ffn;
pub mod linear;
pub mod permute;
pub mod quant;
pub mod rms_norm;
pub mod rope;
pub mod router_topk;
pub mod sample;
pub mod scratch;
pub mod skip;
pub mod team;
pub mod tuning;
mod weight;

pub use weight::{Mat, QuantData, WeightDType, WeightData};

#[derive(Debug, thiserror::Error, PartialEq)]
pub enum KernelError {
    #[error("{op}: {what} has {found} elements, expected {expected}")]
    Shape {
        op: &'static str,
        what: &'static str,
        expected: usize,
        found: usize,
    },
    #[error("{op}: {message}")]
    Invalid { op: &'static str, message: String },
}

/// Checks one buffer length against a contract.
pub(crate) fn check_len(
    op: &'static str,
    what: &'static str,
    found: usize,
    expected: usize,
) -> Result<(), KernelError> {
    if found == expected {
        Ok(())
    } else {
        Err(KernelError::Shape {
            op,
            what,
            expected,
            found,
        })
    }
}

/// A raw pointer that rayon tasks write through at disjoint indices.
#[derive(Clone, Copy)]
pub(crate) struct SendPtr(pub *mut f32);
// SAFETY: users only write disjoint elements from different tasks.
unsafe impl Send for SendPtr {}
unsafe impl Sync for SendPtr {}

impl SendPtr {
    /// Taking `self` makes closures capture the whole wrapper, not its raw field.
    #[inline]
    pub fn at(self, i: usize) -> *mut f32 {
        // SAFETY: callers keep `i` inside the buffer the pointer came from.
        unsafe { self.0.add(i) }
    }
}
