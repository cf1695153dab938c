//! `Engine`: a loaded model with its tokenizer, ready to generate and score.

use crate::backend::{Backend, CpuBackend};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::models::Model;
use crate::presets::{Preset, Presets};
use crate::stats::StatsReport;
use crate::tokenizer::Tokenizer;
use crate::weights::Weights;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Where a model comes from.
#[derive(Clone, Debug, PartialEq)]
pub enum ModelSource {
    /// The student compiled into the library.
    Embedded,
    /// A HuggingFace model directory.
    Dir(PathBuf),
    /// A GGUF file (llama.cpp's format: weights, tokenizer and chat template in one file).
    Gguf(PathBuf),
    /// A name in `models.toml`.
    Preset(String),
}

impl ModelSource {
    /// `None` → the embedded default; an existing directory → that directory; a path ending in
    /// `.gguf` → that file; else a preset name.
    pub fn parse(arg: Option<&str>) -> Self {
        match arg {
            None | Some("") => ModelSource::Embedded,
            Some(s) if Path::new(s).is_dir() => ModelSource::Dir(PathBuf::from(s)),
            Some(s) if s.ends_with(".gguf") => ModelSource::Gguf(PathBuf::from(s)),
            Some(s) => ModelSource::Preset(s.to_string()),
        }
    }
}

/// As a user wrote it: the path or preset name, or `embedded`.
impl std::fmt::Display for ModelSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ModelSource::Embedded => f.write_str("embedded"),
            ModelSource::Dir(p) | ModelSource::Gguf(p) => write!(f, "{}", p.display()),
            ModelSource::Preset(name) => f.write_str(name),
        }
    }
}

/// Options for loading.
#[derive(Default)]
pub struct LoadOptions<'a> {
    /// Called as tensors are checked: `(done, total)`.
    pub progress: Option<&'a mut dyn FnMut(usize, usize)>,
    /// On the CPU, round activations to bf16 in products with bf16 weights (pairwise bf16 dot
    /// products where the CPU has AVX-512 BF16): faster prefill, transformers' bf16 numerics
    /// instead of f32 activations. Off by default; no effect on other dtypes or backends.
    pub bf16_activations: bool,
    /// Quantise the experts' matrices (and, with `quantize_attention`, the attention
    /// projections) of a float checkpoint to this ggml type at load (in-situ quantisation).
    pub quantize: Option<moe_kernels::quant::GgmlType>,
    pub quantize_attention: bool,
    /// Read checkpoint files into private memory instead of mapping them. A mapped file that is
    /// truncated or rewritten while the model runs changes under it (a truncation kills the
    /// process with SIGBUS, which [`crate::sigbus`] names); a read one cannot, at the cost of a
    /// full read at load and resident memory for all of it.
    pub no_mmap: bool,
}

/// What was loaded and how long it took.
#[derive(Clone, Debug)]
pub struct ModelInfo {
    pub name: String,
    pub source: String,
    pub load_time: Duration,
    pub weight_bytes: usize,
    /// Longest sequence (prompt + generated) this engine accepts.
    pub context_length: usize,
    /// [`LoadOptions::bf16_activations`] in effect (asked for, a CPU backend, bf16 weights).
    pub bf16_activations: bool,
    /// The stored weights' dtypes as loaded (after `--quantize`), by share of bytes: `bf16`, or
    /// `q8_0 93% + f32 7%` where tensors differ.
    pub weight_dtype: String,
}

pub struct Engine<B: Backend = CpuBackend> {
    pub model: Model<B>,
    pub tokenizer: Tokenizer,
    pub info: ModelInfo,
    pub preset: Option<Preset>,
    /// Token ids that end a generation (config and tokenizer eos).
    pub eos_ids: Vec<u32>,
}

impl Engine<CpuBackend> {
    /// Loads onto the CPU backend.
    pub fn load(source: &ModelSource) -> Result<Self> {
        Self::load_with(source, CpuBackend, LoadOptions::default())
    }
}

