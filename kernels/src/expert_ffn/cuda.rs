//! Launchers of `expert_ffn.cu`: the grouped gate/up (SwiGLU) and down GEMMs over all experts.

use crate::cuda::{gemv_features_per_warp, DevMat, Gpu, GpuError, GpuResult, KernelSource};
use crate::kargs;
use crate::router_topk::cuda::max_tiles;
use crate::WeightDType;

pub const SOURCE: KernelSource = KernelSource {
    name: "expert_ffn",
    code: include_str!("expert_ffn.cu"),
};

/// One layer's experts stacked: w1, w3 `[E·ffn, hidden]`, w2 `[E·hidden, ffn]`.
pub struct ExpertStack {
    pub w1: DevMat,
    pub w3: DevMat,
    pub w2: DevMat,
    pub n_experts: usize,
    pub hidden: usize,
    pub ffn: usize,
}

impl ExpertStack {
    pub fn new(w1: DevMat, w3: DevMat, w2: DevMat, n_experts: usize) -> GpuResult<Self> {
        let (ffn, hidden) = (w1.rows / n_experts.max(1), w1.cols);
        let ok = n_experts > 0
            && w1.rows == n_experts * ffn
            && (w3.rows, w3.cols) == (w1.rows, hidden)
            && (w2.rows, w2.cols) == (n_experts * hidden, ffn)
            && w1.dtype == w3.dtype
            && w1.dtype == w2.dtype;
        if !ok {
            return Err(GpuError(format!(
                "experts: w1 [{}, {}], w3 [{}, {}], w2 [{}, {}] do not stack {n_experts} experts",
                w1.rows, w1.cols, w3.rows, w3.cols, w2.rows, w2.cols
            )));
        }
        Ok(ExpertStack {
            w1,
            w3,
            w2,
            n_experts,
            hidden,
            ffn,
        })
    }

    pub fn dtype(&self) -> WeightDType {
        self.w1.dtype
    }

    /// Tensor cores need 16-bit weights and 32-multiples along both GEMMs' K and N.
    pub fn tensor_cores(&self) -> bool {
        self.dtype() != WeightDType::F32 && self.hidden % 32 == 0 && self.ffn % 32 == 0
    }

    /// Bytes of one element of the intermediate activation (`act`).
    pub fn act_size(&self) -> usize {
        if self.tensor_cores() {
            2
        } else {
            4
        }
    }

    pub fn bytes(&self) -> usize {
        self.w1.bytes() + self.w3.bytes() + self.w2.bytes()
    }
}

/// Rows per split-K partial buffer: every row the schedule can hold.
pub fn rows_capacity(n_slots: usize, n_experts: usize, tile: usize) -> usize {
    max_tiles(n_slots, n_experts, tile) * tile
}

/// Rows per tile: 8 (one n-tile per block, few registers, many blocks) while experts get about
/// 16 rows or fewer, else 64.
pub fn tile_rows(n_slots: usize, n_experts: usize) -> usize {
    if n_slots <= 16 * n_experts {
        8
    } else {
        64
    }
}

/// How many K splits keep about `target_warps` warps streaming weights when few tiles are
/// routed: `warps` is the warp count without splitting, `k` the reduction length. 1 on the SIMT
/// path.
pub fn k_splits(ex: &ExpertStack, warps: usize, k: usize, target_warps: usize) -> usize {
    if !ex.tensor_cores() {
        return 1;
    }
    target_warps
        .div_ceil(warps.max(1))
        .clamp(1, 16)
        .min((k / 256).max(1))
}

/// An upper bound of the tiles routed for `n_slots` rows (each expert's rows are one tile or
/// more, and only `n_slots` rows exist).
pub fn tiles_bound(n_slots: usize, n_experts: usize, tile: usize) -> usize {
    n_slots.min(n_experts + n_slots / tile)
}

/// K-slice length (a multiple of 32) and the split count it gives for `splits` requested.
pub fn split_plan(k: usize, splits: usize) -> (u32, usize) {
    let chunk = k.div_ceil(splits.max(1)).div_ceil(32) * 32;
    (chunk as u32, k.div_ceil(chunk.max(1)))
}

