//! Launchers of `router_topk.cu`: the fused router and the dispatch step.

use crate::cuda::{DevMat, Gpu, GpuError, GpuResult, KernelSource};
use crate::kargs;
use crate::router_topk::{ExpertLoad, RouterTopK, Scoring};

pub const SOURCE: KernelSource = KernelSource {
    name: "router_topk",
    code: include_str!("router_topk.cu"),
};

pub const MAX_EXPERTS: usize = 256;
pub const MAX_TOP_K: usize = 16;

/// 64-bit words of one layer's device counters.
pub fn stats_words(n_experts: usize) -> usize {
    1 + n_experts + n_experts * n_experts + n_experts + 1
}

/// Adds device counters (as read back, `stats_words` u64) into `load`.
pub fn add_stats(words: &[u64], load: &mut ExpertLoad) {
    let e = load.n_experts;
    load.tokens += words[0];
    for i in 0..e {
        load.expert_tokens[i] += words[1 + i];
    }
    for i in 0..e * e {
        load.coselect[i] += words[1 + e + i];
    }
    for i in 0..e {
        load.prob_mass[i] += f64::from_bits(words[1 + e + e * e + i]);
    }
    load.entropy_sum += f64::from_bits(words[1 + 2 * e + e * e]);
}

/// Device buffers the router writes, each `[tokens · top_k]` unless said otherwise. `counts`
/// (`[n_experts]`) and `done` (one u32) must be zero before the first call; the router's last
/// block leaves them zero again.
#[derive(Clone, Copy, Debug)]
pub struct RouterOut {
    pub logits: Option<u64>,
    pub ids: u64,
    pub weights: u64,
    pub counts: u64,
    pub pos: u64,
    pub stats: u64,
    pub done: u64,
    pub sorted_slots: u64,
    pub slot_rows: u64,
    /// `sched_words(n_slots, n_experts, tile_rows)` u32.
    pub sched: u64,
    /// Rows per tile of the grouped GEMMs' schedule (8 or 64).
    pub tile_rows: usize,
}

pub fn check(n_experts: usize, top_k: usize) -> GpuResult<()> {
    if n_experts == 0 || n_experts > MAX_EXPERTS || top_k == 0 || top_k > MAX_TOP_K.min(n_experts) {
        return Err(GpuError(format!(
            "router: {n_experts} experts (1..={MAX_EXPERTS}), top_k {top_k} (1..={MAX_TOP_K})"
        )));
    }
    Ok(())
}

/// Routes `tokens` rows of `x` (f32 `[tokens, gate.cols]`) with gate `[n_experts, hidden]`, and
/// groups the routed slots by expert (the dispatch, run by the last block).
///
/// # Safety
/// `x` and every address in `o` must be a device address of this `Gpu`'s context sized as
/// [`crate::cuda::moe::moe_forward`] sizes it for `tokens · top_k` routed rows (its scratch), allocated
/// until the kernel has run. Raw addresses remain here because these launchers only run inside
/// that function, on scratch whose sizes come from its plan.
pub unsafe fn router(
    gpu: &Gpu,
    x: u64,
    gate: &DevMat,
    tokens: usize,
    routing: &RouterTopK,
    o: &RouterOut,
) -> GpuResult<()> {
    let top_k = routing.top_k;
    check(gate.rows, top_k)?;
    if routing.n_experts != gate.rows {
        return Err(GpuError(format!(
            "router: gate has {} rows for {} experts",
            gate.rows, routing.n_experts
        )));
    }
    // Bit 0: renormalise the chosen scores; bit 1: sigmoid scores instead of a softmax.
    let flags = routing.renormalize as u32 | ((routing.scoring == Scoring::Sigmoid) as u32) << 1;
    let f = gpu.function(&SOURCE, &format!("router_topk_{}", gate.suffix()))?;
    let (gp, h, e, k) = (gate.ptr(), gate.cols as u32, gate.rows as u32, top_k as u32);
    let logits = o.logits.unwrap_or(0);
    let mt = max_tiles(tokens * top_k, gate.rows, o.tile_rows) as u32;
    let tr = o.tile_rows as u32;
    let threads = (gate.rows.min(8) * 32).max(64) as u32;
    // SAFETY: argument list matches `router_topk_*`.
    unsafe {
        gpu.launch(
            f,
            (tokens as u32, 1, 1),
            (threads, 1, 1),
            0,
            &mut kargs!(
                x,
                gp,
                h,
                e,
                k,
                flags,
                logits,
                o.ids,
                o.weights,
                o.counts,
                o.pos,
                o.stats,
                o.done,
                mt,
                tr,
                o.sorted_slots,
                o.slot_rows,
                o.sched
            ),
        )
    }
}

/// Upper bound of the tile count for `n_slots` routed rows over `n_experts`, tiles of `tile`.
pub fn max_tiles(n_slots: usize, n_experts: usize, tile: usize) -> usize {
    n_slots.div_ceil(tile) + n_experts
}

/// u32 words of the schedule buffer.
pub fn sched_words(n_slots: usize, n_experts: usize, tile: usize) -> usize {
    2 + n_experts + 2 * max_tiles(n_slots, n_experts, tile)
}
