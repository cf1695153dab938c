//! Mixtral (`MixtralForCausalLM`): softmax router renormalised over the top-k, every layer MoE,
//! no biases, no q/k norm, experts `w1`/`w3`/`w2` under `block_sparse_moe`.

use super::{Family, TensorNames};
use crate::config::{required, ModelConfig, RawConfig};
use crate::error::Result;

pub const FAMILY: Family = Family {
    name: "mixtral",
    model_types: &["mixtral"],
    architectures: &["MixtralForCausalLM"],
    config,
    names: TensorNames {
        moe: "block_sparse_moe",
        router: "gate",
        expert: ["w1", "w3", "w2"],
        shared_expert: "",
        shared_expert_gate: "",
    },
};

fn config(raw: &RawConfig) -> Result<ModelConfig> {
    let mut c = raw.base(&FAMILY)?;
    c.moe.n_experts = required(raw.num_local_experts, "num_local_experts")?;
    c.intermediate_size = required(raw.intermediate_size, "intermediate_size")?;
    c.moe.expert_width = c.intermediate_size;
    Ok(c)
}
