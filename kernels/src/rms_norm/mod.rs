//! `rms_norm`: `out = w ⊙ x / sqrt(mean(x²) + eps)` per row (Mixtral/Llama RMSNorm; the weight is
//! used as is, not `1 + w`).
//!
//! - `x`: `[n_tokens, hidden]` f32
//! - `w`: `[hidden]` checkpoint dtype
//! - `out`: `[n_tokens, hidden]` f32

pub mod cpu;
pub mod cuda;

#[derive(Clone, Copy, Debug)]
pub struct RmsNorm {
    pub hidden: usize,
    pub eps: f32,
}
