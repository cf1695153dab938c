//! Launchers of `rms_norm.cu`: RMSNorm, RMSNorm fused with the residual add, and two row helpers.

use crate::cuda::{DevMat, Gpu, GpuResult, KernelSource};
use crate::kargs;

pub const SOURCE: KernelSource = KernelSource {
    name: "rms_norm",
    code: include_str!("rms_norm.cu"),
};

fn threads(h: usize) -> u32 {
    (h.div_ceil(32) * 32).clamp(32, 1024) as u32
}

/// `out = rmsnorm(x) · w` for `rows` rows of `w.cols`.
pub fn rms_norm(gpu: &Gpu, x: u64, w: &DevMat, out: u64, rows: usize, eps: f32) -> GpuResult<()> {
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
    x: u64,
    y: u64,
    w: &DevMat,
    out: u64,
    rows: usize,
    eps: f32,
) -> GpuResult<()> {
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
pub fn add(gpu: &Gpu, x: u64, y: u64, n: usize) -> GpuResult<()> {
    let f = gpu.function(&SOURCE, "add_f32")?;
    let n64 = n as u64;
    let blocks = n.div_ceil(256).min(4096) as u32;
    // SAFETY: argument list matches `add_f32`.
    unsafe { gpu.launch(f, (blocks, 1, 1), (256, 1, 1), 0, &mut kargs!(x, y, n64)) }
}

/// `out[i] = x[rows[i]]`, `n` rows of `cols` floats.
pub fn gather_rows(gpu: &Gpu, x: u64, rows: u64, n: usize, cols: usize, out: u64) -> GpuResult<()> {
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
pub fn argmax_rows(gpu: &Gpu, x: u64, rows: usize, cols: usize, out: u64) -> GpuResult<()> {
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
