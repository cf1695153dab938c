//! Batched generation and prompt scoring.
//!
//! All requests of a call are prefilled as one ragged batch, then decoded together one token per
//! step; a request leaves the batch when it finishes. Each request samples with its own seeded
//! RNG, and a sequence's logits do not depend on its batch neighbours (every kernel computes a
//! row the same way whatever else is in the batch), so a seeded request returns the same tokens
//! alone or in any batch.

use crate::backend::Backend;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::models::mixtral::SeqStep;
use crate::sampling::{log_softmax_into, top_k_entries, Sampler, SamplingParams, StopMatcher};
use crate::tokenizer::ChatMessage;
use crate::trace::NoTrace;
use serde::{Deserialize, Serialize};

/// What to continue.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Prompt {
    /// Plain text, tokenised with the tokenizer's special tokens (`<s>` first).
    Text(String),
    /// Token ids, used as given.
    Tokens(Vec<u32>),
    /// Messages rendered with the model's chat template, generation prompt added.
    Chat(Vec<ChatMessage>),
}

#[derive(Clone, Debug)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    pub params: SamplingParams,
    /// Also return each prompt token's logprob and this many alternatives (from the same prefill).
    pub prompt_logprobs: Option<usize>,
}

impl GenerateRequest {
    pub fn new(prompt: Prompt, params: SamplingParams) -> Self {
        GenerateRequest {
            prompt,
            params,
            prompt_logprobs: None,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinishReason {
    /// End of sequence token or a stop string / stop token.
    Stop,
    /// `max_tokens` or the context length reached.
    Length,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Stop => "stop",
            FinishReason::Length => "length",
        }
    }
}

/// One `(token_id, logprob)` alternative.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct TopLogprob {
    pub token_id: u32,
    pub logprob: f32,
}

/// A generated token's logprob under the model's distribution (before sampling transforms) and the
/// `top_logprobs` most likely tokens at that step, highest first.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct TokenLogprob {
    pub token_id: u32,
    pub logprob: f32,
    pub top_logprobs: Vec<TopLogprob>,
}

/// A prompt token: its logprob given the tokens before it (`None` at position 0) and the
/// distribution of the next token after it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PromptTokenLogprob {
    pub position: usize,
    pub token_id: u32,
    pub logprob: Option<f32>,
    pub top_logprobs: Vec<TopLogprob>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Completion {
    pub prompt_ids: Vec<u32>,
    /// Generated ids only (an ending eos included).
    pub token_ids: Vec<u32>,
    /// Generated text, special tokens and any stop string left out.
    pub text: String,
    pub finish_reason: FinishReason,
    /// The stop string that ended generation, if one did.
    pub stop: Option<String>,
    /// One per generated token when `logprobs` or `top_logprobs` was asked for.
    pub logprobs: Option<Vec<TokenLogprob>>,
    pub prompt_logprobs: Option<Vec<PromptTokenLogprob>>,
}

/// One step of one request, for streaming.
#[derive(Clone, Debug)]
pub struct TokenEvent<'a> {
    pub request: usize,
    pub token_id: u32,
    /// Text this token releases (may be empty while a stop string or UTF-8 sequence is pending).
    pub text: &'a str,
    pub logprob: Option<&'a TokenLogprob>,
    pub finish_reason: Option<FinishReason>,
}

fn tops(logprobs: &[f32], k: usize) -> Vec<TopLogprob> {
    if k == 0 {
        return vec![];
    }
    top_k_entries(logprobs, k)
        .into_iter()
        .map(|(token_id, logprob)| TopLogprob { token_id, logprob })
        .collect()
}

struct Active<K> {
    index: usize,
    kv: K,
    context: Vec<u32>,
    n_prompt: usize,
    max_new: usize,
    sampler: Sampler,
    stops: StopMatcher,
    decoded: String,
    finish: Option<FinishReason>,
    stop: Option<String>,
    logits: Vec<f32>,
}

