//! The engine's error type: every variant names the file, tensor, shape, dtype or limit at fault.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A model file that is a FIFO, socket, device or directory: opening or reading one could
    /// block forever or never end.
    #[error("{path}: is {kind}, not a regular file")]
    NotRegularFile { path: PathBuf, kind: &'static str },
    #[error("{path}: invalid JSON: {message}")]
    Json { path: PathBuf, message: String },
    #[error("invalid model config: {0}")]
    Config(String),
    #[error("{file}: invalid checkpoint file: {message}")]
    Checkpoint { file: PathBuf, message: String },
    #[error("tensor `{name}` is missing (looked in {searched})")]
    MissingTensor { name: String, searched: String },
    #[error("{file}: tensor `{name}`: expected shape {expected:?}, found {found:?}")]
    ShapeMismatch {
        file: PathBuf,
        name: String,
        expected: Vec<usize>,
        found: Vec<usize>,
    },
    #[error("{file}: tensor `{name}` has dtype {found}, which is not supported (supported: F32, BF16, F16)")]
    UnsupportedDtype {
        file: PathBuf,
        name: String,
        found: String,
    },
    #[error("{file}: tensor `{name}`: {message}")]
    BadTensorData {
        file: PathBuf,
        name: String,
        message: String,
    },
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("chat template: {0}")]
    ChatTemplate(String),
    #[error("invalid sampling parameter `{param}`: {message}")]
    InvalidSampling {
        param: &'static str,
        message: String,
    },
    #[error("the prompt is empty")]
    EmptyPrompt,
    #[error("token id {id} is outside the vocabulary (size {vocab})")]
    TokenOutOfRange { id: u32, vocab: usize },
    #[error("sequence of {len} tokens exceeds the model's context of {max} tokens (max_position_embeddings)")]
    ContextOverflow { len: usize, max: usize },
    #[error("model preset `{name}`: {message}")]
    Preset { name: String, message: String },
    /// A `--model` that names no preset, directory or model file.
    #[error("no model at {name}: {message}")]
    NoModel { name: String, message: String },
    #[error("{0}")]
    InvalidRequest(String),
    #[error("endpoint {endpoint}: {message}")]
    Endpoint { endpoint: String, message: String },
    #[error("endpoint {endpoint} cannot give {feature}")]
    FeatureUnavailable { endpoint: String, feature: String },
    #[error("backend `{backend}` does not support {what}")]
    Unsupported { backend: &'static str, what: String },
    #[error(transparent)]
    Kernel(#[from] moe_kernels::KernelError),
    /// A CUDA device that is missing, failed, or refused the work.
    #[error("device: {0}")]
    Device(String),
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
}

impl From<moe_kernels::cuda::GpuError> for Error {
    fn from(e: moe_kernels::cuda::GpuError) -> Self {
        Error::Device(e.0)
    }
}
