//! Launcher of `rope.cu`.

use crate::cuda::{Gpu, GpuResult, KernelSource};
use crate::kargs;

pub const SOURCE: KernelSource = KernelSource {
    name: "rope",
    code: include_str!("rope.cu"),
};

/// Rotates `n` rows of `n_heads · head_dim` in place; `positions` and `inv_freq` on the device.
pub fn rope(
    gpu: &Gpu,
    x: u64,
    positions: u64,
    inv_freq: u64,
    n: usize,
    n_heads: usize,
    head_dim: usize,
    interleaved: bool,
) -> GpuResult<()> {
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
    positions: u64,
    inv_freq: u64,
    n: usize,
    head_dim: usize,
    cos: u64,
    sin: u64,
) -> GpuResult<()> {
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
    x: u64,
    cos: u64,
    sin: u64,
    n: usize,
    n_heads: usize,
    head_dim: usize,
    interleaved: bool,
) -> GpuResult<()> {
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
    a: u64,
    n_heads_a: usize,
    b: u64,
    n_heads_b: usize,
    cos: u64,
    sin: u64,
    n: usize,
    head_dim: usize,
    interleaved: bool,
) -> GpuResult<()> {
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
