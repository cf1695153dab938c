//! The decoder every family shares, read top to bottom in data-path order:
//! embedding → [rms_norm → attention(+KV cache) → +residual → rms_norm → feed-forward
//! (+residual)] × L → final rms_norm → lm_head. A layer's feed-forward block is a sparse MoE
//! block (router → dispatch → experts → combine, plus an optional shared expert) or a dense
//! SwiGLU MLP, as the family's [`ModelConfig`] says.

use super::{family, TensorNames};
use crate::backend::{AttnItem, Backend, ExpertWeights, FfnTaps, MoeTaps};
use crate::config::{ModelConfig, QkNorm};
use crate::error::{Error, Result};
use crate::stats::LoadBalanceStats;
use crate::trace::Trace;
use crate::weights::{WeightTensor, Weights};
use moe_kernels::attention::Attention;
use moe_kernels::rope::Rope;
use moe_kernels::router_topk::RouterTopK;
use std::sync::Mutex;

/// Grouped-query self-attention with the family's options.
struct AttentionBlock<W> {
    q: W,
    k: W,
    v: W,
    o: W,
    /// q, k, v biases when the family has them.
    qkv_bias: Option<[W; 3]>,
    o_bias: Option<W>,
    /// q and k norm weights (`[head_dim]` per head, or the whole projection).
    qk_norm: Option<[W; 2]>,
}

/// A sparse MoE block.
struct MoeBlock<W, E> {
    /// The block's index among the MoE layers (its load counters).
    index: usize,
    /// Router `[n_experts, hidden]`.
    router: W,
    experts: E,
    /// The shared expert (one expert's matrices) and its optional gate `[1, hidden]`.
    shared: Option<(E, Option<W>)>,
}

enum FeedForward<W, E> {
    /// A dense SwiGLU MLP, held as one expert.
    Dense(E),
    Moe(MoeBlock<W, E>),
}

struct Layer<W, E> {
    input_norm: W,
    attn: AttentionBlock<W>,
    post_norm: W,
    ffn: FeedForward<W, E>,
}

/// A loaded decoder-only MoE model on backend `B`.
pub struct Model<B: Backend> {
    pub cfg: ModelConfig,
    pub backend: B,
    embed: B::Weight,
    layers: Vec<Layer<B::Weight, B::Experts>>,
    norm: B::Weight,
    /// `None` when tied to the embedding.
    lm_head: Option<B::Weight>,
    rope: Rope,
    attn: Attention,
    router: RouterTopK,
    stats: Mutex<LoadBalanceStats>,
    weight_bytes: usize,
}

/// One sequence's step: its new tokens, appended after what its cache holds.
pub struct SeqStep<'a, K> {
    pub tokens: &'a [u32],
    pub kv: &'a mut K,
    /// Logits for every new token (prompt scoring) or only the last one (generation).
    pub all_logits: bool,
}

/// Takes tensors by name, checking shape and dtype, and counts them for the progress callback.
struct Loader<'a, B: Backend> {
    weights: &'a Weights,
    backend: &'a B,
    progress: &'a mut dyn FnMut(usize, usize),
    done: usize,
    total: usize,
    bytes: usize,
    taken: std::collections::HashSet<String>,
}

impl<B: Backend> Loader<'_, B> {
    fn host(&mut self, name: &str, shape: &[usize]) -> Result<WeightTensor> {
        let t = self.weights.expect(name, shape)?;
        self.taken.insert(name.to_string());
        self.done += 1;
        (self.progress)(self.done, self.total.max(self.done));
        Ok(t)
    }

    fn take(&mut self, name: &str, shape: &[usize]) -> Result<B::Weight> {
        let t = self.host(name, shape)?;
        let w = self.backend.weight(t)?;
        self.bytes += self.backend.weight_bytes(&w);
        Ok(w)
    }

    /// `prefix.{gate,up,down}` of one SwiGLU MLP of width `width`.
    fn mlp(
        &mut self,
        prefix: &str,
        names: [&str; 3],
        hidden: usize,
        width: usize,
    ) -> Result<ExpertWeights<WeightTensor>> {
        Ok(ExpertWeights {
            w1: self.host(&format!("{prefix}.{}.weight", names[0]), &[width, hidden])?,
            w3: self.host(&format!("{prefix}.{}.weight", names[1]), &[width, hidden])?,
            w2: self.host(&format!("{prefix}.{}.weight", names[2]), &[hidden, width])?,
        })
    }

    fn experts(&mut self, experts: Vec<ExpertWeights<WeightTensor>>) -> Result<B::Experts> {
        let e = self.backend.experts(experts)?;
        self.bytes += self.backend.experts_bytes(&e);
        Ok(e)
    }
}

