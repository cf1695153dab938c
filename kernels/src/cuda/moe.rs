//! The sparse MoE block on the device, composed from the fused kernels:
//! router (gate GEMV + softmax + top-k + counters) → dispatch → grouped w1/w3 with SwiGLU →
//! grouped w2 × routing weight → combine into the residual. Five launches and one memset,
//! nothing read back.

use super::{DevBuf, DevMat, DevSlice, DevSliceMut, Gpu, GpuError, GpuResult};
use crate::combine::cuda::combine;
use crate::expert_ffn::cuda::{
    gather, k_splits, rows_capacity, swiglu, tile_rows, tiles_bound, use_gemv, w13, w13_gemv, w2,
    w2_gemv, ExpertStack,
};
use crate::router_topk::cuda::{router, sched_words, stats_words, RouterOut};
use crate::router_topk::RouterTopK;
use crate::WeightDType;
use std::sync::Arc;

/// One layer's router and experts.
pub struct MoeLayer {
    pub gate: DevMat,
    pub experts: ExpertStack,
    pub router: RouterTopK,
}

impl MoeLayer {
    /// [`moe_forward`] with this layer's weights.
    #[allow(clippy::too_many_arguments)]
    pub fn forward(
        &self,
        gpu: &Arc<Gpu>,
        x: DevSlice<f32>,
        residual: DevSliceMut<f32>,
        tokens: usize,
        stats: DevSliceMut<u64>,
        scratch: &mut MoeScratch,
        keep_logits: bool,
    ) -> GpuResult<()> {
        moe_forward(
            gpu,
            &self.gate,
            &self.experts,
            &self.router,
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
    /// Large-batch path: gathered rows, gate and up outputs (weight dtype).
    pub xs: Option<DevBuf>,
    pub gate_out: Option<DevBuf>,
    pub up_out: Option<DevBuf>,
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
            xs: None,
            gate_out: None,
            up_out: None,
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
        if use_blas(ex, slots) {
            self.xs = Some(gpu.alloc(2 * slots * ex.hidden)?);
            self.gate_out = Some(gpu.alloc(2 * slots * ex.ffn)?);
            self.up_out = Some(gpu.alloc(2 * slots * ex.ffn)?);
        } else {
            (self.xs, self.gate_out, self.up_out) = (None, None, None);
        }
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

/// Whether a batch of `n_slots` routed rows runs its experts on cuBLAS: 16-bit weights, at least
/// [`blas_min_slots`] rows, and expert matrices of at least 16 M elements or at least 1024 rows.
/// Measured on an H100: at the Mixtral shape (4096 × 14336) cuBLAS wins from 8 tokens up (0.97
/// vs 1.27 ms at 8 tokens, 1.13 vs 2.21 ms at 64); at 1024 × 3584 the fused kernels win up to 64
/// tokens (0.10 vs 0.45 ms at 8 tokens), where the per-expert launches and the host round trip
/// cost more than the weight re-reads they save, and lose from 512 (0.69 vs 0.32–0.46 ms).
pub fn use_blas(ex: &ExpertStack, n_slots: usize) -> bool {
    ex.tensor_cores()
        && n_slots >= blas_min_slots()
        && (ex.hidden * ex.ffn >= crate::tuning::tuning().blas_min_expert_elems
            || n_slots >= crate::tuning::tuning().blas_min_slots_small)
}

/// From this many routed rows on (and 16-bit weights), the experts run as cuBLAS GEMMs, one per
/// expert, after one read of the expert offsets. Measured on an H100 at the Mixtral shape, this
/// path is faster from 8 tokens (16 rows) up: cuBLAS's tiled kernels stream each expert's
/// weights once for all its rows, where the fused kernels re-read them per row tile; the host
/// round trip (≈10 µs) is 1% of such a layer. Single tokens stay on the fused kernels.
/// `MOE_BLAS_MIN_SLOTS` overrides it (0 disables the path).
pub fn blas_min_slots() -> usize {
    crate::tuning::tuning().blas_min_slots
}

/// K splits of (w13, w2) for `n_slots` routed rows: more when few tiles are routed.
fn plan(ex: &ExpertStack, n_slots: usize) -> (usize, usize) {
    let tiles = tiles_bound(n_slots, ex.n_experts, tile_rows(n_slots, ex.n_experts));
    // w13 splits only when very few warps would run (its partials cost w2 extra loads: at the
    // Mixtral shape, one token, a 4096-warp target — 3 splits — took 0.66 ms against 0.39 with
    // none); w2 splits to about 8192 warps (0.368 ms, against 0.377 with a 3072-warp target).
    let s13 = k_splits(
        ex,
        tiles * ex.ffn.div_ceil(16),
        ex.hidden,
        crate::tuning::tuning().w13_split_warps,
    );
    let s2 = k_splits(
        ex,
        tiles * ex.hidden.div_ceil(16),
        ex.ffn,
        crate::tuning::tuning().w2_split_warps,
    );
    (s13, s2)
}

/// Device counters of every layer: `stats_words(E)` u64 per layer.
pub fn stats_bytes(n_layers: usize, n_experts: usize) -> usize {
    8 * n_layers * stats_words(n_experts)
}

/// `residual += MoE(x)` for `tokens` rows of f32 `x` (already normed); counters at `stats`
/// (`stats_words(n_experts)` u64).
#[allow(clippy::too_many_arguments)]
pub fn moe_forward(
    gpu: &Arc<Gpu>,
    gate: &DevMat,
    ex: &ExpertStack,
    routing: &RouterTopK,
    x: DevSlice<f32>,
    residual: DevSliceMut<f32>,
    tokens: usize,
    stats: DevSliceMut<u64>,
    scratch: &mut MoeScratch,
    keep_logits: bool,
) -> GpuResult<()> {
    if gate.cols != ex.hidden || gate.rows != ex.n_experts {
        return Err(GpuError(format!(
            "moe: gate [{}, {}] for {} experts of width {}",
            gate.rows, gate.cols, ex.n_experts, ex.hidden
        )));
    }
    x.check("moe x", tokens * ex.hidden)?;
    residual.check("moe residual", tokens * ex.hidden)?;
    stats.check("moe stats", stats_words(ex.n_experts))?;
    // SAFETY: x, residual and stats checked above; everything else is `scratch`, sized by
    // `ensure` for this call's plan.
    unsafe {
        moe_forward_raw(
            gpu,
            gate,
            ex,
            routing,
            x.ptr(),
            residual.ptr(),
            tokens,
            stats.ptr(),
            scratch,
            keep_logits,
        )
    }
}

/// [`moe_forward`] on raw addresses.
///
/// # Safety
/// `x` and `residual` must hold `tokens · hidden` f32 and `stats` `stats_words(n_experts)` u64
/// on this device, allocated until the launches have run.
#[allow(clippy::too_many_arguments)]
unsafe fn moe_forward_raw(
    gpu: &Arc<Gpu>,
    gate: &DevMat,
    ex: &ExpertStack,
    routing: &RouterTopK,
    x: u64,
    residual: u64,
    tokens: usize,
    stats: u64,
    scratch: &mut MoeScratch,
    keep_logits: bool,
) -> GpuResult<()> {
    let top_k = routing.top_k;
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
    router(gpu, x, gate, tokens, routing, &out)?;
    if s.xs.is_some() && use_blas(ex, n_slots) {
        return experts_by_blas(gpu, ex, s, &out, x, residual, tokens, k);
    }
    if use_gemv(ex, tile, n_slots) {
        let (act, eo) = (p(&s.act), p(&s.expert_out));
        w13_gemv(gpu, ex, x, out.sched, out.sorted_slots, act, n_slots, k)?;
        w2_gemv(
            gpu,
            ex,
            act,
            out.sched,
            out.sorted_slots,
            out.weights,
            eo,
            n_slots,
            k,
        )?;
        return combine(
            gpu,
            eo,
            out.slot_rows,
            None,
            residual,
            tokens,
            ex.hidden,
            k,
            1,
            0,
        );
    }
    let ran13 = w13(
        gpu,
        ex,
        x,
        out.sched,
        out.sorted_slots,
        p(&s.act),
        s.part.as_ref().map(|b| b.ptr()),
        s13,
        n_slots,
        k,
        tile,
    )?;
    let ran2 = w2(
        gpu,
        ex,
        p(&s.act),
        s.part.as_ref().map(|b| b.ptr()),
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
        None,
        residual,
        tokens,
        ex.hidden,
        k,
        ran2,
        rows * ex.hidden,
    )
}

/// The large-batch expert path: gather → per expert gate and up GEMMs → SwiGLU → per expert
/// down GEMM → weighted combine.
///
/// # Safety
/// As [`moe_forward_raw`].
#[allow(clippy::too_many_arguments)]
unsafe fn experts_by_blas(
    gpu: &Arc<Gpu>,
    ex: &ExpertStack,
    s: &MoeScratch,
    out: &RouterOut,
    x: u64,
    residual: u64,
    tokens: usize,
    k: usize,
) -> GpuResult<()> {
    let n_slots = tokens * k;
    let (e, h, f) = (ex.n_experts, ex.hidden, ex.ffn);
    let dt = ex.dtype();
    let (xs, g, u, act) = (p(&s.xs), p(&s.gate_out), p(&s.up_out), p(&s.act));
    gather(gpu, ex, x, out.sorted_slots, k, n_slots, xs)?;
    let offsets = s.sched.as_ref().expect("allocated").read::<u32>(4, e + 1)?;
    let esz = dt.size();
    for i in 0..e {
        let (r0, r1) = (offsets[i] as usize, offsets[i + 1] as usize);
        if r1 <= r0 {
            continue;
        }
        let a = xs + (r0 * h * esz) as u64;
        let w_off = (i * f * h * esz) as u64;
        // Gate (w1 → g) and up (w3 → u) over the same gathered rows.
        for (w, c) in [(&ex.w1, g), (&ex.w3, u)] {
            let c = c + (r0 * f * esz) as u64;
            // SAFETY: rows [r0, r1) of the gathered `xs`, `g`/`u` (`n_slots` rows each) and
            // expert `i` of the stack, all allocated for this call.
            unsafe { gpu.gemm_rows_by_weights(a, w.ptr() + w_off, dt, c, dt, r1 - r0, f, h)? };
        }
    }
    swiglu(gpu, ex, g, u, act, n_slots * f)?;
    let eo = p(&s.expert_out);
    for i in 0..e {
        let (r0, r1) = (offsets[i] as usize, offsets[i + 1] as usize);
        if r1 <= r0 {
            continue;
        }
        // SAFETY: rows [r0, r1) of `act` and `expert_out` (sized for `n_slots` rows) and expert
        // `i` of the stacked w2.
        unsafe {
            gpu.gemm_rows_by_weights(
                act + (r0 * f * esz) as u64,
                ex.w2.ptr() + (i * h * f * esz) as u64,
                dt,
                eo + (r0 * h * 4) as u64,
                WeightDType::F32,
                r1 - r0,
                h,
                f,
            )?
        };
    }
    combine(
        gpu,
        eo,
        out.slot_rows,
        Some(out.weights),
        residual,
        tokens,
        h,
        k,
        1,
        0,
    )
}
