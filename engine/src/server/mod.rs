//! `moe serve`: an OpenAI-compatible HTTP server over one or more models.
//!
//! Each model has an engine thread running the continuous-batching scheduler
//! ([`crate::scheduler`]); HTTP handlers (axum on tokio) tokenise and check a request, submit its
//! sequences, and relay the scheduler's events as a JSON body or as server-sent events. Handlers
//! never block on the engine and the engine never blocks on a client: events go through unbounded
//! channels, and a client that disconnects closes its channel, which frees its batch slot.

mod conn;
mod metrics;
mod routes;
pub mod types;

use crate::backend::Backend;
use crate::config::ModelConfig;
use crate::engine::{Engine, ModelInfo};
use crate::generate::Prompt;
use crate::scheduler::{self, SchedulerConfig, SchedulerGauges, Submission};
use crate::stats::StatsReport;
use crate::tokenizer::Tokenizer;
use metrics::{ModelMetrics, RequestCounters};
use std::net::SocketAddr;
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::time::Duration;

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
    /// Largest `logprobs` / `top_logprobs` a request may ask for; `None`: the vocabulary size.
    pub max_logprobs: Option<usize>,
    /// A response with logprobs estimated above this many bytes is refused before any work
    /// starts (see [`types::COMPLETION_ENTRY_BYTES`]).
    pub max_response_bytes: usize,
    /// A request head must be complete this long after its first byte.
    pub header_timeout: Duration,
    /// A request body must be complete this long after its head.
    pub body_timeout: Duration,
    /// A keep-alive connection with no request for this long is closed.
    pub idle_timeout: Duration,
    /// Open connections at most; `None`: 1024, or fewer where the file-descriptor limit is lower.
    pub max_connections: Option<usize>,
    /// On shutdown, in-flight requests get this long to finish before their connections close.
    pub shutdown_timeout: Duration,
    /// Tests only: see [`scheduler::SchedulerConfig::panic_if`].
    pub panic_if: Option<scheduler::PanicIf>,
    /// Shut down gracefully on SIGINT/SIGTERM (stop accepting, drain for at most
    /// `shutdown_timeout`); a second signal exits at once.
    pub handle_signals: bool,
    /// `--served-model-name` (as vLLM has): the first is the model's id in responses and
    /// `/v1/models`, every one addresses it, and its own names still do. One model only.
    pub served_model_names: Vec<String>,
}

/// `--max-response-bytes` unless given: 256 MiB.
pub const DEFAULT_MAX_RESPONSE_BYTES: usize = 256 << 20;

/// The default connection limit: 1024, or the file-descriptor room where that is smaller.
pub fn default_max_connections() -> usize {
    conn::descriptor_room().map_or(1024, |room| room.clamp(1, 1024))
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
            max_logprobs: None,
            max_response_bytes: DEFAULT_MAX_RESPONSE_BYTES,
            header_timeout: Duration::from_secs(30),
            body_timeout: Duration::from_secs(60),
            idle_timeout: Duration::from_secs(60),
            max_connections: None,
            shutdown_timeout: Duration::from_secs(10),
            panic_if: None,
            handle_signals: false,
            served_model_names: vec![],
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
    fn stats(&self) -> StatsReport {
        Engine::stats(self)
    }
}

