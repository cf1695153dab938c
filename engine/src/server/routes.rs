//! HTTP handlers: parse and check, submit to the model's scheduler, relay its events.

use super::types::*;
use super::{AppState, Served};
use crate::generate::{Completion, GenerateRequest, Prompt, PromptTokenLogprob};
use crate::scheduler::{SeqEvent, Submission};
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde_json::{json, Value};
use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;
use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver};

type St = State<Arc<AppState>>;

pub fn router(state: Arc<AppState>) -> Router {
    // Bodies up to 16× the limit are read in full so the client hears the 413 before the
    // connection closes; larger ones are cut off by the transport.
    let limit = state.config.max_body.saturating_mul(16);
    Router::new()
        .route("/v1/chat/completions", post(chat))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .route("/v1/stats/experts", get(expert_stats))
        .route("/tokenize", post(tokenize))
        .route("/detokenize", post(detokenize))
        .route("/tokenizer_info", get(tokenizer_info))
        .fallback(no_route)
        .method_not_allowed_fallback(wrong_method)
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            read_body_in_time,
        ))
        .layer(DefaultBodyLimit::max(limit))
        .with_state(state)
}

/// Reads the whole request body within `--body-timeout` (a client that stops sending gets a 408
/// and its connection closed instead of holding it open) and up to 16× `--max-body` (a 413
/// past that); the handlers then parse the buffered bytes.
async fn read_body_in_time(
    State(state): St,
    req: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    use futures_util::StreamExt;
    let (parts, body) = req.into_parts();
    let cap = state.config.max_body.saturating_mul(16);
    let timeout = state.config.body_timeout;
    let read = async {
        let mut buf = Vec::new();
        let mut data = body.into_data_stream();
        while let Some(chunk) = data.next().await {
            let chunk = chunk.map_err(|e| {
                ApiError::bad(format!("could not read the request body: {e}"), None)
            })?;
            if buf.len() + chunk.len() > cap {
                return Err(ApiError {
                    status: 413,
                    message: format!(
                        "the request body is over {cap} bytes; the limit is {} bytes",
                        state.config.max_body
                    ),
                    kind: "invalid_request_error",
                    param: None,
                });
            }
            buf.extend_from_slice(&chunk);
        }
        Ok(buf)
    };
    let err = match tokio::time::timeout(timeout, read).await {
        Ok(Ok(buf)) => {
            let req = axum::extract::Request::from_parts(parts, axum::body::Body::from(buf));
            return next.run(req).await;
        }
        Ok(Err(e)) => e,
        Err(_) => ApiError {
            status: 408,
            message: format!(
                "the request body did not arrive within {:?} (--body-timeout)",
                timeout
            ),
            kind: "invalid_request_error",
            param: None,
        },
    };
    let mut resp = err.into_response();
    // The rest of the body may still be on its way: end the connection rather than read it.
    resp.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    resp
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::BAD_REQUEST);
        (status, Json(self.body())).into_response()
    }
}

fn parse<T: DeserializeOwned>(
    body: Result<Bytes, BytesRejection>,
    max_body: usize,
) -> Result<T, ApiError> {
    let too_large = |n: String| ApiError {
        status: 413,
        message: format!("the request body is {n}; the limit is {max_body} bytes"),
        kind: "invalid_request_error",
        param: None,
    };
    let body = body.map_err(|e| match e.status().as_u16() {
        413 => too_large("too large".into()),
        s => ApiError {
            status: s,
            message: format!("could not read the request body: {}", e.body_text()),
            kind: "invalid_request_error",
            param: None,
        },
    })?;
    if body.len() > max_body {
        return Err(too_large(format!("{} bytes", body.len())));
    }
    serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad(format!("invalid JSON body: {e}"), None))
}

fn finish_request(state: &AppState, endpoint: &str, r: Result<Response, ApiError>) -> Response {
    let resp = r.unwrap_or_else(|e| e.into_response());
    state.requests.count(endpoint, resp.status().as_u16());
    resp
}

fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn request_id(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    format!(
        "{prefix}-{:x}{:06x}",
        now_secs(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Where each token starts in the decoded text of `ids` (special tokens left out).
fn text_offsets(m: &Served, ids: &[u32]) -> Vec<usize> {
    (0..ids.len())
        .map(|i| {
            m.engine
                .tokenizer()
                .decode(&ids[..i], true)
                .map_or(0, |t| t.len())
        })
        .collect()
}

/// A token's label in logprobs: its text, or `token_id:{id}` when the request asks for ids.
fn label(m: &Served, id: u32, as_ids: bool) -> String {
    if as_ids {
        format!("token_id:{id}")
    } else {
        piece(m, id)
    }
}

/// Text of one token as OpenAI clients show it: SentencePiece's `▁` as a space, byte pieces as
/// their character; byte-level BPE pieces (GPT-2, Qwen, NeoX: `Ġworld`, `Ċ`) as the bytes they
/// stand for (an incomplete UTF-8 sequence as U+FFFD).
fn piece(m: &Served, id: u32) -> String {
    m.engine.tokenizer().token_text(id)
}

/// One prompt's sequences, submitted together.
struct Job {
    prompt_ids: Vec<u32>,
    rx: UnboundedReceiver<SeqEvent>,
    n: usize,
}

/// A fresh id for one HTTP request's sequences (the scheduler's unit of fairness).
fn next_request_id() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A request may start at most `--max-sequences-per-request` sequences (prompts × n).
fn check_sequences(state: &AppState, prompts: usize, n: usize) -> Result<(), ApiError> {
    let limit = state.config.max_sequences_per_request;
    if prompts * n > limit {
        return Err(ApiError::bad(
            format!(
                "{prompts} prompts × n {n} = {} sequences; a request may start at most {limit} \
                 (--max-sequences-per-request)",
                prompts * n
            ),
            Some("n"),
        ));
    }
    Ok(())
}

/// `logprobs` / `top_logprobs` (`value`; -1 allowed where `min` is -1) within the vocabulary and
/// `--max-logprobs`.
fn check_logprobs(
    state: &AppState,
    m: &Served,
    param: &str,
    value: i64,
    min: i64,
) -> Result<(), ApiError> {
    let vocab = m.engine.config().vocab_size;
    if value < min || value > vocab as i64 {
        return Err(ApiError::bad(
            format!("{param} must be between 0 and {vocab}"),
            Some(param),
        ));
    }
    if let Some(limit) = state.config.max_logprobs {
        if value > limit as i64 {
            return Err(ApiError::bad(
                format!("{param} {value} is above this server's limit of {limit} (--max-logprobs)"),
                Some(param),
            ));
        }
    }
    Ok(())
}

/// The response's estimated size: `positions` entries with `alternatives` each, `per_entry`
/// bytes an entry; refused past `--max-response-bytes` before any work starts.
fn check_response_size(
    state: &AppState,
    positions: usize,
    alternatives: usize,
    per_entry: usize,
    param: &str,
) -> Result<usize, ApiError> {
    let limit = state.config.max_response_bytes;
    let estimate = positions
        .saturating_mul(alternatives.saturating_add(1))
        .saturating_mul(per_entry);
    if estimate > limit {
        return Err(ApiError::bad(
            format!(
                "{param} {alternatives} over {positions} positions makes a response of about \
                 {estimate} bytes ({positions} × {} entries × {per_entry} bytes), more than this \
                 server's limit of {limit} bytes (--max-response-bytes); ask for fewer {param}, \
                 fewer tokens or a shorter prompt",
                alternatives + 1
            ),
            Some(param),
        ));
    }
    Ok(estimate)
}

/// A JSON response serialised straight into its body (`capacity`: the expected size).
fn json_body<T: serde::Serialize>(v: &T, capacity: usize) -> Result<Response, ApiError> {
    let mut buf = Vec::with_capacity(capacity);
    serde_json::to_writer(&mut buf, v).map_err(|e| ApiError::internal(e.to_string()))?;
    Ok(([(header::CONTENT_TYPE, "application/json")], buf).into_response())
}

/// One choice of a completions response.
#[derive(serde::Serialize)]
struct CompletionChoice<'a> {
    index: usize,
    text: String,
    logprobs: Option<CompletionLogprobs<'a>>,
    finish_reason: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    experts: Option<&'a Vec<Vec<Vec<u32>>>>,
}

#[derive(serde::Serialize)]
struct CompletionResponse<'a> {
    id: String,
    object: &'static str,
    created: u64,
    model: &'a str,
    choices: Vec<CompletionChoice<'a>>,
    usage: Usage,
    system_fingerprint: Option<()>,
}

/// Submits one prompt to be scored (its logprobs and `top_k` alternatives per position, nothing
/// generated): the scheduler admits it against the KV budget and runs it between its steps.
fn submit_scoring(
    m: &Served,
    request_id: u64,
    prompt_ids: Vec<u32>,
    top_k: usize,
) -> Result<Job, ApiError> {
    let (tx, rx) = unbounded_channel();
    let sender = m.submit.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut request = GenerateRequest::new(
        Prompt::Tokens(prompt_ids.clone()),
        crate::SamplingParams::default(),
    );
    request.prompt_logprobs = Some(top_k);
    request.score_only = true;
    sender
        .send(Submission {
            request_id,
            choice: 0,
            request,
            events: tx,
            submitted: Instant::now(),
        })
        .map_err(|_| ApiError::internal("the engine thread has stopped"))?;
    Ok(Job {
        prompt_ids,
        rx,
        n: 1,
    })
}

fn submit(
    m: &Served,
    request_id: u64,
    prompt_ids: Vec<u32>,
    params: &crate::SamplingParams,
    n: usize,
    prompt_logprobs: Option<usize>,
    return_experts: bool,
) -> Result<Job, ApiError> {
    let (tx, rx) = unbounded_channel();
    let sender = m.submit.lock().unwrap_or_else(|e| e.into_inner()).clone();
    for choice in 0..n {
        let mut p = params.clone();
        // Choices of one seeded request differ from each other and stay reproducible.
        p.seed = params.seed.map(|s| s.wrapping_add(choice as u64));
        let mut request = GenerateRequest::new(Prompt::Tokens(prompt_ids.clone()), p);
        request.prompt_logprobs = prompt_logprobs;
        request.return_experts = return_experts;
        sender
            .send(Submission {
                request_id,
                choice,
                request,
                events: tx.clone(),
                submitted: Instant::now(),
            })
            .map_err(|_| ApiError::internal("the engine thread has stopped"))?;
    }
    Ok(Job { prompt_ids, rx, n })
}

/// Waits for every choice of a job to finish.
async fn collect(job: &mut Job) -> Result<Vec<Completion>, ApiError> {
    let mut done: Vec<Option<Completion>> = vec![None; job.n];
    let mut left = job.n;
    while left > 0 {
        match job.rx.recv().await {
            Some(SeqEvent::Done { choice, completion }) => {
                done[choice] = Some(*completion);
                left -= 1;
            }
            Some(SeqEvent::Error {
                message, internal, ..
            }) => return Err(ApiError::from_event(message, internal)),
            Some(SeqEvent::Token { .. }) => {}
            None => return Err(ApiError::internal("the engine dropped the request")),
        }
    }
    Ok(done
        .into_iter()
        .map(|c| c.expect("every choice finished"))
        .collect())
}

fn check_budget(
    m: &Served,
    prompt_len: usize,
    max_tokens: usize,
    explicit: bool,
) -> Result<usize, ApiError> {
    let ctx = m.engine.info().context_length;
    if prompt_len >= ctx {
        return Err(ApiError::bad(
            format!("the prompt has {prompt_len} tokens; this model's context is {ctx} tokens"),
            Some("messages"),
        ));
    }
    if prompt_len + max_tokens > ctx {
        if explicit {
            return Err(ApiError::bad(
                format!(
                    "max_tokens {max_tokens} plus the prompt's {prompt_len} tokens exceed this model's context of {ctx} tokens"
                ),
                Some("max_tokens"),
            ));
        }
        return Ok(ctx - prompt_len);
    }
    Ok(max_tokens)
}

async fn chat(State(state): St, body: Result<Bytes, BytesRejection>) -> Response {
    let r = chat_inner(&state, body).await;
    finish_request(&state, "chat", r)
}

async fn chat_inner(
    state: &Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: ChatRequest = parse(body, state.config.max_body)?;
    let as_ids = req.common.return_tokens_as_token_ids;
    let m = state.model(req.common.model.as_deref())?;
    let messages = req
        .messages
        .as_ref()
        .filter(|v| !v.is_empty())
        .ok_or_else(|| {
            ApiError::bad(
                "`messages` is required and must not be empty",
                Some("messages"),
            )
        })?;
    let msgs: Vec<_> = messages
        .iter()
        .map(|x| x.to_chat())
        .collect::<Result<_, _>>()?;
    let vocab = m.engine.config().vocab_size;
    let mut params = req
        .common
        .sampling(state.config.default_max_tokens, vocab)?;
    let top = req.top_logprobs.unwrap_or(0);
    check_logprobs(state, m, "top_logprobs", top, 0)?;
    if top > 0 && !req.logprobs {
        return Err(ApiError::bad(
            "top_logprobs needs logprobs: true",
            Some("top_logprobs"),
        ));
    }
    params.logprobs = req.logprobs;
    params.top_logprobs = top as usize;
    let n = req.common.n()?;
    check_sequences(state, 1, n)?;
    let ids = m.engine.prompt_ids(&Prompt::Chat(msgs))?;
    let explicit = req.common.max_tokens.is_some() || req.common.max_completion_tokens.is_some();
    params.max_tokens = check_budget(m, ids.len(), params.max_tokens, explicit)?;
    if req.logprobs && !req.common.stream {
        check_response_size(
            state,
            n * params.max_tokens,
            top as usize,
            CHAT_ENTRY_BYTES,
            "top_logprobs",
        )?;
    }
    let job = submit(
        m,
        next_request_id(),
        ids,
        &params,
        n,
        None,
        req.common.return_experts,
    )?;
    let id = request_id("chatcmpl");
    let model = m.name.clone();
    let include_usage = req
        .common
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    if req.common.stream {
        return Ok(stream(
            as_ids,
            state.clone(),
            model,
            id,
            job,
            Kind::Chat,
            include_usage,
            req.logprobs,
            false,
        ));
    }
    let mut job = job;
    let done = collect(&mut job).await?;
    let choices: Vec<Value> = done
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let mut v = json!({
                "index": i,
                "message": {"role": "assistant", "content": c.text},
                "logprobs": if req.logprobs { chat_logprobs(c.logprobs.as_deref().unwrap_or(&[]), &|t| label(m, t, as_ids)) } else { Value::Null },
                "finish_reason": c.finish_reason.as_str(),
            });
            if let Some(e) = &c.experts {
                v["experts"] = json!(e);
            }
            v
        })
        .collect();
    Ok(Json(json!({
        "id": id, "object": "chat.completion", "created": now_secs(), "model": model,
        "choices": choices, "usage": usage_of(&done), "system_fingerprint": null,
    }))
    .into_response())
}

