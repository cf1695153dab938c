//! Launcher of `linear.cu`: tensor cores for 16-bit weights of fitting shape, SIMT otherwise.

use crate::cuda::{DevMat, Gpu, GpuResult, KernelSource};
use crate::{kargs, WeightDType};

pub const SOURCE: KernelSource = KernelSource {
    name: "linear",
    code: include_str!("linear.cu"),
};

/// Whether the tensor-core kernels take a `[n, k]` weight of this dtype.
pub fn tensor_core_fits(dtype: WeightDType, n: usize, k: usize) -> bool {
    dtype != WeightDType::F32 && n % 16 == 0 && k % 32 == 0
}

/// `out[t] = x[t] · wᵀ` for `t < tokens`; x f32 `[tokens, w.cols]`, out f32 `[tokens, w.rows]`.
pub fn linear(gpu: &Gpu, x: u64, w: &DevMat, out: u64, tokens: usize) -> GpuResult<()> {
    let (t, n, k) = (tokens as u32, w.rows as u32, w.cols as u32);
    let wp = w.ptr();
    if tensor_core_fits(w.dtype, w.rows, w.cols) {
        let f = gpu.function(&SOURCE, &format!("linear_tc_{}", w.suffix()))?;
        let grid = (tokens.div_ceil(64) as u32, w.rows.div_ceil(64) as u32, 1);
        // SAFETY: argument list matches `linear_tc_*`; shapes checked by `tensor_core_fits`.
        unsafe { gpu.launch(f, grid, (128, 1, 1), 0, &mut kargs!(x, wp, out, t, n, k)) }
    } else {
        let f = gpu.function(&SOURCE, &format!("linear_simt_{}", w.suffix()))?;
        let grid = (tokens.div_ceil(8) as u32, w.rows.div_ceil(8) as u32, 1);
        // SAFETY: argument list matches `linear_simt_*`.
        unsafe { gpu.launch(f, grid, (256, 1, 1), 0, &mut kargs!(x, wp, out, t, n, k)) }
    }
}
