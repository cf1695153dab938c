//! `ModelConfig`: what a HuggingFace `config.json` says, in both the Hub layout (top-level
//! `rope_theta`, `torch_dtype`) and the transformers 5 layout (`rope_parameters`, `dtype`,
//! `head_dim: null`), read by the model's family into shared attention and MoE specs and
//! validated before any weight is read.

use crate::error::{Error, Result};
use crate::models::Family;
use moe_kernels::router_topk::Scoring;
use serde::Deserialize;
use std::path::Path;

/// A decoder-only MoE transformer as the shared layers need it: every family's `config.json`
/// becomes one of these (see [`crate::models`]).
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// The registry's name of the family (`mixtral`, `qwen3_moe`, ...).
    pub family: &'static str,
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    /// Width of the dense MLP layers (unused where every layer is MoE).
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f32,
    pub max_position_embeddings: usize,
    pub sliding_window: Option<usize>,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub hidden_act: String,
    pub attention: AttentionSpec,
    pub moe: MoeSpec,
    /// Per decoder layer: a sparse MoE block (true) or a dense SwiGLU MLP.
    pub moe_layers: Vec<bool>,
}

/// Options of the grouped-query attention block.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct AttentionSpec {
    /// q, k and v projections carry a bias.
    pub qkv_bias: bool,
    /// The output projection carries a bias.
    pub o_bias: bool,
    pub qk_norm: QkNorm,
    /// Clamp q, k and v to `±clip` after the norms, before RoPE (OLMoE's `clip_qkv`).
    pub clip_qkv: Option<f32>,
    /// RoPE pairs dims `(2i, 2i + 1)` instead of `(i, i + head_dim/2)` (GGUF llama weights,
    /// whose q/k rows llama.cpp's converter permuted to that layout).
    pub rope_interleaved: bool,
}

/// RMSNorm of q and k before RoPE.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum QkNorm {
    #[default]
    None,
    /// One `[head_dim]` weight applied to each head (Qwen3-MoE).
    PerHead,
    /// Over the whole projection, all heads together (OLMoE).
    Whole,
}

/// The sparse MoE block as data.
#[derive(Clone, Debug, PartialEq)]
pub struct MoeSpec {
    pub n_experts: usize,
    pub top_k: usize,
    /// Width of one routed expert.
    pub expert_width: usize,
    pub scoring: Scoring,
    /// Divide the top-k scores by their sum.
    pub renormalize: bool,
    pub shared_expert: Option<SharedExpert>,
}

/// An always-on SwiGLU expert added to the routed ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SharedExpert {
    pub width: usize,
    /// Scaled per token by `sigmoid(h · gateᵀ)` (Qwen2-MoE), else added as is.
    pub sigmoid_gate: bool,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(u32),
    Many(Vec<u32>),
}

#[derive(Deserialize)]
struct RopeParameters {
    rope_theta: Option<f64>,
    rope_type: Option<String>,
}

/// `config.json` as written, in either layout; the families read what they use from it.
#[derive(Deserialize, Default)]
pub struct RawConfig {
    pub architectures: Option<Vec<String>>,
    pub model_type: Option<String>,
    pub vocab_size: Option<usize>,
    pub hidden_size: Option<usize>,
    pub intermediate_size: Option<usize>,
    pub moe_intermediate_size: Option<usize>,
    pub shared_expert_intermediate_size: Option<usize>,
    pub num_hidden_layers: Option<usize>,
    pub num_attention_heads: Option<usize>,
    pub num_key_value_heads: Option<usize>,
    pub head_dim: Option<usize>,
    pub num_local_experts: Option<usize>,
    pub num_experts: Option<usize>,
    pub num_experts_per_tok: Option<usize>,
    pub norm_topk_prob: Option<bool>,
    pub decoder_sparse_step: Option<usize>,
    pub mlp_only_layers: Option<Vec<usize>>,
    pub attention_bias: Option<bool>,
    pub clip_qkv: Option<f64>,
    pub use_sliding_window: Option<bool>,
    pub rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    pub rope_scaling: Option<serde_json::Value>,
    pub rms_norm_eps: Option<f64>,
    pub max_position_embeddings: Option<usize>,
    pub sliding_window: Option<usize>,
    pub tie_word_embeddings: Option<bool>,
    pub bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    pub hidden_act: Option<String>,
}

