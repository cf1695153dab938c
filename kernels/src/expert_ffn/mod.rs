//! `expert_ffn`: every expert's SwiGLU over the rows routed to it, one matrix product per expert
//! over all of its rows (grouped GEMM); experts with no rows are not touched.
//!
//! - `x`: `[n_tokens, hidden]` f32 (the post-attention RMSNorm output)
//! - `dispatch`: from `permute`; sorted row `r` reads token `dispatch.token_of_row(r)`
//! - expert `e`: `w1` (gate) `[ffn, hidden]`, `w3` (up) `[ffn, hidden]`, `w2` (down) `[hidden, ffn]`
//! - `out`: `[n_tokens · top_k, hidden]` f32 in sorted-row order:
//!   `out[r] = w2 · (silu(w1 · x_t) ⊙ (w3 · x_t))`

pub mod cpu;
pub mod cuda;

use crate::Mat;

/// One expert's three matrices.
#[derive(Clone, Copy, Debug)]
pub struct ExpertMats<'a> {
    pub w1: Mat<'a>,
    pub w3: Mat<'a>,
    pub w2: Mat<'a>,
}
