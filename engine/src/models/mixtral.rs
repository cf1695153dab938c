//! `MixtralForCausalLM`, read top to bottom in data-path order:
//! embedding → [rms_norm → attention(+KV cache) → +residual → rms_norm → router → dispatch →
//! experts → combine(+residual)] × L → final rms_norm → lm_head.

use crate::backend::{AttnItem, Backend, ExpertWeights, MoeTaps};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::stats::LoadBalanceStats;
use crate::trace::Trace;
use crate::weights::WeightTensor;
use crate::weights::Weights;
use moe_kernels::attention::Attention;
use moe_kernels::rope::Rope;
use moe_kernels::router_topk::RouterTopK;
use std::sync::Mutex;

struct Layer<W> {
    input_norm: W,
    q: W,
    k: W,
    v: W,
    o: W,
    post_norm: W,
    /// Router `[n_experts, hidden]`.
    gate: W,
}

pub struct Mixtral<B: Backend> {
    pub cfg: ModelConfig,
    pub backend: B,
    embed: B::Weight,
    layers: Vec<Layer<B::Weight>>,
    experts: Vec<B::Experts>,
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

impl<B: Backend> Mixtral<B> {
    /// Takes every tensor the config implies, checking names, shapes and dtypes; `progress(done,
    /// total)` is called as tensors are checked.
    pub fn load(
        cfg: ModelConfig,
        weights: &Weights,
        backend: B,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Self> {
        cfg.validate()?;
        let (h, f, e) = (
            cfg.hidden_size,
            cfg.intermediate_size,
            cfg.num_local_experts,
        );
        let total = 3 + cfg.num_hidden_layers * (7 + 3 * e);
        let mut done = 0;
        let mut take = |name: String, shape: &[usize]| -> Result<B::Weight> {
            let t = weights.expect(&name, shape)?;
            done += 1;
            progress(done, total);
            backend.weight(t)
        };
        let embed = take("model.embed_tokens.weight".into(), &[cfg.vocab_size, h])?;
        let mut layers = Vec::with_capacity(cfg.num_hidden_layers);
        let mut experts = Vec::with_capacity(cfg.num_hidden_layers);
        for l in 0..cfg.num_hidden_layers {
            let p = format!("model.layers.{l}");
            let m = format!("{p}.block_sparse_moe");
            let mut host = |name: String, shape: &[usize]| -> Result<WeightTensor> {
                let t = weights.expect(&name, shape)?;
                done += 1;
                progress(done, total);
                Ok(t)
            };
            let layer_experts = (0..e)
                .map(|x| {
                    Ok(ExpertWeights {
                        w1: host(format!("{m}.experts.{x}.w1.weight"), &[f, h])?,
                        w3: host(format!("{m}.experts.{x}.w3.weight"), &[f, h])?,
                        w2: host(format!("{m}.experts.{x}.w2.weight"), &[h, f])?,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            experts.push(backend.experts(layer_experts)?);
            let mut take = |name: String, shape: &[usize]| -> Result<B::Weight> {
                let t = weights.expect(&name, shape)?;
                done += 1;
                progress(done, total);
                backend.weight(t)
            };
            layers.push(Layer {
                input_norm: take(format!("{p}.input_layernorm.weight"), &[h])?,
                q: take(format!("{p}.self_attn.q_proj.weight"), &[cfg.q_width(), h])?,
                k: take(format!("{p}.self_attn.k_proj.weight"), &[cfg.kv_width(), h])?,
                v: take(format!("{p}.self_attn.v_proj.weight"), &[cfg.kv_width(), h])?,
                o: take(format!("{p}.self_attn.o_proj.weight"), &[h, cfg.q_width()])?,
                post_norm: take(format!("{p}.post_attention_layernorm.weight"), &[h])?,
                gate: take(format!("{m}.gate.weight"), &[e, h])?,
            });
        }
        let mut take = |name: String, shape: &[usize]| -> Result<B::Weight> {
            let t = weights.expect(&name, shape)?;
            done += 1;
            progress(done, total);
            backend.weight(t)
        };
        let norm = take("model.norm.weight".into(), &[h])?;
        let lm_head = if cfg.tie_word_embeddings {
            None
        } else {
            Some(take("lm_head.weight".into(), &[cfg.vocab_size, h])?)
        };
        let mut weight_bytes = backend.weight_bytes(&embed) + backend.weight_bytes(&norm);
        weight_bytes += lm_head.as_ref().map_or(0, |w| backend.weight_bytes(w));
        for l in &layers {
            for w in [&l.input_norm, &l.q, &l.k, &l.v, &l.o, &l.post_norm, &l.gate] {
                weight_bytes += backend.weight_bytes(w);
            }
        }
        for x in &experts {
            weight_bytes += backend.experts_bytes(x);
        }
        Ok(Mixtral {
            rope: Rope::new(cfg.head_dim, cfg.rope_theta),
            attn: Attention {
                n_heads: cfg.num_attention_heads,
                n_kv_heads: cfg.num_key_value_heads,
                head_dim: cfg.head_dim,
                scale: (cfg.head_dim as f32).powf(-0.5),
                sliding_window: cfg.sliding_window,
            },
            router: RouterTopK {
                n_experts: e,
                top_k: cfg.num_experts_per_tok,
            },
            stats: Mutex::new(LoadBalanceStats::new(
                cfg.num_hidden_layers,
                e,
                cfg.num_experts_per_tok,
            )),
            cfg,
            backend,
            embed,
            layers,
            experts,
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

    /// Like [`Mixtral::forward`] for sequences that each want their next token's argmax only:
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

    /// Like [`Mixtral::forward`] for sequences that each want one token picked by `rows[i]`
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
        // This pass's counts, merged at its end: the shared lock is never held across a
        // parallel region, where a worker could pick up another caller's pass and take it again.
        let mut stats = LoadBalanceStats::new(
            cfg.num_hidden_layers,
            cfg.num_local_experts,
            cfg.num_experts_per_tok,
        );

        b.rms_norm(
            &x,
            &self.layers[0].input_norm,
            cfg.rms_norm_eps,
            &mut normed,
        )?;
        for (l, layer) in self.layers.iter().enumerate() {
            // Attention block (its input norm ran at the end of the previous layer's MoE block
            // or before the loop).
            b.linear_many(
                &normed,
                &[&layer.q, &layer.k, &layer.v],
                &mut [&mut q, &mut k, &mut v],
            )?;
            b.rope_qk(&mut q, &mut k, &positions, &self.rope)?;
            let mut items: Vec<AttnItem<B::Kv>> = seqs
                .iter_mut()
                .zip(&rows)
                .map(|(s, &(row, n_new))| AttnItem {
                    row,
                    n_new,
                    kv: &mut *s.kv,
                })
                .collect();
            b.attention(l, &self.attn, &q, &k, &v, &mut items, &mut attn_out)?;
            b.linear(&attn_out, &layer.o, &mut proj)?;

            // Sparse MoE block: residual add + norm, then router → dispatch → experts →
            // combine (+ residual) in one backend call.
            b.add_rms_norm(
                &mut x,
                &proj,
                &layer.post_norm,
                cfg.rms_norm_eps,
                &mut normed,
            )?;
            let taps = MoeTaps {
                router_logits: tracing && trace.wants(&format!("layer.{l}.router_logits")),
                routing: tracing
                    && (trace.wants(&format!("layer.{l}.topk_experts"))
                        || trace.wants(&format!("layer.{l}.topk_weights"))),
            };
            let routed = b.moe(
                l,
                &normed,
                &layer.gate,
                &self.experts[l],
                &self.router,
                &mut stats.layers[l],
                &mut x,
                taps,
            )?;
            if let Some(logits) = routed.router_logits {
                trace.record(
                    &format!("layer.{l}.router_logits"),
                    cfg.num_local_experts,
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
}
