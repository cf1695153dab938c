//! Launcher of `combine.cu`.

use crate::cuda::{Gpu, GpuResult, KernelSource};
use crate::kargs;

pub const SOURCE: KernelSource = KernelSource {
    name: "combine",
    code: include_str!("combine.cu"),
};

/// `residual[t] += Σ_j expert_out[slot_rows[t·k + j]]` for `n` tokens.
pub fn combine(
    gpu: &Gpu,
    expert_out: u64,
    slot_rows: u64,
    residual: u64,
    n: usize,
    hidden: usize,
    top_k: usize,
) -> GpuResult<()> {
    let f = gpu.function(&SOURCE, "combine_f32")?;
    let (h, k) = (hidden as u32, top_k as u32);
    let threads = (hidden.div_ceil(32) * 32).clamp(32, 512) as u32;
    // SAFETY: argument list matches `combine_f32`.
    unsafe {
        gpu.launch(
            f,
            (n as u32, 1, 1),
            (threads, 1, 1),
            0,
            &mut kargs!(expert_out, slot_rows, residual, h, k),
        )
    }
}
