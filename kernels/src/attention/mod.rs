//! `attention`: causal grouped-query attention of new tokens against a KV cache, with an optional
//! sliding window. Several sequences of different lengths in one call.
//!
//! - `q`: `[n_tokens, n_heads · head_dim]` f32, RoPE applied; a sequence's new tokens are the rows
//!   `[q_row, q_row + n_new)`
//! - per sequence `k`, `v`: `[n_ctx, n_kv_heads · head_dim]` f32: every cached key/value including
//!   the new tokens' (which are the last `n_new` rows); row index = position
//! - `out`: `[n_tokens, n_heads · head_dim]` f32
//!
//! Query head `h` reads kv head `h / (n_heads / n_kv_heads)`. A query at position `p` sees keys at
//! positions `k ≤ p` and, with a window `W`, `k > p − W`. Scores are scaled by `scale`
//! (`head_dim^-0.5`) and softmaxed in f32.

pub mod cpu;
pub mod cuda;

#[derive(Clone, Copy, Debug)]
pub struct Attention {
    pub n_heads: usize,
    pub n_kv_heads: usize,
    pub head_dim: usize,
    pub scale: f32,
    pub sliding_window: Option<usize>,
}

/// One sequence's part of a batched attention call.
#[derive(Clone, Copy, Debug)]
pub struct AttnSeq<'a> {
    /// First row of this sequence in `q` and `out`.
    pub q_row: usize,
    /// New tokens (rows of `q`); they sit at the last `n_new` positions of `k`/`v`.
    pub n_new: usize,
    /// `[n_ctx, n_kv_heads · head_dim]`
    pub k: &'a [f32],
    /// `[n_ctx, n_kv_heads · head_dim]`
    pub v: &'a [f32],
}

impl Attention {
    /// Keys visible to a query at `pos`: `[first, pos]`.
    #[inline]
    pub fn first_visible(&self, pos: usize) -> usize {
        match self.sliding_window {
            Some(w) if w > 0 => (pos + 1).saturating_sub(w),
            _ => 0,
        }
    }
}
