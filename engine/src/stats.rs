//! Load-balance statistics, per layer and expert, counted by the router op as it routes (never a
//! second pass) and accumulated across calls until reset.
//!
//! With `f_i` the fraction of routed tokens that chose expert `i` (Σ f_i = top_k) and `P_i` the
//! mean router probability of `i`, the Switch auxiliary loss is `E · Σ_i f_i · P_i`, exactly as
//! transformers' `load_balancing_loss_func` computes it (a perfectly balanced router gives top_k).
//! The loss over all layers pools every layer's tokens first; it is not the mean of the per-layer
//! losses.

use moe_kernels::router_topk::ExpertLoad;
use serde::{Deserialize, Serialize};

/// Counters of the MoE layers only: `layers[i]` belongs to decoder layer `layer_ids[i]` (dense
/// layers route nothing and have no entry).
#[derive(Clone, Debug, PartialEq)]
pub struct LoadBalanceStats {
    pub top_k: usize,
    pub layer_ids: Vec<usize>,
    pub layers: Vec<ExpertLoad>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LayerReport {
    /// The decoder layer's index (MoE layers only are reported).
    pub layer: usize,
    /// Tokens routed through this layer.
    pub tokens: u64,
    /// `[n_experts]` tokens that chose each expert.
    pub expert_tokens: Vec<u64>,
    /// `[n_experts]` Σ of router probabilities per expert.
    pub router_mass: Vec<f64>,
    /// `[n_experts]` f_i = expert_tokens / tokens (sums to top_k).
    pub fraction: Vec<f64>,
    /// `[n_experts]` P_i = router_mass / tokens (sums to 1).
    pub mean_prob: Vec<f64>,
    pub aux_loss: f64,
    /// Coefficient of variation (population std / mean) of expert_tokens.
    pub load_cv: f64,
    /// max(expert_tokens) / mean(expert_tokens).
    pub max_over_mean: f64,
    /// Mean entropy of the router distribution, nats (ln E at most).
    pub mean_entropy: f64,
    /// `[n_experts][n_experts]` tokens that chose both i and j.
    pub coselect: Vec<Vec<u64>>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StatsReport {
    /// MoE layers reported (dense layers are left out).
    pub n_layers: usize,
    pub n_experts: usize,
    pub top_k: usize,
    /// Switch aux loss over all layers' tokens pooled (transformers' `aux_loss`).
    pub aux_loss: f64,
    pub layers: Vec<LayerReport>,
}

fn aux(n_experts: usize, tokens: u64, counts: &[u64], mass: &[f64]) -> f64 {
    if tokens == 0 {
        return 0.0;
    }
    let t = tokens as f64;
    n_experts as f64
        * counts
            .iter()
            .zip(mass)
            .map(|(&c, &m)| (c as f64 / t) * (m / t))
            .sum::<f64>()
}

impl LoadBalanceStats {
    /// Counters for the MoE layers `layer_ids` (decoder layer indices, ascending).
    pub fn new(layer_ids: Vec<usize>, n_experts: usize, top_k: usize) -> Self {
        LoadBalanceStats {
            top_k,
            layers: layer_ids
                .iter()
                .map(|_| ExpertLoad::new(n_experts))
                .collect(),
            layer_ids,
        }
    }

    pub fn reset(&mut self) {
        for l in &mut self.layers {
            *l = ExpertLoad::new(l.n_experts);
        }
    }

    pub fn merge(&mut self, other: &LoadBalanceStats) {
        for (a, b) in self.layers.iter_mut().zip(&other.layers) {
            a.merge(b);
        }
    }

    pub fn report(&self) -> StatsReport {
        let n_experts = self.layers.first().map_or(0, |l| l.n_experts);
        let layers: Vec<LayerReport> = self
            .layers
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let t = l.tokens.max(1) as f64;
                let counts: Vec<f64> = l.expert_tokens.iter().map(|&c| c as f64).collect();
                let mean = counts.iter().sum::<f64>() / n_experts.max(1) as f64;
                let var = counts.iter().map(|c| (c - mean).powi(2)).sum::<f64>()
                    / n_experts.max(1) as f64;
                let max = counts.iter().cloned().fold(0.0, f64::max);
                LayerReport {
                    layer: self.layer_ids[i],
                    tokens: l.tokens,
                    expert_tokens: l.expert_tokens.clone(),
                    router_mass: l.prob_mass.clone(),
                    fraction: counts.iter().map(|c| c / t).collect(),
                    mean_prob: l.prob_mass.iter().map(|m| m / t).collect(),
                    aux_loss: aux(n_experts, l.tokens, &l.expert_tokens, &l.prob_mass),
                    load_cv: if mean > 0.0 { var.sqrt() / mean } else { 0.0 },
                    max_over_mean: if mean > 0.0 { max / mean } else { 0.0 },
                    mean_entropy: l.entropy_sum / t,
                    coselect: l
                        .coselect
                        .chunks(n_experts.max(1))
                        .map(|r| r.to_vec())
                        .collect(),
                }
            })
            .collect();
        let mut pooled = ExpertLoad::new(n_experts);
        for l in &self.layers {
            pooled.merge(l);
        }
        StatsReport {
            n_layers: self.layers.len(),
            n_experts,
            top_k: self.top_k,
            aux_loss: aux(
                n_experts,
                pooled.tokens,
                &pooled.expert_tokens,
                &pooled.prob_mass,
            ),
            layers,
        }
    }
}

impl StatsReport {
    /// A fixed-width table: one row per layer and expert.
    pub fn table(&self) -> String {
        let mut s = format!(
            "aux_loss (all layers) {:.6}   experts {}   top_k {}\n",
            self.aux_loss, self.n_experts, self.top_k
        );
        for l in &self.layers {
            s += &format!(
                "layer {:>2}: tokens {:>7}  aux {:.4}  cv {:.3}  max/mean {:.3}  entropy {:.3}\n",
                l.layer, l.tokens, l.aux_loss, l.load_cv, l.max_over_mean, l.mean_entropy
            );
            s += "  expert   tokens   f_i      P_i      mass\n";
            for e in 0..self.n_experts {
                s += &format!(
                    "  {:>6} {:>8}   {:.4}   {:.4}   {:.3}\n",
                    e, l.expert_tokens[e], l.fraction[e], l.mean_prob[e], l.router_mass[e]
                );
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aux_loss_by_formula_on_hand_built_routing() {
        // 2 experts, top-1, 4 tokens: expert 0 gets 3 tokens with p = 0.75 each, expert 1 one token.
        let mut s = LoadBalanceStats::new(vec![0], 2, 1);
        let l = &mut s.layers[0];
        l.tokens = 4;
        l.expert_tokens = vec![3, 1];
        l.prob_mass = vec![2.5, 1.5];
        let r = s.report();
        let want = 2.0 * (0.75 * (2.5 / 4.0) + 0.25 * (1.5 / 4.0));
        assert!((r.aux_loss - want).abs() < 1e-12);
        assert!((r.layers[0].max_over_mean - 1.5).abs() < 1e-12);
        assert!((r.layers[0].load_cv - 0.5).abs() < 1e-12);
        s.reset();
        assert_eq!(s.report().layers[0].tokens, 0);
    }
}