/// A served model: its engine, the channel to its scheduler thread and its metrics.
pub(crate) struct Served {
    pub name: String,
    /// Other names a request may use for it (see [`aliases`]).
    pub aliases: Vec<String>,
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
            Some(n) => self
                .models
                .iter()
                .find(|m| m.name == n)
                .or_else(|| {
                    self.models
                        .iter()
                        .find(|m| m.aliases.iter().any(|a| a == n))
                })
                .ok_or_else(|| {
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

/// The names a served model answers to besides `name`: its own name (the directory or file
/// stem, `moe-student-tiny` for the embedded model), the path it was loaded from as given (as
/// vLLM serves a model under its path), and every preset in `models.toml` naming the same
/// checkpoint (`student` for the embedded model, which is built from that preset's directory).
fn aliases(name: &str, info: &ModelInfo) -> Vec<String> {
    let mut out: Vec<String> = vec![];
    let mut add = |a: String| {
        if a != name && !a.is_empty() && !out.contains(&a) {
            out.push(a);
        }
    };
    add(info.name.clone());
    let embedded = info.source == "embedded";
    let path = (!embedded).then(|| std::path::PathBuf::from(&info.source));
    if let Some(p) = &path {
        add(info.source.clone());
        if let Some(stem) = p.file_stem() {
            add(stem.to_string_lossy().into_owned());
        }
    }
    let canonical = path.as_ref().and_then(|p| p.canonicalize().ok());
    if let Ok(presets) = crate::presets::Presets::discover() {
        for (preset, p) in &presets.presets {
            let same = match &canonical {
                Some(c) => p.path.canonicalize().ok().as_ref() == Some(c),
                None => embedded && p.path.file_name().is_some_and(|f| *f == *info.name),
            };
            if same {
                add(preset.clone());
            }
        }
    }
    out
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
    let invalid = |m: String| std::io::Error::new(std::io::ErrorKind::InvalidInput, m);
    let max_connections = match config.max_connections {
        None => default_max_connections(),
        Some(0) => return Err(invalid("--max-connections must be at least 1".into())),
        Some(n) => match conn::descriptor_room() {
            Some(room) if n > room => {
                return Err(invalid(format!(
                    "--max-connections {n} does not fit the open-file limit (RLIMIT_NOFILE, \
                     less 64 descriptors kept for the process): at most {room}; raise it with \
                     `ulimit -n`"
                )))
            }
            _ => n,
        },
    };
    for (name, d) in [
        ("--header-timeout", config.header_timeout),
        ("--body-timeout", config.body_timeout),
        ("--idle-timeout", config.idle_timeout),
    ] {
        if d.is_zero() {
            return Err(invalid(format!("{name} must be above zero")));
        }
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
            panic_if: config.panic_if.clone(),
        };
        let (e, m) = (engine.clone(), metrics.clone());
        std::thread::Builder::new()
            .name(format!("engine-{name}"))
            .spawn(move || scheduler::run(e, cfg, rx, gauges, m))?;
        served.push(Served {
            aliases: aliases(&name, engine.info()),
            kv_block_bytes: scheduler::kv_bytes_per_token(&engine) * scheduler::KV_BLOCK,
            name,
            engine: engine as Arc<dyn ServedEngine>,
            submit: std::sync::Mutex::new(tx),
            metrics,
        });
    }
    // A name two models answer to picks neither: those requests must use the primary name.
    let claimed = |a: &str, me: usize| {
        served
            .iter()
            .enumerate()
            .any(|(j, m)| j != me && (m.name == a || m.aliases.iter().any(|b| b == a)))
    };
    let keep: Vec<Vec<String>> = (0..served.len())
        .map(|i| {
            served[i]
                .aliases
                .iter()
                .filter(|a| !claimed(a, i))
                .cloned()
                .collect()
        })
        .collect();
    for (m, k) in served.iter_mut().zip(keep) {
        m.aliases = k;
    }
    if let Some((first, rest)) = config.served_model_names.split_first() {
        let [m] = &mut served[..] else {
            return Err(invalid(format!(
                "--served-model-name names one model; {} are served",
                served.len()
            )));
        };
        let old = std::mem::replace(&mut m.name, first.clone());
        m.aliases.push(old);
        m.aliases.extend(rest.iter().cloned());
        m.aliases.retain(|a| a != first);
        m.aliases.dedup();
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
    let limits = conn::Limits {
        header: config.header_timeout,
        idle: config.idle_timeout,
    };
    let drain_for = config.shutdown_timeout;
    let app = routes::router(state);
    let thread = std::thread::Builder::new()
        .name("http-server".into())
        .spawn(move || {
            rt.block_on(async move {
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                let slots = Arc::new(tokio::sync::Semaphore::new(max_connections));
                let accept = tokio::spawn(conn::accept_loop(
                    listener,
                    app,
                    limits,
                    stop_rx,
                    slots.clone(),
                ));
                tokio::select! {
                    _ = rx => {}
                    _ = shutdown_signal(), if signals => {
                        eprintln!(
                            "shutting down: finishing in-flight requests for up to {:?} \
                             (a second signal exits now)",
                            drain_for
                        );
                        tokio::spawn(async {
                            shutdown_signal().await;
                            eprintln!("second signal: exiting now");
                            std::process::exit(1);
                        });
                    }
                }
                let _ = stop_tx.send(true);
                let _ = accept.await;
                // Every connection hands its permit back when it closes.
                let all = max_connections.min(u32::MAX as usize) as u32;
                if tokio::time::timeout(drain_for, slots.acquire_many(all))
                    .await
                    .is_err()
                {
                    eprintln!(
                        "shutdown: {} connection(s) still open after {:?}; closing them",
                        max_connections - slots.available_permits(),
                        drain_for
                    );
                }
            });
            // Connections still open are dropped with the runtime, which closes them.
            rt.shutdown_timeout(Duration::from_millis(500));
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
