//! One client for teachers and students: a model in this process ([`LocalClient`]) or any
//! OpenAI-compatible endpoint ([`HttpClient`]), behind [`ModelClient`].
//!
//! Over HTTP, token ids come back through the `return_tokens_as_token_ids` extension (vLLM's;
//! `moe serve` has it too): an endpoint that answers without them gets a typed
//! [`Error::FeatureUnavailable`], never an empty result.

use crate::backend::{Backend, CpuBackend};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::generate::{
    Completion, ContinuationScore, FinishReason, GenerateRequest, Prompt, PromptTokenLogprob,
    TokenLogprob, TopLogprob,
};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// What a client can do.
#[derive(Clone, Debug, PartialEq)]
pub struct Capabilities {
    pub vocab_size: Option<usize>,
    pub context_length: Option<usize>,
    /// Most alternatives per position (`None`: no limit known).
    pub max_top_logprobs: Option<usize>,
}

pub trait ModelClient: Send + Sync {
    fn name(&self) -> String;
    fn capabilities(&self) -> Capabilities;
    /// Generates for every request (all sampling parameters, seeds and stops honoured).
    fn generate(&self, requests: &[GenerateRequest]) -> Result<Vec<Completion>>;
    /// Teacher forcing: every prompt token's logprob and the `top_k` next-token alternatives.
    fn prompt_logprobs(&self, prompt: &Prompt, top_k: usize) -> Result<Vec<PromptTokenLogprob>>;
    /// Log-likelihood of each continuation of `prompt`.
    fn score(&self, prompt: &str, continuations: &[String]) -> Result<Vec<f64>>;
    /// Each continuation's tokens and their logprobs. `prompt` and `prompt + continuation` are
    /// tokenised whole and split after the tokens every one of them shares with the prompt, so a
    /// token merged across the text boundary is scored, the same one for every continuation.
    fn score_tokens(
        &self,
        prompt: &str,
        continuations: &[String],
    ) -> Result<Vec<ContinuationScore>> {
        let _ = (prompt, continuations);
        Err(Error::InvalidRequest(format!(
            "{} cannot give per-token continuation scores",
            self.name()
        )))
    }
}

/// A model in this process, on any backend.
pub struct LocalClient<B: Backend = CpuBackend> {
    pub engine: Arc<Engine<B>>,
}

impl<B: Backend> ModelClient for LocalClient<B> {
    fn name(&self) -> String {
        self.engine.info.name.clone()
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            vocab_size: Some(self.engine.config().vocab_size),
            context_length: Some(self.engine.info.context_length),
            max_top_logprobs: None,
        }
    }
    fn generate(&self, requests: &[GenerateRequest]) -> Result<Vec<Completion>> {
        self.engine.generate(requests)
    }
    fn prompt_logprobs(&self, prompt: &Prompt, top_k: usize) -> Result<Vec<PromptTokenLogprob>> {
        self.engine.prompt_logprobs(prompt, top_k)
    }
    fn score(&self, prompt: &str, continuations: &[String]) -> Result<Vec<f64>> {
        Ok(self
            .score_tokens(prompt, continuations)?
            .into_iter()
            .map(|s| s.total)
            .collect())
    }
    fn score_tokens(
        &self,
        prompt: &str,
        continuations: &[String],
    ) -> Result<Vec<ContinuationScore>> {
        let (p, c) = self.engine.split_continuations(prompt, continuations)?;
        self.engine.score_continuations(&p, &c)
    }
}

/// An OpenAI-compatible endpoint: `base_url` like `http://127.0.0.1:8000/v1`.
pub struct HttpClient {
    pub base_url: String,
    pub model: String,
    pub retries: usize,
    http: reqwest::blocking::Client,
}

impl HttpClient {
    pub fn new(base_url: &str, model: &str) -> Result<Self> {
        let http = reqwest::blocking::Client::builder()
            .timeout(Duration::from_secs(600))
            .build()
            .map_err(|e| Error::Endpoint {
                endpoint: base_url.into(),
                message: e.to_string(),
            })?;
        Ok(HttpClient {
            base_url: base_url.trim_end_matches('/').to_string(),
            model: model.to_string(),
            retries: 4,
            http,
        })
    }

