//! `moe serve`: an OpenAI-compatible HTTP server over one or more models.
//!
//! Each model has an engine thread running the continuous-batching scheduler
//! ([`crate::scheduler`]); HTTP handlers (axum on tokio) tokenise and check a request, submit its
//! sequences, and relay the scheduler's events as a JSON body or as server-sent events. Handlers
//! never block on the engine and the engine never blocks on a client: events go through unbounded
//! channels, and a client that disconnects closes its channel, which frees its batch slot.

mod metrics;
mod routes;
pub mod types;

use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::engine::{Engine, ModelInfo};
use crate::generate::{Prompt, PromptTokenLogprob};
use crate::scheduler::{self, SchedulerConfig, SchedulerGauges, Submission};
use crate::stats::StatsReport;
use crate::tokenizer::Tokenizer;
use metrics::{ModelMetrics, RequestCounters};
use std::net::SocketAddr;
use std::sync::mpsc::Sender;
use std::sync::Arc;

#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub host: String,
    pub port: u16,
    pub max_batch: usize,
    /// KV cache budget per model, bytes.
    pub kv_memory: usize,
    /// Largest request body, bytes.
    pub max_body: usize,
    /// `max_tokens` when a request gives none.
    pub default_max_tokens: usize,
    /// Sequences (prompts × n) one request may start.
    pub max_sequences_per_request: usize,
    /// Shut down gracefully on SIGINT/SIGTERM: stop accepting, let in-flight requests finish.
    pub handle_signals: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            host: "127.0.0.1".into(),
            port: 8000,
            max_batch: 32,
            kv_memory: 1 << 30,
            max_body: 4 << 20,
            default_max_tokens: 256,
            max_sequences_per_request: types::MAX_SEQUENCES_PER_REQUEST,
            handle_signals: false,
        }
    }
}

/// What the HTTP side asks of a served model, on whichever device it runs (its generation goes
/// through the scheduler thread, which holds the concrete engine).
pub(crate) trait ServedEngine: Send + Sync {
    fn tokenizer(&self) -> &Tokenizer;
    fn info(&self) -> &ModelInfo;
    fn config(&self) -> &ModelConfig;
    fn prompt_ids(&self, p: &Prompt) -> crate::Result<Vec<u32>>;
    fn prompt_logprobs(&self, p: &Prompt, top_k: usize) -> crate::Result<Vec<PromptTokenLogprob>>;
    fn stats(&self) -> StatsReport;
}

impl<B: Backend> ServedEngine for Engine<B> {
    fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }
    fn info(&self) -> &ModelInfo {
        &self.info
    }
    fn config(&self) -> &ModelConfig {
        Engine::config(self)
    }
    fn prompt_ids(&self, p: &Prompt) -> crate::Result<Vec<u32>> {
        Engine::prompt_ids(self, p)
    }
    fn prompt_logprobs(&self, p: &Prompt, top_k: usize) -> crate::Result<Vec<PromptTokenLogprob>> {
        Engine::prompt_logprobs(self, p, top_k)
    }
    fn stats(&self) -> StatsReport {
        Engine::stats(self)
    }
}

/// A served model: its engine, the channel to its scheduler thread and its metrics.
pub(crate) struct Served {
    pub name: String,
    pub engine: Arc<dyn ServedEngine>,
    pub submit: std::sync::Mutex<Sender<Submission>>,
    pub metrics: Arc<ModelMetrics>,
    pub kv_block_bytes: usize,
}

pub(crate) struct AppState {
    pub models: Vec<Served>,
    pub requests: RequestCounters,
    pub config: ServerConfig,
    pub created: u64,
}

impl AppState {
    pub fn model(&self, name: Option<&str>) -> Result<&Served, types::ApiError> {
        match name {
            None | Some("") => Ok(&self.models[0]),
            Some(n) => self.models.iter().find(|m| m.name == n).ok_or_else(|| {
                let names: Vec<&str> = self.models.iter().map(|m| m.name.as_str()).collect();
                types::ApiError::not_found(
                    format!(
                        "model `{n}` is not served here (models: {})",
                        names.join(", ")
                    ),
                    Some("model"),
                )
            }),
        }
    }
}

/// A running server.
pub struct ServerHandle {
    pub addr: SocketAddr,
    /// The served models' names, in order.
    pub models: Vec<String>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ServerHandle {
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting requests and waits for the HTTP side to end.
    pub fn shutdown(mut self) {
        if let Some(s) = self.shutdown.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }

    /// Serves until the process ends.
    pub fn wait(mut self) {
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the engine threads and the HTTP server on its own tokio runtime; returns once the
/// socket is bound.
pub fn start<B: Backend>(
    models: Vec<(String, Engine<B>)>,
    config: ServerConfig,
) -> std::io::Result<ServerHandle> {
    if models.is_empty() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            "no model to serve",
        ));
    }
    let mut served = vec![];
    for (name, engine) in models {
        let engine = Arc::new(engine);
        let (tx, rx) = std::sync::mpsc::channel();
        let gauges = Arc::new(SchedulerGauges::default());
        let metrics = Arc::new(ModelMetrics {
            gauges: gauges.clone(),
            ..Default::default()
        });
        let cfg = SchedulerConfig {
            max_batch: config.max_batch.max(1),
            kv_bytes: config.kv_memory,
        };
        let (e, m) = (engine.clone(), metrics.clone());
        std::thread::Builder::new()
            .name(format!("engine-{name}"))
            .spawn(move || scheduler::run(e, cfg, rx, gauges, m))?;
        served.push(Served {
            kv_block_bytes: scheduler::kv_bytes_per_token(&engine) * scheduler::KV_BLOCK,
            name,
            engine: engine as Arc<dyn ServedEngine>,
            submit: std::sync::Mutex::new(tx),
            metrics,
        });
    }
    let names: Vec<String> = served.iter().map(|m| m.name.clone()).collect();
    let state = Arc::new(AppState {
        models: served,
        requests: RequestCounters::default(),
        config: config.clone(),
        created: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("http")
        .build()?;
    let listener = rt.block_on(tokio::net::TcpListener::bind((
        config.host.as_str(),
        config.port,
    )))?;
    let addr = listener.local_addr()?;
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let signals = config.handle_signals;
    let app = routes::router(state);
    let thread = std::thread::Builder::new()
        .name("http-server".into())
        .spawn(move || {
            rt.block_on(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        tokio::select! {
                            _ = rx => {}
                            _ = shutdown_signal(), if signals => {}
                        }
                    })
                    .await;
            });
        })?;
    Ok(ServerHandle {
        addr,
        models: names,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}

/// SIGINT or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
