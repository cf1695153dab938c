//! Named model presets from `models.toml`.
//!
//! The file is found at `$MOE_MODELS_TOML`, else `./models.toml`, else the workspace's own
//! `models.toml`. A preset's `path` is relative to the file that names it.

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

#[derive(Clone, Debug, Default)]
pub struct Presets {
    pub file: Option<PathBuf>,
    pub presets: BTreeMap<String, Preset>,
}

impl Presets {
    /// The first `models.toml` found (see the module doc); none found is an empty set.
    pub fn discover() -> Result<Self> {
        let candidates = [
            std::env::var_os("MOE_MODELS_TOML").map(PathBuf::from),
            Some(PathBuf::from("models.toml")),
            Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("../models.toml")),
        ];
        for c in candidates.into_iter().flatten() {
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
                None => "not a directory, and no models.toml was found".into(),
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