    fn err(&self, message: impl Into<String>) -> Error {
        Error::Endpoint {
            endpoint: self.base_url.clone(),
            message: message.into(),
        }
    }

    /// POSTs with retries and exponential back-off on connection errors, 429 and 5xx.
    fn post(&self, path: &str, body: &Value) -> Result<Value> {
        let url = format!("{}{path}", self.base_url);
        let mut delay = Duration::from_millis(250);
        for attempt in 0..=self.retries {
            match self.http.post(&url).json(body).send() {
                Ok(r) => {
                    let status = r.status().as_u16();
                    let v: Value = r
                        .json()
                        .map_err(|e| self.err(format!("{path}: unreadable response: {e}")))?;
                    if (200..300).contains(&status) {
                        return Ok(v);
                    }
                    let msg = v["error"]["message"]
                        .as_str()
                        .unwrap_or("no message")
                        .to_string();
                    if (status == 429 || status >= 500) && attempt < self.retries {
                        std::thread::sleep(delay);
                        delay *= 2;
                        continue;
                    }
                    if status == 400 && msg.contains("context") {
                        let nums: Vec<usize> = msg
                            .split(|c: char| !c.is_ascii_digit())
                            .filter_map(|s| s.parse().ok())
                            .collect();
                        // "max_tokens M plus the prompt's P tokens exceed ... context of C tokens",
                        // or "the prompt has P tokens; this model's context is C tokens".
                        let len = match nums.len() {
                            3 => Some(nums[0] + nums[1]),
                            2 => Some(nums[0]),
                            _ => None,
                        };
                        if let (Some(len), Some(&max)) = (len, nums.last()) {
                            return Err(Error::ContextOverflow { len, max });
                        }
                    }
                    return Err(self.err(format!("{path}: HTTP {status}: {msg}")));
                }
                Err(e) if attempt < self.retries => {
                    let _ = e;
                    std::thread::sleep(delay);
                    delay *= 2;
                }
                Err(e) => return Err(self.err(format!("{path}: {e}"))),
            }
        }
        unreachable!("the loop returns on its last attempt")
    }

    fn token_id(&self, s: &str) -> Result<u32> {
        s.strip_prefix("token_id:")
            .and_then(|n| n.parse().ok())
            .ok_or_else(|| Error::FeatureUnavailable {
                endpoint: self.base_url.clone(),
                feature: "token ids in logprobs (return_tokens_as_token_ids)".into(),
            })
    }

    fn alternatives(&self, v: &Value) -> Result<Vec<TopLogprob>> {
        let mut out: Vec<TopLogprob> = match v.as_object() {
            None => vec![],
            Some(m) => m
                .iter()
                .map(|(k, lp)| {
                    Ok(TopLogprob {
                        token_id: self.token_id(k)?,
                        logprob: lp.as_f64().unwrap_or(f64::NAN) as f32,
                    })
                })
                .collect::<Result<_>>()?,
        };
        out.sort_by(|a, b| {
            b.logprob
                .total_cmp(&a.logprob)
                .then(a.token_id.cmp(&b.token_id))
        });
        Ok(out)
    }

