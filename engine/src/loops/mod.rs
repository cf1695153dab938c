//! Collaborative loops, where models teach models: a client that reaches teachers and students
//! in-process or over HTTP, ROUGE-L for near-duplicate filtering, and logit distillation data with
//! teacher/student divergences.

pub mod active;
pub mod alpaca;
pub mod client;
pub mod distill;
pub mod learner;
pub mod rouge;
pub mod self_instruct;
pub mod social;
pub mod tasks;
pub mod teach;

/// Writes a loop's summary as `manifest.json` in its run directory.
pub(crate) fn write_manifest(
    dir: &std::path::Path,
    summary: &serde_json::Value,
) -> crate::Result<()> {
    let path = dir.join("manifest.json");
    let text = serde_json::to_string_pretty(summary).unwrap_or_default();
    std::fs::write(&path, text).map_err(|e| crate::Error::io(&path, e))
}
