//! Launcher of `sample.cu`.

pub use super::{Edit, Picked, SampleRow, MAX_TOP};
use crate::cuda::{DevBuf, DevSlice, Gpu, GpuError, GpuResult, HostCopy, KernelSource};
use crate::kargs;
use std::sync::Arc;

pub const SOURCE: KernelSource = KernelSource {
    name: "sample",
    code: include_str!("sample.cu"),
};

#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
struct SampleOutRaw {
    token: u32,
    max: f32,
    z: f64,
    chosen: f32,
    n_top: u32,
}

/// Scratch that grows to the largest batch seen.
#[derive(Default)]
pub struct SampleScratch {
    adj: Option<DevBuf>,
    items: Option<DevBuf>,
}

fn grow(buf: &mut Option<DevBuf>, gpu: &Arc<Gpu>, bytes: usize) -> GpuResult<u64> {
    if buf.as_ref().is_none_or(|b| b.bytes() < bytes) {
        *buf = Some(gpu.alloc(bytes)?);
    }
    Ok(buf.as_ref().map_or(0, |b| b.ptr()))
}

/// Picks a token for each of `rows.len()` rows of f32 `logits` (`[rows, vocab]` on the device).
pub fn sample_rows(
    gpu: &Arc<Gpu>,
    logits: DevSlice<f32>,
    vocab: usize,
    rows: &[SampleRow],
    edits: &[Edit],
    scratch: &mut SampleScratch,
) -> GpuResult<Vec<Picked>> {
    let n = rows.len();
    if n == 0 {
        return Ok(vec![]);
    }
    if vocab == 0 || vocab > u32::MAX as usize / 2 {
        return Err(GpuError(format!("sample: vocabulary of {vocab}")));
    }
    if let Some(r) = rows.iter().find(|r| {
        r.n_top as usize > MAX_TOP || r.edit_begin > r.edit_end || r.edit_end as usize > edits.len()
    }) {
        return Err(GpuError(format!("sample: row {r:?} out of range")));
    }
    logits.check("sample logits", n * vocab)?;
    let logits = logits.ptr();
    let adj = grow(&mut scratch.adj, gpu, 4 * n * vocab)?;
    let items = grow(&mut scratch.items, gpu, 16 * n * vocab)?;
    let dev_rows = gpu.upload(rows)?;
    let dev_edits = gpu.upload(if edits.is_empty() {
        &[Edit {
            id: u32::MAX,
            bias: 0.0,
            rep: 1.0,
            sub: 0.0,
        }]
    } else {
        edits
    })?;
    let out = gpu.alloc(std::mem::size_of::<SampleOutRaw>() * n)?;
    let top_ids = gpu.alloc(4 * n * MAX_TOP)?;
    let top_vals = gpu.alloc(4 * n * MAX_TOP)?;
    let f = gpu.function(&SOURCE, "sample_rows_f32")?;
    let (v, rp, ep, op, ip, tp, mt) = (
        vocab as u32,
        dev_rows.ptr(),
        dev_edits.ptr(),
        out.ptr(),
        top_ids.ptr(),
        top_vals.ptr(),
        MAX_TOP as u32,
    );
    // SAFETY: argument list matches `sample_rows_f32`; every buffer is sized for `n` rows.
    unsafe {
        gpu.launch(
            f,
            (n as u32, 1, 1),
            (512, 1, 1),
            0,
            &mut kargs!(logits, v, rp, ep, adj, items, op, ip, tp, mt),
        )?;
    }
    let raw = out.read::<SampleOutRaw>(0, n)?;
    let want_top = rows.iter().any(|r| r.n_top > 0);
    let (ids, vals) = if want_top {
        (
            top_ids.read::<u32>(0, n * MAX_TOP)?,
            top_vals.read::<f32>(0, n * MAX_TOP)?,
        )
    } else {
        (vec![], vec![])
    };
    Ok(raw
        .iter()
        .enumerate()
        .map(|(r, o)| Picked {
            token: o.token,
            max: o.max,
            z: o.z,
            chosen: o.chosen,
            top: (0..o.n_top as usize)
                .map(|j| (ids[r * MAX_TOP + j], vals[r * MAX_TOP + j]))
                .collect(),
        })
        .collect())
}
