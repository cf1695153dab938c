//! moe: a sparse mixture-of-experts inference engine.
//!
//! ```text
//! tokens → embedding → [ rms_norm → attention(+KV cache) → +residual
//!                        → rms_norm → router → dispatch → experts → combine → +residual ] × L
//!        → final rms_norm → lm_head → logits → sampler → tokens
//!                                               ↘ logprobs / scores
//! router ─→ load-balance statistics (always on; per layer × expert)
//! ```
//!
//! [`Engine`] is the entry point: load a model (directory, `models.toml` preset or the embedded
//! default), generate for a batch of requests, score prompts, read and reset the statistics.

pub mod backend;
pub mod bench;
pub mod bench_layer;
pub mod config;
pub mod device;
#[cfg(feature = "embedded-model")]
pub mod embedded;
pub mod engine;
pub mod error;
pub mod generate;
pub mod gguf;
#[cfg(feature = "loops")]
pub mod loops;
pub mod models;
pub mod presets;
pub mod sampling;
#[cfg(feature = "server")]
pub mod scheduler;
#[cfg(feature = "server")]
pub mod server;
pub mod sigbus;
pub mod stats;
pub mod tokenizer;
pub mod trace;
pub mod weights;

pub use backend::{Backend, CpuBackend, CudaBackend};
pub use config::ModelConfig;
pub use device::Device;
pub use engine::{Engine, LoadOptions, ModelInfo, ModelSource};
pub use error::{Error, Result};
pub use generate::{
    Completion, FinishReason, GenerateRequest, Prompt, PromptTokenLogprob, TokenLogprob,
};
pub use sampling::SamplingParams;
pub use stats::{LoadBalanceStats, StatsReport};
pub use tokenizer::{ChatMessage, Tokenizer};
