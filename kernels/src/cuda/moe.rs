//! The sparse MoE block on the device, composed from the fused kernels:
//! router (gate GEMV + softmax + top-k + counters) → dispatch → grouped w1/w3 with SwiGLU →
//! grouped w2 × routing weight → combine into the residual. Five launches and one memset,
//! nothing read back.

use super::{DevBuf, DevMat, Gpu, GpuResult};
use crate::combine::cuda::combine;
use crate::expert_ffn::cuda::{
    k_splits, rows_capacity, tile_rows, tiles_bound, w13, w2, ExpertStack,
};
use crate::router_topk::cuda::{router, sched_words, stats_words, RouterOut};
use std::sync::Arc;

/// One layer's router and experts.
pub struct MoeLayer {
    pub gate: DevMat,
    pub experts: ExpertStack,
    pub top_k: usize,
}

impl MoeLayer {
    /// [`moe_forward`] with this layer's weights.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        gpu: &Arc<Gpu>,
        x: u64,
        residual: u64,
        tokens: usize,
        stats: u64,
        scratch: &mut MoeScratch,
        keep_logits: bool,
    ) -> GpuResult<()> {
        moe_forward(
            gpu,
            &self.gate,
            &self.experts,
            self.top_k,
            x,
            residual,
            tokens,
            stats,
            scratch,
            keep_logits,
        )
    }
}

/// Work buffers sized for a token count, grown when a larger batch comes.
pub struct MoeScratch {
    capacity: usize,
    key: (usize, usize, usize, usize, usize),
    pub counts: Option<DevBuf>,
    pub done: Option<DevBuf>,
    /// w13 split-K partials, `SPLITS_MAX × rows × 2·ffn` f32 (decode-sized batches only).
    pub part: Option<DevBuf>,
    part_floats: usize,
    out_floats: usize,
    pub ids: Option<DevBuf>,
    pub weights: Option<DevBuf>,
    pub pos: Option<DevBuf>,
    pub sorted_slots: Option<DevBuf>,
    pub slot_rows: Option<DevBuf>,
    pub sched: Option<DevBuf>,
    pub act: Option<DevBuf>,
    pub expert_out: Option<DevBuf>,
    pub logits: Option<DevBuf>,
}

impl Default for MoeScratch {
    fn default() -> Self {
        MoeScratch {
            capacity: 0,
            key: (0, 0, 0, 0, 0),
            counts: None,
            done: None,
            part: None,
            part_floats: 0,
            out_floats: 0,
            ids: None,
            weights: None,
            pos: None,
            sorted_slots: None,
            slot_rows: None,
            sched: None,
            act: None,
            expert_out: None,
            logits: None,
        }
    }
}

fn p(b: &Option<DevBuf>) -> u64 {
    b.as_ref().map_or(0, |b| b.ptr())
}

impl MoeScratch {
    fn ensure(
        &mut self,
        gpu: &Arc<Gpu>,
        ex: &ExpertStack,
        top_k: usize,
        tokens: usize,
    ) -> GpuResult<()> {
        let key = (ex.n_experts, ex.hidden, ex.ffn, top_k, ex.act_size());
        if tokens <= self.capacity && key == self.key {
            return Ok(());
        }
        let cap = tokens.max(self.capacity).next_power_of_two();
        let slots = cap * top_k;
        let counts = gpu.alloc(4 * ex.n_experts)?;
        counts.zero()?;
        self.counts = Some(counts);
        let done = gpu.alloc(4)?;
        done.zero()?;
        self.done = Some(done);
        // Partial buffers big enough for the plan of any batch up to this capacity (small
        // batches split more ways over fewer rows).
        let (mut part_floats, mut out_floats) = (0, 0);
        let mut n = top_k;
        loop {
            let m = n.min(slots);
            let tile = tile_rows(m, ex.n_experts);
            let rows = rows_capacity(m, ex.n_experts, tile);
            let (s13, s2) = plan(ex, m);
            if s13 > 1 {
                part_floats = part_floats.max(s13 * rows * 2 * ex.ffn);
            }
            out_floats = out_floats.max(s2 * rows * ex.hidden);
            if n >= slots {
                break;
            }
            n *= 2;
        }
        self.part = if part_floats > 0 {
            Some(gpu.alloc(4 * part_floats)?)
        } else {
            None
        };
        self.part_floats = part_floats;
        self.out_floats = out_floats;
        self.ids = Some(gpu.alloc(4 * slots)?);
        self.weights = Some(gpu.alloc(4 * slots)?);
        self.pos = Some(gpu.alloc(4 * slots)?);
        self.sorted_slots = Some(gpu.alloc(4 * slots)?);
        self.slot_rows = Some(gpu.alloc(4 * slots)?);
        self.sched = Some(gpu.alloc(4 * sched_words(slots, ex.n_experts, 8))?);
        self.act = Some(gpu.alloc(ex.act_size() * slots * ex.ffn)?);
        self.expert_out = Some(gpu.alloc(4 * out_floats)?);
        self.logits = Some(gpu.alloc(4 * cap * ex.n_experts)?);
        self.capacity = cap;
        self.key = key;
        Ok(())
    }

