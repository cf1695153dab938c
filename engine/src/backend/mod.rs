//! `Backend`: the device operations along the MoE data path, one method per kernel. The model is
//! generic over it (`Model<B: Backend>`); a runtime choice of device happens once, at the public
//! boundary, never per op.

pub mod cpu;
pub mod cuda;

use crate::error::Result;
use crate::weights::WeightTensor;
use moe_kernels::attention::Attention;
use moe_kernels::rope::Rope;
use moe_kernels::router_topk::{ExpertLoad, RouterTopK};
use moe_kernels::sample::{Edit, Picked, SampleRow};

pub use cpu::CpuBackend;
pub use cuda::CudaBackend;

/// The router's decision for a batch: `[n_tokens, top_k]` each, highest weight first.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Routing {
    pub top_k: usize,
    pub expert_ids: Vec<u32>,
    pub weights: Vec<f32>,
}

/// What a MoE call should hand back besides its output (for traces; a device backend reads these
/// back only when asked).
#[derive(Clone, Copy, Debug, Default)]
pub struct MoeTaps {
    pub router_logits: bool,
    pub routing: bool,
}

/// The taps asked for.
#[derive(Clone, Debug, Default)]
pub struct MoeTrace {
    /// `[n_tokens, n_experts]`
    pub router_logits: Option<Vec<f32>>,
    pub routing: Option<Routing>,
}

/// What a dense feed-forward call should hand back besides its output.
#[derive(Clone, Copy, Debug, Default)]
pub struct FfnTaps {
    /// The MLP's output before any gate.
    pub output: bool,
    /// The per-token gate, `sigmoid(x · gateᵀ)`.
    pub gate: bool,
}

/// The taps asked for: `[n_tokens, hidden]` and `[n_tokens, 1]`.
#[derive(Clone, Debug, Default)]
pub struct FfnTrace {
    pub output: Option<Vec<f32>>,
    pub gate: Option<Vec<f32>>,
}

/// One expert's matrices.
pub struct ExpertWeights<W> {
    /// gate `[ffn, hidden]`
    pub w1: W,
    /// up `[ffn, hidden]`
    pub w3: W,
    /// down `[hidden, ffn]`
    pub w2: W,
}

/// One sequence of a batched attention call: its new rows `[row, row + n_new)` of q/k/v and its
/// cache, which receives the new keys and values.
pub struct AttnItem<'a, K> {
    pub row: usize,
    pub n_new: usize,
    pub kv: &'a mut K,
}

