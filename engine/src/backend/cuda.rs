//! `CudaBackend`: the model on one CUDA device. Weights are uploaded once from the mapped
//! checkpoint (experts stacked per layer for the grouped kernels), activations and each
//! sequence's KV cache live on the device, and nothing is read back inside a forward pass except
//! what a trace asks for; the router's counters stay on the device until the statistics are read.

use super::{AttnItem, Backend, ExpertWeights, FfnTaps, FfnTrace, MoeTaps, MoeTrace, Routing};
use crate::error::{Error, Result};
use crate::weights::WeightTensor;
use moe_kernels::attention::cuda::{self as att, RowMeta};
use moe_kernels::attention::Attention;
use moe_kernels::cuda::moe::{moe_forward, MoeScratch};
use moe_kernels::cuda::{DevBuf, DevMat, DevSlice, DevSliceMut, Gpu, HostCopy};
use moe_kernels::expert_ffn::cuda::ExpertStack;
use moe_kernels::rope::Rope;
use moe_kernels::router_topk::cuda::{add_stats, stats_words};
use moe_kernels::router_topk::{ExpertLoad, RouterTopK, Scoring};
use moe_kernels::sample::{Edit, Picked, SampleRow};
use moe_kernels::{embedding, linear, rms_norm, rope, sample};
use std::sync::{Arc, Mutex};

pub struct CudaBackend {
    gpu: Arc<Gpu>,
    state: Mutex<State>,
}

/// What every pass shares. Each user holds the lock for the whole of its use, readbacks
/// included: the device runs everything in the one stream's order, so a buffer handed to a
/// launch under the lock is not overwritten by another caller's launch before that one has run.
#[derive(Default)]
struct State {
    scratch: MoeScratch,
    /// Per layer: the router's counters, `stats_words(E)` u64.
    load: Vec<Option<DevBuf>>,
    /// RoPE frequencies (one model per backend: uploaded once); a pass keeps its own handle.
    inv_freq: Option<(Vec<f32>, Arc<DevBuf>)>,
    sample: sample::cuda::SampleScratch,
    /// The counters of dense MLPs and shared experts (one-expert MoE blocks), which nobody
    /// reads.
    dense_stats: Option<DevBuf>,
}

/// One forward pass's own device state ([`Backend::Pass`]): nothing in it is shared with
/// another pass, so a pointer taken from it stays this pass's until the pass is dropped (and
/// device memory is freed in stream order, after the launches queued before the drop).
#[derive(Default)]
pub struct CudaPass {
    /// The cos/sin table of this pass's positions (q, k and every layer share it).
    rope_table: Option<RopeTable>,
    /// The attention rows' metadata, built at layer 0 and read by every later layer.
    meta: Option<PassMeta>,
}

struct RopeTable {
    positions: Vec<u32>,
    head_dim: usize,
    /// The frequencies the table was built from (held so they outlive its launch).
    _inv_freq: Arc<DevBuf>,
    cos: DevBuf,
    sin: DevBuf,
}

struct PassMeta {
    rows: usize,
    n_layers: usize,
    dev: DevBuf,
}

impl CudaBackend {
    /// Opens CUDA device `ordinal`, or says why it cannot (no driver, no device, no NVRTC).
    pub fn new(ordinal: usize) -> Result<Self> {
        Ok(CudaBackend {
            gpu: Gpu::new(ordinal)?,
            state: Mutex::new(State::default()),
        })
    }

