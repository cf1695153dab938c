//! `CpuBackend`: rayon + SIMD kernels from `moe-kernels`; weights stay in the mmap.

use super::{AttnItem, Backend, ExpertWeights, FfnTaps, FfnTrace, MoeTaps, MoeTrace, Routing};
use crate::error::{Error, Result};
use crate::weights::WeightTensor;
use moe_kernels::attention::{Attention, AttnSeq};
use moe_kernels::expert_ffn::ExpertMats;
use moe_kernels::rms_norm::RmsNorm;
use moe_kernels::rope::Rope;
use moe_kernels::router_topk::{ExpertLoad, RouterTopK};
use moe_kernels::scratch::{refill, release_if_large, with_scratch};
use moe_kernels::{
    attention, combine, embedding, expert_ffn, linear, permute, rms_norm, rope, router_topk,
};

#[derive(Clone, Debug, Default)]
pub struct CpuBackend;

/// Contiguous f32 rows.
#[derive(Clone, Debug, PartialEq)]
pub struct CpuAct {
    pub data: Vec<f32>,
    pub rows: usize,
    pub cols: usize,
}

/// Per layer `[n_tokens, kv_width]` keys and values.
#[derive(Clone, Debug)]
pub struct CpuKv {
    kv_width: usize,
    len: usize,
    layers: Vec<(Vec<f32>, Vec<f32>)>,
}

impl CpuKv {
    pub fn bytes(&self) -> usize {
        self.layers
            .iter()
            .map(|(k, v)| (k.capacity() + v.capacity()) * 4)
            .sum()
    }
}

fn shape_err(what: &str, a: usize, b: usize) -> Error {
    Error::Kernel(moe_kernels::KernelError::Invalid {
        op: "cpu",
        message: format!("{what}: {a} vs {b}"),
    })
}

/// The MoE block's buffers, kept per thread across calls so that a warm decode step's MoE
/// allocates only its list of expert matrices.
#[derive(Default)]
struct MoeScratch {
    logits: Vec<f32>,
    expert_ids: Vec<u32>,
    weights: Vec<f32>,
    dispatch: permute::Dispatch,
    expert_out: Vec<f32>,
}

thread_local! {
    static MOE_SCRATCH: std::cell::RefCell<MoeScratch> = std::cell::RefCell::new(MoeScratch::default());
}

#[allow(clippy::too_many_arguments)]
fn moe_with(
    x: &CpuAct,
    gate: &WeightTensor,
    experts: &[ExpertWeights<WeightTensor>],
    p: &RouterTopK,
    load: &mut ExpertLoad,
    residual: &mut CpuAct,
    taps: MoeTaps,
    s: &mut MoeScratch,
) -> Result<MoeTrace> {
    let n = x.rows;
    let routed = n * p.top_k;
    refill(&mut s.logits, n * p.n_experts, 0.0);
    linear::cpu::run(&x.data, n, &gate.mat(), &mut s.logits)?;
    refill(&mut s.expert_ids, routed, 0);
    refill(&mut s.weights, routed, 0.0);
    router_topk::cpu::run(p, &s.logits, &mut s.expert_ids, &mut s.weights, load)?;
    permute::run_into(&s.expert_ids, p.n_experts, p.top_k, &mut s.dispatch)?;
    let mats: Vec<ExpertMats> = experts
        .iter()
        .map(|e| ExpertMats {
            w1: e.w1.mat(),
            w3: e.w3.mat(),
            w2: e.w2.mat(),
        })
        .collect();
    refill(&mut s.expert_out, routed * x.cols, 0.0);
    expert_ffn::cpu::run(&x.data, x.cols, &s.dispatch, &mats, &mut s.expert_out)?;
    combine::run(
        &s.expert_out,
        residual.cols,
        &s.dispatch,
        &s.weights,
        &mut residual.data,
    )?;
    let trace = MoeTrace {
        router_logits: taps.router_logits.then(|| s.logits.clone()),
        routing: taps.routing.then(|| Routing {
            top_k: p.top_k,
            expert_ids: s.expert_ids.clone(),
            weights: s.weights.clone(),
        }),
    };
    for v in [&mut s.logits, &mut s.weights, &mut s.expert_out] {
        release_if_large(v);
    }
    Ok(trace)
}

impl Backend for CpuBackend {
    type Act = CpuAct;
    type Weight = WeightTensor;
    type Kv = CpuKv;
    type Experts = Vec<ExpertWeights<WeightTensor>>;
    /// Nothing outlives a call here.
    type Pass = ();

