//! Launcher of `embedding.cu`.

use crate::cuda::{DevMat, DevSliceMut, Gpu, GpuError, GpuResult, HostCopy, KernelSource};
use crate::kargs;
use std::sync::Arc;

pub const SOURCE: KernelSource = KernelSource {
    name: "embedding",
    code: include_str!("embedding.cu"),
};

/// `out[t] = table[ids[t]]` for every id (checked against `table.rows`, then uploaded).
pub fn embed(gpu: &Arc<Gpu>, table: &DevMat, ids: &[u32], out: DevSliceMut<f32>) -> GpuResult<()> {
    if let Some(&id) = ids.iter().find(|&&id| id as usize >= table.rows) {
        return Err(GpuError(format!("embed: id {id} of {}", table.rows)));
    }
    let n = ids.len();
    out.check("embed out", n * table.cols)?;
    let dev_ids = gpu.upload(ids)?;
    let (ids, out) = (dev_ids.ptr(), out.ptr());
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