/// Tensors a checkpoint of `cfg` holds (for the progress callback).
fn tensor_count(cfg: &ModelConfig) -> usize {
    let a = &cfg.attention;
    let attn =
        4 + 3 * a.qkv_bias as usize + a.o_bias as usize + 2 * (a.qk_norm != QkNorm::None) as usize;
    let moe = 1
        + 3 * cfg.moe.n_experts
        + cfg
            .moe
            .shared_expert
            .map_or(0, |s| 3 + s.sigmoid_gate as usize);
    let ffn: usize = cfg
        .moe_layers
        .iter()
        .map(|&m| if m { moe } else { 3 })
        .sum();
    2 + !cfg.tie_word_embeddings as usize + cfg.num_hidden_layers * (2 + attn) + ffn
}

impl<B: Backend> Model<B> {
    /// Takes every tensor the config implies, checking names, shapes and dtypes; `progress(done,
    /// total)` is called as tensors are checked.
    pub fn load(
        cfg: ModelConfig,
        weights: &Weights,
        backend: B,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        cfg.validate()?;
        let names: &TensorNames = &family(cfg.family)?.names;
        let h = cfg.hidden_size;
        let moe = &cfg.moe;
        let mut ld = Loader::<B> {
            weights,
            backend: &backend,
            progress,
            done: 0,
            total: tensor_count(&cfg),
            bytes: 0,
            taken: Default::default(),
        };
        let embed = ld.take("model.embed_tokens.weight", &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let mut moe_index = 0;
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let ffn = if cfg.moe_layers[l] {
                let m = format!("{p}.{}", names.moe);
                let experts = (0..moe.n_experts)
                    .map(|x| {
                        ld.mlp(
                            &format!("{m}.experts.{x}"),
                            names.expert,
                            h,
                            moe.expert_width,
                        )
                    })
                    .collect::<Result<Vec<_>>>()?;
                let experts = ld.experts(experts)?;
                let router =
                    ld.take(&format!("{m}.{}.weight", names.router), &[moe.n_experts, h])?;
                let shared = match moe.shared_expert {
                    None => None,
                    Some(s) => {
                        let mlp = ld.mlp(
                            &format!("{m}.{}", names.shared_expert),
                            ["gate_proj", "up_proj", "down_proj"],
                            h,
                            s.width,
                        )?;
                        let mlp = ld.experts(vec![mlp])?;
                        let gate = if s.sigmoid_gate {
                            Some(ld.take(
                                &format!("{m}.{}.weight", names.shared_expert_gate),
                                &[1, h],
                            )?)
                        } else {
                            None
                        };
                        Some((mlp, gate))
                    }
                };
                moe_index += 1;
                FeedForward::Moe(MoeBlock {
                    index: moe_index - 1,
                    router,
                    experts,
                    shared,
                })
            } else {
                let mlp = ld.mlp(
                    &format!("{p}.mlp"),
                    ["gate_proj", "up_proj", "down_proj"],
                    h,
                    cfg.intermediate_size,
                )?;
                FeedForward::Dense(ld.experts(vec![mlp])?)
            };
            let a = format!("{p}.self_attn");
            let (qw, kvw) = (cfg.q_width(), cfg.kv_width());
            let attn = AttentionBlock {
                q: ld.take(&format!("{a}.q_proj.weight"), &[qw, h])?,
                k: ld.take(&format!("{a}.k_proj.weight"), &[kvw, h])?,
                v: ld.take(&format!("{a}.v_proj.weight"), &[kvw, h])?,
                o: ld.take(&format!("{a}.o_proj.weight"), &[h, qw])?,
                qkv_bias: if cfg.attention.qkv_bias {
                    Some([
                        ld.take(&format!("{a}.q_proj.bias"), &[qw])?,
                        ld.take(&format!("{a}.k_proj.bias"), &[kvw])?,
                        ld.take(&format!("{a}.v_proj.bias"), &[kvw])?,
                    ])
                } else {
                    None
                },
                o_bias: if cfg.attention.o_bias {
                    Some(ld.take(&format!("{a}.o_proj.bias"), &[h])?)
                } else {
                    None
                },
                qk_norm: match cfg.attention.qk_norm {
                    QkNorm::None => None,
                    QkNorm::PerHead => Some([
                        ld.take(&format!("{a}.q_norm.weight"), &[cfg.head_dim])?,
                        ld.take(&format!("{a}.k_norm.weight"), &[cfg.head_dim])?,
                    ]),
                    QkNorm::Whole => Some([
                        ld.take(&format!("{a}.q_norm.weight"), &[qw])?,
                        ld.take(&format!("{a}.k_norm.weight"), &[kvw])?,
                    ]),
                },
            };
            layers.push(Layer {
                input_norm: ld.take(&format!("{p}.input_layernorm.weight"), &[h])?,
                attn,
                post_norm: ld.take(&format!("{p}.post_attention_layernorm.weight"), &[h])?,
                ffn,
            });
        }
        let norm = ld.take("model.norm.weight", &[h])?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(ld.take("lm_head.weight", &[cfg.vocab_size, h])?)
        };
        // A tensor the config does not account for (a layer or expert past its counts) means the
        // config and the checkpoint disagree: running without it would be a silent wrong answer.
        let mut unused: Vec<&str> = weights
            .names()
            .filter(|n| !ld.taken.contains(*n) && !n.ends_with("rotary_emb.inv_freq"))
            .collect();
        if !unused.is_empty() {
            unused.sort();
            let more = unused.len() - 1;
            return Err(Error::Config(format!(
                "the checkpoint holds `{}`{} that a {} model with this config.json does not use \
                 (num_hidden_layers {}, {} experts): config and weights disagree",
                unused[0],
                if more > 0 {
                    format!(" and {more} more tensors")
                } else {
                    String::new()
                },
                cfg.family,
                cfg.num_hidden_layers,
                cfg.moe.n_experts
            )));
        }
        let weight_bytes = ld.bytes;
        Ok(Model {
            rope: Rope::new(cfg.head_dim, cfg.rope_theta)
                .with_interleaved(cfg.attention.rope_interleaved),
            attn: Attention {
                n_heads: cfg.num_attention_heads,
                n_kv_heads: cfg.num_key_value_heads,
                head_dim: cfg.head_dim,
                scale: (cfg.head_dim as f32).powf(-0.5),
                sliding_window: cfg.sliding_window,
            },
            router: RouterTopK {
                n_experts: moe.n_experts,
                top_k: moe.top_k,
                scoring: moe.scoring,
                renormalize: moe.renormalize,
            },
            stats: Mutex::new(LoadBalanceStats::new(
                cfg.moe_layer_ids(),
                moe.n_experts,
                moe.top_k,
            )),
            cfg,
            backend,
            embed,
            layers,
            norm,
            lm_head,
            weight_bytes,
        })
    }

    /// Bytes of every weight the model holds.
    pub fn weight_bytes(&self) -> usize {
        self.weight_bytes
    }

    pub fn new_kv(&self) -> B::Kv {
        self.backend
            .new_kv(self.cfg.num_hidden_layers, self.cfg.kv_width())
    }

    /// A copy of the statistics accumulated so far.
    pub fn stats(&self) -> LoadBalanceStats {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        // A device that cannot be read leaves the host counters as they were.
        let _ = self.backend.sync_load(&mut s.layers);
        s.clone()
    }

    pub fn reset_stats(&self) {
        let mut s = self.stats.lock().unwrap_or_else(|e| e.into_inner());
        let _ = self.backend.sync_load(&mut s.layers);
        s.reset();
    }

    /// Runs the new tokens of every sequence as one batch and returns each sequence's logits
    /// (`[rows, vocab]` flattened: every new token, or the last one).
    pub fn forward(
        &self,
        seqs: &mut [SeqStep<'_, B::Kv>],
        trace: &mut dyn Trace,
    ) -> Result<Vec<Vec<f32>>> {
        let (logits, taken) = self.forward_logits(seqs, trace)?;
        let logits = self.backend.move_to_host(logits)?;
        if trace.wants("logits") {
            trace.record("logits", self.cfg.vocab_size, &logits);
        }
        if taken.len() == 1 {
            // One sequence: its rows are all the logits.
            return Ok(vec![logits]);
        }
        let v = self.cfg.vocab_size;
        let mut out = Vec::with_capacity(taken.len());
        let mut at = 0;
        for t in taken {
            out.push(logits[at * v..(at + t) * v].to_vec());
            at += t;
        }
        Ok(out)
    }

    /// Like [`Model::forward`] for sequences that each want their next token's argmax only:
    /// picked where the logits are (on a GPU only the ids cross to the host). Exact ties go to
    /// the lowest id, as the host sampler's greedy path.
    pub fn forward_argmax(
        &self,
        seqs: &mut [SeqStep<'_, B::Kv>],
        trace: &mut dyn Trace,
    ) -> Result<Vec<u32>> {
        if seqs.iter().any(|s| s.all_logits) || trace.wants("logits") {
            return Ok(self
                .forward(seqs, trace)?
                .iter()
                .map(|l| crate::sampling::argmax(&l[l.len() - self.cfg.vocab_size..]))
                .collect());
        }
        let (logits, _) = self.forward_logits(seqs, trace)?;
        self.backend.argmax_rows(&logits)
    }

    /// Like [`Model::forward`] for sequences that each want one token picked by `rows[i]`
    /// (see [`Backend::sample_rows`]): picked where the logits are.
    pub fn forward_sample(
        &self,
        seqs: &mut [SeqStep<'_, B::Kv>],
        trace: &mut dyn Trace,
        rows: &[moe_kernels::sample::SampleRow],
        edits: &[moe_kernels::sample::Edit],
    ) -> Result<Vec<moe_kernels::sample::Picked>> {
        let (logits, taken) = self.forward_logits(seqs, trace)?;
        if taken.iter().any(|&t| t != 1) || trace.wants("logits") {
            return Err(crate::error::Error::Device(
                "device sampling takes one row per sequence and no logits trace".into(),
            ));
        }
        self.backend.sample_rows(&logits, rows, edits)
    }

    /// The logits of every wanted row (on the backend), and how many rows each sequence got.
    fn forward_logits(
        &self,
        seqs: &mut [SeqStep<'_, B::Kv>],
        trace: &mut dyn Trace,
    ) -> Result<(B::Act, Vec<usize>)> {
        self.backend
            .forward_scope(|| self.forward_logits_here(seqs, trace))
    }

    fn forward_logits_here(
        &self,
        seqs: &mut [SeqStep<'_, B::Kv>],
        trace: &mut dyn Trace,
    ) -> Result<(B::Act, Vec<usize>)> {
        let b = &self.backend;
        let cfg = &self.cfg;
        let h = cfg.hidden_size;
        let mut ids = Vec::new();
        let mut positions = Vec::new();
        let mut rows = Vec::with_capacity(seqs.len());
        for s in seqs.iter() {
            if s.tokens.is_empty() {
                return Err(Error::EmptyPrompt);
            }
            let start = b.kv_len(s.kv);
            let end = start + s.tokens.len();
            if end > cfg.max_position_embeddings {
                return Err(Error::ContextOverflow {
                    len: end,
                    max: cfg.max_position_embeddings,
                });
            }
            if let Some(&id) = s.tokens.iter().find(|&&id| id as usize >= cfg.vocab_size) {
                return Err(Error::TokenOutOfRange {
                    id,
                    vocab: cfg.vocab_size,
                });
            }
            rows.push((ids.len(), s.tokens.len()));
            ids.extend_from_slice(s.tokens);
            positions.extend(start as u32..end as u32);
        }
        let n = ids.len();
        let tap = |trace: &mut dyn Trace, key: &str, a: &B::Act, cols: usize| -> Result<()> {
            if trace.wants(key) {
                trace.record(key, cols, &b.to_host(a)?);
            }
            Ok(())
        };

        let mut x = b.zeros(n, h)?;
        b.embed(&self.embed, &ids, &mut x)?;
        tap(trace, "embeddings", &x, h)?;
        // Per-layer tap keys are formatted only for a trace that records.
        let tracing = trace.enabled();

        let mut normed = b.zeros(n, h)?;
        let mut q = b.zeros(n, cfg.q_width())?;
        let mut k = b.zeros(n, cfg.kv_width())?;
        let mut v = b.zeros(n, cfg.kv_width())?;
        let mut attn_out = b.zeros(n, cfg.q_width())?;
        let mut proj = b.zeros(n, h)?;
        // Outputs of the q/k norms (RMSNorm does not run in place).
        let mut qk_normed = match cfg.attention.qk_norm {
            QkNorm::None => None,
            _ => Some((b.zeros(n, cfg.q_width())?, b.zeros(n, cfg.kv_width())?)),
        };
        // This pass's counts, merged at its end: the shared lock is never held across a
        // parallel region, where a worker could pick up another caller's pass and take it again.
        let mut stats =
            LoadBalanceStats::new(cfg.moe_layer_ids(), cfg.moe.n_experts, cfg.moe.top_k);
        // This pass's own attention metadata and RoPE table (never another caller's).
        let mut pass = b.begin_pass();

        b.rms_norm(
            &x,
            &self.layers[0].input_norm,
            cfg.rms_norm_eps,
            &mut normed,
        )?;
        for (l, layer) in self.layers.iter().enumerate() {
            // Attention block (its input norm ran at the end of the previous layer's
            // feed-forward block or before the loop).
            let at = &layer.attn;
            b.linear_many(
                &normed,
                &[&at.q, &at.k, &at.v],
                &mut [&mut q, &mut k, &mut v],
            )?;
            if let Some([qb, kb, vb]) = &at.qkv_bias {
                b.add_bias(&mut q, qb)?;
                b.add_bias(&mut k, kb)?;
                b.add_bias(&mut v, vb)?;
            }
            if let (Some([qn, kn]), Some((qo, ko))) = (&at.qk_norm, qk_normed.as_mut()) {
                b.rms_norm(&q, qn, cfg.rms_norm_eps, qo)?;
                b.rms_norm(&k, kn, cfg.rms_norm_eps, ko)?;
                std::mem::swap(&mut q, qo);
                std::mem::swap(&mut k, ko);
            }
            if let Some(c) = cfg.attention.clip_qkv {
                b.clamp(&mut q, c)?;
                b.clamp(&mut k, c)?;
                b.clamp(&mut v, c)?;
            }
            b.rope_qk(&mut pass, &mut q, &mut k, &positions, &self.rope)?;
            let mut items: Vec<AttnItem<B::Kv>> = seqs
                .iter_mut()
                .zip(&rows)
                .map(|(s, &(row, n_new))| AttnItem {
                    row,
                    n_new,
                    kv: &mut *s.kv,
                })
                .collect();
            b.attention(
                &mut pass,
                l,
                &self.attn,
                &q,
                &k,
                &v,
                &mut items,
                &mut attn_out,
            )?;
            b.linear(&attn_out, &at.o, &mut proj)?;
            if let Some(ob) = &at.o_bias {
                b.add_bias(&mut proj, ob)?;
            }
            if tracing {
                tap(trace, &format!("layer.{l}.attn_out"), &proj, h)?;
            }

            // Feed-forward block: residual add + norm, then the MoE block (router → dispatch →
            // experts → combine (+ residual) in one backend call, and the shared expert) or
            // the dense MLP.
            b.add_rms_norm(
                &mut x,
                &proj,
                &layer.post_norm,
                cfg.rms_norm_eps,
                &mut normed,
            )?;
            // The feed-forward output is the residual's change (a tap only; no key is formatted
            // for a pass that records nothing).
            let mlp_key = tracing.then(|| format!("layer.{l}.mlp_out"));
            let before_ffn = match &mlp_key {
                Some(key) if trace.wants(key) => Some(b.to_host(&x)?),
                _ => None,
            };
            match &layer.ffn {
                FeedForward::Dense(mlp) => {
                    b.ffn(&normed, mlp, None, &mut x, FfnTaps::default())?;
                }
                FeedForward::Moe(m) => {
                    self.moe_block(l, m, &normed, &mut x, &mut stats, trace, tracing)?;
                }
            }
            if let (Some(before), Some(key)) = (before_ffn, &mlp_key) {
                let after = b.to_host(&x)?;
                let out: Vec<f32> = after.iter().zip(&before).map(|(a, b)| a - b).collect();
                trace.record(key, h, &out);
            }
            if tracing {
                tap(trace, &format!("layer.{l}.hidden_out"), &x, h)?;
            }
            if let Some(next) = self.layers.get(l + 1) {
                b.rms_norm(&x, &next.input_norm, cfg.rms_norm_eps, &mut normed)?;
            }
        }
        self.stats
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .merge(&stats);

        // Only the rows whose logits are wanted go through the final norm and lm_head.
        let mut wanted = Vec::new();
        for (s, &(row, len)) in seqs.iter().zip(&rows) {
            if s.all_logits {
                wanted.extend(row..row + len);
            } else {
                wanted.push(row + len - 1);
            }
        }
        let picked = if wanted.len() == n {
            x
        } else {
            b.gather_rows(&x, &wanted)?
        };
        let mut hidden = b.zeros(wanted.len(), h)?;
        b.rms_norm(&picked, &self.norm, cfg.rms_norm_eps, &mut hidden)?;
        tap(trace, "hidden_states", &hidden, h)?;
        let mut logits = b.zeros(wanted.len(), cfg.vocab_size)?;
        b.linear(
            &hidden,
            self.lm_head.as_ref().unwrap_or(&self.embed),
            &mut logits,
        )?;
        let taken = seqs
            .iter()
            .zip(&rows)
            .map(|(s, &(_, len))| if s.all_logits { len } else { 1 })
            .collect();
        Ok((logits, taken))
    }

    /// `x += MoE(normed)` for one sparse block, counting its routing into `stats`.
    #[allow(clippy::too_many_arguments)]
    fn moe_block(
        &self,
        l: usize,
        m: &MoeBlock<B::Weight, B::Experts>,
        normed: &B::Act,
        x: &mut B::Act,
        stats: &mut LoadBalanceStats,
        trace: &mut dyn Trace,
        tracing: bool,
    ) -> Result<()> {
        let b = &self.backend;
        let taps = MoeTaps {
            router_logits: tracing && trace.wants(&format!("layer.{l}.router_logits")),
            routing: tracing
                && (trace.wants(&format!("layer.{l}.topk_experts"))
                    || trace.wants(&format!("layer.{l}.topk_weights"))),
        };
        let routed = b.moe(
            m.index,
            normed,
            &m.router,
            &m.experts,
            &self.router,
            &mut stats.layers[m.index],
            x,
            taps,
        )?;
        if let Some(logits) = routed.router_logits {
            trace.record(
                &format!("layer.{l}.router_logits"),
                self.cfg.moe.n_experts,
                &logits,
            );
        }
        if let Some(r) = routed.routing {
            let key = format!("layer.{l}.topk_experts");
            if trace.wants(&key) {
                let ids: Vec<f32> = r.expert_ids.iter().map(|&e| e as f32).collect();
                trace.record(&key, r.top_k, &ids);
            }
            let key = format!("layer.{l}.topk_weights");
            if trace.wants(&key) {
                trace.record(&key, r.top_k, &r.weights);
            }
        }
        if let Some((mlp, gate)) = &m.shared {
            let (out_key, gate_key) = (
                format!("layer.{l}.shared_expert_out"),
                format!("layer.{l}.shared_expert_gate"),
            );
            let taps = FfnTaps {
                output: tracing && trace.wants(&out_key),
                gate: tracing && trace.wants(&gate_key),
            };
            let shared = b.ffn(normed, mlp, gate.as_ref(), x, taps)?;
            if let Some(o) = shared.output {
                trace.record(&out_key, self.cfg.hidden_size, &o);
            }
            if let Some(g) = shared.gate {
                trace.record(&gate_key, 1, &g);
            }
        }
        Ok(())
    }
}