    /// The last call's routing as `(expert ids, weights)`, `[tokens · top_k]` each (reads back).
    pub fn routing(&self, tokens: usize, top_k: usize) -> GpuResult<(Vec<u32>, Vec<f32>)> {
        let n = tokens * top_k;
        let ids = self
            .ids
            .as_ref()
            .map_or(Ok(vec![]), |b| b.read::<u32>(0, n))?;
        let w = self
            .weights
            .as_ref()
            .map_or(Ok(vec![]), |b| b.read::<f32>(0, n))?;
        Ok((ids, w))
    }

    /// The last call's router logits `[tokens, n_experts]` (reads back).
    pub fn router_logits(&self, tokens: usize, n_experts: usize) -> GpuResult<Vec<f32>> {
        self.logits
            .as_ref()
            .map_or(Ok(vec![]), |b| b.read::<f32>(0, tokens * n_experts))
    }
}

/// K splits of (w13, w2) for `n_slots` routed rows: more when few tiles are routed.
fn plan(ex: &ExpertStack, n_slots: usize) -> (usize, usize) {
    let tiles = tiles_bound(n_slots, ex.n_experts, tile_rows(n_slots, ex.n_experts));
    let s13 = k_splits(ex, tiles * ex.ffn.div_ceil(16), ex.hidden);
    let s2 = k_splits(ex, tiles * ex.hidden.div_ceil(16), ex.ffn);
    (s13, s2)
}

/// Device counters of every layer: `stats_words(E)` u64 per layer.
pub fn stats_bytes(n_layers: usize, n_experts: usize) -> usize {
    8 * n_layers * stats_words(n_experts)
}

/// `residual += MoE(x)` for `tokens` rows of f32 `x` (already normed); counters at `stats`.
#[allow(clippy::too_many_arguments)]
pub fn moe_forward(
    gpu: &Arc<Gpu>,
    gate: &DevMat,
    ex: &ExpertStack,
    top_k: usize,
    x: u64,
    residual: u64,
    tokens: usize,
    stats: u64,
    scratch: &mut MoeScratch,
    keep_logits: bool,
) -> GpuResult<()> {
    if tokens == 0 {
        return Ok(());
    }
    scratch.ensure(gpu, ex, top_k, tokens)?;
    let (e, k) = (ex.n_experts, top_k);
    let n_slots = tokens * k;
    let s = &*scratch;
    // Splits planned for this call, reduced where the partial buffers would not hold them.
    let tile = tile_rows(n_slots, e);
    let rows = rows_capacity(n_slots, e, tile);
    let (mut s13, mut s2) = plan(ex, n_slots);
    while s13 > 1 && s13 * rows * 2 * ex.ffn > s.part_floats {
        s13 -= 1;
    }
    while s2 > 1 && s2 * rows * ex.hidden > s.out_floats {
        s2 -= 1;
    }
    let out = RouterOut {
        logits: keep_logits.then(|| p(&s.logits)),
        ids: p(&s.ids),
        weights: p(&s.weights),
        counts: p(&s.counts),
        pos: p(&s.pos),
        stats,
        done: p(&s.done),
        sorted_slots: p(&s.sorted_slots),
        slot_rows: p(&s.slot_rows),
        sched: p(&s.sched),
        tile_rows: tile,
    };
    router(gpu, x, gate, tokens, k, &out)?;
    let ran13 = w13(
        gpu,
        ex,
        x,
        out.sched,
        out.sorted_slots,
        p(&s.act),
        p(&s.part),
        s13,
        n_slots,
        k,
        tile,
    )?;
    let ran2 = w2(
        gpu,
        ex,
        p(&s.act),
        p(&s.part),
        ran13,
        out.sched,
        out.sorted_slots,
        out.weights,
        p(&s.expert_out),
        s2,
        n_slots,
        tile,
    )?;
    combine(
        gpu,
        p(&s.expert_out),
        out.slot_rows,
        residual,
        tokens,
        ex.hidden,
        k,
        ran2,
        rows * ex.hidden,
    )
}