    fn name(&self) -> &'static str {
        "cpu"
    }

    fn begin_pass(&self) {}

    fn takes_bf16_activations(&self) -> bool {
        true
    }

    fn weight(&self, t: WeightTensor) -> Result<WeightTensor> {
        Ok(t)
    }

    fn weight_bytes(&self, w: &WeightTensor) -> usize {
        w.bytes()
    }

    fn zeros(&self, rows: usize, cols: usize) -> Result<CpuAct> {
        Ok(CpuAct {
            data: vec![0.0; rows * cols],
            rows,
            cols,
        })
    }

    fn experts(
        &self,
        experts: Vec<ExpertWeights<WeightTensor>>,
    ) -> Result<Vec<ExpertWeights<WeightTensor>>> {
        Ok(experts)
    }

    fn experts_bytes(&self, e: &Vec<ExpertWeights<WeightTensor>>) -> usize {
        e.iter()
            .map(|x| x.w1.bytes() + x.w3.bytes() + x.w2.bytes())
            .sum()
    }

    fn to_host(&self, a: &CpuAct) -> Result<Vec<f32>> {
        Ok(a.data.clone())
    }

    fn move_to_host(&self, a: CpuAct) -> Result<Vec<f32>> {
        Ok(a.data)
    }

    fn rows(&self, a: &CpuAct) -> usize {
        a.rows
    }

    fn embed(&self, table: &WeightTensor, ids: &[u32], out: &mut CpuAct) -> Result<()> {
        Ok(embedding::run(&table.mat(), ids, &mut out.data)?)
    }

    fn rms_norm(&self, x: &CpuAct, w: &WeightTensor, eps: f32, out: &mut CpuAct) -> Result<()> {
        let width = w.shape.iter().product::<usize>();
        if width == 0 || x.cols % width != 0 {
            return Err(shape_err("rms_norm width", x.cols, width));
        }
        let p = RmsNorm { hidden: width, eps };
        Ok(rms_norm::cpu::run(&p, &x.data, &w.data(), &mut out.data)?)
    }

    fn linear(&self, x: &CpuAct, w: &WeightTensor, out: &mut CpuAct) -> Result<()> {
        Ok(linear::cpu::run(&x.data, x.rows, &w.mat(), &mut out.data)?)
    }

    fn linear_many(
        &self,
        x: &CpuAct,
        ws: &[&WeightTensor],
        outs: &mut [&mut CpuAct],
    ) -> Result<()> {
        if ws.len() != outs.len() {
            return Err(shape_err("linear_many outputs", outs.len(), ws.len()));
        }
        let mats: Vec<_> = ws.iter().map(|w| w.mat()).collect();
        let mut ys: Vec<&mut [f32]> = outs.iter_mut().map(|o| o.data.as_mut_slice()).collect();
        Ok(linear::cpu::run_many(&x.data, x.rows, &mats, &mut ys)?)
    }

    /// On a rayon worker, with the pool's other workers as its team
    /// ([`moe_kernels::team::with_team`]): the pass's ≈ 40 parallel regions then start on every
    /// core at once, instead of each waking sleeping workers.
    fn forward_scope<R: Send>(&self, f: impl FnOnce() -> R) -> R {
        /// The pass borrows the caller's trace, which is not `Send`; the caller is blocked until
        /// the pass returns, so nothing is touched from two threads.
        struct Blocked<F>(F);
        // SAFETY: see above; the traces are plain data with no thread affinity.
        unsafe impl<F> Send for Blocked<F> {}
        let job = Blocked(f);
        let pass = move || {
            let job = job;
            (job.0)()
        };
        if rayon::current_thread_index().is_some() {
            return moe_kernels::team::with_team(pass);
        }
        rayon::scope(move |_| moe_kernels::team::with_team(pass))
    }

    fn rope(&self, _pass: &mut (), x: &mut CpuAct, positions: &[u32], r: &Rope) -> Result<()> {
        Ok(rope::cpu::run(r, &mut x.data, positions)?)
    }

    fn rope_qk(
        &self,
        _pass: &mut (),
        q: &mut CpuAct,
        k: &mut CpuAct,
        positions: &[u32],
        r: &Rope,
    ) -> Result<()> {
        Ok(rope::cpu::run_many(
            r,
            &mut [&mut q.data, &mut k.data],
            positions,
        )?)
    }

    fn attention(
        &self,
        _pass: &mut (),
        layer: usize,
        p: &Attention,
        q: &CpuAct,
        k: &CpuAct,
        v: &CpuAct,
        seqs: &mut [AttnItem<'_, CpuKv>],
        out: &mut CpuAct,
    ) -> Result<()> {
        let w = k.cols;
        for s in seqs.iter_mut() {
            if s.kv.kv_width != w {
                return Err(shape_err("kv width", s.kv.kv_width, w));
            }
            let (kc, vc) = &mut s.kv.layers[layer];
            kc.extend_from_slice(&k.data[s.row * w..(s.row + s.n_new) * w]);
            vc.extend_from_slice(&v.data[s.row * w..(s.row + s.n_new) * w]);
        }
        let views: Vec<AttnSeq> = seqs
            .iter()
            .map(|s| AttnSeq {
                q_row: s.row,
                n_new: s.n_new,
                k: &s.kv.layers[layer].0,
                v: &s.kv.layers[layer].1,
            })
            .collect();
        attention::cpu::run(p, &q.data, &views, &mut out.data)?;
        if layer + 1 == seqs.first().map_or(0, |s| s.kv.layers.len()) {
            for s in seqs.iter_mut() {
                s.kv.len += s.n_new;
            }
        }
        Ok(())
    }

    fn moe(
        &self,
        _layer: usize,
        x: &CpuAct,
        gate: &WeightTensor,
        experts: &Vec<ExpertWeights<WeightTensor>>,
        p: &RouterTopK,
        load: &mut ExpertLoad,
        residual: &mut CpuAct,
        taps: MoeTaps,
    ) -> Result<MoeTrace> {
        with_scratch(&MOE_SCRATCH, |scratch| {
            moe_with(x, gate, experts, p, load, residual, taps, scratch)
        })
    }

    fn act_cols(&self, a: &CpuAct) -> usize {
        a.cols
    }

    fn add_bias(&self, x: &mut CpuAct, bias: &WeightTensor) -> Result<()> {
        let data = bias.data();
        let mut b = vec![0f32; data.len()];
        data.to_f32_into(0, &mut b);
        if b.len() != x.cols {
            return Err(shape_err("bias width", b.len(), x.cols));
        }
        for row in x.data.chunks_mut(x.cols) {
            for (v, b) in row.iter_mut().zip(&b) {
                *v += b;
            }
        }
        Ok(())
    }

    fn clamp(&self, x: &mut CpuAct, limit: f32) -> Result<()> {
        for v in &mut x.data {
            *v = v.clamp(-limit, limit);
        }
        Ok(())
    }

    fn ffn(
        &self,
        x: &CpuAct,
        mlp: &Vec<ExpertWeights<WeightTensor>>,
        gate: Option<&WeightTensor>,
        residual: &mut CpuAct,
        taps: FfnTaps,
    ) -> Result<FfnTrace> {
        let [e] = mlp.as_slice() else {
            return Err(shape_err("dense MLP experts", mlp.len(), 1));
        };
        let n = x.rows;
        // Every token to the one expert: the grouped expert kernel runs the dense MLP, in the MoE
        // block's per-thread buffers (a warm decode step allocates nothing here either).
        with_scratch(&MOE_SCRATCH, |s| {
            refill(&mut s.expert_ids, n, 0);
            permute::run_into(&s.expert_ids, 1, 1, &mut s.dispatch)?;
            let mats = [ExpertMats {
                w1: e.w1.mat(),
                w3: e.w3.mat(),
                w2: e.w2.mat(),
            }];
            refill(&mut s.expert_out, n * x.cols, 0.0);
            expert_ffn::cpu::run(&x.data, x.cols, &s.dispatch, &mats, &mut s.expert_out)?;
            refill(&mut s.weights, n, 1.0);
            if let Some(g) = gate {
                linear::cpu::run(&x.data, n, &g.mat(), &mut s.weights)?;
                for w in &mut s.weights {
                    *w = 1.0 / (1.0 + (-*w).exp());
                }
            }
            combine::run(
                &s.expert_out,
                residual.cols,
                &s.dispatch,
                &s.weights,
                &mut residual.data,
            )?;
            Ok(FfnTrace {
                gate: (taps.gate && gate.is_some()).then(|| s.weights.clone()),
                output: taps.output.then(|| s.expert_out.clone()),
            })
        })
    }

    fn add(&self, x: &mut CpuAct, y: &CpuAct) -> Result<()> {
        if x.data.len() != y.data.len() {
            return Err(shape_err("add", x.data.len(), y.data.len()));
        }
        for (a, b) in x.data.iter_mut().zip(&y.data) {
            *a += b;
        }
        Ok(())
    }

    fn gather_rows(&self, x: &CpuAct, rows: &[usize]) -> Result<CpuAct> {
        let mut data = Vec::with_capacity(rows.len() * x.cols);
        for &r in rows {
            if r >= x.rows {
                return Err(shape_err("gather row", r, x.rows));
            }
            data.extend_from_slice(&x.data[r * x.cols..(r + 1) * x.cols]);
        }
        Ok(CpuAct {
            data,
            rows: rows.len(),
            cols: x.cols,
        })
    }

    fn new_kv(&self, n_layers: usize, kv_width: usize) -> CpuKv {
        CpuKv {
            kv_width,
            len: 0,
            layers: vec![(Vec::new(), Vec::new()); n_layers],
        }
    }

    fn kv_len(&self, kv: &CpuKv) -> usize {
        kv.len
    }

    fn kv_truncate(&self, kv: &mut CpuKv, len: usize) {
        if len < kv.len {
            for (k, v) in &mut kv.layers {
                k.truncate(len * kv.kv_width);
                v.truncate(len * kv.kv_width);
            }
            kv.len = len;
        }
    }

    fn kv_fork(&self, kv: &CpuKv) -> Result<CpuKv> {
        Ok(kv.clone())
    }
}
