//! Next-token sampling where the logits are (CUDA): the host sampler's rules with the request's
//! uniform draw made on the host (see `sample.cu`), so only token ids and requested logprobs
//! cross back.

pub mod cuda;

/// Most raw-logit alternatives a row can ask for (OpenAI's `top_logprobs` limit).
pub const MAX_TOP: usize = 20;

/// How one row picks its token; laid out as `SampleRow` in sample.cu.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SampleRow {
    /// 0: greedy.
    pub temperature: f32,
    /// 0: off.
    pub top_k: u32,
    /// 1: off.
    pub top_p: f32,
    /// 0: off.
    pub min_p: f32,
    /// The request's uniform draw in [0, 1) (unused when greedy).
    pub u: f64,
    /// This row's edits: `edits[edit_begin..edit_end]`.
    pub edit_begin: u32,
    pub edit_end: u32,
    /// Raw-logit alternatives wanted (at most [`MAX_TOP`]).
    pub n_top: u32,
    /// 1: report the raw logits' max and Σ exp(l − max) and the chosen token's raw logit.
    pub want_logprobs: u32,
}

/// A token's logit adjustment: `l' = rep(l + bias) − sub`, where `rep` divides a positive value
/// by `rep` and multiplies any other by it (logit bias, repetition, presence and frequency
/// penalties in the host sampler's order). One edit per token id and row.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Edit {
    pub id: u32,
    pub bias: f32,
    pub rep: f32,
    pub sub: f32,
}

/// One row's result: the token, and when asked, what its logprobs are computed from (`max` and
/// `z` = Σ exp(l − max) of the raw logits, f64) with the raw logits of the token and of the
/// best `top` (canonical order: value descending, ties by ascending id).
#[derive(Clone, Debug, PartialEq)]
pub struct Picked {
    pub token: u32,
    pub max: f32,
    pub z: f64,
    pub chosen: f32,
    pub top: Vec<(u32, f32)>,
}