impl<B: Backend> Engine<B> {
    pub fn load_with(source: &ModelSource, backend: B, mut opts: LoadOptions<'_>) -> Result<Self> {
        let t0 = Instant::now();
        let mut no_progress = |_: usize, _: usize| {};
        let progress: &mut dyn FnMut(usize, usize) = match opts.progress.as_mut() {
            Some(p) => *p,
            None => &mut no_progress,
        };
        let (name, src, cfg, mut weights, mut tokenizer, preset) = match source {
            ModelSource::Embedded => {
                #[cfg(feature = "embedded-model")]
                {
                    use crate::embedded;
                    let cfg = ModelConfig::from_json(embedded::CONFIG_JSON)?;
                    let w = Weights::from_static(&embedded::shards())?;
                    let tok = Tokenizer::from_bytes(
                        embedded::TOKENIZER_JSON,
                        Some(embedded::TOKENIZER_CONFIG_JSON),
                    )?;
                    (
                        embedded::NAME.to_string(),
                        "embedded".to_string(),
                        cfg,
                        w,
                        tok,
                        None,
                    )
                }
                #[cfg(not(feature = "embedded-model"))]
                return Err(Error::Preset {
                    name: "embedded".into(),
                    message:
                        "this build has no embedded model (feature `embedded-model`); pass --model"
                            .into(),
                });
            }
            ModelSource::Dir(dir) => {
                let (cfg, w, tok) = open_dir(dir, !opts.no_mmap)?;
                (dir_name(dir), dir.display().to_string(), cfg, w, tok, None)
            }
            ModelSource::Gguf(file) => {
                let (cfg, w, tok) = crate::models::gguf::open_with(file, !opts.no_mmap)?;
                let name = file
                    .file_stem()
                    .map(|s| s.to_string_lossy().into_owned())
                    .unwrap_or_else(|| file.display().to_string());
                (name, file.display().to_string(), cfg, w, tok, None)
            }
            ModelSource::Preset(name) => {
                let presets = Presets::discover()?;
                let p = match presets.presets.get(name) {
                    Some(p) => p.clone(),
                    None => return Err(no_model(name, &presets)),
                };
                let opened = if p.path.extension().is_some_and(|e| e == "gguf") {
                    crate::models::gguf::open_with(&p.path, !opts.no_mmap)
                } else {
                    open_dir(&p.path, !opts.no_mmap)
                };
                let (cfg, w, tok) = opened.map_err(|e| Error::Preset {
                    name: name.clone(),
                    message: e.to_string(),
                })?;
                (
                    name.clone(),
                    p.path.display().to_string(),
                    cfg,
                    w,
                    tok,
                    Some(p),
                )
            }
        };
        if let Some(t) = preset.as_ref().and_then(|p| p.chat_template.clone()) {
            tokenizer = tokenizer.with_chat_template(t);
        }
        let context_length = preset
            .as_ref()
            .and_then(|p| p.context_length)
            .map_or(cfg.max_position_embeddings, |c| {
                c.min(cfg.max_position_embeddings)
            });
        let mut eos_ids = cfg.eos_token_ids.clone();
        if let Some(e) = tokenizer.eos_id() {
            if !eos_ids.contains(&e) {
                eos_ids.push(e);
            }
        }
        if let Some(ty) = opts.quantize {
            let attention = opts.quantize_attention;
            weights.quantize(ty, |name| {
                name.contains(".experts.")
                    || name.contains(".shared_expert.")
                    || (attention && name.contains(".self_attn."))
            })?;
        }
        let bf16_activations =
            opts.bf16_activations && backend.takes_bf16_activations() && weights.has_bf16();
        weights.set_bf16_activations(bf16_activations);
        let weight_dtype = dtype_summary(&weights);
        let model = Model::load(cfg, &weights, backend, progress)?;
        let info = ModelInfo {
            name,
            source: src,
            load_time: t0.elapsed(),
            weight_bytes: model.weight_bytes(),
            context_length,
            bf16_activations,
            weight_dtype,
        };
        Ok(Engine {
            model,
            tokenizer,
            info,
            preset,
            eos_ids,
        })
    }

