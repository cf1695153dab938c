//! OLMoE (`OlmoeForCausalLM`): q/k RMSNorm over the whole projection (all heads together),
//! optional `clip_qkv`, softmax router with the raw top-k probabilities, every layer MoE; the
//! expert width is `intermediate_size`.

use super::{Family, HF_MOE_NAMES};
use crate::config::{required, ModelConfig, QkNorm, RawConfig};
use crate::error::Result;

pub const FAMILY: Family = Family {
    name: "olmoe",
    model_types: &["olmoe"],
    architectures: &["OlmoeForCausalLM"],
    config,
    names: HF_MOE_NAMES,
};

fn config(raw: &RawConfig) -> Result<ModelConfig> {
    let mut c = raw.base(&FAMILY)?;
    c.attention.qkv_bias = raw.attention_bias.unwrap_or(false);
    c.attention.o_bias = c.attention.qkv_bias;
    c.attention.qk_norm = QkNorm::Whole;
    c.attention.clip_qkv = raw.clip_qkv.map(|v| v as f32);
    c.moe.n_experts = required(raw.num_experts.or(raw.num_local_experts), "num_experts")?;
    c.moe.expert_width = required(raw.intermediate_size, "intermediate_size")?;
    c.moe.renormalize = raw.norm_topk_prob.unwrap_or(false);
    Ok(c)
}
