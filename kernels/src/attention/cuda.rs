//! Launchers of `attention.cu`: KV append and attention over per-sequence device caches.

use super::Attention;
use crate::cuda::{Gpu, GpuError, GpuResult, KernelSource};
use crate::kargs;

/// Warps per attention block: `ATT_WARPS` in attention.cu.
const ATT_WARPS: u32 = 8;

pub const SOURCE: KernelSource = KernelSource {
    name: "attention",
    code: include_str!("attention.cu"),
};

/// Largest head size the kernel holds in registers.
pub const MAX_HEAD_DIM: usize = 256;

/// Per new row: its sequence's cache `[n_layers][2][cap][kv_width]` f32 and its position.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct RowMeta {
    pub kv_base: u64,
    pub cap: u32,
    pub pos: u32,
}

/// Writes `n` rows of `k`/`v` (`[n, kv_width]`) into their caches at layer `layer`.
///
/// # Safety
/// `k` and `v` must address `n · kv_width` f32 each and `meta` `n` [`RowMeta`] on this device,
/// and every row's `kv_base` a live cache `[n_layers > layer][2][cap > pos][kv_width]` f32,
/// all allocated until the kernel has run. The cache addresses live inside `meta` on the
/// device, so no typed view can vouch for them.
pub unsafe fn kv_append(
    gpu: &Gpu,
    k: u64,
    v: u64,
    meta: u64,
    n: usize,
    layer: usize,
    kv_width: usize,
) -> GpuResult<()> {
    let f = gpu.function(&SOURCE, "kv_append_f32")?;
    let (l, w) = (layer as u32, kv_width as u32);
    // SAFETY: argument list matches `kv_append_f32`.
    unsafe {
        gpu.launch(
            f,
            (n as u32, 1, 1),
            (128, 1, 1),
            0,
            &mut kargs!(k, v, meta, l, w),
        )
    }
}

/// `out[r] = attention(q[r], cache of r up to its position)` for `n` rows.
///
/// # Safety
/// `q` must address `n · n_heads · head_dim` f32, `out` as many, `meta` `n` [`RowMeta`] whose
/// caches hold every position up to the row's (see [`kv_append`]), all allocated until the
/// kernel has run.
pub unsafe fn attention(
    gpu: &Gpu,
    p: &Attention,
    q: u64,
    meta: u64,
    n: usize,
    layer: usize,
    out: u64,
) -> GpuResult<()> {
    if p.head_dim > MAX_HEAD_DIM || p.n_kv_heads == 0 || p.n_heads % p.n_kv_heads != 0 {
        return Err(GpuError(format!(
            "attention: head_dim {} (at most {MAX_HEAD_DIM}), {} heads over {} kv heads",
            p.head_dim, p.n_heads, p.n_kv_heads
        )));
    }
    let f = gpu.function(&SOURCE, "attention_f32")?;
    let (l, nh, nkv, hd) = (
        layer as u32,
        p.n_heads as u32,
        p.n_kv_heads as u32,
        p.head_dim as u32,
    );
    let window = p.sliding_window.unwrap_or(0) as u32;
    let scale = p.scale;
    // SAFETY: argument list matches `attention_f32`.
    unsafe {
        gpu.launch(
            f,
            (p.n_heads as u32, n as u32, 1),
            (32 * ATT_WARPS, 1, 1),
            0,
            &mut kargs!(q, meta, out, l, nh, nkv, hd, scale, window),
        )
    }
}
