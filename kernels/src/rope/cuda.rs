//! Launcher of `rope.cu`.

use crate::cuda::{DevSlice, DevSliceMut, Gpu, GpuResult, KernelSource};
use crate::kargs;

pub const SOURCE: KernelSource = KernelSource {
    name: "rope",
    code: include_str!("rope.cu"),
};

/// Rotates `n` rows of `n_heads · head_dim` in place; `positions` and `inv_freq` on the device.
pub fn rope(
    gpu: &Gpu,
    x: DevSliceMut<f32>,
    positions: DevSlice<u32>,
    inv_freq: DevSlice<f32>,
    n: usize,
    n_heads: usize,
    head_dim: usize,
    interleaved: bool,
) -> GpuResult<()> {
    x.check("rope x", n * n_heads * head_dim)?;
    positions.check("rope positions", n)?;
    inv_freq.check("rope inv_freq", head_dim / 2)?;
    let (x, positions, inv_freq) = (x.ptr(), positions.ptr(), inv_freq.ptr());
    let f = gpu.function(&SOURCE, "rope_f32")?;
    let (nh, hd, il) = (n_heads as u32, head_dim as u32, interleaved as u32);
    // SAFETY: argument list matches `rope_f32`.
    unsafe {
        gpu.launch(
            f,
            (n as u32, 1, 1),
            (128, 1, 1),
            0,
            &mut kargs!(x, positions, inv_freq, nh, hd, il),
        )
    }
}

/// Builds the cos/sin table (`[n, head_dim / 2]` each) of `n` positions.
pub fn rope_table(
    gpu: &Gpu,
    positions: DevSlice<u32>,
    inv_freq: DevSlice<f32>,
    n: usize,
    head_dim: usize,
    cos: DevSliceMut<f32>,
    sin: DevSliceMut<f32>,
) -> GpuResult<()> {
    positions.check("rope_table positions", n)?;
    inv_freq.check("rope_table inv_freq", head_dim / 2)?;
    cos.check("rope_table cos", n * (head_dim / 2))?;
    sin.check("rope_table sin", n * (head_dim / 2))?;
    let (positions, inv_freq) = (positions.ptr(), inv_freq.ptr());
    let (cos, sin) = (cos.ptr(), sin.ptr());
    let f = gpu.function(&SOURCE, "rope_table")?;
    let half = (head_dim / 2) as u32;
    // SAFETY: argument list matches `rope_table`.
    unsafe {
        gpu.launch(
            f,
            (n as u32, 1, 1),
            (64, 1, 1),
            0,
            &mut kargs!(positions, inv_freq, half, cos, sin),
        )
    }
}

/// Rotates `n` rows of `n_heads · head_dim` in place with a table from [`rope_table`].
pub fn rope_apply(
    gpu: &Gpu,
    x: DevSliceMut<f32>,
    cos: DevSlice<f32>,
    sin: DevSlice<f32>,
    n: usize,
    n_heads: usize,
    head_dim: usize,
    interleaved: bool,
) -> GpuResult<()> {
    x.check("rope_apply x", n * n_heads * head_dim)?;
    cos.check("rope_apply cos", n * (head_dim / 2))?;
    sin.check("rope_apply sin", n * (head_dim / 2))?;
    let (x, cos, sin) = (x.ptr(), cos.ptr(), sin.ptr());
    let f = gpu.function(&SOURCE, "rope_apply")?;
    let (nh, hd, il) = (n_heads as u32, head_dim as u32, interleaved as u32);
    // SAFETY: argument list matches `rope_apply`.
    unsafe {
        gpu.launch(
            f,
            (n as u32, 1, 1),
            (128, 1, 1),
            0,
            &mut kargs!(x, cos, sin, nh, hd, il),
        )
    }
}

/// [`rope_apply`] of `a` (`n_heads_a` heads) and `b` (`n_heads_b`) over the same `n` rows in one
/// launch (q and k).
#[allow(clippy::too_many_arguments)]
pub fn rope_apply2(
    gpu: &Gpu,
    a: DevSliceMut<f32>,
    n_heads_a: usize,
    b: DevSliceMut<f32>,
    n_heads_b: usize,
    cos: DevSlice<f32>,
    sin: DevSlice<f32>,
    n: usize,
    head_dim: usize,
    interleaved: bool,
) -> GpuResult<()> {
    a.check("rope_apply2 a", n * n_heads_a * head_dim)?;
    b.check("rope_apply2 b", n * n_heads_b * head_dim)?;
    cos.check("rope_apply2 cos", n * (head_dim / 2))?;
    sin.check("rope_apply2 sin", n * (head_dim / 2))?;
    let (a, b, cos, sin) = (a.ptr(), b.ptr(), cos.ptr(), sin.ptr());
    let f = gpu.function(&SOURCE, "rope_apply2")?;
    let (na, nb, hd) = (n_heads_a as u32, n_heads_b as u32, head_dim as u32);
    let il = interleaved as u32;
    // SAFETY: argument list matches `rope_apply2`.
    unsafe {
        gpu.launch(
            f,
            (n as u32, 2, 1),
            (128, 1, 1),
            0,
            &mut kargs!(a, na, b, nb, cos, sin, hd, il),
        )
    }
}
