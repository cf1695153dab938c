//! Model families. Every family is a decoder of the shared layers in [`decoder`] (attention with
//! options, dense SwiGLU MLP, sparse MoE block described by a [`crate::config::MoeSpec`]); a family
//! file only reads its `config.json` into a [`ModelConfig`] and names its tensors.
//!
//! Adding a family: one file here with a `pub const FAMILY: Family`, one line in [`FAMILIES`],
//! and its fixture test.

pub mod decoder;
pub mod gguf;
pub mod mixtral;
pub mod olmoe;
pub mod qwen2_moe;
pub mod qwen3_moe;

use crate::config::{ModelConfig, RawConfig};
use crate::error::{Error, Result};

pub use decoder::{Model, SeqStep};

/// One model family: how its `config.json` is recognised and read, and what its tensors are
/// called.
pub struct Family {
    /// The registry's name (the Hub `model_type`).
    pub name: &'static str,
    /// `model_type` values of this family.
    pub model_types: &'static [&'static str],
    /// `architectures[0]` values of this family; the first is the default.
    pub architectures: &'static [&'static str],
    /// Reads the family's keys; unsupported combinations are named errors.
    pub config: fn(&RawConfig) -> Result<ModelConfig>,
    pub names: TensorNames,
}

/// Tensor names under `model.layers.{l}.`, where they differ between families.
pub struct TensorNames {
    /// The sparse block's module (`block_sparse_moe`, `mlp`).
    pub moe: &'static str,
    /// The router under it (`gate`).
    pub router: &'static str,
    /// One expert's gate, up and down projections under `{moe}.experts.{e}.`.
    pub expert: [&'static str; 3],
    /// The shared expert's module and its gate under `{moe}.`.
    pub shared_expert: &'static str,
    pub shared_expert_gate: &'static str,
}

/// Hugging Face's names (`mlp.gate`, `mlp.experts.{e}.gate_proj`, ...), shared by the Qwen
/// families and OLMoE.
pub const HF_MOE_NAMES: TensorNames = TensorNames {
    moe: "mlp",
    router: "gate",
    expert: ["gate_proj", "up_proj", "down_proj"],
    shared_expert: "shared_expert",
    shared_expert_gate: "shared_expert_gate",
};

/// Every supported family.
pub const FAMILIES: &[&Family] = &[
    &mixtral::FAMILY,
    &qwen2_moe::FAMILY,
    &qwen3_moe::FAMILY,
    &olmoe::FAMILY,
];

fn supported() -> String {
    FAMILIES
        .iter()
        .map(|f| f.name)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The family registered as `name`.
pub fn family(name: &str) -> Result<&'static Family> {
    FAMILIES
        .iter()
        .copied()
        .find(|f| f.name == name)
        .ok_or_else(|| {
            Error::Config(format!(
                "model family `{name}` is not supported (supported: {})",
                supported()
            ))
        })
}

/// The family a config names by `model_type`, else by `architectures[0]`; a config with
/// neither is read as Mixtral (the first checkpoints this engine ran carried neither).
pub fn family_of(raw: &RawConfig) -> Result<&'static Family> {
    let arch = raw.architectures.as_ref().and_then(|a| a.first());
    if let Some(t) = raw.model_type.as_deref() {
        return FAMILIES
            .iter()
            .copied()
            .find(|f| f.model_types.contains(&t))
            .ok_or_else(|| {
                Error::Config(format!(
                    "model_type `{t}` is not supported (supported: {})",
                    supported()
                ))
            });
    }
    match arch {
        Some(a) => FAMILIES
            .iter()
            .copied()
            .find(|f| f.architectures.contains(&a.as_str()))
            .ok_or_else(|| {
                Error::Config(format!(
                    "architecture `{a}` is not supported (supported families: {})",
                    supported()
                ))
            }),
        None => Ok(&mixtral::FAMILY),
    }
}
