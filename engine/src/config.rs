//! `ModelConfig`: what a HuggingFace `config.json` says, in both the Hub layout (top-level
//! `rope_theta`, `torch_dtype`) and the transformers 5 layout (`rope_parameters`, `dtype`,
//! `head_dim: null`), validated before any weight is read.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::Path;

#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    pub architecture: String,
    pub vocab_size: usize,
    pub hidden_size: usize,
    pub intermediate_size: usize,
    pub num_hidden_layers: usize,
    pub num_attention_heads: usize,
    pub num_key_value_heads: usize,
    pub head_dim: usize,
    pub num_local_experts: usize,
    pub num_experts_per_tok: usize,
    pub rope_theta: f64,
    pub rms_norm_eps: f32,
    pub max_position_embeddings: usize,
    pub sliding_window: Option<usize>,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub hidden_act: String,
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

#[derive(Deserialize)]
struct RawConfig {
    architectures: Option<Vec<String>>,
    model_type: Option<String>,
    vocab_size: Option<usize>,
    hidden_size: Option<usize>,
    intermediate_size: Option<usize>,
    num_hidden_layers: Option<usize>,
    num_attention_heads: Option<usize>,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    num_local_experts: Option<usize>,
    num_experts_per_tok: Option<usize>,
    rope_theta: Option<f64>,
    rope_parameters: Option<RopeParameters>,
    rope_scaling: Option<serde_json::Value>,
    rms_norm_eps: Option<f64>,
    max_position_embeddings: Option<usize>,
    sliding_window: Option<usize>,
    tie_word_embeddings: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<OneOrMany>,
    hidden_act: Option<String>,
}

fn required<T>(v: Option<T>, key: &str) -> Result<T> {
    v.ok_or_else(|| Error::Config(format!("`{key}` is missing")))
}

impl ModelConfig {
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::from_json(&text).map_err(|e| match e {
            Error::Config(m) => Error::Config(format!("{}: {m}", path.display())),
            other => other,
        })
    }

    pub fn from_json(text: &str) -> Result<Self> {
        let raw: RawConfig = serde_json::from_str(text)
            .map_err(|e| Error::Config(format!("not a valid config.json: {e}")))?;
        let architecture = raw
            .architectures
            .and_then(|a| a.into_iter().next())
            .or(raw.model_type)
            .unwrap_or_else(|| "MixtralForCausalLM".into());
        let hidden_size = required(raw.hidden_size, "hidden_size")?;
        let num_attention_heads = required(raw.num_attention_heads, "num_attention_heads")?;
        let rope_theta = raw
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_theta)
            .or(raw.rope_theta)
            .unwrap_or(1e6);
        if let Some(t) = raw
            .rope_parameters
            .as_ref()
            .and_then(|r| r.rope_type.as_deref())
        {
            if t != "default" {
                return Err(Error::Config(format!(
                    "rope_type `{t}` is not supported (only `default`)"
                )));
            }
        }
        if let Some(s) = raw.rope_scaling.as_ref().filter(|v| !v.is_null()) {
            return Err(Error::Config(format!("rope_scaling {s} is not supported")));
        }
        let cfg = ModelConfig {
            architecture,
            vocab_size: required(raw.vocab_size, "vocab_size")?,
            hidden_size,
            intermediate_size: required(raw.intermediate_size, "intermediate_size")?,
            num_hidden_layers: required(raw.num_hidden_layers, "num_hidden_layers")?,
            num_attention_heads,
            num_key_value_heads: raw.num_key_value_heads.unwrap_or(num_attention_heads),
            head_dim: raw.head_dim.unwrap_or(if num_attention_heads > 0 {
                hidden_size / num_attention_heads
            } else {
                0
            }),
            num_local_experts: required(raw.num_local_experts, "num_local_experts")?,
            num_experts_per_tok: required(raw.num_experts_per_tok, "num_experts_per_tok")?,
            rope_theta,
            rms_norm_eps: raw.rms_norm_eps.unwrap_or(1e-5) as f32,
            max_position_embeddings: raw.max_position_embeddings.unwrap_or(32768),
            sliding_window: raw.sliding_window,
            tie_word_embeddings: raw.tie_word_embeddings.unwrap_or(false),
            bos_token_id: raw.bos_token_id,
            eos_token_ids: match raw.eos_token_id {
                Some(OneOrMany::One(id)) => vec![id],
                Some(OneOrMany::Many(ids)) => ids,
                None => vec![],
            },
            hidden_act: raw.hidden_act.unwrap_or_else(|| "silu".into()),
        };
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks the invariants the forward pass relies on.
    pub fn validate(&self) -> Result<()> {
        let fail = |m: String| Err(Error::Config(m));
        if !matches!(self.architecture.as_str(), "MixtralForCausalLM" | "mixtral") {
            return fail(format!(
                "architecture `{}` is not supported (MixtralForCausalLM)",
                self.architecture
            ));
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
            ("num_key_value_heads", self.num_key_value_heads),
            ("head_dim", self.head_dim),
            ("num_local_experts", self.num_local_experts),
            ("num_experts_per_tok", self.num_experts_per_tok),
            ("max_position_embeddings", self.max_position_embeddings),
        ] {
            if v == 0 {
                return fail(format!("`{name}` must be positive"));
            }
        }
        if self.num_experts_per_tok > self.num_local_experts {
            return fail(format!(
                "num_experts_per_tok ({}) is larger than num_local_experts ({})",
                self.num_experts_per_tok, self.num_local_experts
            ));
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
        if !(self.rms_norm_eps > 0.0) || !(self.rope_theta > 0.0) {
            return fail("rms_norm_eps and rope_theta must be positive".into());
        }
        if self.sliding_window == Some(0) {
            return fail("sliding_window must be positive or null".into());
        }
        Ok(())
    }

    pub fn q_width(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    pub fn kv_width(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Parameters touched per token: attention, router, `top_k` experts, one embedding row and the
    /// output head.
    pub fn active_params(&self) -> usize {
        let (h, f) = (self.hidden_size, self.intermediate_size);
        let attn = h * self.q_width() * 2 + h * self.kv_width() * 2;
        let per_layer =
            attn + h * self.num_local_experts + self.num_experts_per_tok * 3 * h * f + 2 * h;
        self.num_hidden_layers * per_layer + h + self.vocab_size * h + h
    }

    pub fn total_params(&self) -> usize {
        let (h, f) = (self.hidden_size, self.intermediate_size);
        let attn = h * self.q_width() * 2 + h * self.kv_width() * 2;
        let per_layer =
            attn + h * self.num_local_experts + self.num_local_experts * 3 * h * f + 2 * h;
        let head = if self.tie_word_embeddings {
            0
        } else {
            self.vocab_size * h
        };
        self.num_hidden_layers * per_layer + self.vocab_size * h + h + head
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
