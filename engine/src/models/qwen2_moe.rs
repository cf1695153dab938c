//! Qwen1.5-MoE / Qwen2-MoE (`Qwen2MoeForCausalLM`): q/k/v biases, softmax router with the raw
//! top-k probabilities (`norm_topk_prob`), a shared expert scaled by a sigmoid gate, dense layers
//! by `mlp_only_layers` and `decoder_sparse_step`.

use super::{Family, HF_MOE_NAMES};
use crate::config::{required, ModelConfig, RawConfig, SharedExpert};
use crate::error::Result;

pub const FAMILY: Family = Family {
    name: "qwen2_moe",
    model_types: &["qwen2_moe"],
    architectures: &["Qwen2MoeForCausalLM"],
    config,
    names: HF_MOE_NAMES,
};

fn config(raw: &RawConfig) -> Result<ModelConfig> {
    let mut c = raw.base(&FAMILY)?;
    c.attention.qkv_bias = true;
    // `sliding_window` is published but only read when `use_sliding_window` is set.
    if !raw.use_sliding_window.unwrap_or(false) {
        c.sliding_window = None;
    }
    c.intermediate_size = required(raw.intermediate_size, "intermediate_size")?;
    c.moe.n_experts = required(raw.num_experts.or(raw.num_local_experts), "num_experts")?;
    c.moe.expert_width = required(raw.moe_intermediate_size, "moe_intermediate_size")?;
    c.moe.renormalize = raw.norm_topk_prob.unwrap_or(false);
    let shared = required(
        raw.shared_expert_intermediate_size,
        "shared_expert_intermediate_size",
    )?;
    c.moe.shared_expert = (shared > 0).then_some(SharedExpert {
        width: shared,
        sigmoid_gate: true,
    });
    c.moe_layers = raw.qwen_moe_layers(c.num_hidden_layers)?;
    Ok(c)
}