    fn sampling_body(&self, r: &GenerateRequest) -> Value {
        let p = &r.params;
        let mut b = json!({
            "model": self.model, "max_tokens": p.max_tokens, "temperature": p.temperature, "top_p": p.top_p,
            "presence_penalty": p.presence_penalty, "frequency_penalty": p.frequency_penalty,
            "return_tokens_as_token_ids": true,
        });
        if p.top_k > 0 {
            b["top_k"] = json!(p.top_k);
        }
        if p.min_p > 0.0 {
            b["min_p"] = json!(p.min_p);
        }
        if p.repetition_penalty != 1.0 {
            b["repetition_penalty"] = json!(p.repetition_penalty);
        }
        if let Some(s) = p.seed {
            b["seed"] = json!(s);
        }
        if !p.stop.is_empty() {
            b["stop"] = json!(p.stop);
        }
        if p.ignore_eos {
            b["ignore_eos"] = json!(true);
        }
        if !p.logit_bias.is_empty() {
            b["logit_bias"] = p
                .logit_bias
                .iter()
                .map(|(id, v)| (id.to_string(), json!(v)))
                .collect::<serde_json::Map<_, _>>()
                .into();
        }
        b
    }

    fn parse_generated(&self, lp: &Value) -> Result<Vec<TokenLogprob>> {
        let toks = lp["tokens"]
            .as_array()
            .ok_or_else(|| self.err("logprobs without tokens"))?;
        toks.iter()
            .enumerate()
            .map(|(i, t)| {
                Ok(TokenLogprob {
                    token_id: self.token_id(t.as_str().unwrap_or(""))?,
                    logprob: lp["token_logprobs"][i].as_f64().unwrap_or(f64::NAN) as f32,
                    top_logprobs: self.alternatives(&lp["top_logprobs"][i])?,
                })
            })
            .collect()
    }
}

impl ModelClient for HttpClient {
    fn name(&self) -> String {
        format!("{} at {}", self.model, self.base_url)
    }

    fn capabilities(&self) -> Capabilities {
        let ctx = self
            .http
            .get(format!("{}/models", self.base_url))
            .send()
            .ok()
            .and_then(|r| r.json::<Value>().ok())
            .and_then(|v| {
                v["data"]
                    .as_array()?
                    .iter()
                    .find(|m| m["id"] == self.model.as_str())?["max_model_len"]
                    .as_u64()
            })
            .map(|c| c as usize);
        Capabilities {
            vocab_size: None,
            context_length: ctx,
            max_top_logprobs: None,
        }
    }

    fn generate(&self, requests: &[GenerateRequest]) -> Result<Vec<Completion>> {
        requests
            .iter()
            .map(|r| {
                let mut body = self.sampling_body(r);
                let want_lp = r.params.logprobs || r.params.top_logprobs > 0;
                let (path, is_chat) = match &r.prompt {
                    Prompt::Chat(m) => {
                        body["messages"] = json!(m);
                        if want_lp {
                            body["logprobs"] = json!(true);
                            body["top_logprobs"] = json!(r.params.top_logprobs);
                        }
                        ("/chat/completions", true)
                    }
                    Prompt::Text(t) => {
                        body["prompt"] = json!(t);
                        ("/completions", false)
                    }
                    Prompt::Tokens(t) => {
                        body["prompt"] = json!(t);
                        ("/completions", false)
                    }
                };
                if want_lp && !is_chat {
                    body["logprobs"] = json!(r.params.top_logprobs);
                }
                // Like the engine in process, generation stops at the context: on an overflow the
                // request is sent again with max_tokens cut to what fits.
                let v = match self.post(path, &body) {
                    Err(Error::ContextOverflow { len, max })
                        if len > max && r.params.max_tokens > len - max =>
                    {
                        body["max_tokens"] = json!(r.params.max_tokens - (len - max));
                        self.post(path, &body)?
                    }
                    other => other?,
                };
                let c = &v["choices"][0];
                let text = if is_chat {
                    c["message"]["content"].as_str()
                } else {
                    c["text"].as_str()
                }
                .ok_or_else(|| self.err("a choice without text"))?
                .to_string();
                let finish_reason = match c["finish_reason"].as_str() {
                    Some("length") => FinishReason::Length,
                    _ => FinishReason::Stop,
                };
                let logprobs = if !want_lp {
                    None
                } else if is_chat {
                    let content = c["logprobs"]["content"].as_array().ok_or_else(|| {
                        Error::FeatureUnavailable {
                            endpoint: self.base_url.clone(),
                            feature: "chat logprobs".into(),
                        }
                    })?;
                    Some(
                        content
                            .iter()
                            .map(|e| {
                                let top = e["top_logprobs"].as_array().cloned().unwrap_or_default();
                                Ok(TokenLogprob {
                                    token_id: self.token_id(e["token"].as_str().unwrap_or(""))?,
                                    logprob: e["logprob"].as_f64().unwrap_or(f64::NAN) as f32,
                                    top_logprobs: top
                                        .iter()
                                        .map(|t| {
                                            Ok(TopLogprob {
                                                token_id: self
                                                    .token_id(t["token"].as_str().unwrap_or(""))?,
                                                logprob: t["logprob"].as_f64().unwrap_or(f64::NAN)
                                                    as f32,
                                            })
                                        })
                                        .collect::<Result<_>>()?,
                                })
                            })
                            .collect::<Result<Vec<_>>>()?,
                    )
                } else {
                    Some(self.parse_generated(&c["logprobs"])?)
                };
                let token_ids = logprobs
                    .as_ref()
                    .map(|l| l.iter().map(|t| t.token_id).collect())
                    .unwrap_or_default();
                Ok(Completion {
                    prompt_ids: vec![],
                    token_ids,
                    text,
                    finish_reason,
                    stop: None,
                    logprobs,
                    prompt_logprobs: None,
                    experts: None,
                })
            })
            .collect()
    }