/// `act = silu(x·w1ᵀ) ⊙ (x·w3ᵀ)` for every scheduled row; with more than one split the f32
/// partial sums go to `part` (`splits × rows_capacity × 2·ffn`) instead. Returns the splits run.
///
/// # Safety
/// Every `u64` argument must be a device address of this `Gpu`'s context sized as
/// [`crate::cuda::moe::moe_forward`] sizes it for `n_slots` routed rows (its scratch), allocated
/// until the kernel has run. Raw addresses remain here because these launchers only run inside
/// that function, on scratch whose sizes come from its plan.
#[allow(clippy::too_many_arguments)]
pub unsafe fn w13(
    gpu: &Gpu,
    ex: &ExpertStack,
    x: u64,
    sched: u64,
    sorted_slots: u64,
    act: u64,
    part: Option<u64>,
    splits: usize,
    n_slots: usize,
    top_k: usize,
    tile: usize,
) -> GpuResult<usize> {
    let part = part.unwrap_or(0);
    let mt = max_tiles(n_slots, ex.n_experts, tile);
    let tr = tile as u32;
    let (e, mtu, f, h, k) = (
        ex.n_experts as u32,
        mt as u32,
        ex.ffn as u32,
        ex.hidden as u32,
        top_k as u32,
    );
    let (p1, p3) = (ex.w1.ptr(), ex.w3.ptr());
    if ex.tensor_cores() {
        let (chunk, splits) = split_plan(ex.hidden, splits);
        let fun = gpu.function(
            &SOURCE,
            &format!("w13_tc_{}_nt{}", ex.w1.suffix(), tile / 8),
        )?;
        // SAFETY: argument list matches `w13_tc_*`; buffers sized from the same n_slots.
        unsafe {
            gpu.launch(
                fun,
                (mt as u32, ex.ffn.div_ceil(64) as u32, splits as u32),
                (128, 1, 1),
                0,
                &mut kargs!(
                    x,
                    p1,
                    p3,
                    sched,
                    sorted_slots,
                    act,
                    part,
                    e,
                    mtu,
                    tr,
                    f,
                    h,
                    k,
                    chunk
                ),
            )?;
        }
        Ok(splits)
    } else {
        let fun = gpu.function(&SOURCE, &format!("w13_simt_{}", ex.w1.suffix()))?;
        // SAFETY: argument list matches `w13_simt_*`.
        unsafe {
            gpu.launch(
                fun,
                (mt as u32, ex.ffn.div_ceil(8) as u32, 1),
                (256, 1, 1),
                0,
                &mut kargs!(x, p1, p3, sched, sorted_slots, act, e, mtu, tr, f, h, k),
            )?;
        }
        Ok(1)
    }
}

/// `out[z][row] = route_w[slot(row)] · act[row]·w2ᵀ` over K split `splits` ways (`out` holds
/// `splits × rows_capacity × hidden`); the activations come from `act`, or from the w13
/// partials when `part_splits > 1`. Returns the splits run.
///
/// # Safety
/// Every `u64` argument must be a device address of this `Gpu`'s context sized as
/// [`crate::cuda::moe::moe_forward`] sizes it for `n_slots` routed rows (its scratch), allocated
/// until the kernel has run. Raw addresses remain here because these launchers only run inside
/// that function, on scratch whose sizes come from its plan.
#[allow(clippy::too_many_arguments)]
pub unsafe fn w2(
    gpu: &Gpu,
    ex: &ExpertStack,
    act: u64,
    part: Option<u64>,
    part_splits: usize,
    sched: u64,
    sorted_slots: u64,
    route_w: u64,
    out: u64,
    splits: usize,
    n_slots: usize,
    tile: usize,
) -> GpuResult<usize> {
    let mt = max_tiles(n_slots, ex.n_experts, tile);
    let tr = tile as u32;
    let (e, mtu, h, f) = (
        ex.n_experts as u32,
        mt as u32,
        ex.hidden as u32,
        ex.ffn as u32,
    );
    let p2 = ex.w2.ptr();
    let part = part.unwrap_or(0);
    if ex.tensor_cores() {
        let (chunk, splits) = split_plan(ex.ffn, splits);
        let ps = part_splits as u32;
        let fun = gpu.function(&SOURCE, &format!("w2_tc_{}_nt{}", ex.w2.suffix(), tile / 8))?;
        // SAFETY: argument list matches `w2_tc_*`.
        unsafe {
            gpu.launch(
                fun,
                (mt as u32, ex.hidden.div_ceil(64) as u32, splits as u32),
                (128, 1, 1),
                0,
                &mut kargs!(
                    act,
                    part,
                    ps,
                    p2,
                    sched,
                    sorted_slots,
                    route_w,
                    out,
                    e,
                    mtu,
                    tr,
                    h,
                    f,
                    chunk
                ),
            )?;
        }
        Ok(splits)
    } else {
        let fun = gpu.function(&SOURCE, &format!("w2_simt_{}", ex.w2.suffix()))?;
        // SAFETY: argument list matches `w2_simt_*`.
        unsafe {
            gpu.launch(
                fun,
                (mt as u32, ex.hidden.div_ceil(8) as u32, 1),
                (256, 1, 1),
                0,
                &mut kargs!(act, p2, sched, sorted_slots, route_w, out, e, mtu, tr, h, f),
            )?;
        }
        Ok(1)
    }
}

