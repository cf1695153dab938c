//! Launcher of `embedding.cu`.

use crate::cuda::{DevMat, Gpu, GpuResult, KernelSource};
use crate::kargs;

pub const SOURCE: KernelSource = KernelSource {
    name: "embedding",
    code: include_str!("embedding.cu"),
};

/// `out[t] = table[ids[t]]`; `ids` (device, `n` u32) must be `< table.rows` (checked by callers).
pub fn embed(gpu: &Gpu, table: &DevMat, ids: u64, n: usize, out: u64) -> GpuResult<()> {
    let f = gpu.function(&SOURCE, &format!("embed_{}", table.suffix()))?;
    let (t, h) = (table.ptr(), table.cols as u32);
    // SAFETY: argument list matches `embed_*`; buffers sized by the caller.
    unsafe {
        gpu.launch(
            f,
            (n as u32, 1, 1),
            (256, 1, 1),
            0,
            &mut kargs!(t, ids, out, h),
        )
    }
}