    fn prompt_logprobs(&self, prompt: &Prompt, top_k: usize) -> Result<Vec<PromptTokenLogprob>> {
        let prompt_json = match prompt {
            Prompt::Text(t) => json!(t),
            Prompt::Tokens(t) => json!(t),
            Prompt::Chat(_) => {
                return Err(self
                    .err("prompt logprobs take text or token ids; render the chat template first"))
            }
        };
        let body = json!({"model": self.model, "prompt": prompt_json, "max_tokens": 0, "echo": true, "logprobs": top_k,
                          "temperature": 0, "return_tokens_as_token_ids": true});
        let v = self.post("/completions", &body)?;
        let lp = &v["choices"][0]["logprobs"];
        let toks = lp["tokens"]
            .as_array()
            .ok_or_else(|| Error::FeatureUnavailable {
                endpoint: self.base_url.clone(),
                feature: "prompt logprobs (echo with max_tokens 0)".into(),
            })?;
        // Completions put the alternatives that produced token i at i; ours sit one earlier.
        let mut out: Vec<PromptTokenLogprob> = Vec::with_capacity(toks.len());
        for (i, t) in toks.iter().enumerate() {
            let id = self.token_id(t.as_str().unwrap_or(""))?;
            if i > 0 {
                out[i - 1].top_logprobs = self.alternatives(&lp["top_logprobs"][i])?;
            }
            out.push(PromptTokenLogprob {
                position: i,
                token_id: id,
                logprob: lp["token_logprobs"][i].as_f64().map(|x| x as f32),
                top_logprobs: vec![],
            });
        }
        Ok(out)
    }

    fn score(&self, prompt: &str, continuations: &[String]) -> Result<Vec<f64>> {
        Ok(self
            .score_tokens(prompt, continuations)?
            .into_iter()
            .map(|s| s.total)
            .collect())
    }