    pub fn gpu(&self) -> &Arc<Gpu> {
        &self.gpu
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The RoPE frequencies on the device, uploaded at first use.
    fn inv_freq(&self, r: &Rope) -> Result<Arc<DevBuf>> {
        let mut st = self.state();
        if let Some((host, dev)) = &st.inv_freq {
            if host.as_slice() == r.inv_freq.as_slice() {
                return Ok(dev.clone());
            }
        }
        let dev = Arc::new(self.gpu.upload(&r.inv_freq)?);
        st.inv_freq = Some((r.inv_freq.clone(), dev.clone()));
        Ok(dev)
    }

    /// The cos/sin table of these positions (device pointers into `pass`), built once per pass:
    /// its q, k and every layer share it.
    fn rope_table<'p>(
        &self,
        pass: &'p mut CudaPass,
        positions: &[u32],
        r: &Rope,
    ) -> Result<(DevSlice<'p, f32>, DevSlice<'p, f32>)> {
        let fresh = !matches!(&pass.rope_table, Some(t) if t.positions.as_slice() == positions && t.head_dim == r.head_dim);
        if fresh {
            let pos = self.gpu.upload(positions)?;
            let freq = self.inv_freq(r)?;
            let half = r.head_dim / 2;
            let mut cos = self.gpu.alloc(4 * positions.len() * half)?;
            let mut sin = self.gpu.alloc(4 * positions.len() * half)?;
            rope::cuda::rope_table(
                &self.gpu,
                pos.slice(),
                freq.slice(),
                positions.len(),
                r.head_dim,
                cos.slice_mut(),
                sin.slice_mut(),
            )?;
            pass.rope_table = Some(RopeTable {
                positions: positions.to_vec(),
                head_dim: r.head_dim,
                _inv_freq: freq,
                cos,
                sin,
            });
        }
        let t = pass.rope_table.as_ref().expect("built above");
        Ok((t.cos.slice(), t.sin.slice()))
    }
}

/// f32 `[rows, cols]` on the device.
pub struct CudaAct {
    pub buf: DevBuf,
    pub rows: usize,
    pub cols: usize,
}

impl CudaAct {
    fn dev(&self) -> DevSlice<'_, f32> {
        self.buf.slice()
    }

    fn dev_mut(&mut self) -> DevSliceMut<'_, f32> {
        self.buf.slice_mut()
    }
}

/// One sequence's keys and values for every layer: `[n_layers][2][cap][kv_width]` f32.
pub struct CudaKv {
    buf: Option<DevBuf>,
    n_layers: usize,
    kv_width: usize,
    cap: usize,
    len: usize,
}

impl CudaKv {
    pub fn bytes(&self) -> usize {
        self.buf.as_ref().map_or(0, |b| b.bytes())
    }

    /// Grows the cache to hold `need` tokens, keeping what it holds.
    fn reserve(&mut self, gpu: &Arc<Gpu>, need: usize) -> Result<()> {
        if need <= self.cap {
            return Ok(());
        }
        let cap = need.next_power_of_two().max(16);
        let row = 4 * self.kv_width;
        let buf = gpu.alloc(self.n_layers * 2 * cap * row)?;
        if let Some(old) = &self.buf {
            for part in 0..2 * self.n_layers {
                buf.copy_from(part * cap * row, old, part * self.cap * row, self.len * row)?;
            }
        }
        self.buf = Some(buf);
        self.cap = cap;
        Ok(())
    }
}

fn shape_err(what: &str, a: usize, b: usize) -> Error {
    Error::Device(format!("{what}: {a} vs {b}"))
}

impl Backend for CudaBackend {
    type Act = CudaAct;
    type Weight = DevMat;
    type Kv = CudaKv;
    type Experts = MoeLayerExperts;
    type Pass = CudaPass;

