//! `moe bench moe-layer`: one sparse MoE layer (router, top-k, SwiGLU experts, combine) on a CUDA
//! device at a given shape, timed the way `gpu_moe_anchor.py` times its variants, so the two
//! tables sit side by side: CUDA events around each call, calls queued back to back, median;
//! inputs rotate over 8 random sets and weights over several sets, so repeats do not run from L2.
//!
//! Floors (as the anchor): bytes that must move (each touched expert's weights once, the router,
//! the input and output) ÷ measured copy bandwidth, and FLOPs ÷ measured cuBLAS bf16 GEMM rate,
//! both measured in the same run; the floor is the larger.

use crate::error::{Error, Result};
use moe_kernels::cuda::moe::{stats_bytes, use_blas, MoeLayer, MoeScratch};
use moe_kernels::cuda::util::{fill_uniform, measure_ceilings, time_ms, Ceilings};
use moe_kernels::cuda::{DevBuf, DevMat, Gpu, GpuError};
use moe_kernels::expert_ffn::cuda::ExpertStack;
use moe_kernels::router_topk::RouterTopK;
use moe_kernels::WeightDType;
use serde::Serialize;
use std::sync::Arc;
use std::time::Instant;

/// Named layer shapes `(name, hidden, expert width, experts, top_k)`: `small` and `mixtral` as in
/// `gpu_moe_anchor.py`'s `SHAPES`, the MoE layer of Qwen3-30B-A3B, and the layers of the two CPU
/// bench checkpoints (`make_bench_checkpoint`, `--family mixtral` is `small`).
pub const SHAPES: &[(&str, usize, usize, usize, usize)] = &[
    ("small", 1024, 3584, 8, 2),
    ("mixtral", 4096, 14336, 8, 2),
    ("qwen3_30b_a3b", 2048, 768, 128, 8),
    ("qwen3_bench", 1024, 512, 64, 8),
];

/// The shape `--shape NAME` names, with any of `hidden`, `ffn`, `experts`, `top_k` given
/// overriding it (no name: `mixtral`'s, overridden the same way). Returns the shape's label (the
/// name of the [`SHAPES`] entry with these numbers, else `H{h}_F{f}_E{e}_K{k}`) and its four
/// numbers.
pub fn resolve_shape(
    name: Option<&str>,
    hidden: Option<usize>,
    ffn: Option<usize>,
    experts: Option<usize>,
    top_k: Option<usize>,
) -> Result<(String, [usize; 4])> {
    let preset = name.unwrap_or("mixtral");
    let &(_, h, f, e, k) = SHAPES.iter().find(|s| s.0 == preset).ok_or_else(|| {
        let names: Vec<&str> = SHAPES.iter().map(|s| s.0).collect();
        Error::InvalidRequest(format!(
            "moe-layer: unknown --shape `{preset}` ({})",
            names.join(", ")
        ))
    })?;
    let dims = [
        hidden.unwrap_or(h),
        ffn.unwrap_or(f),
        experts.unwrap_or(e),
        top_k.unwrap_or(k),
    ];
    let label = if dims == [h, f, e, k] {
        preset.to_string()
    } else if let Some(s) = SHAPES.iter().find(|s| [s.1, s.2, s.3, s.4] == dims) {
        s.0.to_string()
    } else {
        format!("H{}_F{}_E{}_K{}", dims[0], dims[1], dims[2], dims[3])
    };
    Ok((label, dims))
}