/// Whether 16-bit experts run on the GEMV kernels instead of the tensor-core tiles: while the
/// batch routes no more rows than there are experts (single tokens and a few more). Measured on
/// an H100, one token: 0.29 vs 0.36 ms at the Mixtral shape, 0.044 vs 0.056 ms at 1024 × 3584;
/// at 8 tokens (2 rows per expert) even, at 64 (16 per expert) 2.5× slower than the tensor
/// cores. `MOE_EXPERT_GEMV=0` turns them off, `=1` takes them for every tile of 8 rows.
pub fn use_gemv(ex: &ExpertStack, tile: usize, n_slots: usize) -> bool {
    let wanted = crate::tuning::tuning()
        .expert_gemv
        .unwrap_or(n_slots <= ex.n_experts);
    wanted && tile == 8 && ex.dtype() != WeightDType::F32 && ex.hidden % 8 == 0 && ex.ffn % 8 == 0
}

/// Launch shape of a GEMV kernel: features per warp (1, 2 or 4) and warps per block, from
/// `MOE_GEMV_SHAPE_<name>` (the tuning table) when set.
fn gemv_shape(name: &str, default: (u32, u32)) -> (u32, u32) {
    let t = crate::tuning::tuning();
    match name {
        "W13" => t.gemv_shape_w13,
        _ => t.gemv_shape_w2,
    }
    .unwrap_or(default)
}

/// [`w13`] for tiles of at most 8 rows on the GEMV kernel (no K split).
///
/// # Safety
/// Every `u64` argument must be a device address of this `Gpu`'s context sized as
/// [`crate::cuda::moe::moe_forward`] sizes it for `n_slots` routed rows (its scratch), allocated
/// until the kernel has run. Raw addresses remain here because these launchers only run inside
/// that function, on scratch whose sizes come from its plan.
#[allow(clippy::too_many_arguments)]
pub unsafe fn w13_gemv(
    gpu: &Gpu,
    ex: &ExpertStack,
    x: u64,
    sched: u64,
    sorted_slots: u64,
    act: u64,
    n_slots: usize,
    top_k: usize,
) -> GpuResult<()> {
    let mt = max_tiles(n_slots, ex.n_experts, 8);
    let bytes = n_slots.min(ex.n_experts) * (ex.w1.bytes() + ex.w3.bytes()) / ex.n_experts;
    let (fpw, warps) = gemv_shape("W13", (gemv_features_per_warp(bytes), 8));
    // A tile holds at most one row per token.
    let nr = crate::cuda::gemv_rows((n_slots / top_k.max(1)).min(8));
    let fun = gpu.function(
        &SOURCE,
        &format!("w13_gemv_{}_f{fpw}_r{nr}", ex.w1.suffix()),
    )?;
    let (e, mtu, tr, f, h, k) = (
        ex.n_experts as u32,
        mt as u32,
        8u32,
        ex.ffn as u32,
        ex.hidden as u32,
        top_k as u32,
    );
    let (p1, p3) = (ex.w1.ptr(), ex.w3.ptr());
    // SAFETY: argument list matches `w13_gemv_*`; rows are 16-byte aligned (hidden % 8 == 0).
    unsafe {
        gpu.launch(
            fun,
            (mt as u32, f.div_ceil(fpw * warps), 1),
            (32 * warps, 1, 1),
            0,
            &mut kargs!(x, p1, p3, sched, sorted_slots, act, e, mtu, tr, f, h, k),
        )
    }
}