impl<B: Backend> Engine<B> {
    /// Token ids of a prompt, checked: non-empty, inside the vocabulary and the context.
    pub fn prompt_ids(&self, prompt: &Prompt) -> Result<Vec<u32>> {
        let ids = match prompt {
            Prompt::Text(t) => self.tokenizer.encode(t, true)?,
            Prompt::Tokens(ids) => ids.clone(),
            Prompt::Chat(m) => self.tokenizer.encode_chat(m, true)?,
        };
        if ids.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        let vocab = self.model.cfg.vocab_size;
        if let Some(&id) = ids.iter().find(|&&id| id as usize >= vocab) {
            return Err(Error::TokenOutOfRange { id, vocab });
        }
        if ids.len() > self.info.context_length {
            return Err(Error::ContextOverflow {
                len: ids.len(),
                max: self.info.context_length,
            });
        }
        Ok(ids)
    }

    /// Generates for every request; see [`Engine::generate_stream`].
    pub fn generate(&self, requests: &[GenerateRequest]) -> Result<Vec<Completion>> {
        self.generate_stream(requests, &mut |_| {})
    }

    /// Generates for every request as one batch, calling `on_token` for every token of every
    /// request as it is produced. Every request is checked before any work starts.
    pub fn generate_stream(
        &self,
        requests: &[GenerateRequest],
        on_token: &mut dyn FnMut(&TokenEvent),
    ) -> Result<Vec<Completion>> {
        let vocab = self.model.cfg.vocab_size;
        let ctx = self.info.context_length;
        let mut prompts = Vec::with_capacity(requests.len());
        for r in requests {
            r.params.validate(vocab)?;
            let ids = self.prompt_ids(&r.prompt)?;
            if ids.len() >= ctx {
                return Err(Error::ContextOverflow {
                    len: ids.len() + 1,
                    max: ctx,
                });
            }
            prompts.push(ids);
        }
        let mut results: Vec<Option<Completion>> = vec![None; requests.len()];
        let mut active: Vec<Active<B::Kv>> = Vec::with_capacity(requests.len());
        let mut logprob_lists: Vec<Vec<TokenLogprob>> = vec![vec![]; requests.len()];
        let mut prompt_lps: Vec<Option<Vec<PromptTokenLogprob>>> = vec![None; requests.len()];

        // Prefill every prompt in one batch.
        for (i, (r, ids)) in requests.iter().zip(&prompts).enumerate() {
            active.push(Active {
                index: i,
                kv: self.model.new_kv(),
                context: ids.clone(),
                n_prompt: ids.len(),
                max_new: r.params.max_tokens.min(ctx - ids.len()),
                sampler: Sampler::new(&r.params),
                stops: StopMatcher::new(&r.params.stop),
                decoded: String::new(),
                finish: None,
                stop: None,
                logits: vec![],
            });
        }
        {
            let mut steps: Vec<SeqStep<B::Kv>> = active
                .iter_mut()
                .zip(requests)
                .map(|(a, r)| SeqStep {
                    tokens: &a.context,
                    kv: &mut a.kv,
                    all_logits: r.prompt_logprobs.is_some(),
                })
                .collect();
            let out = self.model.forward(&mut steps, &mut NoTrace)?;
            for ((a, r), logits) in active.iter_mut().zip(requests).zip(out) {
                if let Some(k) = r.prompt_logprobs {
                    prompt_lps[a.index] = Some(prompt_logprobs_from(&a.context, &logits, vocab, k));
                    a.logits = logits[logits.len() - vocab..].to_vec();
                } else {
                    a.logits = logits;
                }
            }
        }

        let mut decoders: Vec<_> = prompts
            .iter()
            .map(|p| self.tokenizer.incremental_decoder(p))
            .collect();
        let mut scratch = vec![0f32; vocab];
        while !active.is_empty() {
            for a in active.iter_mut() {
                let r = &requests[a.index];
                let p = &r.params;
                let tok = a.sampler.sample(&a.logits, &a.context, a.n_prompt);
                a.context.push(tok);
                let lp = if p.logprobs || p.top_logprobs > 0 {
                    log_softmax_into(&a.logits, &mut scratch);
                    let e = TokenLogprob {
                        token_id: tok,
                        logprob: scratch[tok as usize],
                        top_logprobs: tops(&scratch, p.top_logprobs),
                    };
                    logprob_lists[a.index].push(e);
                    logprob_lists[a.index].last()
                } else {
                    None
                };
                let n_new = a.context.len() - a.n_prompt;
                let mut released = String::new();
                if (!p.ignore_eos && self.eos_ids.contains(&tok)) || p.stop_token_ids.contains(&tok)
                {
                    a.finish = Some(FinishReason::Stop);
                } else {
                    let step = a.stops.push(&decoders[a.index].push(tok)?);
                    released = step.emit;
                    if step.stopped {
                        a.finish = Some(FinishReason::Stop);
                        a.stop = step.matched;
                    }
                }
                if a.finish.is_none() && n_new >= a.max_new {
                    a.finish = Some(FinishReason::Length);
                }
                if a.finish.is_some() && a.stop.is_none() {
                    // Ending without a stop string: release what the decoder and matcher hold back.
                    let step = a.stops.push(&decoders[a.index].flush()?);
                    released += &step.emit;
                    if step.stopped {
                        a.stop = step.matched;
                    } else {
                        released += &a.stops.flush();
                    }
                }
                a.decoded += &released;
                on_token(&TokenEvent {
                    request: a.index,
                    token_id: tok,
                    text: &released,
                    logprob: lp,
                    finish_reason: a.finish,
                });
            }
            // Finished requests leave the batch.
            let mut still = Vec::with_capacity(active.len());
            for a in active.drain(..) {
                if let Some(reason) = a.finish {
                    let r = &requests[a.index];
                    results[a.index] = Some(Completion {
                        prompt_ids: a.context[..a.n_prompt].to_vec(),
                        token_ids: a.context[a.n_prompt..].to_vec(),
                        text: a.decoded,
                        finish_reason: reason,
                        stop: a.stop,
                        logprobs: (r.params.logprobs || r.params.top_logprobs > 0)
                            .then(|| std::mem::take(&mut logprob_lists[a.index])),
                        prompt_logprobs: prompt_lps[a.index].take(),
                    });
                } else {
                    still.push(a);
                }
            }
            active = still;
            if active.is_empty() {
                break;
            }
            let mut steps: Vec<SeqStep<B::Kv>> = active
                .iter_mut()
                .map(|a| SeqStep {
                    tokens: &a.context[a.context.len() - 1..],
                    kv: &mut a.kv,
                    all_logits: false,
                })
                .collect();
            let out = self.model.forward(&mut steps, &mut NoTrace)?;
            for (a, logits) in active.iter_mut().zip(out) {
                a.logits = logits;
            }
        }
        Ok(results
            .into_iter()
            .map(|c| c.expect("every request finishes"))
            .collect())
    }