/// The largest layer, head or expert count a config may give (DeepSeek-V3 has 256 experts and
/// 61 layers).
const MAX_COUNT: usize = 1 << 16;

/// `Some(key)`'s value, or a named error.
pub fn required<T: Copy>(v: Option<T>, key: &str) -> Result<T> {
    v.ok_or_else(|| Error::Config(format!("`{key}` is missing")))
}

impl RawConfig {
    /// The fields every family shares, with `moe` and `moe_layers` left for the family to set
    /// (every layer MoE, softmax routing renormalised, no shared expert, by default).
    pub fn base(&self, family: &Family) -> Result<ModelConfig> {
        let hidden_size = required(self.hidden_size, "hidden_size")?;
        let num_attention_heads = required(self.num_attention_heads, "num_attention_heads")?;
        let num_hidden_layers = required(self.num_hidden_layers, "num_hidden_layers")?;
        // Nothing is sized from a count before it is bounded; the checkpoint's tensors then
        // confirm every count (`Model::load`).
        for (key, v) in [
            ("num_hidden_layers", Some(num_hidden_layers)),
            ("num_attention_heads", Some(num_attention_heads)),
            ("num_key_value_heads", self.num_key_value_heads),
            ("num_local_experts", self.num_local_experts),
            ("num_experts", self.num_experts),
            ("num_experts_per_tok", self.num_experts_per_tok),
        ] {
            if let Some(v) = v.filter(|&v| v > MAX_COUNT) {
                return Err(Error::Config(format!(
                    "`{key}` is {v}, more than any checkpoint holds (at most {MAX_COUNT})"
                )));
            }
        }
        let rope_theta = self
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(self.rope_theta)
            .unwrap_or(1e6);
        if let Some(t) = self
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_type.as_deref())
        {
            if t != "default" {
                return Err(Error::Config(format!(
                    "rope_type `{t}` is not supported for {} yet (only `default`)",
                    family.name
                )));
            }
        }
        if let Some(s) = self.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            return Err(Error::Config(format!(
                "rope_scaling {s} is not supported for {} yet",
                family.name
            )));
        }
        let top_k = required(self.num_experts_per_tok, "num_experts_per_tok")?;
        Ok(ModelConfig {
            family: family.name,
            architecture: self
                .architectures
                .as_ref()
                .and_then(|a| a.first().cloned())
                .unwrap_or_else(|| family.architectures[0].to_string()),
            vocab_size: required(self.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: self.intermediate_size.unwrap_or(0),
            num_hidden_layers,
            num_attention_heads,
            num_key_value_heads: self.num_key_value_heads.unwrap_or(num_attention_heads),
            head_dim: self.head_dim.unwrap_or(if num_attention_heads > 0 {
                hidden_size / num_attention_heads
            } else {
                0
            }),
            rope_theta,
            rms_norm_eps: self.rms_norm_eps.unwrap_or(1e-5) as f32,
            max_position_embeddings: self.max_position_embeddings.unwrap_or(32768),
            sliding_window: self.sliding_window,
            tie_word_embeddings: self.tie_word_embeddings.unwrap_or(false),
            bos_token_id: self.bos_token_id,
            eos_token_ids: match &self.eos_token_id {
                Some(OneOrMany::One(id)) => vec![*id],
                Some(OneOrMany::Many(ids)) => ids.clone(),
                None => vec![],
            },
            hidden_act: self.hidden_act.clone().unwrap_or_else(|| "silu".into()),
            attention: AttentionSpec::default(),
            moe: MoeSpec {
                n_experts: 0,
                top_k,
                expert_width: 0,
                scoring: Scoring::Softmax,
                renormalize: true,
                shared_expert: None,
            },
            moe_layers: vec![true; num_hidden_layers],
        })
    }

    /// Qwen-style dense layers: layer `l` is dense if listed in `mlp_only_layers` or if
    /// `(l + 1) % decoder_sparse_step != 0`.
    pub fn qwen_moe_layers(&self, n_layers: usize) -> Result<Vec<bool>> {
        let step = self.decoder_sparse_step.unwrap_or(1);
        if step == 0 {
            return Err(Error::Config(
                "`decoder_sparse_step` must be positive".into(),
            ));
        }
        let only = self.mlp_only_layers.clone().unwrap_or_default();
        if let Some(l) = only.iter().find(|&&l| l >= n_layers) {
            return Err(Error::Config(format!(
                "`mlp_only_layers` names layer {l} of {n_layers}"
            )));
        }
        Ok((0..n_layers)
            .map(|l| !only.contains(&l) && (l + 1) % step == 0)
            .collect())
    }
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::weights::read_regular_string(path)?;
        Self::from_json(&text).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    /// Parses `config.json` through the family its `model_type` (or `architectures`) names.
    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("not a valid config.json: {e}")))?;
        let family = crate::models::family_of(&raw)?;
        let cfg = (family.config)(&raw)?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the invariants the forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(Error::Config(m));
        crate::models::family(self.family)?;
        let any_dense = self.moe_layers.iter().any(|m| !m);
        for (name, v, needed) in [
            ("vocab_size", self.vocab_size, true),
            ("hidden_size", self.hidden_size, true),
            ("intermediate_size", self.intermediate_size, any_dense),
            ("moe_intermediate_size", self.moe.expert_width, true),
            ("num_hidden_layers", self.num_hidden_layers, true),
            ("num_attention_heads", self.num_attention_heads, true),
            ("num_key_value_heads", self.num_key_value_heads, true),
            ("head_dim", self.head_dim, true),
            ("num_local_experts", self.moe.n_experts, true),
            ("num_experts_per_tok", self.moe.top_k, true),
            (
                "max_position_embeddings",
                self.max_position_embeddings,
                true,
            ),
        ] {
            if needed && v == 0 {
                return fail(format!("`{name}` must be positive"));
            }
        }
        if self.moe_layers.len() != self.num_hidden_layers {
            return fail(format!(
                "{} layer kinds for {} layers",
                self.moe_layers.len(),
                self.num_hidden_layers
            ));
        }
        if self.moe.top_k > self.moe.n_experts {
            return fail(format!(
                "num_experts_per_tok ({}) is larger than num_local_experts ({})",
                self.moe.top_k, self.moe.n_experts
            ));
        }
        if let Some(s) = self.moe.shared_expert {
            if s.width == 0 {
                return fail("`shared_expert_intermediate_size` must be positive".into());
            }
        }
        if self.num_attention_heads % self.num_key_value_heads != 0 {
            return fail(format!(
                "num_attention_heads ({}) is not a multiple of num_key_value_heads ({})",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim % 2 != 0 {
            return fail(format!(
                "head_dim ({}) must be even for rotary embeddings",
                self.head_dim
            ));
        }
        if self.hidden_act != "silu" {
            return fail(format!(
                "hidden_act `{}` is not supported (silu)",
                self.hidden_act
            ));
        }
        if !(self.rms_norm_eps > 0.0 && self.rms_norm_eps.is_finite())
            || !(self.rope_theta > 0.0 && (self.rope_theta as f32).is_finite())
        {
            return fail(format!(
                "rms_norm_eps ({}) and rope_theta ({}) must be positive and finite in f32",
                self.rms_norm_eps, self.rope_theta
            ));
        }
        if self.sliding_window == Some(0) {
            return fail("sliding_window must be positive or null".into());
        }
        if let Some(c) = self.attention.clip_qkv {
            if !(c > 0.0) {
                return fail(format!("clip_qkv ({c}) must be positive or null"));
            }
        }
        Ok(())
    }

    pub fn q_width(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    pub fn kv_width(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Indices of the MoE layers, ascending.
    pub fn moe_layer_ids(&self) -> Vec<usize> {
        (0..self.num_hidden_layers)
            .filter(|&l| self.moe_layers[l])
            .collect()
    }

    fn attn_params(&self) -> usize {
        let h = self.hidden_size;
        let mut bias = 0;
        if self.attention.qkv_bias {
            bias += self.q_width() + 2 * self.kv_width();
        }
        if self.attention.o_bias {
            bias += self.hidden_size;
        }
        bias += match self.attention.qk_norm {
            QkNorm::None => 0,
            QkNorm::PerHead => 2 * self.head_dim,
            QkNorm::Whole => self.q_width() + self.kv_width(),
        };
        h * self.q_width() * 2 + h * self.kv_width() * 2 + bias
    }

    /// Parameters of one layer's feed-forward block with `experts` routed experts.
    fn ffn_params(&self, moe: bool, experts: usize) -> usize {
        let h = self.hidden_size;
        if !moe {
            return 3 * h * self.intermediate_size;
        }
        let shared = self
            .moe
            .shared_expert
            .map_or(0, |s| 3 * h * s.width + if s.sigmoid_gate { h } else { 0 });
        h * self.moe.n_experts + experts * 3 * h * self.moe.expert_width + shared
    }

    /// Parameters touched per token: attention, router, `top_k` experts (and shared ones), one
    /// embedding row and the output head.
    pub fn active_params(&self) -> usize {
        let h = self.hidden_size;
        let layers: usize = self
            .moe_layers
            .iter()
            .map(|&m| self.attn_params() + self.ffn_params(m, self.moe.top_k) + 2 * h)
            .sum();
        layers + h + self.vocab_size * h + h
    }

    pub fn total_params(&self) -> usize {
        let h = self.hidden_size;
        let layers: usize = self
            .moe_layers
            .iter()
            .map(|&m| self.attn_params() + self.ffn_params(m, self.moe.n_experts) + 2 * h)
            .sum();
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * h
        };
        layers + self.vocab_size * h + h + head
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"{"architectures":["MixtralForCausalLM"],"vocab_size":32,"hidden_size":8,
        "intermediate_size":16,"num_hidden_layers":1,"num_attention_heads":2,"num_key_value_heads":1,
        "num_local_experts":4,"num_experts_per_tok":2,"rope_theta":10000.0,"eos_token_id":2}"#;

    fn with(key: &str, value: &str) -> String {
        let mut v: serde_json::Value = serde_json::from_str(BASE).unwrap();
        v[key] = serde_json::from_str(value).unwrap();
        v.to_string()
    }

    #[test]
    fn both_config_styles_parse() {
        let c = ModelConfig::from_json(BASE).unwrap();
        assert_eq!(
            (c.head_dim, c.rope_theta, c.eos_token_ids.clone()),
            (4, 1e4, vec![2])
        );
        let t5 = with(
            "rope_parameters",
            r#"{"rope_theta": 5.0, "rope_type": "default"}"#,
        );
        let c =
            ModelConfig::from_json(&with("head_dim", "null").replace("10000.0", "1.0")).unwrap();
        assert_eq!(c.head_dim, 4);
        assert_eq!(ModelConfig::from_json(&t5).unwrap().rope_theta, 5.0);
    }

    #[test]
    fn inconsistent_configs_are_named() {
        let e = ModelConfig::from_json(&with("num_experts_per_tok", "5"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("num_experts_per_tok (5) is larger than num_local_experts (4)"),
            "{e}"
        );
        let e = ModelConfig::from_json(&with("num_key_value_heads", "3"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("not a multiple of num_key_value_heads (3)"),
            "{e}"
        );
        let e = ModelConfig::from_json(&with("hidden_size", "null"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("`hidden_size` is missing"), "{e}");
    }
}
