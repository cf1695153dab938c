//! Named model presets from `models.toml`.
//!
//! The file is found at run time: `$MOE_MODELS_TOML`, else `models.toml` in the current directory
//! or the nearest directory above it (so anywhere inside a checkout finds the checkout's). A
//! preset's `path` is relative to the file that names it. Nothing is fixed at build time: an
//! installed binary or Python wheel must not depend on the checkout it was built from.

use crate::error::{Error, Result};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PresetSampling {
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub top_k: Option<usize>,
    pub max_tokens: Option<usize>,
}

#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Preset {
    pub path: PathBuf,
    pub role: Option<String>,
    pub description: Option<String>,
    pub context_length: Option<usize>,
    pub chat_template: Option<String>,
    #[serde(default)]
    pub sampling: PresetSampling,
}

/// What lookups say when no `models.toml` was found.
pub const NOT_FOUND: &str =
    "no models.toml in $MOE_MODELS_TOML, the current directory or any directory above it";

#[derive(Clone, Debug, Default)]
pub struct Presets {
    pub file: Option<PathBuf>,
    pub presets: BTreeMap<String, Preset>,
}

impl Presets {
    /// The `models.toml` found as the module doc says; none found is an empty set, and a
    /// `$MOE_MODELS_TOML` naming no file is an error.
    pub fn discover() -> Result<Self> {
        if let Some(env) = std::env::var_os("MOE_MODELS_TOML") {
            let path = PathBuf::from(env);
            if !path.is_file() {
                return Err(Error::Preset {
                    name: path.display().to_string(),
                    message: "$MOE_MODELS_TOML names no such file".into(),
                });
            }
            return Self::from_file(&path);
        }
        let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
        for dir in cwd.ancestors() {
            let c = dir.join("models.toml");
            if c.is_file() {
                return Self::from_file(&c);
            }
        }
        Ok(Presets::default())
    }

    pub fn from_file(path: &Path) -> Result<Self> {
        let text = crate::weights::read_regular_string(path)?;
        let mut presets: BTreeMap<String, Preset> =
            toml::from_str(&text).map_err(|e| Error::Preset {
                name: path.display().to_string(),
                message: e.to_string(),
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for p in presets.values_mut() {
            if p.path.is_relative() {
                p.path = base.join(&p.path);
            }
        }
        Ok(Presets {
            file: Some(path.to_path_buf()),
            presets,
        })
    }

    pub fn get(&self, name: &str) -> Result<&Preset> {
        self.presets.get(name).ok_or_else(|| Error::Preset {
            name: name.into(),
            message: match &self.file {
                Some(f) => format!(
                    "not a directory and not a preset in {} (presets: {})",
                    f.display(),
                    self.presets.keys().cloned().collect::<Vec<_>>().join(", ")
                ),
                None => NOT_FOUND.into(),
            },
        })
    }

    /// The preset with this role (`teacher`, `student`), if one is named.
    pub fn by_role(&self, role: &str) -> Option<(&str, &Preset)> {
        self.presets
            .iter()
            .find(|(_, p)| p.role.as_deref() == Some(role))
            .map(|(n, p)| (n.as_str(), p))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_presets_resolve_to_model_dirs() {
        let p = Presets::from_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../models.toml"))
            .unwrap();
        assert!(p.get("student").unwrap().path.join("config.json").is_file());
        assert_eq!(p.by_role("teacher").unwrap().0, "teacher");
        let e = p.get("nope").unwrap_err().to_string();
        assert!(e.contains("presets: "), "{e}");
    }
}