    pub fn config(&self) -> &ModelConfig {
        &self.model.cfg
    }

    /// The load-balance statistics accumulated since load or the last reset.
    pub fn stats(&self) -> StatsReport {
        self.model.stats().report()
    }

    pub fn reset_stats(&self) {
        self.model.reset_stats()
    }
}

fn dir_name(dir: &Path) -> String {
    dir.canonicalize()
        .ok()
        .as_deref()
        .and_then(|d| d.file_name())
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_else(|| dir.display().to_string())
}

fn open_dir(dir: &Path, mmap: bool) -> Result<(ModelConfig, Weights, Tokenizer)> {
    if !dir.is_dir() {
        return Err(Error::io(
            dir,
            std::io::Error::new(std::io::ErrorKind::NotFound, "model directory not found"),
        ));
    }
    let mut cfg = ModelConfig::from_file(&dir.join("config.json"))?;
    // generation_config.json's end-of-sequence ids join config.json's (Qwen lists `<|im_end|>`
    // only there).
    let gen = dir.join("generation_config.json");
    if gen.exists() {
        let text = crate::weights::read_regular_string(&gen)?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| Error::Config(format!("{}: not valid JSON: {e}", gen.display())))?;
        let ids: Vec<u32> = match &v["eos_token_id"] {
            serde_json::Value::Number(n) => n.as_u64().into_iter().map(|i| i as u32).collect(),
            serde_json::Value::Array(a) => a
                .iter()
                .filter_map(|x| x.as_u64())
                .map(|i| i as u32)
                .collect(),
            _ => vec![],
        };
        for id in ids {
            if !cfg.eos_token_ids.contains(&id) {
                cfg.eos_token_ids.push(id);
            }
        }
    }
    let weights = Weights::open_dir_with(dir, mmap)?;
    let tok = Tokenizer::from_dir(dir)?;
    Ok((cfg, weights, tok))
}

/// The dtypes of `weights` by share of bytes, lower case, largest first (`bf16`;
/// `q4_k 81% + q6_k 12% + f32 7%`).
fn dtype_summary(weights: &Weights) -> String {
    let mut bytes: std::collections::BTreeMap<String, usize> = Default::default();
    for name in weights.names() {
        if let Some(i) = weights.info(name) {
            *bytes.entry(i.dtype.to_lowercase()).or_default() += i.end - i.start;
        }
    }
    let total: usize = bytes.values().sum();
    let mut by_size: Vec<(String, usize)> = bytes.into_iter().collect();
    by_size.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    if by_size.len() == 1 {
        return by_size.remove(0).0;
    }
    by_size
        .iter()
        .map(|(d, b)| format!("{d} {:.0}%", 100.0 * *b as f64 / total.max(1) as f64))
        .collect::<Vec<_>>()
        .join(" + ")
}

/// What `--model NAME` missed: [`ModelSource::parse`] takes anything that is not a directory or a
/// `.gguf` path for a preset name, so a mistyped path lands here too.
fn no_model(name: &str, presets: &Presets) -> Error {
    let message = if Path::new(name).is_file() {
        "a file, but not a .gguf one: give a model directory (config.json, *.safetensors, \
         tokenizer.json), a .gguf file or a preset name"
            .to_string()
    } else {
        let known = match &presets.file {
            Some(f) => format!(
                "presets in {}: {}",
                f.display(),
                presets
                    .presets
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            None => crate::presets::NOT_FOUND.into(),
        };
        format!("not a preset name and no such directory or file ({known})")
    };
    Error::NoModel {
        name: name.to_string(),
        message,
    }
}
