//! Continuous batching: one engine thread per model runs a loop that admits waiting sequences
//! when the batch and the KV budget allow, runs one forward over every running sequence
//! (prefills and decode steps mixed), and sends each new token to its requester. Sequences join
//! and leave at token boundaries; a requester that has gone away frees its slot at the next step.
//!
//! Admission is fair between requests: the next sequence to start comes from the waiting request
//! with the fewest running sequences (arrival order among equals), so requests take turns and a
//! newcomer starts ahead of the rest of a fan-out request's queue. Without preemption a full batch
//! of one request's long sequences would still hold a newcomer back until one of them ends, so a
//! request that already runs sequences leaves the batch's last slot to requests that run none.
//!
//! The KV budget is counted in blocks of [`KV_BLOCK`] tokens: a sequence reserves the blocks for
//! its prompt plus its `max_tokens` when admitted, so a running sequence never runs out; when the
//! budget is spent, new sequences wait in the queue.
//!
//! A prompt-scoring request ([`GenerateRequest::score_only`]: `echo` with `max_tokens: 0`) is
//! admitted the same way, reserving its prompt's blocks, and runs on this thread between steps
//! ([`Engine::prompt_logprobs`], in chunks), never beside a step on the same backend.

use crate::backend::Backend;
use crate::engine::Engine;
use crate::generate::{Completion, GenerateRequest, Sequence, Step};
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender};
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::UnboundedSender;

/// Tokens per KV block.
pub const KV_BLOCK: usize = 16;

/// What the scheduler tells a requester.
#[derive(Debug)]
pub enum SeqEvent {
    Token {
        choice: usize,
        step: Step,
    },
    Done {
        choice: usize,
        completion: Box<Completion>,
    },
    Error {
        choice: usize,
        message: String,
        /// A failure of the server (a panic or a failed step), not of the request.
        internal: bool,
    },
}

/// One sequence to run; `choice` tags its events (a request with `n` > 1 submits `n`).
pub struct Submission {
    /// The HTTP request it belongs to (every prompt and choice of one request share it): the
    /// unit that admission is fair between.
    pub request_id: u64,
    pub choice: usize,
    pub request: GenerateRequest,
    pub events: UnboundedSender<SeqEvent>,
    pub submitted: Instant,
}

/// Live figures the scheduler publishes.
#[derive(Default, Debug)]
pub struct SchedulerGauges {
    pub waiting: AtomicUsize,
    pub running: AtomicUsize,
    pub kv_blocks_used: AtomicUsize,
    pub kv_blocks_total: AtomicUsize,
}

pub trait SchedulerObserver: Send + Sync {
    /// The first token of a sequence after `ttft_s` seconds in the system.
    fn first_token(&self, ttft_s: f64);
    /// A later token `itl_s` seconds after the previous one.
    fn next_token(&self, itl_s: f64);
    fn finished(&self, prompt_tokens: usize, generated: usize);
    /// One forward over the running batch is done (after its `finished` calls).
    fn stepped(&self) {}
}

#[derive(Clone, Debug)]
pub struct SchedulerConfig {
    pub max_batch: usize,
    /// KV memory budget in bytes.
    pub kv_bytes: usize,
    /// Tests only: a step panics when this holds for one of its sequences' ids (prompt, then
    /// generated), standing in for a bug.
    pub panic_if: Option<PanicIf>,
}

/// See [`SchedulerConfig::panic_if`].
#[derive(Clone)]
pub struct PanicIf(pub Arc<dyn Fn(&[u32]) -> bool + Send + Sync>);

impl std::fmt::Debug for PanicIf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PanicIf(..)")
    }
}

/// Runs one step, a panic in it caught and reported as an error message.
fn guarded_step<B: Backend>(
    engine: &Engine<B>,
    cfg: &SchedulerConfig,
    seqs: &mut [&mut Sequence<B::Kv>],
) -> Result<Vec<Step>, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if let Some(p) = &cfg.panic_if {
            if seqs.iter().any(|s| (p.0)(&s.context)) {
                panic!("injected fault (SchedulerConfig::panic_if)");
            }
        }
        engine.step(seqs)
    }))
    .map_err(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        format!("internal error while running the batch: {what}")
    })?
    .map_err(|e| format!("internal error while running the batch: {e}"))
}

/// Scores a [`GenerateRequest::score_only`] request's prompt, a panic caught as in a step.
/// The error says whether the server failed (a panic, a failed forward) or the request.
fn guarded_score<B: Backend>(
    engine: &Engine<B>,
    cfg: &SchedulerConfig,
    request: &GenerateRequest,
) -> Result<Completion, (String, bool)> {
    let ids = engine
        .prompt_ids(&request.prompt)
        .map_err(|e| (e.to_string(), false))?;
    let top_k = request.prompt_logprobs.unwrap_or(0);
    let scored = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        if let Some(p) = &cfg.panic_if {
            if (p.0)(&ids) {
                panic!("injected fault (SchedulerConfig::panic_if)");
            }
        }
        engine.prompt_logprobs(&crate::generate::Prompt::Tokens(ids.clone()), top_k)
    }))
    .map_err(|payload| {
        let what = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".into());
        (
            format!("internal error while scoring the prompt: {what}"),
            true,
        )
    })?
    .map_err(|e| {
        (
            format!("internal error while scoring the prompt: {e}"),
            true,
        )
    })?;
    Ok(Completion {
        prompt_ids: ids,
        token_ids: vec![],
        text: String::new(),
        finish_reason: crate::generate::FinishReason::Length,
        stop: None,
        logprobs: None,
        prompt_logprobs: Some(scored),
        experts: None,
    })
}