#[derive(Clone, Debug)]
pub struct LayerBenchOptions {
    pub ordinal: usize,
    /// The shape's label (see [`resolve_shape`]), reported as `shape`.
    pub shape: String,
    pub hidden: usize,
    pub ffn: usize,
    pub experts: usize,
    pub top_k: usize,
    pub tokens: Vec<usize>,
    pub dtype: WeightDType,
    pub reps: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerBenchRow {
    pub tokens: usize,
    /// `fused` (router, two grouped GEMMs, combine: no host round trip) or `cublas` (one GEMM
    /// per expert after one read of the expert offsets).
    pub path: &'static str,
    /// Experts the router touched per call, averaged over the input sets.
    pub uniq_experts: f64,
    /// Median device time per layer call, calls queued back to back.
    pub gpu_ms: f64,
    /// Median host time per call with a synchronize on each side (launch overhead included).
    pub wall_ms: f64,
    /// Median device time per call replayed from a CUDA graph (fused path only: the cuBLAS path
    /// reads the expert offsets back, which a capture cannot hold).
    pub graph_ms: Option<f64>,
    pub floor_bw_ms: f64,
    pub floor_fl_ms: f64,
    pub floor_ms: f64,
    /// gpu_ms ÷ floor_ms.
    pub x_floor: f64,
    /// Touched expert weights ÷ gpu_ms.
    pub weight_gbps: f64,
    pub tflops: f64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LayerBenchReport {
    pub device: String,
    /// A name of [`SHAPES`] (`small` and `mixtral` as `gpu_moe_anchor.py --shapes` names them),
    /// or `H{h}_F{f}_E{e}_K{k}`.
    pub shape: String,
    pub hidden: usize,
    pub ffn: usize,
    pub experts: usize,
    pub top_k: usize,
    pub dtype: String,
    pub copy_gbps: f64,
    pub read_gbps: f64,
    pub gemm_tflops: f64,
    pub weight_sets: usize,
    pub rows: Vec<LayerBenchRow>,
}

fn gpu_err(e: GpuError) -> Error {
    Error::Device(e.0)
}

struct WeightSet {
    layer: MoeLayer,
}

fn random_mat(
    gpu: &Arc<Gpu>,
    rows: usize,
    cols: usize,
    dtype: WeightDType,
    seed: u64,
    scale: f32,
) -> Result<DevMat> {
    let mut buf = gpu.alloc(rows * cols * dtype.size()).map_err(gpu_err)?;
    fill_uniform(gpu, buf.slice_mut(), rows * cols, dtype, seed, scale).map_err(gpu_err)?;
    Ok(DevMat {
        buf,
        dtype,
        rows,
        cols,
    })
}

fn random_f32(gpu: &Arc<Gpu>, n: usize, seed: u64, scale: f32) -> Result<DevBuf> {
    let mut buf = gpu.alloc(4 * n).map_err(gpu_err)?;
    fill_uniform(gpu, buf.slice_mut(), n, WeightDType::F32, seed, scale).map_err(gpu_err)?;
    Ok(buf)
}

/// Runs the benchmark; `log` gets progress lines.
pub fn run_layer_bench(
    o: &LayerBenchOptions,
    log: &mut dyn FnMut(&str),
) -> Result<LayerBenchReport> {
    let gpu = Gpu::new(o.ordinal).map_err(gpu_err)?;
    let (h, f, e, k) = (o.hidden, o.ffn, o.experts, o.top_k);
    if h == 0 || f == 0 || e == 0 || k == 0 || k > e {
        return Err(Error::Device(format!(
            "moe-layer: hidden {h}, ffn {f}, experts {e}, top_k {k}"
        )));
    }
    log(&format!(
        "device: {} ({} SMs, {:.1} GiB)",
        gpu.name,
        gpu.sm_count,
        gpu.total_mem as f64 / (1u64 << 30) as f64
    ));
    let ceil: Ceilings = measure_ceilings(&gpu).map_err(gpu_err)?;
    log(&format!(
        "ceilings: copy {:.0} GB/s, read {:.0} GB/s, bf16 GEMM {:.0} TFLOP/s",
        ceil.copy_gbps, ceil.read_gbps, ceil.gemm_tflops
    ));
    let ds = o.dtype.size();
    let expert_bytes = 3 * h * f * ds;
    // Enough weight sets that a rotation does not fit in L2 (≈ 50 MB on an H100), at least 2.
    let set_bytes = e * expert_bytes;
    let n_sets = (256usize << 20).div_ceil(set_bytes).clamp(2, 8);
    let (free, _) = gpu.mem_info().map_err(gpu_err)?;
    if n_sets * set_bytes > free * 9 / 10 {
        return Err(Error::Device(format!(
            "moe-layer: {n_sets} weight sets of {set_bytes} bytes do not fit in {free} free bytes"
        )));
    }
    let mut sets = Vec::new();
    for s in 0..n_sets as u64 {
        let seed = 1000 * (s + 1);
        let gate = random_mat(&gpu, e, h, o.dtype, seed, 3f32.sqrt() / (h as f32).sqrt())?;
        let sh = 3f32.sqrt() / (h as f32).sqrt();
        let w1 = random_mat(&gpu, e * f, h, o.dtype, seed + 1, sh)?;
        let w3 = random_mat(&gpu, e * f, h, o.dtype, seed + 2, sh)?;
        let w2 = random_mat(
            &gpu,
            e * h,
            f,
            o.dtype,
            seed + 3,
            3f32.sqrt() / (f as f32).sqrt(),
        )?;
        let experts = ExpertStack::new(w1, w3, w2, e).map_err(gpu_err)?;
        sets.push(WeightSet {
            layer: MoeLayer {
                gate,
                experts,
                router: RouterTopK::softmax_renormalized(e, k),
            },
        });
    }
    let mut stats = gpu.alloc(stats_bytes(1, e)).map_err(gpu_err)?;
    stats.zero().map_err(gpu_err)?;
    let mut scratch = MoeScratch::default();
    let mut rows = Vec::new();
    for &t in &o.tokens {
        let n_inputs = 8;
        let mut xs = Vec::new();
        let mut residuals = Vec::new();
        for i in 0..n_inputs as u64 {
            xs.push(random_f32(
                &gpu,
                t * h,
                77 + 31 * i + 7919 * t as u64,
                3f32.sqrt(),
            )?);
            residuals.push(random_f32(&gpu, t * h, 991 + 31 * i, 1.0)?);
        }
        let mut call = |i: usize, scratch: &mut MoeScratch| -> std::result::Result<(), GpuError> {
            let set = &sets[i % n_sets];
            set.layer.forward(
                &gpu,
                xs[i % n_inputs].slice(),
                residuals[i % n_inputs].slice_mut(),
                t,
                stats.slice_mut(),
                scratch,
                false,
            )
        };
        // Touched experts per input set (untimed).
        let mut uniq = 0.0;
        for i in 0..n_inputs {
            call(i, &mut scratch).map_err(gpu_err)?;
            let (ids, _) = scratch.routing(t, k).map_err(gpu_err)?;
            let mut seen = vec![false; e];
            for id in ids {
                seen[id as usize] = true;
            }
            uniq += seen.iter().filter(|&&s| s).count() as f64;
        }
        let uniq = uniq / n_inputs as f64;
        let reps = if t <= 512 {
            o.reps
        } else {
            (o.reps / 2).max(10)
        };
        let gpu_ms = time_ms(&gpu, 5, reps, |i| call(i, &mut scratch)).map_err(gpu_err)?;
        let mut walls = Vec::new();
        for i in 0..(reps / 2).max(10) {
            gpu.synchronize().map_err(gpu_err)?;
            let t0 = Instant::now();
            call(i, &mut scratch).map_err(gpu_err)?;
            gpu.synchronize().map_err(gpu_err)?;
            walls.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        walls.sort_by(|a, b| a.total_cmp(b));
        let wall_ms = walls[walls.len() / 2];
        // The same calls replayed from graphs, one per input set (each captures its pointers).
        let graph_ms = if use_blas(&sets[0].layer.experts, t * k) {
            None
        } else {
            let graphs = (0..n_inputs)
                .map(|i| gpu.capture(|| call(i, &mut scratch)))
                .collect::<std::result::Result<Vec<_>, _>>()
                .map_err(gpu_err)?;
            Some(time_ms(&gpu, 5, reps, |i| graphs[i % n_inputs].launch()).map_err(gpu_err)?)
        };
        let w_bytes = uniq * expert_bytes as f64;
        let io_bytes = (e * h * ds + 2 * t * h * ds) as f64;
        let flops = (2 * t * h * e + t * k * 6 * h * f) as f64;
        let floor_bw_ms = (w_bytes + io_bytes) / (ceil.copy_gbps * 1e9) * 1e3;
        let floor_fl_ms = flops / (ceil.gemm_tflops * 1e12) * 1e3;
        let floor_ms = floor_bw_ms.max(floor_fl_ms);
        let row = LayerBenchRow {
            tokens: t,
            path: if use_blas(&sets[0].layer.experts, t * k) {
                "cublas"
            } else {
                "fused"
            },
            uniq_experts: uniq,
            gpu_ms,
            wall_ms,
            graph_ms,
            floor_bw_ms,
            floor_fl_ms,
            floor_ms,
            x_floor: gpu_ms / floor_ms,
            weight_gbps: w_bytes / (gpu_ms * 1e-3) / 1e9,
            tflops: flops / (gpu_ms * 1e-3) / 1e12,
        };
        let graph = graph_ms.map_or(String::new(), |g| format!(", graph {g:.4}"));
        log(&format!(
            "T={t}: {gpu_ms:.4} ms (wall {wall_ms:.4}{graph}), floor {floor_ms:.4} ms, {:.2}x floor, {:.0} GB/s, {:.1} TFLOP/s",
            row.x_floor, row.weight_gbps, row.tflops
        ));
        rows.push(row);
    }
    Ok(LayerBenchReport {
        device: gpu.name.clone(),
        shape: o.shape.clone(),
        hidden: h,
        ffn: f,
        experts: e,
        top_k: k,
        dtype: format!("{:?}", o.dtype).to_lowercase(),
        copy_gbps: ceil.copy_gbps,
        read_gbps: ceil.read_gbps,
        gemm_tflops: ceil.gemm_tflops,
        weight_sets: n_sets,
        rows,
    })
}

impl LayerBenchReport {
    pub fn table(&self) -> String {
        let mut s = format!(
            "moe-layer {} {} (H{} F{} E{} top-{}) {} | copy {:.0} GB/s, GEMM {:.0} TFLOP/s\n\n| tokens | path | experts touched | gpu ms | wall ms | graph ms | floor ms | × floor | weight GB/s | TFLOP/s |\n|---|---|---|---|---|---|---|---|---|---|\n",
            self.device, self.shape, self.hidden, self.ffn, self.experts, self.top_k, self.dtype, self.copy_gbps, self.gemm_tflops
        );
        for r in &self.rows {
            s += &format!(
                "| {} | {} | {:.2} | {:.4} | {:.4} | {} | {:.4} | {:.2} | {:.0} | {:.1} |\n",
                r.tokens,
                r.path,
                r.uniq_experts,
                r.gpu_ms,
                r.wall_ms,
                r.graph_ms.map_or("—".to_string(), |g| format!("{g:.4}")),
                r.floor_ms,
                r.x_floor,
                r.weight_gbps,
                r.tflops
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_resolve_by_name_and_flags_override_them() {
        let r = |n: Option<&str>, h, f, e, k| resolve_shape(n, h, f, e, k).unwrap();
        assert_eq!(
            r(None, None, None, None, None),
            ("mixtral".into(), [4096, 14336, 8, 2])
        );
        assert_eq!(
            r(Some("qwen3_30b_a3b"), None, None, None, None),
            ("qwen3_30b_a3b".into(), [2048, 768, 128, 8])
        );
        // Numbers of a named shape take its name; others make a label of the numbers.
        assert_eq!(
            r(None, Some(4096), None, Some(8), None),
            ("mixtral".into(), [4096, 14336, 8, 2])
        );
        assert_eq!(
            r(None, Some(2048), Some(768), Some(128), Some(8)),
            ("qwen3_30b_a3b".into(), [2048, 768, 128, 8])
        );
        assert_eq!(
            r(Some("qwen3_30b_a3b"), None, Some(512), None, None),
            ("H2048_F512_E128_K8".into(), [2048, 512, 128, 8])
        );
        assert_eq!(
            r(Some("small"), None, None, None, Some(1)),
            ("H1024_F3584_E8_K1".into(), [1024, 3584, 8, 1])
        );
        assert!(resolve_shape(Some("nope"), None, None, None, None).is_err());
    }
}