    fn name(&self) -> &'static str {
        "cuda"
    }

    fn begin_pass(&self) -> CudaPass {
        CudaPass::default()
    }

    fn weight(&self, t: WeightTensor) -> Result<DevMat> {
        let m = t.mat();
        let (rows, cols) = (m.rows, m.cols);
        Ok(DevMat::upload(&self.gpu, &[t.data()], rows, cols)?)
    }

    fn weight_bytes(&self, w: &DevMat) -> usize {
        w.bytes()
    }

    fn experts(&self, experts: Vec<ExpertWeights<WeightTensor>>) -> Result<MoeLayerExperts> {
        let e = experts.len();
        let first = experts
            .first()
            .ok_or_else(|| Error::Device("a layer without experts".into()))?;
        let (ffn, hidden) = match first.w1.shape.as_slice() {
            [f, h] => (*f, *h),
            s => return Err(Error::Device(format!("expert w1 of shape {s:?}"))),
        };
        let stack = |pick: &dyn Fn(&ExpertWeights<WeightTensor>) -> &WeightTensor,
                     rows: usize,
                     cols: usize|
         -> Result<DevMat> {
            let parts: Vec<_> = experts.iter().map(|x| pick(x).data()).collect();
            Ok(DevMat::upload(&self.gpu, &parts, e * rows, cols)?)
        };
        let w1 = stack(&|x| &x.w1, ffn, hidden)?;
        let w3 = stack(&|x| &x.w3, ffn, hidden)?;
        let w2 = stack(&|x| &x.w2, hidden, ffn)?;
        // A dense MLP (one expert) runs as a MoE block: its zero router row is
        // made here, once, not per call (its counters live in the backend state).
        let dense = if e == 1 {
            Some(DenseRouting {
                zero_gate: DevMat::upload(
                    &self.gpu,
                    &[moe_kernels::WeightData::F32(&vec![0f32; hidden])],
                    1,
                    hidden,
                )?,
            })
        } else {
            None
        };
        Ok(MoeLayerExperts {
            stack: ExpertStack::new(w1, w3, w2, e)?,
            dense,
        })
    }

    fn experts_bytes(&self, e: &MoeLayerExperts) -> usize {
        e.stack.bytes()
    }

    fn zeros(&self, rows: usize, cols: usize) -> Result<CudaAct> {
        let buf = self.gpu.alloc(4 * rows * cols)?;
        buf.zero()?;
        Ok(CudaAct { buf, rows, cols })
    }

    fn to_host(&self, a: &CudaAct) -> Result<Vec<f32>> {
        Ok(a.buf.read::<f32>(0, a.rows * a.cols)?)
    }

    fn rows(&self, a: &CudaAct) -> usize {
        a.rows
    }

    fn embed(&self, table: &DevMat, ids: &[u32], out: &mut CudaAct) -> Result<()> {
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= table.rows) {
            return Err(Error::TokenOutOfRange {
                id,
                vocab: table.rows,
            });
        }
        if out.rows != ids.len() || out.cols != table.cols {
            return Err(shape_err("embed rows", out.rows, ids.len()));
        }
        embedding::cuda::embed(&self.gpu, table, ids, out.dev_mut())?;
        Ok(())
    }

    fn rms_norm(&self, x: &CudaAct, w: &DevMat, eps: f32, out: &mut CudaAct) -> Result<()> {
        // A weight narrower than the row normalises each group of `w.cols` values (heads).
        let width = w.rows * w.cols;
        if width == 0 || x.cols % width != 0 || out.rows != x.rows || out.cols != x.cols {
            return Err(shape_err("rms_norm width", x.cols, width));
        }
        Ok(rms_norm::cuda::rms_norm(
            &self.gpu,
            x.dev(),
            w,
            out.dev_mut(),
            x.rows * (x.cols / width),
            eps,
        )?)
    }

    fn add_rms_norm(
        &self,
        x: &mut CudaAct,
        y: &CudaAct,
        w: &DevMat,
        eps: f32,
        out: &mut CudaAct,
    ) -> Result<()> {
        if x.cols != w.cols || (y.rows, y.cols) != (x.rows, x.cols) || out.rows != x.rows {
            return Err(shape_err("add_rms_norm width", x.cols, w.cols));
        }
        let rows = x.rows;
        Ok(rms_norm::cuda::add_rms_norm(
            &self.gpu,
            x.dev_mut(),
            y.dev(),
            w,
            out.dev_mut(),
            rows,
            eps,
        )?)
    }

    fn linear(&self, x: &CudaAct, w: &DevMat, out: &mut CudaAct) -> Result<()> {
        if x.cols != w.cols || out.cols != w.rows || out.rows != x.rows {
            return Err(shape_err("linear", x.cols, w.cols));
        }
        Ok(linear::cuda::linear(
            &self.gpu,
            x.dev(),
            w,
            out.dev_mut(),
            x.rows,
        )?)
    }

    fn linear_many(&self, x: &CudaAct, ws: &[&DevMat], outs: &mut [&mut CudaAct]) -> Result<()> {
        for (w, out) in ws.iter().zip(outs.iter()) {
            if x.cols != w.cols || out.cols != w.rows || out.rows != x.rows {
                return Err(shape_err("linear", x.cols, w.cols));
            }
        }
        if ws.len() == outs.len() && linear::cuda::gemv_fits(ws, x.rows) {
            let mut views: Vec<DevSliceMut<f32>> = outs.iter_mut().map(|o| o.dev_mut()).collect();
            return Ok(linear::cuda::linear_gemv(
                &self.gpu,
                x.dev(),
                ws,
                &mut views,
                x.rows,
            )?);
        }
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            self.linear(x, w, out)?;
        }
        Ok(())
    }

    fn rope(
        &self,
        pass: &mut CudaPass,
        x: &mut CudaAct,
        positions: &[u32],
        r: &Rope,
    ) -> Result<()> {
        if positions.len() != x.rows || r.head_dim == 0 || x.cols % r.head_dim != 0 {
            return Err(shape_err("rope rows", positions.len(), x.rows));
        }
        let (cos, sin) = self.rope_table(pass, positions, r)?;
        let cols = x.cols;
        Ok(rope::cuda::rope_apply(
            &self.gpu,
            x.dev_mut(),
            cos,
            sin,
            positions.len(),
            cols / r.head_dim,
            r.head_dim,
            r.interleaved,
        )?)
    }

    fn rope_qk(
        &self,
        pass: &mut CudaPass,
        q: &mut CudaAct,
        k: &mut CudaAct,
        positions: &[u32],
        r: &Rope,
    ) -> Result<()> {
        for x in [&*q, &*k] {
            if positions.len() != x.rows || r.head_dim == 0 || x.cols % r.head_dim != 0 {
                return Err(shape_err("rope rows", positions.len(), x.rows));
            }
        }
        let (cos, sin) = self.rope_table(pass, positions, r)?;
        let (qh, kh) = (q.cols / r.head_dim, k.cols / r.head_dim);
        Ok(rope::cuda::rope_apply2(
            &self.gpu,
            q.dev_mut(),
            qh,
            k.dev_mut(),
            kh,
            cos,
            sin,
            positions.len(),
            r.head_dim,
            r.interleaved,
        )?)
    }

    fn attention(
        &self,
        pass: &mut CudaPass,
        layer: usize,
        p: &Attention,
        q: &CudaAct,
        k: &CudaAct,
        v: &CudaAct,
        seqs: &mut [AttnItem<'_, CudaKv>],
        out: &mut CudaAct,
    ) -> Result<()> {
        let kvw = k.cols;
        let n: usize = seqs.iter().map(|s| s.n_new).sum();
        if n != q.rows || v.cols != kvw || out.rows != q.rows {
            return Err(shape_err("attention rows", n, q.rows));
        }
        let n_layers = seqs.first().map_or(0, |s| s.kv.n_layers);
        if layer == 0 {
            // Room for the new tokens in every layer, then the rows' metadata for this pass.
            let mut meta = vec![RowMeta::default(); n];
            for s in seqs.iter_mut() {
                if s.kv.kv_width != kvw || s.kv.n_layers != n_layers {
                    return Err(shape_err("kv width", s.kv.kv_width, kvw));
                }
                s.kv.reserve(&self.gpu, s.kv.len + s.n_new)?;
                let base = s.kv.buf.as_ref().map_or(0, |b| b.ptr());
                for i in 0..s.n_new {
                    meta[s.row + i] = RowMeta {
                        kv_base: base,
                        cap: s.kv.cap as u32,
                        pos: (s.kv.len + i) as u32,
                    };
                }
            }
            pass.meta = Some(PassMeta {
                rows: n,
                n_layers,
                dev: self.gpu.upload(&meta)?,
            });
        }
        let meta = match &pass.meta {
            Some(m) if m.rows == n && m.n_layers == n_layers && layer < n_layers => m.dev.ptr(),
            _ => {
                return Err(Error::Device(
                    "attention: a layer after the first ran without the first in this pass".into(),
                ))
            }
        };
        if q.cols != p.n_heads * p.head_dim || kvw != p.n_kv_heads * p.head_dim {
            return Err(shape_err("attention width", q.cols, p.n_heads * p.head_dim));
        }
        // SAFETY: q, k, v and out hold n rows of their widths (checked above), `meta` n rows
        // built at layer 0 of this pass, each pointing at a cache reserved then for every layer
        // and the row's position; the caches are borrowed by `seqs` for the whole call.
        unsafe {
            att::kv_append(&self.gpu, k.buf.ptr(), v.buf.ptr(), meta, n, layer, kvw)?;
            att::attention(&self.gpu, p, q.buf.ptr(), meta, n, layer, out.buf.ptr())?;
        }
        if layer + 1 == n_layers {
            for s in seqs.iter_mut() {
                s.kv.len += s.n_new;
            }
            // The caches may grow or move after this pass: its metadata must not outlive it.
            pass.meta = None;
        }
        Ok(())
    }

    fn moe(
        &self,
        layer: usize,
        x: &CudaAct,
        gate: &DevMat,
        experts: &MoeLayerExperts,
        p: &RouterTopK,
        _load: &mut ExpertLoad,
        residual: &mut CudaAct,
        taps: MoeTaps,
    ) -> Result<MoeTrace> {
        let ex = &experts.stack;
        if gate.rows != p.n_experts || ex.n_experts != p.n_experts || x.cols != ex.hidden {
            return Err(shape_err("moe experts", gate.rows, p.n_experts));
        }
        let mut st = self.state();
        let st = &mut *st;
        if st.load.len() <= layer {
            st.load.resize_with(layer + 1, || None);
        }
        if st.load[layer].is_none() {
            let b = self.gpu.alloc(8 * stats_words(p.n_experts))?;
            b.zero()?;
            st.load[layer] = Some(b);
        }
        let State { load, scratch, .. } = st;
        let stats = load[layer].as_mut().expect("allocated above").slice_mut();
        moe_forward(
            &self.gpu,
            gate,
            ex,
            p,
            x.dev(),
            residual.dev_mut(),
            x.rows,
            stats,
            scratch,
            taps.router_logits,
        )?;
        let mut trace = MoeTrace::default();
        if taps.router_logits {
            trace.router_logits = Some(scratch.router_logits(x.rows, p.n_experts)?);
        }
        if taps.routing {
            let (expert_ids, weights) = scratch.routing(x.rows, p.top_k)?;
            trace.routing = Some(Routing {
                top_k: p.top_k,
                expert_ids,
                weights,
            });
        }
        Ok(trace)
    }

    /// The MoE block with one expert and top-1: a zero router row gives every token weight
    /// `softmax([0]) = 1`, and the gate as a sigmoid-scored router row gives `sigmoid(x · gateᵀ)`
    /// (not renormalised); its counters go to a scratch buffer.
    fn ffn(
        &self,
        x: &CudaAct,
        mlp: &MoeLayerExperts,
        gate: Option<&DevMat>,
        residual: &mut CudaAct,
        taps: FfnTaps,
    ) -> Result<FfnTrace> {
        let ex = &mlp.stack;
        let Some(DenseRouting { zero_gate }) = &mlp.dense else {
            return Err(shape_err("dense MLP experts", ex.n_experts, 1));
        };
        if x.cols != ex.hidden {
            return Err(shape_err("dense MLP width", x.cols, ex.hidden));
        }
        // Runs the block; with `logits`, reads the router row back under the same lock (another
        // caller's MoE call may reuse the scratch as soon as it is released).
        let run = |router: &DevMat,
                   scoring: Scoring,
                   out: &mut CudaAct,
                   logits: bool|
         -> Result<Option<Vec<f32>>> {
            let p = RouterTopK {
                n_experts: 1,
                top_k: 1,
                scoring,
                renormalize: false,
            };
            let mut st = self.state();
            let State {
                scratch,
                dense_stats,
                ..
            } = &mut *st;
            if dense_stats.is_none() {
                *dense_stats = Some(self.gpu.alloc(8 * stats_words(1))?);
            }
            let stats = dense_stats.as_mut().expect("allocated above");
            stats.zero()?;
            moe_forward(
                &self.gpu,
                router,
                ex,
                &p,
                x.dev(),
                out.dev_mut(),
                x.rows,
                stats.slice_mut(),
                scratch,
                taps.gate,
            )?;
            Ok(if logits {
                Some(scratch.router_logits(x.rows, 1)?)
            } else {
                None
            })
        };
        let mut trace = FfnTrace::default();
        if taps.output {
            let mut out = self.zeros(x.rows, x.cols)?;
            run(zero_gate, Scoring::Softmax, &mut out, false)?;
            trace.output = Some(self.to_host(&out)?);
        }
        match gate {
            None => {
                run(zero_gate, Scoring::Softmax, residual, false)?;
            }
            Some(g) => {
                if let Some(logits) = run(g, Scoring::Sigmoid, residual, taps.gate)? {
                    trace.gate = Some(logits.iter().map(|l| 1.0 / (1.0 + (-l).exp())).collect());
                }
            }
        }
        Ok(trace)
    }

    fn measured_ceilings(&self) -> Option<(f64, f64)> {
        let c = moe_kernels::cuda::util::measure_ceilings(&self.gpu).ok()?;
        Some((c.read_gbps, c.gemm_tflops * 1e3))
    }

    fn sync_load(&self, loads: &mut [ExpertLoad]) -> Result<()> {
        let st = self.state();
        for (l, buf) in st.load.iter().enumerate() {
            let (Some(buf), Some(load)) = (buf, loads.get_mut(l)) else {
                continue;
            };
            let words = buf.read::<u64>(0, stats_words(load.n_experts))?;
            add_stats(&words, load);
            buf.zero()?;
        }
        Ok(())
    }

    fn samples_on_device(&self) -> bool {
        true
    }

    fn sample_rows(&self, x: &CudaAct, rows: &[SampleRow], edits: &[Edit]) -> Result<Vec<Picked>> {
        if rows.len() != x.rows {
            return Err(shape_err("sample rows", rows.len(), x.rows));
        }
        let mut st = self.state();
        Ok(sample::cuda::sample_rows(
            &self.gpu,
            x.dev(),
            x.cols,
            rows,
            edits,
            &mut st.sample,
        )?)
    }

    fn argmax_rows(&self, x: &CudaAct) -> Result<Vec<u32>> {
        let mut out = self.gpu.alloc(4 * x.rows)?;
        rms_norm::cuda::argmax_rows(&self.gpu, x.dev(), x.rows, x.cols, out.slice_mut())?;
        Ok(out.read::<u32>(0, x.rows)?)
    }

    fn act_cols(&self, a: &CudaAct) -> usize {
        a.cols
    }

    fn add(&self, x: &mut CudaAct, y: &CudaAct) -> Result<()> {
        if (x.rows, x.cols) != (y.rows, y.cols) {
            return Err(shape_err("add", x.rows * x.cols, y.rows * y.cols));
        }
        let n = x.rows * x.cols;
        Ok(rms_norm::cuda::add(&self.gpu, x.dev_mut(), y.dev(), n)?)
    }

    fn gather_rows(&self, x: &CudaAct, rows: &[usize]) -> Result<CudaAct> {
        if let Some(&r) = rows.iter().find(|&&r| r >= x.rows) {
            return Err(shape_err("gather row", r, x.rows));
        }
        let idx: Vec<u32> = rows.iter().map(|&r| r as u32).collect();
        let mut out = self.zeros(rows.len(), x.cols)?;
        rms_norm::cuda::gather_rows(&self.gpu, x.dev(), &idx, x.cols, out.dev_mut())?;
        Ok(out)
    }

    fn new_kv(&self, n_layers: usize, kv_width: usize) -> CudaKv {
        CudaKv {
            buf: None,
            n_layers,
            kv_width,
            cap: 0,
            len: 0,
        }
    }

    fn kv_len(&self, kv: &CudaKv) -> usize {
        kv.len
    }

    fn kv_truncate(&self, kv: &mut CudaKv, len: usize) {
        kv.len = kv.len.min(len);
    }

    fn kv_fork(&self, kv: &CudaKv) -> Result<CudaKv> {
        let buf = match &kv.buf {
            Some(old) => {
                let b = self.gpu.alloc(old.bytes())?;
                b.copy_from(0, old, 0, old.bytes())?;
                Some(b)
            }
            None => None,
        };
        Ok(CudaKv {
            buf,
            n_layers: kv.n_layers,
            kv_width: kv.kv_width,
            cap: kv.cap,
            len: kv.len,
        })
    }
}

