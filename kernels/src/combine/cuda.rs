//! Launcher of `combine.cu`.

use crate::cuda::{Gpu, GpuResult, KernelSource};
use crate::kargs;

pub const SOURCE: KernelSource = KernelSource {
    name: "combine",
    code: include_str!("combine.cu"),
};

/// `residual[t] += Σ_j w_j · Σ_z expert_out[z][slot_rows[t·k + j]]` for `n` tokens, `splits`
/// partials `split_stride` floats apart; `w_j = route_w[t·k + j]` with `route_w`, else 1
/// (the weights already applied).
///
/// # Safety
/// Every `u64` argument must be a device address of this `Gpu`'s context sized as
/// [`crate::cuda::moe::moe_forward`] sizes it for `n_slots` routed rows (its scratch), allocated
/// until the kernel has run. Raw addresses remain here because these launchers only run inside
/// that function, on scratch whose sizes come from its plan.
#[allow(clippy::too_many_arguments)]
pub unsafe fn combine(
    gpu: &Gpu,
    expert_out: u64,
    slot_rows: u64,
    route_w: Option<u64>,
    residual: u64,
    n: usize,
    hidden: usize,
    top_k: usize,
    splits: usize,
    split_stride: usize,
) -> GpuResult<()> {
    let route_w = route_w.unwrap_or(0);
    let f = gpu.function(&SOURCE, "combine_f32")?;
    let (h, k, z, zs) = (
        hidden as u32,
        top_k as u32,
        splits as u32,
        split_stride as u64,
    );
    let threads = 256u32;
    let grid = (n as u32, hidden.div_ceil(256) as u32, 1);
    // SAFETY: argument list matches `combine_f32`.
    unsafe {
        gpu.launch(
            f,
            grid,
            (threads, 1, 1),
            0,
            &mut kargs!(expert_out, slot_rows, route_w, residual, h, k, z, zs),
        )
    }
}