async fn completions(State(state): St, body: Result<Bytes, BytesRejection>) -> Response {
    let r = completions_inner(&state, body).await;
    finish_request(&state, "completions", r)
}

async fn completions_inner(
    state: &Arc<AppState>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let req: CompletionRequest = parse(body, state.config.max_body)?;
    let as_ids = req.common.return_tokens_as_token_ids;
    let m = state.model(req.common.model.as_deref())?;
    let prompts: Vec<Prompt> = match req.prompt.clone() {
        None => return Err(ApiError::bad("`prompt` is required", Some("prompt"))),
        Some(PromptField::Text(t)) => vec![Prompt::Text(t)],
        Some(PromptField::Tokens(t)) => vec![Prompt::Tokens(t)],
        Some(PromptField::Texts(v)) if !v.is_empty() => v.into_iter().map(Prompt::Text).collect(),
        Some(PromptField::TokenLists(v)) if !v.is_empty() => {
            v.into_iter().map(Prompt::Tokens).collect()
        }
        Some(_) => {
            return Err(ApiError::bad(
                "`prompt` must not be an empty list",
                Some("prompt"),
            ))
        }
    };
    let lp = req.logprobs.unwrap_or(-1);
    check_logprobs(state, m, "logprobs", lp, -1)?;
    if req.echo && req.common.max_tokens.or(req.common.max_completion_tokens) == Some(0) {
        return prompt_only(state, m, &req, prompts, as_ids).await;
    }
    let vocab = m.engine.config().vocab_size;
    let mut params = req
        .common
        .sampling(state.config.default_max_tokens, vocab)?;
    let want_logprobs = lp >= 0;
    params.logprobs = want_logprobs;
    params.top_logprobs = lp.max(0) as usize;
    let n = req.common.n()?;
    check_sequences(state, prompts.len(), n)?;
    let explicit = req.common.max_tokens.is_some() || req.common.max_completion_tokens.is_some();
    let mut prepared = vec![];
    for p in &prompts {
        let ids = m.engine.prompt_ids(p)?;
        let max_tokens = check_budget(m, ids.len(), params.max_tokens, explicit)?;
        prepared.push((ids, max_tokens));
    }
    // Prompt logprobs are not streamed: computed only for a response that carries them.
    let echo_logprobs = req.echo && want_logprobs && !req.common.stream;
    let mut estimate = 0;
    if want_logprobs && !req.common.stream {
        let positions: usize = prepared
            .iter()
            .map(|(ids, max)| n * (max + if echo_logprobs { ids.len() } else { 0 }))
            .sum();
        estimate = check_response_size(
            state,
            positions,
            params.top_logprobs,
            COMPLETION_ENTRY_BYTES,
            "logprobs",
        )?;
    }
    let mut jobs = vec![];
    let seq_request = next_request_id();
    for (ids, max_tokens) in prepared {
        let mut params = params.clone();
        params.max_tokens = max_tokens;
        let prompt_lp = echo_logprobs.then_some(params.top_logprobs);
        jobs.push(submit(
            m,
            seq_request,
            ids,
            &params,
            n,
            prompt_lp,
            req.common.return_experts,
        )?);
    }
    let id = request_id("cmpl");
    let model = m.name.clone();
    let include_usage = req
        .common
        .stream_options
        .as_ref()
        .is_some_and(|o| o.include_usage);
    if req.common.stream {
        if jobs.len() != 1 {
            return Err(ApiError::bad(
                "streaming takes a single prompt",
                Some("prompt"),
            ));
        }
        let job = jobs.pop().expect("one job");
        return Ok(stream(
            as_ids,
            state.clone(),
            model,
            id,
            job,
            Kind::Completion,
            include_usage,
            want_logprobs,
            req.echo,
        ));
    }
    let mut all = vec![];
    let mut prompt_texts = vec![];
    for job in jobs.iter_mut() {
        all.push(collect(job).await?);
        prompt_texts.push(if req.echo {
            m.engine
                .tokenizer()
                .decode(&job.prompt_ids, true)
                .map_err(ApiError::from)?
        } else {
            String::new()
        });
    }
    // Where each returned token starts in its choice's text.
    let offsets: Vec<Vec<Vec<usize>>> = all
        .iter()
        .map(|done| {
            done.iter()
                .map(|c| {
                    if !want_logprobs {
                        return vec![];
                    }
                    let ids: Vec<u32> = if req.echo {
                        c.prompt_ids.iter().chain(&c.token_ids).copied().collect()
                    } else {
                        c.token_ids.clone()
                    };
                    text_offsets(m, &ids)
                })
                .collect()
        })
        .collect();
    let piece = |t: u32| label(m, t, as_ids);
    let mut choices = vec![];
    for (pi, done) in all.iter().enumerate() {
        for (i, c) in done.iter().enumerate() {
            choices.push(CompletionChoice {
                index: pi * n + i,
                text: format!("{}{}", prompt_texts[pi], c.text),
                logprobs: want_logprobs.then(|| CompletionLogprobs {
                    prompt: if req.echo {
                        c.prompt_logprobs.as_deref()
                    } else {
                        None
                    },
                    generated: c.logprobs.as_deref().unwrap_or(&[]),
                    piece: &piece,
                    offsets: &offsets[pi][i],
                }),
                finish_reason: c.finish_reason.as_str(),
                experts: c.experts.as_ref(),
            });
        }
    }
    let flat: Vec<Completion> = all.iter().flatten().cloned().collect();
    let mut usage = usage_of(&flat);
    drop(flat);
    usage.prompt_tokens = jobs.iter().map(|j| j.prompt_ids.len()).sum();
    usage.total_tokens = usage.prompt_tokens + usage.completion_tokens;
    json_body(
        &CompletionResponse {
            id,
            object: "text_completion",
            created: now_secs(),
            model: &model,
            choices,
            usage,
            system_fingerprint: None,
        },
        estimate + 4096,
    )
}