/// [`w2`] for tiles of at most 8 rows on the GEMV kernel (no K split: `out` holds one
/// `rows_capacity × hidden` slice).
///
/// # Safety
/// Every `u64` argument must be a device address of this `Gpu`'s context sized as
/// [`crate::cuda::moe::moe_forward`] sizes it for `n_slots` routed rows (its scratch), allocated
/// until the kernel has run. Raw addresses remain here because these launchers only run inside
/// that function, on scratch whose sizes come from its plan.
#[allow(clippy::too_many_arguments)]
pub unsafe fn w2_gemv(
    gpu: &Gpu,
    ex: &ExpertStack,
    act: u64,
    sched: u64,
    sorted_slots: u64,
    route_w: u64,
    out: u64,
    n_slots: usize,
    top_k: usize,
) -> GpuResult<()> {
    let mt = max_tiles(n_slots, ex.n_experts, 8);
    let bytes = n_slots.min(ex.n_experts) * ex.w2.bytes() / ex.n_experts;
    let (fpw, warps) = gemv_shape("W2", (gemv_features_per_warp(bytes), 8));
    let nr = crate::cuda::gemv_rows((n_slots / top_k.max(1)).min(8));
    let fun = gpu.function(&SOURCE, &format!("w2_gemv_{}_f{fpw}_r{nr}", ex.w2.suffix()))?;
    let (e, mtu, tr, h, f) = (
        ex.n_experts as u32,
        mt as u32,
        8u32,
        ex.hidden as u32,
        ex.ffn as u32,
    );
    let p2 = ex.w2.ptr();
    // SAFETY: argument list matches `w2_gemv_*`; rows are 16-byte aligned (ffn % 8 == 0).
    unsafe {
        gpu.launch(
            fun,
            (mt as u32, h.div_ceil(fpw * warps), 1),
            (32 * warps, 1, 1),
            0,
            &mut kargs!(act, p2, sched, sorted_slots, route_w, out, e, mtu, tr, h, f),
        )
    }
}

/// Gathers routed rows into expert order in the weight dtype: `out[row] = x[token(row)]`.
///
/// # Safety
/// Every `u64` argument must be a device address of this `Gpu`'s context sized as
/// [`crate::cuda::moe::moe_forward`] sizes it for `n_slots` routed rows (its scratch), allocated
/// until the kernel has run. Raw addresses remain here because these launchers only run inside
/// that function, on scratch whose sizes come from its plan.
#[allow(clippy::too_many_arguments)]
pub unsafe fn gather(
    gpu: &Gpu,
    ex: &ExpertStack,
    x: u64,
    sorted_slots: u64,
    top_k: usize,
    n_rows: usize,
    out: u64,
) -> GpuResult<()> {
    let f = gpu.function(&SOURCE, &format!("gather_{}", ex.w1.suffix()))?;
    let (k, h) = (top_k as u32, ex.hidden as u32);
    let grid = (n_rows as u32, ex.hidden.div_ceil(8 * 128) as u32, 1);
    // SAFETY: argument list matches `gather_*`; hidden is a multiple of 32 on this path.
    unsafe {
        gpu.launch(
            f,
            grid,
            (128, 1, 1),
            0,
            &mut kargs!(x, sorted_slots, k, h, out),
        )
    }
}

/// `act = silu(g) · u` over `n` elements (a multiple of 8) of the weight dtype.
///
/// # Safety
/// Every `u64` argument must be a device address of this `Gpu`'s context sized as
/// [`crate::cuda::moe::moe_forward`] sizes it for `n_slots` routed rows (its scratch), allocated
/// until the kernel has run. Raw addresses remain here because these launchers only run inside
/// that function, on scratch whose sizes come from its plan.
pub unsafe fn swiglu(
    gpu: &Gpu,
    ex: &ExpertStack,
    g: u64,
    u: u64,
    act: u64,
    n: usize,
) -> GpuResult<()> {
    let f = gpu.function(&SOURCE, &format!("swiglu_{}", ex.w1.suffix()))?;
    let n8 = (n / 8) as u64;
    let blocks = (n / 8).div_ceil(256).min(gpu.sm_count as usize * 16) as u32;
    // SAFETY: argument list matches `swiglu_*`.
    unsafe {
        gpu.launch(
            f,
            (blocks, 1, 1),
            (256, 1, 1),
            0,
            &mut kargs!(g, u, act, n8),
        )
    }
}