pub trait Backend: Send + Sync + 'static {
    /// Activations: contiguous f32 `[rows, cols]`.
    type Act: Send;
    /// A checkpoint tensor resident where this backend computes.
    type Weight: Send + Sync;
    /// One layer's experts, laid out for this backend's grouped kernels.
    type Experts: Send + Sync;
    /// One sequence's keys and values for every layer.
    type Kv: Send;
    /// What one forward pass keeps between its calls (on a device: the rows' attention metadata
    /// built at layer 0 and the RoPE table of its positions). [`Backend::begin_pass`] makes one
    /// at the start of every pass and the pass hands it to each [`Backend::rope`],
    /// [`Backend::rope_qk`] and [`Backend::attention`] call, so passes running at the same time
    /// (prompt scoring beside the scheduler's step) never share or overwrite each other's.
    type Pass: Send;

    fn name(&self) -> &'static str;

    /// A fresh [`Backend::Pass`] for one forward pass (allocates nothing until used).
    fn begin_pass(&self) -> Self::Pass;

    /// Makes a checkpoint tensor usable by the kernels (the CPU keeps it in place in the mmap).
    fn weight(&self, t: WeightTensor) -> Result<Self::Weight>;
    fn weight_bytes(&self, w: &Self::Weight) -> usize;
    /// Takes one layer's experts (all of one shape and dtype).
    fn experts(&self, experts: Vec<ExpertWeights<WeightTensor>>) -> Result<Self::Experts>;
    fn experts_bytes(&self, e: &Self::Experts) -> usize;

    fn zeros(&self, rows: usize, cols: usize) -> Result<Self::Act>;
    fn to_host(&self, a: &Self::Act) -> Result<Vec<f32>>;
    /// [`Backend::to_host`] of an activation no longer needed (the CPU hands over its buffer).
    fn move_to_host(&self, a: Self::Act) -> Result<Vec<f32>> {
        self.to_host(&a)
    }
    fn rows(&self, a: &Self::Act) -> usize;

    /// `out[t] = table[ids[t]]`
    fn embed(&self, table: &Self::Weight, ids: &[u32], out: &mut Self::Act) -> Result<()>;
    /// RMSNorm into `out` of every group of `w.len()` consecutive values of `x`: a whole row when
    /// `w` is as wide as `x`, each head when `w` is one head wide (per-head q/k norms).
    fn rms_norm(
        &self,
        x: &Self::Act,
        w: &Self::Weight,
        eps: f32,
        out: &mut Self::Act,
    ) -> Result<()>;
    /// `out = x · Wᵀ`
    fn linear(&self, x: &Self::Act, w: &Self::Weight, out: &mut Self::Act) -> Result<()>;
    /// `outs[i] = x · ws[i]ᵀ` for several weights over one input (q, k and v): one parallel
    /// region or launch on backends that fuse it.
    fn linear_many(
        &self,
        x: &Self::Act,
        ws: &[&Self::Weight],
        outs: &mut [&mut Self::Act],
    ) -> Result<()> {
        for (w, out) in ws.iter().zip(outs.iter_mut()) {
            self.linear(x, w, out)?;
        }
        Ok(())
    }
    /// `x[r] += bias` for every row.
    fn add_bias(&self, x: &mut Self::Act, bias: &Self::Weight) -> Result<()> {
        // The bias broadcast to every row as a lookup of row 0 of the `[1, cols]` table.
        let n = self.rows(x);
        let mut broadcast = self.zeros(n, self.act_cols(x))?;
        self.embed(bias, &vec![0; n], &mut broadcast)?;
        self.add(x, &broadcast)
    }
    /// Columns of an activation.
    fn act_cols(&self, a: &Self::Act) -> usize;
    /// Clamps every value of `x` to `[-limit, limit]`.
    fn clamp(&self, _x: &mut Self::Act, _limit: f32) -> Result<()> {
        Err(crate::error::Error::Device(format!(
            "clip_qkv is not implemented on {} yet",
            self.name()
        )))
    }
    /// A dense SwiGLU MLP (`mlp` holds one expert): `residual += g · mlp(x)` with `g` per token
    /// `sigmoid(x · gateᵀ)` where `gate` (`[1, hidden]`) is given, else 1. Dense layers and
    /// shared experts.
    fn ffn(
        &self,
        _x: &Self::Act,
        _mlp: &Self::Experts,
        _gate: Option<&Self::Weight>,
        _residual: &mut Self::Act,
        _taps: FfnTaps,
    ) -> Result<FfnTrace> {
        Err(crate::error::Error::Device(format!(
            "dense MLPs and shared experts are not implemented on {} yet",
            self.name()
        )))
    }
    /// Rotates every head of every row in place; `positions[row]`. Tables built for these
    /// positions are kept in `pass`.
    fn rope(
        &self,
        pass: &mut Self::Pass,
        x: &mut Self::Act,
        positions: &[u32],
        rope: &Rope,
    ) -> Result<()>;
    /// [`Backend::rope`] of q and k over the same positions (one launch on backends that fuse
    /// it).
    fn rope_qk(
        &self,
        pass: &mut Self::Pass,
        q: &mut Self::Act,
        k: &mut Self::Act,
        positions: &[u32],
        rope: &Rope,
    ) -> Result<()> {
        self.rope(pass, q, positions, rope)?;
        self.rope(pass, k, positions, rope)
    }
    /// Appends each sequence's new `k`/`v` rows to its cache at layer `layer`, then attends.
    /// Every layer of one pass gets the same `pass` and the same sequences, layer 0 first.
    #[allow(clippy::too_many_arguments)]
    fn attention(
        &self,
        pass: &mut Self::Pass,
        layer: usize,
        p: &Attention,
        q: &Self::Act,
        k: &Self::Act,
        v: &Self::Act,
        seqs: &mut [AttnItem<'_, Self::Kv>],
        out: &mut Self::Act,
    ) -> Result<()>;
    /// The sparse MoE block of layer `layer`: `residual += Σ_j w_j · expert_j(x)` over the
    /// router's top-k of `x · gateᵀ`, counting the routing into `load` (a device backend may
    /// keep the counters on the device until [`Backend::sync_load`]).
    #[allow(clippy::too_many_arguments)]
    fn moe(
        &self,
        layer: usize,
        x: &Self::Act,
        gate: &Self::Weight,
        experts: &Self::Experts,
        p: &RouterTopK,
        load: &mut ExpertLoad,
        residual: &mut Self::Act,
        taps: MoeTaps,
    ) -> Result<MoeTrace>;
    /// This device's measured memory read bandwidth (GB/s) and matrix rate (GFLOP/s), for
    /// benchmark floors; `None` where the host's own measurements apply (the CPU).
    fn measured_ceilings(&self) -> Option<(f64, f64)> {
        None
    }
    /// Adds counters held on the device into `loads` (one per layer) and clears them there.
    fn sync_load(&self, _loads: &mut [ExpertLoad]) -> Result<()> {
        Ok(())
    }
    /// Each row's argmax (exact ties to the lowest index; NaN never wins).
    fn argmax_rows(&self, x: &Self::Act) -> Result<Vec<u32>> {
        let v = self.to_host(x)?;
        let rows = self.rows(x).max(1);
        Ok(v.chunks(v.len() / rows)
            .map(crate::sampling::argmax)
            .collect())
    }
    /// Runs a whole forward pass (`f`) where this backend's parallel regions are cheapest to
    /// start; the caller waits for it.
    fn forward_scope<R: Send>(&self, f: impl FnOnce() -> R) -> R {
        f()
    }
    /// Whether this backend's products with bf16 weights honour the weights' request to round
    /// activations to bf16 (`moe_kernels::Mat::bf16_activations`).
    fn takes_bf16_activations(&self) -> bool {
        false
    }
    /// Whether [`Backend::sample_rows`] picks tokens where the logits are (so that only ids and
    /// requested logprobs cross to the host).
    fn samples_on_device(&self) -> bool {
        false
    }
    /// Each row's next token by `rows[r]` (its edits are `edits[edit_begin..edit_end]`), with
    /// the host sampler's rules; see `moe_kernels::sample`.
    fn sample_rows(
        &self,
        _x: &Self::Act,
        _rows: &[SampleRow],
        _edits: &[Edit],
    ) -> Result<Vec<Picked>> {
        Err(crate::error::Error::Device(format!(
            "{} does not sample on the device",
            self.name()
        )))
    }
    /// `x += y`
    fn add(&self, x: &mut Self::Act, y: &Self::Act) -> Result<()>;
    /// `x += y; out = rmsnorm(x) · w` (one pass on backends that fuse it).
    fn add_rms_norm(
        &self,
        x: &mut Self::Act,
        y: &Self::Act,
        w: &Self::Weight,
        eps: f32,
        out: &mut Self::Act,
    ) -> Result<()> {
        self.add(x, y)?;
        self.rms_norm(x, w, eps, out)
    }
    /// Rows `rows` of `x`, in that order.
    fn gather_rows(&self, x: &Self::Act, rows: &[usize]) -> Result<Self::Act>;

    fn new_kv(&self, n_layers: usize, kv_width: usize) -> Self::Kv;
    /// Tokens held.
    fn kv_len(&self, kv: &Self::Kv) -> usize;
    /// Forgets every token from `len` on.
    fn kv_truncate(&self, kv: &mut Self::Kv, len: usize);
    /// A copy that can grow on its own (device memory can run out: an error, never a silently
    /// empty cache).
    fn kv_fork(&self, kv: &Self::Kv) -> Result<Self::Kv>;
}
