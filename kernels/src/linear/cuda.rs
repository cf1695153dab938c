//! Launcher of `linear.cu`: tensor cores for 16-bit weights of fitting shape, SIMT otherwise.

use crate::cuda::{DevMat, DevSlice, DevSliceMut, Gpu, GpuResult, KernelSource};
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
    crate::tuning::tuning().blas_min_rows
}

/// One weight of a [`linear_gemv`] launch, as the kernel takes it.
#[repr(C)]
#[derive(Clone, Copy)]
struct LinOut {
    w: u64,
    out: u64,
    n: u32,
}

/// Features per warp of the GEMV kernel and warps per block for `bytes` of weights;
/// `MOE_GEMV_SHAPE_LINEAR` (the tuning table) overrides them.
fn gemv_shape(bytes: usize) -> (u32, u32) {
    let fpw = crate::cuda::gemv_features_per_warp(bytes);
    crate::tuning::tuning()
        .gemv_shape_linear
        .unwrap_or((fpw, 8))
}

/// Whether `tokens` rows through these weights (one shared input) can take the GEMV kernel: at
/// most 8 tokens, 16-bit weights of one dtype and width (a multiple of 8), every output count a
/// multiple of 4.
pub fn gemv_shapes_fit(ws: &[&DevMat], tokens: usize) -> bool {
    let Some(first) = ws.first() else {
        return false;
    };
    tokens <= 8
        && ws.len() <= 3
        && first.dtype != WeightDType::F32
        && first.cols % 8 == 0
        && ws
            .iter()
            .all(|w| w.dtype == first.dtype && w.cols == first.cols && w.rows % 4 == 0)
}

/// [`gemv_shapes_fit`] for decode batches of at most `MOE_LINEAR_GEMV_MAX_ROWS` tokens (default 4; 0
/// turns the GEMV path off). Measured on an H100 (4 layers of the Mixtral shape): one token
/// decodes 537 tok/s with it against 502 with the split-K tensor-core kernel; at 8 tokens, where
/// every weight element meets 8 rows, the tensor cores were ahead (1444 against 1382–1397).
pub fn gemv_fits(ws: &[&DevMat], tokens: usize) -> bool {
    let max_rows = crate::tuning::tuning().linear_gemv_max_rows;
    tokens <= max_rows && gemv_shapes_fit(ws, tokens)
}

/// `outs[i][t] = x[t] · ws[i]ᵀ` for up to three weights over one input, in one launch; the
/// shapes must pass [`gemv_shapes_fit`].
pub fn linear_gemv(
    gpu: &Arc<Gpu>,
    x: DevSlice<f32>,
    ws: &[&DevMat],
    outs: &mut [DevSliceMut<f32>],
    tokens: usize,
) -> GpuResult<()> {
    if !gemv_shapes_fit(ws, tokens) || outs.len() != ws.len() {
        return Err(crate::cuda::GpuError(format!(
            "linear_gemv: {} weights, {} outputs, {tokens} tokens do not fit the GEMV kernel",
            ws.len(),
            outs.len()
        )));
    }
    x.check("linear_gemv x", tokens * ws[0].cols)?;
    for (w, o) in ws.iter().zip(outs.iter()) {
        o.check("linear_gemv out", tokens * w.rows)?;
    }
    let x = x.ptr();
    let (fpw, warps) = gemv_shape(ws.iter().map(|w| w.bytes()).sum());
    let mut m = [LinOut { w: 0, out: 0, n: 0 }; 3];
    for (i, (w, o)) in ws.iter().zip(outs.iter()).enumerate() {
        m[i] = LinOut {
            w: w.ptr(),
            out: o.ptr(),
            n: w.rows as u32,
        };
    }
    let total: u32 = m.iter().map(|l| l.n).sum();
    let nr = crate::cuda::gemv_rows(tokens);
    let f = gpu.function(
        &SOURCE,
        &format!("linear_gemv_{}_f{fpw}_r{nr}", ws[0].suffix()),
    )?;
    let (t, k) = (tokens as u32, ws[0].cols as u32);
    let (a, b, c) = (m[0], m[1], m[2]);
    // SAFETY: argument list matches `linear_gemv_*` (LinOut is laid out as the kernel's struct);
    // rows are 16-byte aligned (cols % 8 == 0) and every output count a multiple of FPW ≤ 4.
    unsafe {
        gpu.launch(
            f,
            (total.div_ceil(fpw * warps), 1, 1),
            (32 * warps, 1, 1),
            0,
            &mut kargs!(x, t, k, a, b, c),
        )
    }
}

/// `out[t] = x[t] · wᵀ` for `t < tokens`; x f32 `[tokens, w.cols]`, out f32 `[tokens, w.rows]`.
pub fn linear(
    gpu: &Arc<Gpu>,
    x: DevSlice<f32>,
    w: &DevMat,
    mut out: DevSliceMut<f32>,
    tokens: usize,
) -> GpuResult<()> {
    x.check("linear x", tokens * w.cols)?;
    out.check("linear out", tokens * w.rows)?;
    if gemv_fits(&[w], tokens) {
        return linear_gemv(gpu, x, &[w], &mut [out.reborrow()], tokens);
    }
    let (x, out) = (x.ptr(), out.ptr());
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
        // SAFETY: `xs` holds tokens × cols 16-bit values, `out` tokens × rows f32 (checked
        // above), `wp` the whole weight.
        return unsafe {
            gpu.gemm_rows_by_weights(
                xs.ptr(),
                wp,
                w.dtype,
                out,
                WeightDType::F32,
                tokens,
                w.rows,
                w.cols,
            )
        };
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