struct Running<'t, K> {
    seq: Sequence<'t, K>,
    request_id: u64,
    /// Kept until the first token is sent: a sequence that has sent nothing can be started
    /// again after a step fails.
    request: Option<GenerateRequest>,
    choice: usize,
    events: UnboundedSender<SeqEvent>,
    blocks: usize,
    submitted: Instant,
    last_token: Option<Instant>,
}

/// Bytes of KV cache one token needs in this model.
pub fn kv_bytes_per_token<B: Backend>(engine: &Engine<B>) -> usize {
    let c = engine.config();
    c.num_hidden_layers * c.kv_width() * 2 * std::mem::size_of::<f32>()
}

/// Runs until every sender of `rx` is gone.
pub fn run<B: Backend>(
    engine: Arc<Engine<B>>,
    cfg: SchedulerConfig,
    rx: Receiver<Submission>,
    gauges: Arc<SchedulerGauges>,
    observer: Arc<dyn SchedulerObserver>,
) {
    let engine: &Engine<B> = &engine;
    let per_block = kv_bytes_per_token(engine) * KV_BLOCK;
    let total_blocks = (cfg.kv_bytes / per_block.max(1)).max(1);
    gauges
        .kv_blocks_total
        .store(total_blocks, Ordering::Relaxed);
    let mut used_blocks = 0usize;
    let mut waiting: VecDeque<Submission> = VecDeque::new();
    let mut retry: VecDeque<Running<B::Kv>> = VecDeque::new();
    let mut running: Vec<Running<B::Kv>> = Vec::new();
    let blocks_for = |s: &Submission| -> usize {
        // An upper bound before tokenising: the engine caps prompt + max_tokens at the context.
        let generated = if s.request.score_only {
            0
        } else {
            s.request.params.max_tokens
        };
        engine
            .info
            .context_length
            .min(generated + prompt_len_hint(engine, s))
            .div_ceil(KV_BLOCK)
    };
    loop {
        // Wait for work when idle; otherwise take whatever has arrived.
        if running.is_empty() && waiting.is_empty() && retry.is_empty() {
            match rx.recv() {
                Ok(s) => waiting.push_back(s),
                Err(_) => return,
            }
        }
        while let Ok(s) = rx.try_recv() {
            waiting.push_back(s);
        }
        // Requesters that left free their place in the queue and their slot in the batch.
        waiting.retain(|s| !s.events.is_closed());
        running.retain(|r| {
            let gone = r.events.is_closed();
            if gone {
                used_blocks -= r.blocks;
            }
            !gone
        });
        // A sequence the whole budget cannot hold is refused, naming both sizes, rather than
        // admitted past the budget.
        waiting.retain(|s| {
            let need = blocks_for(s);
            if need <= total_blocks {
                return true;
            }
            let _ = s.events.send(SeqEvent::Error {
                choice: s.choice,
                internal: false,
                message: format!(
                    "this sequence may hold up to {} tokens ({} bytes of KV cache), more than the \
                     server's KV budget of {} bytes (--kv-memory); shorten the prompt or lower \
                     max_tokens",
                    need * KV_BLOCK,
                    need * per_block,
                    total_blocks * per_block
                ),
            });
            false
        });
        // Sequences started again after a failed step run their first step alone: the one that
        // fails again fails by itself, the others join the batch.
        while let Some(mut r) = retry.pop_front() {
            if r.events.is_closed() {
                used_blocks -= r.blocks;
                continue;
            }
            match guarded_step(engine, &cfg, &mut [&mut r.seq]) {
                Ok(steps) => {
                    let step = steps.into_iter().next().expect("one sequence, one step");
                    deliver(&mut r, step, &*observer);
                    if r.seq.is_finished() {
                        used_blocks -= r.blocks;
                        complete(r, &*observer);
                    } else {
                        running.push(r);
                    }
                }
                Err(message) => {
                    used_blocks -= r.blocks;
                    let _ = r.events.send(SeqEvent::Error {
                        choice: r.choice,
                        message,
                        internal: true,
                    });
                }
            }
        }
        // Fair admission (see the module doc).
        let reserve = usize::from(cfg.max_batch > 1);
        let mut held: HashMap<u64, usize> = HashMap::new();
        for r in &running {
            *held.entry(r.request_id).or_default() += 1;
        }
        while running.len() < cfg.max_batch {
            let Some((i, holds)) = waiting
                .iter()
                .enumerate()
                .map(|(i, s)| (i, held.get(&s.request_id).copied().unwrap_or(0)))
                .min_by_key(|&(i, h)| (h, i))
            else {
                break;
            };
            if holds > 0 && running.len() + reserve >= cfg.max_batch {
                break;
            }
            // The chosen sequence waits for KV blocks rather than being overtaken, so a long one
            // is not starved by a stream of short ones.
            let need = blocks_for(&waiting[i]);
            if used_blocks + need > total_blocks {
                break;
            }
            let s = waiting.remove(i).expect("index from the queue");
            if s.request.score_only {
                // Runs now, its blocks held while it does; it takes no batch slot.
                used_blocks += need;
                gauges.kv_blocks_used.store(used_blocks, Ordering::Relaxed);
                let event = match guarded_score(engine, &cfg, &s.request) {
                    Ok(c) => {
                        observer.finished(c.prompt_ids.len(), 0);
                        SeqEvent::Done {
                            choice: s.choice,
                            completion: Box::new(c),
                        }
                    }
                    Err((message, internal)) => SeqEvent::Error {
                        choice: s.choice,
                        message,
                        internal,
                    },
                };
                used_blocks -= need;
                let _ = s.events.send(event);
                continue;
            }
            match engine.start_sequence(&s.request) {
                Ok(seq) => {
                    used_blocks += need;
                    *held.entry(s.request_id).or_default() += 1;
                    running.push(Running {
                        seq,
                        request_id: s.request_id,
                        request: Some(s.request),
                        choice: s.choice,
                        events: s.events,
                        blocks: need,
                        submitted: s.submitted,
                        last_token: None,
                    });
                }
                Err(e) => {
                    let _ = s.events.send(SeqEvent::Error {
                        choice: s.choice,
                        message: e.to_string(),
                        internal: false,
                    });
                }
            }
        }
        gauges.waiting.store(waiting.len(), Ordering::Relaxed);
        gauges.running.store(running.len(), Ordering::Relaxed);
        gauges.kv_blocks_used.store(used_blocks, Ordering::Relaxed);
        if running.is_empty() {
            continue;
        }
        let mut refs: Vec<&mut Sequence<B::Kv>> = running.iter_mut().map(|r| &mut r.seq).collect();
        // A panic inside a step (a bug) or a failed step ends the sequences in it that had sent
        // tokens (their state is not to be trusted), not the engine thread; those that had sent
        // nothing start again and take their first step alone.
        match guarded_step(engine, &cfg, &mut refs) {
            Ok(steps) => {
                for (r, step) in running.iter_mut().zip(steps) {
                    deliver(r, step, &*observer);
                }
            }
            Err(message) => {
                let batch = running.len();
                for mut r in running.drain(..) {
                    let again = match &r.request {
                        Some(req) if batch > 1 && !r.events.is_closed() => {
                            engine.start_sequence(req).ok()
                        }
                        _ => None,
                    };
                    match again {
                        Some(seq) => {
                            r.seq = seq;
                            retry.push_back(r);
                        }
                        None => {
                            used_blocks -= r.blocks;
                            let _ = r.events.send(SeqEvent::Error {
                                choice: r.choice,
                                message: message.clone(),
                                internal: true,
                            });
                        }
                    }
                }
                observer.stepped();
                continue;
            }
        }
        let mut still = Vec::with_capacity(running.len());
        for r in running.drain(..) {
            if r.seq.is_finished() {
                used_blocks -= r.blocks;
                complete(r, &*observer);
            } else {
                still.push(r);
            }
        }
        running = still;
        gauges.running.store(running.len(), Ordering::Relaxed);
        gauges.kv_blocks_used.store(used_blocks, Ordering::Relaxed);
        observer.stepped();
    }
}

