//! Launchers of `rms_norm.cu`: RMSNorm, RMSNorm fused with the residual add, and two row helpers.

use crate::cuda::{
    DevMat, DevSlice, DevSliceMut, Gpu, GpuError, GpuResult, HostCopy, KernelSource,
};
use crate::kargs;
use std::sync::Arc;

pub const SOURCE: KernelSource = KernelSource {
    name: "rms_norm",
    code: include_str!("rms_norm.cu"),
};

fn threads(h: usize) -> u32 {
    (h.div_ceil(32) * 32).clamp(32, 1024) as u32
}

/// `out = rmsnorm(x) · w` for `rows` rows of `w.cols`.
pub fn rms_norm(
    gpu: &Gpu,
    x: DevSlice<f32>,
    w: &DevMat,
    out: DevSliceMut<f32>,
    rows: usize,
    eps: f32,
) -> GpuResult<()> {
    x.check("rms_norm x", rows * w.cols)?;
    out.check("rms_norm out", rows * w.cols)?;
    let (x, out) = (x.ptr(), out.ptr());
    let f = gpu.function(&SOURCE, &format!("rms_norm_{}", w.suffix()))?;
    let (wp, h) = (w.ptr(), w.cols as u32);
    // SAFETY: argument list matches `rms_norm_*`.
    unsafe {
        gpu.launch(
            f,
            (rows as u32, 1, 1),
            (threads(w.cols), 1, 1),
            0,
            &mut kargs!(x, wp, out, h, eps),
        )
    }
}

/// `x += y; out = rmsnorm(x) · w`.
pub fn add_rms_norm(
    gpu: &Gpu,
    x: DevSliceMut<f32>,
    y: DevSlice<f32>,
    w: &DevMat,
    out: DevSliceMut<f32>,
    rows: usize,
    eps: f32,
) -> GpuResult<()> {
    x.check("add_rms_norm x", rows * w.cols)?;
    y.check("add_rms_norm y", rows * w.cols)?;
    out.check("add_rms_norm out", rows * w.cols)?;
    let (x, y, out) = (x.ptr(), y.ptr(), out.ptr());
    let f = gpu.function(&SOURCE, &format!("add_rms_norm_{}", w.suffix()))?;
    let (wp, h) = (w.ptr(), w.cols as u32);
    // SAFETY: argument list matches `add_rms_norm_*`.
    unsafe {
        gpu.launch(
            f,
            (rows as u32, 1, 1),
            (threads(w.cols), 1, 1),
            0,
            &mut kargs!(x, y, wp, out, h, eps),
        )
    }
}

/// `x += y` over `n` floats.
pub fn add(gpu: &Gpu, x: DevSliceMut<f32>, y: DevSlice<f32>, n: usize) -> GpuResult<()> {
    x.check("add x", n)?;
    y.check("add y", n)?;
    let (x, y) = (x.ptr(), y.ptr());
    let f = gpu.function(&SOURCE, "add_f32")?;
    let n64 = n as u64;
    let blocks = n.div_ceil(256).min(4096) as u32;
    // SAFETY: argument list matches `add_f32`.
    unsafe { gpu.launch(f, (blocks, 1, 1), (256, 1, 1), 0, &mut kargs!(x, y, n64)) }
}

/// `out[i] = x[rows[i]]`, `rows.len()` rows of `cols` floats (each row index checked against
/// `x`, then uploaded).
pub fn gather_rows(
    gpu: &Arc<Gpu>,
    x: DevSlice<f32>,
    rows: &[u32],
    cols: usize,
    out: DevSliceMut<f32>,
) -> GpuResult<()> {
    let n = rows.len();
    let have = x.len().checked_div(cols).unwrap_or(0);
    if let Some(&r) = rows.iter().find(|&&r| r as usize >= have) {
        return Err(GpuError(format!("gather_rows: row {r} of {have}")));
    }
    out.check("gather_rows out", n * cols)?;
    let dev_rows = gpu.upload(rows)?;
    let (x, rows, out) = (x.ptr(), dev_rows.ptr(), out.ptr());
    let f = gpu.function(&SOURCE, "gather_rows_f32")?;
    let c = cols as u32;
    // SAFETY: argument list matches `gather_rows_f32`.
    unsafe {
        gpu.launch(
            f,
            (n as u32, 1, 1),
            (threads(cols), 1, 1),
            0,
            &mut kargs!(x, rows, out, c),
        )
    }
}

/// `out[r]` = argmax of row `r` of `x` (`rows × cols` f32); ties to the lowest index.
pub fn argmax_rows(
    gpu: &Gpu,
    x: DevSlice<f32>,
    rows: usize,
    cols: usize,
    out: DevSliceMut<u32>,
) -> GpuResult<()> {
    x.check("argmax_rows x", rows * cols)?;
    out.check("argmax_rows out", rows)?;
    let (x, out) = (x.ptr(), out.ptr());
    let f = gpu.function(&SOURCE, "argmax_rows_f32")?;
    let c = cols as u32;
    // SAFETY: argument list matches `argmax_rows_f32`.
    unsafe {
        gpu.launch(
            f,
            (rows as u32, 1, 1),
            (256, 1, 1),
            0,
            &mut kargs!(x, c, out),
        )
    }
}
