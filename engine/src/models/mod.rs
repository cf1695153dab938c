//! Model families. Adding one is a new file here and one arm in [`ModelFamily::from_config`].

pub mod mixtral;

use crate::config::ModelConfig;
use crate::error::{Error, Result};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModelFamily {
    Mixtral,
}

impl ModelFamily {
    pub fn from_config(cfg: &ModelConfig) -> Result<Self> {
        match cfg.architecture.as_str() {
            "MixtralForCausalLM" | "mixtral" => Ok(ModelFamily::Mixtral),
            other => Err(Error::Config(format!(
                "architecture `{other}` is not supported"
            ))),
        }
    }
}