/// `echo` with `max_tokens: 0`: the prompt's own logprobs (teacher forcing), nothing generated.
/// Each prompt is scored through the scheduler (admitted against the KV budget, run between its
/// steps, a chunk of positions at a time); the response's size is checked first.
async fn prompt_only(
    state: &AppState,
    m: &Served,
    req: &CompletionRequest,
    prompts: Vec<Prompt>,
    as_ids: bool,
) -> Result<Response, ApiError> {
    let lp = req.logprobs.unwrap_or(-1);
    check_sequences(state, prompts.len(), 1)?;
    let all_ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|p| m.engine.prompt_ids(p))
        .collect::<Result<_, _>>()?;
    let prompt_tokens: usize = all_ids.iter().map(Vec::len).sum();
    let mut scored: Vec<Option<Vec<PromptTokenLogprob>>> = vec![None; all_ids.len()];
    let mut estimate = 0;
    if lp >= 0 {
        let top_k = lp as usize;
        estimate = check_response_size(
            state,
            prompt_tokens,
            top_k,
            COMPLETION_ENTRY_BYTES,
            "logprobs",
        )?;
        let request_id = next_request_id();
        let mut jobs = all_ids
            .iter()
            .map(|ids| submit_scoring(m, request_id, ids.clone(), top_k))
            .collect::<Result<Vec<_>, _>>()?;
        for (job, out) in jobs.iter_mut().zip(scored.iter_mut()) {
            let c = collect(job).await?.pop().expect("one choice");
            *out = c.prompt_logprobs;
        }
    }
    let offsets: Vec<Vec<usize>> = all_ids
        .iter()
        .map(|ids| {
            if lp >= 0 {
                text_offsets(m, ids)
            } else {
                vec![]
            }
        })
        .collect();
    let piece = |t: u32| label(m, t, as_ids);
    let mut choices = vec![];
    for (i, ids) in all_ids.iter().enumerate() {
        choices.push(CompletionChoice {
            index: i,
            text: m.engine.tokenizer().decode(ids, true)?,
            logprobs: (lp >= 0).then(|| CompletionLogprobs {
                prompt: Some(scored[i].as_deref().unwrap_or(&[])),
                generated: &[],
                piece: &piece,
                offsets: &offsets[i],
            }),
            finish_reason: "length",
            experts: None,
        });
    }
    json_body(
        &CompletionResponse {
            id: request_id("cmpl"),
            object: "text_completion",
            created: now_secs(),
            model: &m.name,
            choices,
            usage: Usage {
                prompt_tokens,
                completion_tokens: 0,
                total_tokens: prompt_tokens,
            },
            system_fingerprint: None,
        },
        estimate + 4096,
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

struct StreamState {
    app: Arc<AppState>,
    model: String,
    id: String,
    job: Job,
    kind: Kind,
    include_usage: bool,
    logprobs: bool,
    echo: bool,
    as_ids: bool,
    queue: VecDeque<Event>,
    finished: usize,
    completion_tokens: usize,
    started: bool,
    ended: bool,
}

impl StreamState {
    fn chunk(&self, choices: Value) -> Event {
        let object = if self.kind == Kind::Chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let mut v = json!({"id": self.id, "object": object, "created": now_secs(), "model": self.model, "choices": choices});
        if self.include_usage {
            v["usage"] = Value::Null;
        }
        Event::default().data(v.to_string())
    }

    fn served(&self) -> &Served {
        self.app
            .models
            .iter()
            .find(|m| m.name == self.model)
            .expect("model served")
    }

    /// Turns one scheduler event into zero or more SSE events.
    fn on_event(&mut self, ev: SeqEvent) {
        if !self.started {
            self.started = true;
            for c in 0..self.job.n {
                let first = match self.kind {
                    Kind::Chat => {
                        json!([{"index": c, "delta": {"role": "assistant", "content": ""}, "logprobs": null, "finish_reason": null}])
                    }
                    Kind::Completion if self.echo => {
                        let text = self
                            .served()
                            .engine
                            .tokenizer()
                            .decode(&self.job.prompt_ids, true)
                            .unwrap_or_default();
                        json!([{"index": c, "text": text, "logprobs": null, "finish_reason": null}])
                    }
                    Kind::Completion => continue,
                };
                let e = self.chunk(first);
                self.queue.push_back(e);
            }
        }
        match ev {
            SeqEvent::Token { choice, step } => {
                self.completion_tokens += 1;
                let m = self.served();
                let lp = match (&step.logprob, self.logprobs, self.kind) {
                    (Some(l), true, Kind::Chat) => {
                        chat_logprobs(std::slice::from_ref(l), &|t| label(m, t, self.as_ids))
                    }
                    (Some(l), true, Kind::Completion) => completion_logprobs(
                        None,
                        std::slice::from_ref(l),
                        &|t| label(m, t, self.as_ids),
                        &[0],
                    ),
                    _ => Value::Null,
                };
                let finish = finish_str(step.finish_reason);
                // A token whose text is held back (part of a UTF-8 character or of a possible
                // stop string) says nothing yet: no empty chunk unless it ends the choice or
                // carries the token's logprobs.
                if step.text.is_empty() && finish.is_null() && lp.is_null() {
                    return self.after_event();
                }
                let choices = match self.kind {
                    Kind::Chat => {
                        // Only the closing chunk has an empty delta, as OpenAI's does.
                        let delta = if step.text.is_empty() && !finish.is_null() && lp.is_null() {
                            json!({})
                        } else {
                            json!({"content": step.text})
                        };
                        json!([{"index": choice, "delta": delta, "logprobs": lp, "finish_reason": finish}])
                    }
                    Kind::Completion => {
                        json!([{"index": choice, "text": step.text, "logprobs": lp, "finish_reason": finish}])
                    }
                };
                let e = self.chunk(choices);
                self.queue.push_back(e);
            }
            SeqEvent::Done { .. } => self.finished += 1,
            SeqEvent::Error {
                message, internal, ..
            } => {
                self.queue.push_back(
                    Event::default()
                        .data(ApiError::from_event(message, internal).body().to_string()),
                );
                self.finished = self.job.n;
            }
        }
        self.after_event();
    }

    /// Closes the stream once every choice is done.
    fn after_event(&mut self) {
        if self.finished == self.job.n && !self.ended {
            self.ended = true;
            if self.include_usage {
                let p = self.job.prompt_ids.len();
                let usage = json!({"prompt_tokens": p, "completion_tokens": self.completion_tokens, "total_tokens": p + self.completion_tokens});
                let object = if self.kind == Kind::Chat {
                    "chat.completion.chunk"
                } else {
                    "text_completion"
                };
                let v = json!({"id": self.id, "object": object, "created": now_secs(), "model": self.model, "choices": [], "usage": usage});
                self.queue.push_back(Event::default().data(v.to_string()));
            }
            self.queue.push_back(Event::default().data("[DONE]"));
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn stream(
    as_ids: bool,
    app: Arc<AppState>,
    model: String,
    id: String,
    job: Job,
    kind: Kind,
    include_usage: bool,
    logprobs: bool,
    echo: bool,
) -> Response {
    let st = StreamState {
        app,
        model,
        id,
        job,
        kind,
        include_usage,
        logprobs,
        echo,
        as_ids,
        queue: VecDeque::new(),
        finished: 0,
        completion_tokens: 0,
        started: false,
        ended: false,
    };
    let s = futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(e) = st.queue.pop_front() {
                return Some((Ok::<Event, Infallible>(e), st));
            }
            if st.ended {
                return None;
            }
            match st.job.rx.recv().await {
                Some(ev) => st.on_event(ev),
                None => return None,
            }
        }
    });
    Sse::new(s).keep_alive(KeepAlive::default()).into_response()
}

async fn models(State(state): St) -> Response {
    let data: Vec<Value> = state
        .models
        .iter()
        .map(|m| {
            json!({"id": m.name, "object": "model", "created": state.created, "owned_by": "moe",
                   "max_model_len": m.engine.info().context_length})
        })
        .collect();
    state.requests.count("models", 200);
    Json(json!({"object": "list", "data": data})).into_response()
}

async fn health(State(state): St) -> Response {
    state.requests.count("health", 200);
    Json(json!({"status": "ok", "models": state.models.iter().map(|m| m.name.clone()).collect::<Vec<_>>()})).into_response()
}

async fn metrics(State(state): St) -> Response {
    state.requests.count("metrics", 200);
    // The statistics are read under the model's lock, which a running step holds: wait for it
    // off the async workers.
    let st = state.clone();
    let body = tokio::task::spawn_blocking(move || {
        let models: Vec<_> = st
            .models
            .iter()
            .map(|m| {
                (
                    m.name.as_str(),
                    &*m.metrics,
                    m.engine.stats(),
                    m.kv_block_bytes,
                )
            })
            .collect();
        super::metrics::render(&st.requests, &models)
    })
    .await
    .unwrap_or_default();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

/// The load-balance statistics of every served model, as `moe stats --json` prints them.
async fn expert_stats(State(state): St) -> Response {
    state.requests.count("stats", 200);
    let st = state.clone();
    let v: serde_json::Map<String, Value> = tokio::task::spawn_blocking(move || {
        st.models
            .iter()
            .map(|m| {
                (
                    m.name.clone(),
                    serde_json::to_value(m.engine.stats()).unwrap_or(Value::Null),
                )
            })
            .collect()
    })
    .await
    .unwrap_or_default();
    Json(json!({"models": v})).into_response()
}

/// Unknown paths get an OpenAI-style 404 naming the path, not an empty body.
async fn no_route(uri: axum::http::Uri) -> Response {
    ApiError::not_found(
        format!(
            "no endpoint at {} (endpoints: /v1/chat/completions, /v1/completions, /v1/models, \
             /tokenize, /detokenize, /tokenizer_info, /health, /metrics, /v1/stats/experts)",
            uri.path()
        ),
        None,
    )
    .into_response()
}

async fn wrong_method(method: axum::http::Method, uri: axum::http::Uri) -> Response {
    ApiError {
        status: 405,
        message: format!("{} does not take {method}", uri.path()),
        kind: "invalid_request_error",
        param: None,
    }
    .into_response()
}

#[derive(serde::Deserialize)]
struct TokenizeRequest {
    model: Option<String>,
    prompt: Option<String>,
    messages: Option<Vec<InMessage>>,
    add_special_tokens: Option<bool>,
    #[serde(default = "yes")]
    add_generation_prompt: bool,
    #[serde(default)]
    return_token_strs: bool,
}

fn yes() -> bool {
    true
}

/// vLLM's `/tokenize`: a `prompt` (special tokens added unless `add_special_tokens: false`) or
/// chat `messages` through the chat template (`add_generation_prompt`, default true; special
/// tokens not added again unless asked) → `{tokens, count, max_model_len, token_strs}`.
async fn tokenize(State(state): St, body: Result<Bytes, BytesRejection>) -> Response {
    let r = (|| {
        let req: TokenizeRequest = parse(body, state.config.max_body)?;
        let m = state.model(req.model.as_deref())?;
        let tok = m.engine.tokenizer();
        let ids = match (&req.prompt, &req.messages) {
            (Some(p), None) => tok.encode(p, req.add_special_tokens.unwrap_or(true))?,
            (None, Some(msgs)) => {
                let msgs: Vec<_> = msgs.iter().map(|x| x.to_chat()).collect::<Result<_, _>>()?;
                let text = tok.apply_chat_template(&msgs, req.add_generation_prompt)?;
                tok.encode(&text, req.add_special_tokens.unwrap_or(false))?
            }
            _ => {
                return Err(ApiError::bad(
                    "give either `prompt` (a string) or `messages`",
                    Some("prompt"),
                ))
            }
        };
        let strs = req.return_token_strs.then(|| {
            ids.iter()
                .map(|&i| tok.id_to_token(i).unwrap_or_default())
                .collect::<Vec<_>>()
        });
        Ok(Json(json!({
            "tokens": ids, "count": ids.len(), "max_model_len": m.engine.info().context_length,
            "token_strs": strs,
        }))
        .into_response())
    })();
    finish_request(&state, "tokenize", r)
}

#[derive(serde::Deserialize)]
struct DetokenizeRequest {
    model: Option<String>,
    tokens: Vec<i64>,
}

/// vLLM's `/detokenize`: `{tokens}` → `{prompt}` (special tokens kept, as transformers'
/// `decode` does by default); an id outside the tokenizer's vocabulary is a 400 naming it.
async fn detokenize(State(state): St, body: Result<Bytes, BytesRejection>) -> Response {
    let r = (|| {
        let req: DetokenizeRequest = parse(body, state.config.max_body)?;
        let m = state.model(req.model.as_deref())?;
        let tok = m.engine.tokenizer();
        let mut ids = Vec::with_capacity(req.tokens.len());
        for &t in &req.tokens {
            match u32::try_from(t)
                .ok()
                .filter(|&i| tok.id_to_token(i).is_some())
            {
                Some(i) => ids.push(i),
                None => {
                    return Err(ApiError::bad(
                        format!(
                            "token id {t} is not in the tokenizer's vocabulary (ids 0 to {})",
                            tok.vocab_size().saturating_sub(1)
                        ),
                        Some("tokens"),
                    ))
                }
            }
        }
        Ok(Json(json!({"prompt": tok.decode(&ids, false)?})).into_response())
    })();
    finish_request(&state, "detokenize", r)
}

/// vLLM's `/tokenizer_info`: the tokenizer's configuration, so a client (lm-evaluation-harness's
/// remote tokenizer) can work without downloading it. `?model=` picks a model.
async fn tokenizer_info(
    State(state): St,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
) -> Response {
    let r = (|| {
        let m = state.model(q.get("model").map(String::as_str))?;
        let tok = m.engine.tokenizer();
        Ok(Json(json!({
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model": m.name,
            "bos_token": tok.bos_token(),
            "eos_token": tok.eos_token(),
            "bos_token_id": tok.bos_id(),
            "eos_token_id": tok.eos_id(),
            "add_bos_token": tok.add_bos_token(),
            "chat_template": tok.chat_template(),
            "vocab_size": tok.vocab_size(),
            "model_max_length": m.engine.info().context_length,
            "max_model_len": m.engine.info().context_length,
        }))
        .into_response())
    })();
    finish_request(&state, "tokenizer_info", r)
}