/// One layer's experts on the device.
pub struct MoeLayerExperts {
    pub stack: ExpertStack,
    /// For one expert (a dense MLP or a shared expert): what runs it as a MoE block.
    dense: Option<DenseRouting>,
}

/// A zero router row `[1, hidden]` (every token's weight `softmax([0]) = 1`).
struct DenseRouting {
    zero_gate: DevMat,
}

#[cfg(test)]
mod tests {
    //! Device sampling against the host sampler on the same logits: the same seeds must pick the
    //! same tokens under every rule (temperature, top-k, top-p, min-p, penalties, logit bias,
    //! greedy), with logprobs equal to `log_softmax` of the raw logits. Without a GPU the test
    //! reports `SKIP <test>: no GPU (<reason>)` and passes (`MOE_REQUIRE_GPU` makes that a failure).
    use super::*;
    use crate::sampling::{log_softmax, top_k_entries, Sampler, SamplingParams};

    fn backend() -> Option<CudaBackend> {
        moe_kernels::cuda::or_skip(CudaBackend::new(0))
    }

    /// xorshift64*, standard normal by Box–Muller.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f32 {
            let (a, b) = (self.next().max(1e-300), self.next());
            ((-2.0 * a.ln()).sqrt() * (std::f64::consts::TAU * b).cos()) as f32
        }
    }

    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams {
            temperature: 1.0,
            max_tokens: 16,
            ..Default::default()
        };
        f(&mut p);
        p
    }

    #[test]
    fn device_sampling_matches_host_sampler() {
        let Some(b) = backend() else { return };
        let time_seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
            | 1;
        println!("seed {time_seed}");
        let mut r = Rng(time_seed);
        let sets: Vec<SamplingParams> = vec![
            params(|p| p.temperature = 1.0),
            params(|p| {
                p.temperature = 0.7;
                p.top_k = 40;
            }),
            params(|p| p.top_p = 0.9),
            params(|p| {
                p.temperature = 1.3;
                p.top_k = 300;
                p.top_p = 0.8;
                p.min_p = 0.05;
            }),
            params(|p| {
                p.temperature = 0.0;
                p.repetition_penalty = 1.3;
                p.presence_penalty = 0.5;
                p.frequency_penalty = 0.2;
                p.logit_bias = vec![(3, 5.0), (17, -100.0), (3, 1.5)];
                p.logprobs = true;
                p.top_logprobs = 5;
            }),
            params(|p| {
                p.temperature = 0.8;
                p.top_p = 0.95;
                p.repetition_penalty = 1.2;
                p.frequency_penalty = -0.4;
                p.logit_bias = vec![(11, 2.0)];
                p.top_logprobs = 20;
            }),
            params(|p| {
                p.temperature = 0.0;
                p.logprobs = true;
            }),
            params(|p| {
                p.temperature = 2.0;
                p.min_p = 0.2;
                p.logprobs = true;
            }),
        ];
        for &vocab in &[1000usize, 32000] {
            for round in 0..12u64 {
                // One batch: a row per parameter set, each with its own logits and context.
                let mut logits = Vec::with_capacity(sets.len() * vocab);
                let mut contexts = vec![];
                for p in &sets {
                    let scale = 1.0 + 4.0 * r.next() as f32;
                    let row: Vec<f32> = (0..vocab).map(|_| r.normal() * scale).collect();
                    let mut row = row;
                    // Exact ties, a NaN (where no logprobs are asked: they would all be NaN)
                    // and masked tokens.
                    row[5] = row[6];
                    if !p.logprobs && p.top_logprobs == 0 {
                        row[7] = f32::NAN;
                    }
                    row[8] = f32::NEG_INFINITY;
                    row[9] = -0.0;
                    row[10] = 0.0;
                    logits.extend(row);
                    let ctx: Vec<u32> = (0..40).map(|_| (r.next() * 60.0) as u32).collect();
                    contexts.push(ctx);
                }
                let n_prompt = 25;
                let mut host = vec![];
                let mut rows = vec![];
                let mut edits = vec![];
                for (i, p) in sets.iter().enumerate() {
                    let mut p = p.clone();
                    p.seed = Some(round * 1000 + i as u64);
                    let row_logits = &logits[i * vocab..(i + 1) * vocab];
                    host.push(Sampler::new(&p).sample(row_logits, &contexts[i], n_prompt));
                    let (mut row, e) = Sampler::new(&p).device_row(&contexts[i], n_prompt);
                    row.edit_begin = edits.len() as u32;
                    edits.extend(e);
                    row.edit_end = edits.len() as u32;
                    rows.push(row);
                }
                let x = CudaAct {
                    buf: b.gpu.upload(&logits).unwrap(),
                    rows: sets.len(),
                    cols: vocab,
                };
                let picks = b.sample_rows(&x, &rows, &edits).unwrap();
                for (i, (p, pick)) in sets.iter().zip(&picks).enumerate() {
                    assert_eq!(
                        pick.token, host[i],
                        "vocab {vocab} round {round} set {i} {p:?}: device picked {}, host {}",
                        pick.token, host[i]
                    );
                    if p.logprobs || p.top_logprobs > 0 {
                        let row_logits = &logits[i * vocab..(i + 1) * vocab];
                        let want = log_softmax(row_logits);
                        let shift = pick.max as f64 + pick.z.ln();
                        let got = (pick.chosen as f64 - shift) as f32;
                        let w = want[pick.token as usize];
                        assert!(
                            (got - w).abs() <= 1e-5 * w.abs().max(1.0),
                            "set {i}: chosen logprob {got} vs {w}"
                        );
                        let want_top = top_k_entries(&want, p.top_logprobs);
                        let got_top: Vec<u32> = pick.top.iter().map(|t| t.0).collect();
                        let want_ids: Vec<u32> = want_top.iter().map(|t| t.0).collect();
                        assert_eq!(got_top, want_ids, "set {i}: top logprob ids");
                        for (&(_, l), &(_, wl)) in pick.top.iter().zip(&want_top) {
                            let g = (l as f64 - shift) as f32;
                            assert!((g - wl).abs() <= 1e-5 * wl.abs().max(1.0), "{g} vs {wl}");
                        }
                    }
                }
            }
        }
    }
}