    /// Each prompt token's logprob given its prefix and the `top_k` most likely next tokens after
    /// it, from one prefill.
    pub fn prompt_logprobs(
        &self,
        prompt: &Prompt,
        top_k: usize,
    ) -> Result<Vec<PromptTokenLogprob>> {
        let ids = self.prompt_ids(prompt)?;
        let mut kv = self.model.new_kv();
        let logits = self
            .model
            .forward(
                &mut [SeqStep {
                    tokens: &ids,
                    kv: &mut kv,
                    all_logits: true,
                }],
                &mut NoTrace,
            )?
            .pop()
            .expect("one sequence");
        Ok(prompt_logprobs_from(
            &ids,
            &logits,
            self.model.cfg.vocab_size,
            top_k,
        ))
    }
}

/// `logits`: `[ids.len(), vocab]`.
fn prompt_logprobs_from(
    ids: &[u32],
    logits: &[f32],
    vocab: usize,
    top_k: usize,
) -> Vec<PromptTokenLogprob> {
    let mut lp = vec![0f32; vocab];
    let mut prev: Option<Vec<f32>> = None;
    let mut out = Vec::with_capacity(ids.len());
    for (i, &id) in ids.iter().enumerate() {
        let logprob = prev.as_ref().map(|p| p[id as usize]);
        log_softmax_into(&logits[i * vocab..(i + 1) * vocab], &mut lp);
        out.push(PromptTokenLogprob {
            position: i,
            token_id: id,
            logprob,
            top_logprobs: tops(&lp, top_k),
        });
        prev = Some(lp.clone());
    }
    out
}
