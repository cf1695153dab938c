//! `router_topk`: scores from the router logits (softmax over all experts, or a sigmoid per
//! expert), top-k, optional renormalisation, and the load-balance counters, in one pass over the
//! tokens.
//!
//! - `logits`: `[n_tokens, n_experts]` f32 (the gate projection's output)
//! - `expert_ids`: `[n_tokens, top_k]`, highest score first; exact ties go to the lower id
//! - `weights`: `[n_tokens, top_k]` f32: `s_top / Σ s_top` when renormalising (Mixtral,
//!   Qwen3-MoE), else the scores themselves (Qwen2-MoE, OLMoE)
//! - `load`: counters added to, never reset here (see [`ExpertLoad`])

pub mod cpu;
pub mod cuda;

/// How router logits become per-expert scores.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scoring {
    /// `softmax(logits)` over all experts (Mixtral, Qwen-MoE, OLMoE).
    Softmax,
    /// `sigmoid(logit)` per expert (DeepSeek-V3, GLM-4.5); the load counters' probability mass
    /// and entropy then use the scores normalised to sum to one.
    Sigmoid,
}

#[derive(Clone, Copy, Debug)]
pub struct RouterTopK {
    pub n_experts: usize,
    pub top_k: usize,
    pub scoring: Scoring,
    /// Divide the chosen scores by their sum.
    pub renormalize: bool,
}

impl RouterTopK {
    /// Mixtral's router: softmax, top-k, renormalised.
    pub fn softmax_renormalized(n_experts: usize, top_k: usize) -> Self {
        RouterTopK {
            n_experts,
            top_k,
            scoring: Scoring::Softmax,
            renormalize: true,
        }
    }
}

/// Per-layer routing counters, accumulated over every routed token.
#[derive(Clone, Debug, PartialEq)]
pub struct ExpertLoad {
    pub n_experts: usize,
    /// Tokens routed.
    pub tokens: u64,
    /// `[n_experts]`: tokens that chose each expert.
    pub expert_tokens: Vec<u64>,
    /// `[n_experts]`: Σ over tokens of the softmax probability of each expert.
    pub prob_mass: Vec<f64>,
    /// `[n_experts, n_experts]`: tokens whose chosen set holds both `i` and `j` (symmetric, zero
    /// diagonal).
    pub coselect: Vec<u64>,
    /// Σ over tokens of the router distribution's entropy (nats).
    pub entropy_sum: f64,
}

impl ExpertLoad {
    pub fn new(n_experts: usize) -> Self {
        ExpertLoad {
            n_experts,
            tokens: 0,
            expert_tokens: vec![0; n_experts],
            prob_mass: vec![0.0; n_experts],
            coselect: vec![0; n_experts * n_experts],
            entropy_sum: 0.0,
        }
    }

    pub fn merge(&mut self, other: &ExpertLoad) {
        self.tokens += other.tokens;
        for (a, b) in self.expert_tokens.iter_mut().zip(&other.expert_tokens) {
            *a += b;
        }
        for (a, b) in self.prob_mass.iter_mut().zip(&other.prob_mass) {
            *a += b;
        }
        for (a, b) in self.coselect.iter_mut().zip(&other.coselect) {
            *a += b;
        }
        self.entropy_sum += other.entropy_sum;
    }
}
