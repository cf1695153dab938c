//! OpenAI request and response bodies, and their checks.

use crate::generate::{Completion, FinishReason, TokenLogprob};
use crate::sampling::SamplingParams;
use crate::tokenizer::ChatMessage;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::HashMap;

/// An OpenAI-style error: HTTP status, message, type and the offending parameter.
#[derive(Debug, Clone)]
pub struct ApiError {
    pub status: u16,
    pub message: String,
    pub kind: &'static str,
    pub param: Option<String>,
}

impl ApiError {
    pub fn bad(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            status: 400,
            message: message.into(),
            kind: "invalid_request_error",
            param: param.map(str::to_string),
        }
    }

    pub fn not_found(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError {
            status: 404,
            kind: "not_found_error",
            ..Self::bad(message, param)
        }
    }

    pub fn internal(message: impl Into<String>) -> Self {
        ApiError {
            status: 500,
            message: message.into(),
            kind: "internal_error",
            param: None,
        }
    }

    /// A scheduler error: the server's failure (500) or the request's (400).
    pub fn from_event(message: String, internal: bool) -> Self {
        if internal {
            Self::internal(message)
        } else {
            Self::bad(message, None)
        }
    }

    pub fn body(&self) -> Value {
        json!({"error": {"message": self.message, "type": self.kind, "param": self.param, "code": null}})
    }
}