/// Sends a finished sequence's completion.
fn complete<K>(r: Running<K>, observer: &dyn SchedulerObserver) {
    let c = r.seq.into_completion();
    observer.finished(c.prompt_ids.len(), c.token_ids.len());
    let _ = r.events.send(SeqEvent::Done {
        choice: r.choice,
        completion: Box::new(c),
    });
}

/// Sends a sequence's new token and times it.
fn deliver<K>(r: &mut Running<K>, step: Step, observer: &dyn SchedulerObserver) {
    let now = Instant::now();
    match r.last_token {
        None => observer.first_token(now.duration_since(r.submitted).as_secs_f64()),
        Some(t) => observer.next_token(now.duration_since(t).as_secs_f64()),
    }
    r.last_token = Some(now);
    r.request = None;
    let _ = r.events.send(SeqEvent::Token {
        choice: r.choice,
        step,
    });
}

/// The prompt's length in tokens for budgeting: exact for token prompts, a bound from the text
/// length otherwise (a token covers at least one byte, plus template and special tokens).
fn prompt_len_hint<B: Backend>(engine: &Engine<B>, s: &Submission) -> usize {
    use crate::generate::Prompt;
    match &s.request.prompt {
        Prompt::Tokens(t) => t.len(),
        Prompt::Text(t) => t.len() + 2,
        Prompt::Chat(m) => {
            m.iter().map(|m| m.content.len() + 16).sum::<usize>()
                + engine.info.context_length.min(64)
        }
    }
}

/// Sends submissions to a scheduler thread.
pub type SubmitSender = Sender<Submission>;
