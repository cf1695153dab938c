//! Qwen3-MoE (`Qwen3MoeForCausalLM`, Qwen3-30B-A3B): per-head RMSNorm of q and k, explicit
//! `head_dim`, softmax router renormalised over the top-k (`norm_topk_prob`), no shared expert,
//! dense layers by `mlp_only_layers` and `decoder_sparse_step`.

use super::{Family, HF_MOE_NAMES};
use crate::config::{required, ModelConfig, QkNorm, RawConfig};
use crate::error::{Error, Result};

pub const FAMILY: Family = Family {
    name: "qwen3_moe",
    model_types: &["qwen3_moe"],
    architectures: &["Qwen3MoeForCausalLM"],
    config,
    names: HF_MOE_NAMES,
};

fn config(raw: &RawConfig) -> Result<ModelConfig> {
    let mut c = raw.base(&FAMILY)?;
    if raw.use_sliding_window.unwrap_or(false) {
        // transformers windows only the layers from `max_window_layers` on.
        return Err(Error::Config(
            "`use_sliding_window: true` is not supported for qwen3_moe yet".into(),
        ));
    }
    c.sliding_window = None;
    c.attention.qkv_bias = raw.attention_bias.unwrap_or(false);
    c.attention.o_bias = c.attention.qkv_bias;
    c.attention.qk_norm = QkNorm::PerHead;
    c.intermediate_size = raw.intermediate_size.unwrap_or(0);
    c.moe.n_experts = required(raw.num_experts.or(raw.num_local_experts), "num_experts")?;
    c.moe.expert_width = required(raw.moe_intermediate_size, "moe_intermediate_size")?;
    c.moe.renormalize = raw.norm_topk_prob.unwrap_or(false);
    c.moe_layers = raw.qwen_moe_layers(c.num_hidden_layers)?;
    Ok(c)
}