impl From<crate::Error> for ApiError {
    fn from(e: crate::Error) -> Self {
        use crate::Error as E;
        match &e {
            E::InvalidSampling { param, .. } => ApiError::bad(e.to_string(), Some(param)),
            E::ContextOverflow { .. } => ApiError {
                kind: "invalid_request_error",
                ..ApiError::bad(e.to_string(), Some("messages"))
            },
            E::EmptyPrompt | E::TokenOutOfRange { .. } => {
                ApiError::bad(e.to_string(), Some("prompt"))
            }
            E::ChatTemplate(_) | E::Tokenizer(_) | E::InvalidRequest(_) => {
                ApiError::bad(e.to_string(), None)
            }
            _ => ApiError::internal(e.to_string()),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// `stop`: a string or a list of strings.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum StopField {
    One(String),
    Many(Vec<String>),
}

/// Fields shared by both endpoints.
#[derive(Debug, Clone, Deserialize)]
pub struct CommonParams {
    pub model: Option<String>,
    pub max_tokens: Option<i64>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f32>,
    pub top_p: Option<f32>,
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: bool,
    pub stream_options: Option<StreamOptions>,
    pub stop: Option<StopField>,
    pub seed: Option<u64>,
    pub presence_penalty: Option<f32>,
    pub frequency_penalty: Option<f32>,
    pub logit_bias: Option<HashMap<String, f32>>,
    pub top_k: Option<i64>,
    pub min_p: Option<f32>,
    pub repetition_penalty: Option<f32>,
    #[serde(default)]
    pub ignore_eos: bool,
    /// Extension: return the experts chosen per layer for every generated token.
    #[serde(default)]
    pub return_experts: bool,
    /// Extension (as vLLM's): logprob tokens written `token_id:{id}`.
    #[serde(default)]
    pub return_tokens_as_token_ids: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum MessageContent {
    Text(String),
    Parts(Vec<Value>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct InMessage {
    pub role: String,
    pub content: Option<MessageContent>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ChatRequest {
    pub messages: Option<Vec<InMessage>>,
    #[serde(default)]
    pub logprobs: bool,
    pub top_logprobs: Option<i64>,
    #[serde(flatten)]
    pub common: CommonParams,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum PromptField {
    Text(String),
    Texts(Vec<String>),
    Tokens(Vec<u32>),
    TokenLists(Vec<Vec<u32>>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct CompletionRequest {
    pub prompt: Option<PromptField>,
    pub logprobs: Option<i64>,
    #[serde(default)]
    pub echo: bool,
    #[serde(flatten)]
    pub common: CommonParams,
}

/// Largest `n` one request may ask for.
pub const MAX_N: i64 = 16;
/// Sequences one request may start (`n` × prompts) unless `--max-sequences-per-request` says
/// otherwise: bounds the queue and memory one request can take.
pub const MAX_SEQUENCES_PER_REQUEST: usize = 64;

impl CommonParams {
    /// Sampling parameters with the OpenAI defaults (temperature 1, top_p 1); the bounds the
    /// engine enforces are checked again there.
    pub fn sampling(&self, default_max: usize, vocab: usize) -> Result<SamplingParams, ApiError> {
        let max = self.max_completion_tokens.or(self.max_tokens);
        let max_tokens = match max {
            None => default_max,
            Some(m) if m <= 0 => {
                return Err(ApiError::bad(
                    format!("max_tokens must be at least 1, got {m}"),
                    Some("max_tokens"),
                ))
            }
            Some(m) => m as usize,
        };
        let top_k = match self.top_k {
            None | Some(-1) | Some(0) => 0,
            Some(k) if k < 0 => {
                return Err(ApiError::bad(
                    format!("top_k must be -1, 0 or positive, got {k}"),
                    Some("top_k"),
                ))
            }
            Some(k) => k as usize,
        };
        let mut logit_bias = vec![];
        for (k, v) in self.logit_bias.iter().flatten() {
            let id: u32 = k.parse().map_err(|_| {
                ApiError::bad(
                    format!("logit_bias key {k:?} is not a token id"),
                    Some("logit_bias"),
                )
            })?;
            logit_bias.push((id, *v));
        }
        logit_bias.sort_by_key(|(id, _)| *id);
        let p = SamplingParams {
            // OpenAI's documented default, not `SamplingParams::default()`'s greedy.
            temperature: self.temperature.unwrap_or(1.0),
            top_p: self.top_p.unwrap_or(1.0),
            top_k,
            min_p: self.min_p.unwrap_or(0.0),
            repetition_penalty: self.repetition_penalty.unwrap_or(1.0),
            presence_penalty: self.presence_penalty.unwrap_or(0.0),
            frequency_penalty: self.frequency_penalty.unwrap_or(0.0),
            logit_bias,
            seed: self.seed,
            max_tokens,
            stop: match &self.stop {
                None => vec![],
                Some(StopField::One(s)) => vec![s.clone()],
                Some(StopField::Many(v)) => v.clone(),
            },
            ignore_eos: self.ignore_eos,
            ..SamplingParams::default()
        };
        p.validate(vocab)?;
        Ok(p)
    }

    pub fn n(&self) -> Result<usize, ApiError> {
        match self.n.unwrap_or(1) {
            n if (1..=MAX_N).contains(&n) => Ok(n as usize),
            n => Err(ApiError::bad(
                format!("n must be between 1 and {MAX_N}, got {n}"),
                Some("n"),
            )),
        }
    }
}

impl InMessage {
    pub fn to_chat(&self) -> Result<ChatMessage, ApiError> {
        let content = match &self.content {
            None => String::new(),
            Some(MessageContent::Text(s)) => s.clone(),
            Some(MessageContent::Parts(parts)) => {
                let mut s = String::new();
                for p in parts {
                    match (
                        p.get("type").and_then(|t| t.as_str()),
                        p.get("text").and_then(|t| t.as_str()),
                    ) {
                        (Some("text"), Some(t)) => s += t,
                        _ => {
                            return Err(ApiError::bad(
                                "only text content parts are supported",
                                Some("messages"),
                            ))
                        }
                    }
                }
                s
            }
        };
        Ok(ChatMessage {
            role: self.role.clone(),
            content,
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Usage {
    pub prompt_tokens: usize,
    pub completion_tokens: usize,
    pub total_tokens: usize,
}

pub fn finish_str(f: Option<FinishReason>) -> Value {
    f.map_or(Value::Null, |f| Value::String(f.as_str().into()))
}

/// Token text as OpenAI reports it: the decoded piece, and its UTF-8 bytes.
pub fn token_entry(piece: &str, logprob: f32) -> Value {
    json!({"token": piece, "logprob": logprob, "bytes": piece.as_bytes()})
}

/// Chat `logprobs.content` entries.
pub fn chat_logprobs(lps: &[TokenLogprob], piece: &dyn Fn(u32) -> String) -> Value {
    let content: Vec<Value> = lps
        .iter()
        .map(|l| {
            let mut e = token_entry(&piece(l.token_id), l.logprob);
            e["top_logprobs"] = l
                .top_logprobs
                .iter()
                .map(|t| token_entry(&piece(t.token_id), t.logprob))
                .collect();
            e
        })
        .collect();
    json!({ "content": content })
}

/// Bytes one logprob entry (`"piece": -1.2345678,`) takes in a completions response, rounded
/// up: a response with logprobs is estimated at positions × (logprobs + 1) of these and checked
/// against `--max-response-bytes` before any work starts.
pub const COMPLETION_ENTRY_BYTES: usize = 32;
/// The same for a chat response's entries (`{"token": …, "logprob": …, "bytes": […]}`).
pub const CHAT_ENTRY_BYTES: usize = 96;

/// Completions `logprobs` (`tokens`, `token_logprobs`, `top_logprobs`, `text_offset`), the
/// prompt's entries first when echoing. `offsets[i]`: where token i starts in the returned text.
/// Serialised straight from the entries, with no JSON tree built in between.
pub struct CompletionLogprobs<'a> {
    pub prompt: Option<&'a [crate::generate::PromptTokenLogprob]>,
    pub generated: &'a [TokenLogprob],
    pub piece: &'a dyn Fn(u32) -> String,
    pub offsets: &'a [usize],
}

/// One position's alternatives as a `{piece: logprob}` object.
struct Alternatives<'a>(&'a [crate::generate::TopLogprob], &'a dyn Fn(u32) -> String);

impl Serialize for Alternatives<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut m = s.serialize_map(Some(self.0.len()))?;
        for a in self.0 {
            m.serialize_entry(&(self.1)(a.token_id), &a.logprob)?;
        }
        m.end()
    }
}

/// Serialises every item an iterator gives, as a JSON array.
struct Seq<F>(F);

impl<F, I, T> Serialize for Seq<F>
where
    F: Fn() -> I,
    I: Iterator<Item = T>,
    T: Serialize,
{
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq((self.0)())
    }
}

impl Serialize for CompletionLogprobs<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let prompt = self.prompt.unwrap_or(&[]);
        let piece = self.piece;
        let mut m = s.serialize_map(Some(4))?;
        m.serialize_entry(
            "tokens",
            &Seq(|| {
                prompt
                    .iter()
                    .map(|t| t.token_id)
                    .chain(self.generated.iter().map(|l| l.token_id))
                    .map(piece)
            }),
        )?;
        m.serialize_entry(
            "token_logprobs",
            &Seq(|| {
                prompt
                    .iter()
                    .map(|t| t.logprob)
                    .chain(self.generated.iter().map(|l| Some(l.logprob)))
            }),
        )?;
        // The alternatives at prompt position i are for the token after it: shift them by one.
        m.serialize_entry(
            "top_logprobs",
            &Seq(|| {
                let shifted = (0..prompt.len()).map(move |i| {
                    i.checked_sub(1)
                        .map(|j| Alternatives(&prompt[j].top_logprobs, piece))
                });
                shifted.chain(
                    self.generated
                        .iter()
                        .map(move |l| Some(Alternatives(&l.top_logprobs, piece))),
                )
            }),
        )?;
        m.serialize_entry("text_offset", self.offsets)?;
        m.end()
    }
}

/// [`CompletionLogprobs`] as a JSON value (for a streamed chunk's few entries).
pub fn completion_logprobs(
    prompt: Option<&[crate::generate::PromptTokenLogprob]>,
    generated: &[TokenLogprob],
    piece: &dyn Fn(u32) -> String,
    offsets: &[usize],
) -> Value {
    serde_json::to_value(CompletionLogprobs {
        prompt,
        generated,
        piece,
        offsets,
    })
    .unwrap_or(Value::Null)
}

pub fn usage_of(completions: &[Completion]) -> Usage {
    let prompt_tokens = completions.first().map_or(0, |c| c.prompt_ids.len());
    let completion_tokens = completions.iter().map(|c| c.token_ids.len()).sum();
    Usage {
        prompt_tokens,
        completion_tokens,
        total_tokens: prompt_tokens + completion_tokens,
    }
}
