//! Collaborative loops, where models teach models: a client that reaches teachers and students
//! in-process or over HTTP, ROUGE-L for near-duplicate filtering, and logit distillation data with
//! teacher/student divergences.

pub mod active;
pub mod alpaca;
pub mod client;
pub mod dedup;
pub mod distill;
pub mod learner;
pub mod minhash;
pub mod progress;
pub mod rouge;
pub mod self_instruct;
pub mod shards;
pub mod social;
pub mod tasks;
pub mod teach;

/// Reads one JSON value per non-blank line; a bad line is an error naming the file and line.
pub fn read_jsonl<T: serde::de::DeserializeOwned>(
    path: &std::path::Path,
) -> crate::error::Result<Vec<T>> {
    let text = std::fs::read_to_string(path).map_err(|e| crate::error::Error::io(path, e))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| crate::error::Error::Json {
                path: path.to_path_buf(),
                message: format!("line {}: {e}", i + 1),
            })
        })
        .collect()
}

/// Writes a loop's summary as `manifest.json` in its run directory.
pub(crate) fn write_manifest(
    dir: &std::path::Path,
    summary: &serde_json::Value,
) -> crate::Result<()> {
    let path = dir.join("manifest.json");
    let text = serde_json::to_string_pretty(summary).unwrap_or_default();
    std::fs::write(&path, text).map_err(|e| crate::Error::io(&path, e))
}

/// Appends one JSON value as a line of `path` (created if missing): loop outputs grow as they are
/// produced, so an interrupted run keeps what it finished.
pub(crate) fn append_jsonl(path: &std::path::Path, v: &serde_json::Value) -> crate::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| crate::Error::io(path, e))?;
    writeln!(f, "{v}").map_err(|e| crate::Error::io(path, e))
}
