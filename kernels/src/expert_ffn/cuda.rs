//! Launchers of `expert_ffn.cu`: the grouped gate/up (SwiGLU) and down GEMMs over all experts.

use crate::cuda::{DevMat, Gpu, GpuError, GpuResult, KernelSource};
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

/// `act = silu(x·w1ᵀ) ⊙ (x·w3ᵀ)` for every scheduled row; `n_slots` bounds the schedule.
#[allow(clippy::too_many_arguments)]
pub fn w13(
    gpu: &Gpu,
    ex: &ExpertStack,
    x: u64,
    sched: u64,
    sorted_slots: u64,
    act: u64,
    n_slots: usize,
    top_k: usize,
) -> GpuResult<()> {
    let mt = max_tiles(n_slots, ex.n_experts);
    let (e, mtu, f, h, k) = (
        ex.n_experts as u32,
        mt as u32,
        ex.ffn as u32,
        ex.hidden as u32,
        top_k as u32,
    );
    let (p1, p3) = (ex.w1.ptr(), ex.w3.ptr());
    let (name, grid_y, threads) = if ex.tensor_cores() {
        ("w13_tc", ex.ffn.div_ceil(64), 128)
    } else {
        ("w13_simt", ex.ffn.div_ceil(8), 256)
    };
    let fun = gpu.function(&SOURCE, &format!("{name}_{}", ex.w1.suffix()))?;
    // SAFETY: argument list matches `w13_*`; buffers sized from the same n_slots.
    unsafe {
        gpu.launch(
            fun,
            (mt as u32, grid_y as u32, 1),
            (threads, 1, 1),
            0,
            &mut kargs!(x, p1, p3, sched, sorted_slots, act, e, mtu, f, h, k),
        )
    }
}

/// `out[row] = route_w[slot(row)] · act[row]·w2ᵀ` for every scheduled row.
#[allow(clippy::too_many_arguments)]
pub fn w2(
    gpu: &Gpu,
    ex: &ExpertStack,
    act: u64,
    sched: u64,
    sorted_slots: u64,
    route_w: u64,
    out: u64,
    n_slots: usize,
) -> GpuResult<()> {
    let mt = max_tiles(n_slots, ex.n_experts);
    let (e, mtu, h, f) = (
        ex.n_experts as u32,
        mt as u32,
        ex.hidden as u32,
        ex.ffn as u32,
    );
    let p2 = ex.w2.ptr();
    let (name, grid_y, threads) = if ex.tensor_cores() {
        ("w2_tc", ex.hidden.div_ceil(64), 128)
    } else {
        ("w2_simt", ex.hidden.div_ceil(8), 256)
    };
    let fun = gpu.function(&SOURCE, &format!("{name}_{}", ex.w2.suffix()))?;
    // SAFETY: argument list matches `w2_*`.
    unsafe {
        gpu.launch(
            fun,
            (mt as u32, grid_y as u32, 1),
            (threads, 1, 1),
            0,
            &mut kargs!(act, p2, sched, sorted_slots, route_w, out, e, mtu, h, f),
        )
    }
}