    fn score_tokens(
        &self,
        prompt: &str,
        continuations: &[String],
    ) -> Result<Vec<ContinuationScore>> {
        // Token boundaries come from the server's own tokenisation (echoed token ids), not from
        // text offsets: those are offsets into the decoded text, which drops special tokens such
        // as `</s>` and adds a space after each, so they do not line up with `prompt.len()`.
        let mut texts = vec![prompt.to_string()];
        texts.extend(continuations.iter().map(|c| format!("{prompt}{c}")));
        let mut echoed = Vec::with_capacity(texts.len());
        for chunk in texts.chunks(64) {
            echoed.extend(self.echo_logprobs(json!(chunk))?);
        }
        let prompt_ids = &echoed[0].0;
        let common = echoed[1..]
            .iter()
            .map(|(w, _)| prompt_ids.iter().zip(w).take_while(|(a, b)| a == b).count())
            .min()
            .unwrap_or(prompt_ids.len());
        // As in process: at least one prompt token, so every continuation has a predicting row.
        let common = common.max(1).min(prompt_ids.len());
        echoed[1..]
            .iter()
            .map(|(w, lp)| {
                let logprobs = lp[common.min(lp.len())..]
                    .iter()
                    .map(|x| x.ok_or_else(|| self.err("an echoed prompt token without a logprob")))
                    .collect::<Result<Vec<f32>>>()?;
                Ok(ContinuationScore {
                    token_ids: w[common.min(w.len())..].to_vec(),
                    total: logprobs.iter().map(|&x| x as f64).sum(),
                    logprobs,
                })
            })
            .collect()
    }
}

/// A prompt's token ids as the server tokenised them and each token's logprob.
type Echoed = (Vec<u32>, Vec<Option<f32>>);

impl HttpClient {
    /// Teacher forcing of several prompts (texts or token-id lists) in one request: each
    /// prompt's token ids as the server tokenised them and each token's logprob (`None` for the
    /// first).
    fn echo_logprobs(&self, prompts: Value) -> Result<Vec<Echoed>> {
        let body = json!({"model": self.model, "prompt": prompts, "max_tokens": 0, "echo": true,
                          "logprobs": 0, "temperature": 0, "return_tokens_as_token_ids": true});
        let v = self.post("/completions", &body)?;
        let unavailable = || Error::FeatureUnavailable {
            endpoint: self.base_url.clone(),
            feature: "prompt logprobs (echo with max_tokens 0)".into(),
        };
        let mut choices: Vec<&Value> = v["choices"]
            .as_array()
            .ok_or_else(unavailable)?
            .iter()
            .collect();
        choices.sort_by_key(|c| c["index"].as_u64());
        choices
            .into_iter()
            .map(|c| {
                let lp = &c["logprobs"];
                let toks = lp["tokens"].as_array().ok_or_else(unavailable)?;
                let ids = toks
                    .iter()
                    .map(|t| self.token_id(t.as_str().unwrap_or("")))
                    .collect::<Result<Vec<u32>>>()?;
                let lps = (0..ids.len())
                    .map(|i| lp["token_logprobs"][i].as_f64().map(|x| x as f32))
                    .collect();
                Ok((ids, lps))
            })
            .collect()
    }

    /// Each continuation's token logprobs after `prompt` (token ids, so nothing is retokenised).
    pub fn score_ids(
        &self,
        prompt: &[u32],
        continuations: &[Vec<u32>],
    ) -> Result<Vec<ContinuationScore>> {
        if prompt.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let wholes: Vec<Vec<u32>> = continuations
            .iter()
            .map(|c| {
                if c.is_empty() {
                    return Err(Error::InvalidRequest(
                        "a continuation to score is empty".into(),
                    ));
                }
                Ok(prompt.iter().chain(c).copied().collect())
            })
            .collect::<Result<_>>()?;
        let mut out = Vec::with_capacity(wholes.len());
        for chunk in wholes.chunks(64) {
            for ((ids, lp), w) in self.echo_logprobs(json!(chunk))?.into_iter().zip(chunk) {
                if &ids != w {
                    return Err(self.err("echoed token ids differ from the ones sent"));
                }
                let logprobs = lp[prompt.len()..]
                    .iter()
                    .map(|x| x.ok_or_else(|| self.err("an echoed token without a logprob")))
                    .collect::<Result<Vec<f32>>>()?;
                out.push(ContinuationScore {
                    token_ids: w[prompt.len()..].to_vec(),
                    total: logprobs.iter().map(|&x| x as f64).sum(),
                    logprobs,
                });
            }
        }
        if out.len() != continuations.len() {
            return Err(self.err("fewer choices than prompts"));
        }
        Ok(out)
    }
}
