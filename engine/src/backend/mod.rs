//! `Backend`: the device operations along the MoE data path, one method per kernel. The model is
//! generic over it (`Mixtral<B: Backend>`); a runtime choice of device happens once, at the public
//! boundary, never per op.

pub mod cpu;

use crate::error::Result;
use crate::weights::WeightTensor;
use moe_kernels::attention::Attention;
use moe_kernels::permute::Dispatch;
use moe_kernels::rope::Rope;
use moe_kernels::router_topk::{ExpertLoad, RouterTopK};

pub use cpu::CpuBackend;

/// The router's decision for a batch: `[n_tokens, top_k]` each, highest weight first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Routing {
    pub top_k: usize,
    pub expert_ids: Vec<u32>,
    pub weights: Vec<f32>,
}

/// One expert's matrices as the backend holds them.
pub struct ExpertWeights<W> {
    /// gate `[ffn, hidden]`
    pub w1: W,
    /// up `[ffn, hidden]`
    pub w3: W,
    /// down `[hidden, ffn]`
    pub w2: W,
}

/// One sequence of a batched attention call: its new rows `[row, row + n_new)` of q/k/v and its
/// cache, which receives the new keys and values.
pub struct AttnItem<'a, K> {
    pub row: usize,
    pub n_new: usize,
    pub kv: &'a mut K,
}

pub trait Backend: Send + Sync + 'static {
    /// Activations: contiguous f32 `[rows, cols]`.
    type Act: Send;
    /// A checkpoint tensor resident where this backend computes.
    type Weight: Send + Sync;
    /// One sequence's keys and values for every layer.
    type Kv: Send;

    fn name(&self) -> &'static str;

    /// Makes a checkpoint tensor usable by the kernels (the CPU keeps it in place in the mmap).
    fn weight(&self, t: WeightTensor) -> Result<Self::Weight>;
    fn weight_bytes(&self, w: &Self::Weight) -> usize;

    fn zeros(&self, rows: usize, cols: usize) -> Self::Act;
    fn to_host(&self, a: &Self::Act) -> Result<Vec<f32>>;
    fn rows(&self, a: &Self::Act) -> usize;

    /// `out[t] = table[ids[t]]`
    fn embed(&self, table: &Self::Weight, ids: &[u32], out: &mut Self::Act) -> Result<()>;
    /// RMSNorm of every row of `x` into `out`.
    fn rms_norm(
        &self,
        x: &Self::Act,
        w: &Self::Weight,
        eps: f32,
        out: &mut Self::Act,
    ) -> Result<()>;
    /// `out = x · Wᵀ`
    fn linear(&self, x: &Self::Act, w: &Self::Weight, out: &mut Self::Act) -> Result<()>;
    /// Rotates every head of every row in place; `positions[row]`.
    fn rope(&self, x: &mut Self::Act, positions: &[u32], rope: &Rope) -> Result<()>;
    /// Appends each sequence's new `k`/`v` rows to its cache at layer `layer`, then attends.
    fn attention(
        &self,
        layer: usize,
        p: &Attention,
        q: &Self::Act,
        k: &Self::Act,
        v: &Self::Act,
        seqs: &mut [AttnItem<'_, Self::Kv>],
        out: &mut Self::Act,
    ) -> Result<()>;
    /// Softmax, top-k, renormalisation and the load counters of one layer.
    fn router_topk(
        &self,
        logits: &Self::Act,
        p: &RouterTopK,
        load: &mut ExpertLoad,
    ) -> Result<Routing>;
    /// Groups routed rows by expert.
    fn permute(&self, routing: &Routing, n_experts: usize) -> Result<Dispatch>;
    /// Every expert's SwiGLU over its rows: `out` `[n_tokens · top_k, hidden]` in sorted order.
    fn expert_ffn(
        &self,
        x: &Self::Act,
        dispatch: &Dispatch,
        experts: &[ExpertWeights<Self::Weight>],
        out: &mut Self::Act,
    ) -> Result<()>;
    /// `residual[t] += Σ_j weight[t, j] · expert_out[row(t, j)]`
    fn combine(
        &self,
        expert_out: &Self::Act,
        dispatch: &Dispatch,
        routing: &Routing,
        residual: &mut Self::Act,
    ) -> Result<()>;
    /// `x += y`
    fn add(&self, x: &mut Self::Act, y: &Self::Act) -> Result<()>;
    /// Rows `rows` of `x`, in that order.
    fn gather_rows(&self, x: &Self::Act, rows: &[usize]) -> Result<Self::Act>;

    fn new_kv(&self, n_layers: usize, kv_width: usize) -> Self::Kv;
    /// Tokens held.
    fn kv_len(&self, kv: &Self::Kv) -> usize;
    /// Forgets every token from `len` on.
    fn kv_truncate(&self, kv: &mut Self::Kv, len: usize);
    fn kv_fork(&self, kv: &Self::Kv) -> Self::Kv;
}
