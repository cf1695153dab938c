//! Launcher of `linear.cu`: tensor cores for 16-bit weights of fitting shape, SIMT otherwise.

use crate::cuda::{DevMat, Gpu, GpuResult, KernelSource};
use crate::{kargs, WeightDType};
use std::sync::Arc;

pub const SOURCE: KernelSource = KernelSource {
    name: "linear",
    code: include_str!("linear.cu"),
};

/// Whether the tensor-core kernels take a `[n, k]` weight of this dtype.
pub fn tensor_core_fits(dtype: WeightDType, n: usize, k: usize) -> bool {
    dtype != WeightDType::F32 && n % 16 == 0 && k % 32 == 0
}

/// From this many rows on, 16-bit linears run through cuBLAS (after rounding the activations to
/// the weight dtype, as the tensor-core kernels do); `MOE_BLAS_MIN_ROWS` overrides it.
pub fn blas_min_rows() -> usize {
    match std::env::var("MOE_BLAS_MIN_ROWS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        Some(0) => usize::MAX,
        Some(n) => n,
        None => 32,
    }
}

/// `out[t] = x[t] · wᵀ` for `t < tokens`; x f32 `[tokens, w.cols]`, out f32 `[tokens, w.rows]`.
pub fn linear(gpu: &Arc<Gpu>, x: u64, w: &DevMat, out: u64, tokens: usize) -> GpuResult<()> {
    let (t, n, k) = (tokens as u32, w.rows as u32, w.cols as u32);
    let wp = w.ptr();
    if !tensor_core_fits(w.dtype, w.rows, w.cols) {
        let f = gpu.function(&SOURCE, &format!("linear_simt_{}", w.suffix()))?;
        let grid = (tokens.div_ceil(8) as u32, w.rows.div_ceil(8) as u32, 1);
        // SAFETY: argument list matches `linear_simt_*`.
        return unsafe { gpu.launch(f, grid, (256, 1, 1), 0, &mut kargs!(x, wp, out, t, n, k)) };
    }
    if tokens >= blas_min_rows() && w.cols % 8 == 0 {
        let xs = gpu.alloc(tokens * w.cols * 2)?;
        let f = gpu.function(&SOURCE, &format!("to_half_{}", w.suffix()))?;
        let (xp, n8) = (xs.ptr(), (tokens * w.cols / 8) as u64);
        let blocks = (tokens * w.cols / 8)
            .div_ceil(256)
            .min(gpu.sm_count as usize * 16) as u32;
        // SAFETY: argument list matches `to_half_*`; `xs` holds tokens × cols 16-bit values.
        unsafe { gpu.launch(f, (blocks, 1, 1), (256, 1, 1), 0, &mut kargs!(x, xp, n8))? };
        return gpu.gemm_rows_by_weights(
            xs.ptr(),
            wp,
            w.dtype,
            out,
            WeightDType::F32,
            tokens,
            w.rows,
            w.cols,
        );
    }
    if tokens <= 16 {
        let nt = if tokens <= 8 { 1 } else { 2 };
        let f = gpu.function(&SOURCE, &format!("linear_splitk_{}_nt{nt}", w.suffix()))?;
        let grid = (
            tokens.div_ceil(8 * nt) as u32,
            w.rows.div_ceil(16) as u32,
            1,
        );
        // SAFETY: argument list matches `linear_splitk_*`; shapes checked by `tensor_core_fits`.
        return unsafe { gpu.launch(f, grid, (256, 1, 1), 0, &mut kargs!(x, wp, out, t, n, k)) };
    }
    let f = gpu.function(&SOURCE, &format!("linear_tc_{}", w.suffix()))?;
    let grid = (tokens.div_ceil(64) as u32, w.rows.div_ceil(64) as u32, 1);
    // SAFETY: argument list matches `linear_tc_*`; shapes checked by `tensor_core_fits`.
    unsafe { gpu.launch(f, grid, (128, 1, 1), 0, &mut kargs!(x, wp, out, t, n, k)) }
}
