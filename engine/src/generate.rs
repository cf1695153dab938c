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
use crate::models::SeqStep;
use crate::sampling::{log_softmax_into, top_k_entries, Sampler, SamplingParams, StopMatcher};
use crate::tokenizer::{ChatMessage, IncrementalDecoder};
use crate::trace::{NoTrace, RoutingRecorder};
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
    /// Also return the experts every processed token chose, per layer.
    pub return_experts: bool,
    /// Score the prompt only (its `prompt_logprobs`, nothing generated): the server's scheduler
    /// runs such a request with [`Engine::prompt_logprobs`] between its steps.
    pub score_only: bool,
}

impl GenerateRequest {
    pub fn new(prompt: Prompt, params: SamplingParams) -> Self {
        GenerateRequest {
            prompt,
            params,
            prompt_logprobs: None,
            return_experts: false,
            score_only: false,
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
    /// With `return_experts`: per processed token (the prompt, then each generated token fed
    /// back), per layer, the chosen experts (highest weight first).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub experts: Option<Vec<Vec<Vec<u32>>>>,
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

/// Prompt positions run per forward when prompt logprobs are asked for: the logits of at most
/// this many positions (`[chunk, vocab]` floats) are held at once, and each row is reduced to its
/// logprob and top-k alternatives before the next chunk runs, so scoring a prompt holds
/// `chunk × vocab` floats of logits whatever its length.
pub const PROMPT_LOGPROBS_CHUNK: usize = 64;

/// Prompt logprobs computed as the logits arrive, a chunk of positions at a time.
#[derive(Debug)]
pub struct PromptScorer {
    top_k: usize,
    /// The next position whose logits row is expected.
    next: usize,
    /// The logprob of the token at `next`, from the row before it.
    pending: Option<f32>,
    lp: Vec<f32>,
    out: Vec<PromptTokenLogprob>,
}

impl PromptScorer {
    pub fn new(top_k: usize, prompt_len: usize) -> Self {
        PromptScorer {
            top_k,
            next: 0,
            pending: None,
            lp: vec![],
            out: Vec::with_capacity(prompt_len),
        }
    }

    /// Positions scored so far.
    pub fn scored(&self) -> usize {
        self.next
    }

    /// Takes the logits rows (`[rows, vocab]`) of the next `rows` positions of `ids` (the whole
    /// prompt) and reduces each to its entry.
    pub fn push(&mut self, ids: &[u32], logits: &[f32], vocab: usize) {
        self.lp.resize(vocab, 0.0);
        for row in logits.chunks_exact(vocab) {
            let i = self.next;
            log_softmax_into(row, &mut self.lp);
            self.out.push(PromptTokenLogprob {
                position: i,
                token_id: ids[i],
                logprob: self.pending.take(),
                top_logprobs: tops(&self.lp, self.top_k),
            });
            self.pending = ids.get(i + 1).map(|&t| self.lp[t as usize]);
            self.next += 1;
        }
    }

    pub fn finish(self) -> Vec<PromptTokenLogprob> {
        self.out
    }
}

/// Scores `ids` in chunks of at most `chunk` positions: `logits_for(tokens)` runs the next
/// chunk's tokens (after those before it) and returns their `[tokens.len(), vocab]` logits.
pub fn score_in_chunks(
    ids: &[u32],
    vocab: usize,
    top_k: usize,
    chunk: usize,
    mut logits_for: impl FnMut(&[u32]) -> Result<Vec<f32>>,
) -> Result<Vec<PromptTokenLogprob>> {
    let mut scorer = PromptScorer::new(top_k, ids.len());
    for part in ids.chunks(chunk.max(1)) {
        let logits = logits_for(part)?;
        scorer.push(ids, &logits, vocab);
    }
    Ok(scorer.finish())
}

/// One request's generation state: its cache, tokens, sampler, stop matcher and detokenizer.
/// The caller runs [`Sequence::next_input`] through the model and hands the logits back to
/// [`Sequence::accept`], which picks the next token; `Engine::generate_stream` and the server's
/// scheduler drive it the same way.
pub struct Sequence<'t, K> {
    pub kv: K,
    /// Prompt followed by the generated ids.
    pub context: Vec<u32>,
    pub n_prompt: usize,
    /// Tokens this sequence may still generate: `max_tokens`, capped by the context.
    max_new: usize,
    params: SamplingParams,
    sampler: Sampler,
    stops: StopMatcher,
    decoder: IncrementalDecoder<'t>,
    /// Text released so far.
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
    /// While prompt logprobs are still to compute: their scorer (see [`PROMPT_LOGPROBS_CHUNK`]).
    scorer: Option<PromptScorer>,
    /// Prompt tokens already in the cache from chunks run ahead of the prefill's last one.
    fed: usize,
    pub prompt_logprobs: Option<Vec<PromptTokenLogprob>>,
    pub finish: Option<FinishReason>,
    pub stop: Option<String>,
    prefilled: bool,
    scratch: Vec<f32>,
    /// Record the experts each processed token chose.
    pub want_experts: bool,
    /// Per processed token (prompt, then generated tokens fed back): `[n_layers][top_k]`.
    pub experts: Vec<Vec<Vec<u32>>>,
}

/// What one accepted step produced.
#[derive(Clone, Debug)]
pub struct Step {
    pub token_id: u32,
    pub text: String,
    pub logprob: Option<TokenLogprob>,
    pub finish_reason: Option<FinishReason>,
}

impl<'t, K> Sequence<'t, K> {
    /// Tokens to run next: the whole prompt first, then the last sampled token.
    pub fn next_input(&self) -> &[u32] {
        if self.prefilled {
            &self.context[self.context.len() - 1..]
        } else {
            &self.context[self.fed..]
        }
    }

    /// Whether the next forward must return logits for every input token.
    pub fn wants_all_logits(&self) -> bool {
        !self.prefilled && self.scorer.is_some()
    }

    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// Takes the logits of the last forward (`[rows, vocab]` as asked by
    /// [`Sequence::wants_all_logits`]) and samples the next token.
    pub fn accept(&mut self, logits: &[f32], vocab: usize, eos_ids: &[u32]) -> Result<Step> {
        let last = &logits[logits.len() - vocab..];
        if !self.prefilled {
            if let Some(mut scorer) = self.scorer.take() {
                scorer.push(&self.context[..self.n_prompt], logits, vocab);
                self.prompt_logprobs = Some(scorer.finish());
            }
            self.prefilled = true;
        }
        let p = &self.params;
        let tok = self.sampler.sample(last, &self.context, self.n_prompt);
        let logprob = if p.logprobs || p.top_logprobs > 0 {
            self.scratch.resize(vocab, 0.0);
            log_softmax_into(last, &mut self.scratch);
            Some(TokenLogprob {
                token_id: tok,
                logprob: self.scratch[tok as usize],
                top_logprobs: tops(&self.scratch, p.top_logprobs),
            })
        } else {
            None
        };
        self.accept_token(tok, logprob, eos_ids)
    }

    /// Whether the next pick can be made where the logits are (no prompt logprobs still to
    /// compute, at most `MAX_TOP` alternatives).
    pub fn device_sampleable(&self) -> bool {
        !self.wants_all_logits() && self.params.top_logprobs <= moe_kernels::sample::MAX_TOP
    }

    /// Takes a token picked on the device (see [`Sampler::device_row`]) and, when asked, its
    /// logprobs computed as `log_softmax` does from the raw logits' max and Σ exp.
    pub fn accept_picked(
        &mut self,
        pick: moe_kernels::sample::Picked,
        eos_ids: &[u32],
    ) -> Result<Step> {
        let p = &self.params;
        let logprob = if p.logprobs || p.top_logprobs > 0 {
            let shift = pick.max as f64 + pick.z.ln();
            let lp = |l: f32| (l as f64 - shift) as f32;
            Some(TokenLogprob {
                token_id: pick.token,
                logprob: lp(pick.chosen),
                top_logprobs: pick
                    .top
                    .iter()
                    .take(p.top_logprobs)
                    .map(|&(token_id, l)| TopLogprob {
                        token_id,
                        logprob: lp(l),
                    })
                    .collect(),
            })
        } else {
            None
        };
        self.accept_token(pick.token, logprob, eos_ids)
    }

    /// Greedy with nothing that needs the logits on the host (no penalties or bias, no
    /// logprobs, no prompt logprobs still to compute).
    pub fn plain_greedy(&self) -> bool {
        let p = &self.params;
        p.is_greedy()
            && p.logit_bias.is_empty()
            && p.repetition_penalty == 1.0
            && p.presence_penalty == 0.0
            && p.frequency_penalty == 0.0
            && !p.logprobs
            && p.top_logprobs == 0
            && !self.wants_all_logits()
    }

    /// Appends a chosen token (and its logprob when computed) and applies the stop rules.
    pub fn accept_token(
        &mut self,
        tok: u32,
        logprob: Option<TokenLogprob>,
        eos_ids: &[u32],
    ) -> Result<Step> {
        if !self.prefilled {
            self.prefilled = true;
        }
        let p = &self.params;
        self.context.push(tok);
        if let Some(e) = &logprob {
            self.logprobs.push(e.clone());
        }
        let mut released = String::new();
        if (!p.ignore_eos && eos_ids.contains(&tok)) || p.stop_token_ids.contains(&tok) {
            self.finish = Some(FinishReason::Stop);
        } else {
            let step = self.stops.push(&self.decoder.push(tok)?);
            released = step.emit;
            if step.stopped {
                self.finish = Some(FinishReason::Stop);
                self.stop = step.matched;
            }
        }
        if self.finish.is_none() && self.context.len() - self.n_prompt >= self.max_new {
            self.finish = Some(FinishReason::Length);
        }
        if self.finish.is_some() && self.stop.is_none() {
            // Ending without a stop string: release what the decoder and matcher hold back.
            let step = self.stops.push(&self.decoder.flush()?);
            released += &step.emit;
            if step.stopped {
                self.stop = step.matched;
            } else {
                released += &self.stops.flush();
            }
        }
        self.text += &released;
        Ok(Step {
            token_id: tok,
            text: released,
            logprob,
            finish_reason: self.finish,
        })
    }

    /// The finished (or abandoned) generation; an unfinished one reports `length`.
    pub fn into_completion(self) -> Completion {
        let with_logprobs = self.params.logprobs || self.params.top_logprobs > 0;
        Completion {
            prompt_ids: self.context[..self.n_prompt].to_vec(),
            token_ids: self.context[self.n_prompt..].to_vec(),
            text: self.text,
            finish_reason: self.finish.unwrap_or(FinishReason::Length),
            stop: self.stop,
            logprobs: with_logprobs.then_some(self.logprobs),
            prompt_logprobs: self.prompt_logprobs,
            experts: self.want_experts.then_some(self.experts),
        }
    }
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

    /// Checks a request and sets up its generation; nothing runs yet.
    pub fn start_sequence(&self, request: &GenerateRequest) -> Result<Sequence<'_, B::Kv>> {
        let ctx = self.info.context_length;
        request.params.validate(self.model.cfg.vocab_size)?;
        let ids = self.prompt_ids(&request.prompt)?;
        if ids.len() >= ctx {
            return Err(Error::ContextOverflow {
                len: ids.len() + 1,
                max: ctx,
            });
        }
        let n_prompt = ids.len();
        Ok(Sequence {
            kv: self.model.new_kv(),
            max_new: request.params.max_tokens.min(ctx - n_prompt),
            decoder: self.tokenizer.incremental_decoder(&ids),
            n_prompt,
            context: ids,
            params: request.params.clone(),
            sampler: Sampler::new(&request.params),
            stops: StopMatcher::new(&request.params.stop),
            text: String::new(),
            logprobs: vec![],
            scorer: request
                .prompt_logprobs
                .map(|k| PromptScorer::new(k, n_prompt)),
            fed: 0,
            prompt_logprobs: None,
            finish: None,
            stop: None,
            prefilled: false,
            scratch: vec![],
            want_experts: request.return_experts,
            experts: vec![],
        })
    }

    /// Runs one forward over these sequences (prefills and decode steps mixed) and advances each
    /// by one token.
    pub fn step(&self, seqs: &mut [&mut Sequence<'_, B::Kv>]) -> Result<Vec<Step>> {
        // A prefill that scores its prompt runs all but its last chunk alone first, so no
        // forward returns more than a chunk of its logits.
        for s in seqs.iter_mut() {
            if s.wants_all_logits() {
                self.run_prompt_chunks(s)?;
            }
        }
        let want_experts = seqs.iter().any(|s| s.want_experts);
        let all_greedy = seqs.iter().all(|s| s.plain_greedy());
        // Other picks where the logits are, on a backend that can: the sampler's RNG draws on
        // the host and the device applies the same rules.
        let on_device = !all_greedy
            && self.model.backend.samples_on_device()
            && seqs.iter().all(|s| s.device_sampleable());
        let device_rows = if on_device {
            let mut rows = Vec::with_capacity(seqs.len());
            let mut edits = Vec::new();
            for s in seqs.iter_mut() {
                let Sequence {
                    sampler,
                    context,
                    n_prompt,
                    ..
                } = &mut **s;
                let (mut row, e) = sampler.device_row(context, *n_prompt);
                row.edit_begin = edits.len() as u32;
                edits.extend(e);
                row.edit_end = edits.len() as u32;
                rows.push(row);
            }
            Some((rows, edits))
        } else {
            None
        };
        let mut inputs: Vec<SeqStep<B::Kv>> = seqs
            .iter_mut()
            .map(|s| {
                let all_logits = s.wants_all_logits();
                let Sequence {
                    kv,
                    context,
                    prefilled,
                    fed,
                    ..
                } = &mut **s;
                let tokens: &[u32] = if *prefilled {
                    &context[context.len() - 1..]
                } else {
                    &context[*fed..]
                };
                SeqStep {
                    tokens,
                    kv,
                    all_logits,
                }
            })
            .collect();
        let lens: Vec<usize> = inputs.iter().map(|s| s.tokens.len()).collect();
        let mut routes = RoutingRecorder::default();
        let trace: &mut dyn crate::trace::Trace = if want_experts {
            &mut routes
        } else {
            &mut NoTrace
        };
        // Plain greedy steps need only each row's argmax: picked by the backend, so a GPU sends
        // back token ids instead of vocabulary-wide logits.
        let picked = if all_greedy {
            Some(self.model.forward_argmax(&mut inputs, trace)?)
        } else {
            None
        };
        let device_picks = match &device_rows {
            Some((rows, edits)) => {
                Some(self.model.forward_sample(&mut inputs, trace, rows, edits)?)
            }
            None => None,
        };
        let logits = match (&picked, &device_picks) {
            (None, None) => self.model.forward(&mut inputs, trace)?,
            _ => vec![],
        };
        if want_experts {
            let mut row = 0;
            for (s, len) in seqs.iter_mut().zip(lens) {
                if s.want_experts {
                    s.experts.extend(routes.rows(row..row + len));
                }
                row += len;
            }
        }
        let vocab = self.model.cfg.vocab_size;
        if let Some(picks) = device_picks {
            return seqs
                .iter_mut()
                .zip(picks)
                .map(|(s, pick)| s.accept_picked(pick, &self.eos_ids))
                .collect();
        }
        match picked {
            Some(ids) => seqs
                .iter_mut()
                .zip(ids)
                .map(|(s, tok)| s.accept_token(tok, None, &self.eos_ids))
                .collect(),
            None => seqs
                .iter_mut()
                .zip(logits)
                .map(|(s, l)| s.accept(&l, vocab, &self.eos_ids))
                .collect(),
        }
    }

    /// Generates for every request; see [`Engine::generate_stream`].
    pub fn generate(&self, requests: &[GenerateRequest]) -> Result<Vec<Completion>> {
        self.generate_stream(requests, &mut |_| {})
    }

    /// Generates for every request as one batch (prefilled together, then decoded together),
    /// calling `on_token` for every token as it is produced. Every request is checked before any
    /// work starts.
    pub fn generate_stream(
        &self,
        requests: &[GenerateRequest],
        on_token: &mut dyn FnMut(&TokenEvent),
    ) -> Result<Vec<Completion>> {
        let mut seqs: Vec<Sequence<B::Kv>> = requests
            .iter()
            .map(|r| self.start_sequence(r))
            .collect::<Result<_>>()?;
        loop {
            let mut active: Vec<(usize, &mut Sequence<B::Kv>)> = seqs
                .iter_mut()
                .enumerate()
                .filter(|(_, s)| !s.is_finished())
                .collect();
            if active.is_empty() {
                break;
            }
            let index: Vec<usize> = active.iter().map(|(i, _)| *i).collect();
            let mut refs: Vec<&mut Sequence<B::Kv>> =
                active.iter_mut().map(|(_, s)| &mut **s).collect();
            let steps = self.step(&mut refs)?;
            for (i, st) in index.into_iter().zip(&steps) {
                on_token(&TokenEvent {
                    request: i,
                    token_id: st.token_id,
                    text: &st.text,
                    logprob: st.logprob.as_ref(),
                    finish_reason: st.finish_reason,
                });
            }
        }
        Ok(seqs.into_iter().map(Sequence::into_completion).collect())
    }

    /// Each prompt token's logprob given its prefix and the `top_k` most likely next tokens after
    /// it, from one prefill run [`PROMPT_LOGPROBS_CHUNK`] positions at a time.
    pub fn prompt_logprobs(
        &self,
        prompt: &Prompt,
        top_k: usize,
    ) -> Result<Vec<PromptTokenLogprob>> {
        let ids = self.prompt_ids(prompt)?;
        let mut kv = self.model.new_kv();
        score_in_chunks(
            &ids,
            self.model.cfg.vocab_size,
            top_k,
            PROMPT_LOGPROBS_CHUNK,
            |tokens| {
                Ok(self
                    .model
                    .forward(
                        &mut [SeqStep {
                            tokens,
                            kv: &mut kv,
                            all_logits: true,
                        }],
                        &mut NoTrace,
                    )?
                    .pop()
                    .expect("one sequence"))
            },
        )
    }

    /// Runs a scoring prefill's prompt up to its last chunk (at most [`PROMPT_LOGPROBS_CHUNK`]
    /// positions, left for the batched step), scoring each chunk as it comes.
    fn run_prompt_chunks(&self, s: &mut Sequence<'_, B::Kv>) -> Result<()> {
        let vocab = self.model.cfg.vocab_size;
        while s.n_prompt - s.fed > PROMPT_LOGPROBS_CHUNK {
            let (from, to) = (s.fed, s.fed + PROMPT_LOGPROBS_CHUNK);
            let mut routes = RoutingRecorder::default();
            let trace: &mut dyn crate::trace::Trace = if s.want_experts {
                &mut routes
            } else {
                &mut NoTrace
            };
            let logits = self
                .model
                .forward(
                    &mut [SeqStep {
                        tokens: &s.context[from..to],
                        kv: &mut s.kv,
                        all_logits: true,
                    }],
                    trace,
                )?
                .pop()
                .expect("one sequence");
            if s.want_experts {
                s.experts.extend(routes.rows(0..to - from));
            }
            if let Some(scorer) = s.scorer.as_mut() {
                scorer.push(&s.context[..s.n_prompt], &logits, vocab);
            }
            s.fed = to;
        }
        Ok(())
    }
}

/// The log-likelihood of one continuation of a prompt.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ContinuationScore {
    pub token_ids: Vec<u32>,
    /// Per continuation token, its logprob given the prompt and the tokens before it.
    pub logprobs: Vec<f32>,
    /// Σ logprobs.
    pub total: f64,
}

impl<B: Backend> Engine<B> {
    /// Scores several continuations of one prompt: the prompt is prefilled once and its KV cache
    /// shared by every continuation.
    pub fn score_continuations(
        &self,
        prompt_ids: &[u32],
        continuations: &[Vec<u32>],
    ) -> Result<Vec<ContinuationScore>> {
        let ctx = self.info.context_length;
        self.prompt_ids(&Prompt::Tokens(prompt_ids.to_vec()))?;
        for c in continuations {
            if c.is_empty() {
                return Err(Error::InvalidRequest(
                    "a continuation to score is empty".into(),
                ));
            }
            if prompt_ids.len() + c.len() > ctx {
                return Err(Error::ContextOverflow {
                    len: prompt_ids.len() + c.len(),
                    max: ctx,
                });
            }
            self.prompt_ids(&Prompt::Tokens(c.clone()))?;
        }
        let vocab = self.model.cfg.vocab_size;
        let mut kv = self.model.new_kv();
        let last = self
            .model
            .forward(
                &mut [SeqStep {
                    tokens: prompt_ids,
                    kv: &mut kv,
                    all_logits: false,
                }],
                &mut NoTrace,
            )?
            .pop()
            .expect("one sequence");
        let mut kvs: Vec<B::Kv> = continuations
            .iter()
            .map(|_| self.model.backend.kv_fork(&kv))
            .collect::<Result<_>>()?;
        let mut steps: Vec<SeqStep<B::Kv>> = continuations
            .iter()
            .zip(kvs.iter_mut())
            .map(|(c, kv)| SeqStep {
                tokens: &c[..c.len() - 1],
                kv,
                all_logits: true,
            })
            .filter(|s| !s.tokens.is_empty())
            .collect();
        let mut rest = if steps.is_empty() {
            vec![]
        } else {
            self.model.forward(&mut steps, &mut NoTrace)?
        }
        .into_iter();
        let mut lp = vec![0f32; vocab];
        let mut out = Vec::with_capacity(continuations.len());
        for c in continuations {
            // Row i predicts c[i]: the prompt's last row for c[0], then the continuation's own rows.
            let more = if c.len() > 1 {
                rest.next().expect("one output per longer continuation")
            } else {
                vec![]
            };
            let mut logprobs = Vec::with_capacity(c.len());
            for (i, &tok) in c.iter().enumerate() {
                let row = if i == 0 {
                    &last[..]
                } else {
                    &more[(i - 1) * vocab..i * vocab]
                };
                log_softmax_into(row, &mut lp);
                logprobs.push(lp[tok as usize]);
            }
            out.push(ContinuationScore {
                token_ids: c.clone(),
                total: logprobs.iter().map(|&x| x as f64).sum(),
                logprobs,
            });
        }
        Ok(out)
    }

    /// Splits `prompt + continuation` texts into prompt ids and continuation ids the way they
    /// tokenise together (so a token that spans the boundary belongs to the continuation).
    pub fn split_continuations(
        &self,
        prompt: &str,
        continuations: &[String],
    ) -> Result<(Vec<u32>, Vec<Vec<u32>>)> {
        let p = self.tokenizer.encode(prompt, true)?;
        let mut common = p.len();
        let mut wholes = vec![];
        for c in continuations {
            let w = self.tokenizer.encode(&format!("{prompt}{c}"), true)?;
            common = common.min(p.iter().zip(&w).take_while(|(a, b)| a == b).count());
            wholes.push(w);
        }
        // Keep at least one prompt token so every continuation has a row to be predicted from.
        let common = common.max(1).min(p.len());
        let conts = wholes
            .into_iter()
            .map(|w| w[common.min(w.len())..].to_vec())
            .collect();
        Ok((p[..common].to_vec(), conts))
    }
}

/// `logits`: `[ids.len(), vocab]`; the unchunked reference for [`score_in_chunks`].
#[cfg(test)]
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Scoring in chunks asks for at most `chunk` rows of logits at a time (the largest logits
    /// buffer is `chunk × vocab` floats) and gives what reducing the whole matrix at once gives.
    #[test]
    fn chunked_scoring_holds_a_chunk_of_logits_and_matches_the_whole_matrix() {
        let (n, vocab) = (150usize, 40usize);
        let mut state = 7u64;
        let mut rnd = move || {
            state = state
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((state >> 33) as f32 / (1u64 << 31) as f32) * 8.0 - 4.0
        };
        let logits: Vec<f32> = (0..n * vocab).map(|_| rnd()).collect();
        let ids: Vec<u32> = (0..n).map(|i| (i * 7 % vocab) as u32).collect();
        for k in [0, 1, 5, vocab] {
            for chunk in [1, 64, 149, 150, 1000] {
                let mut at = 0;
                let mut largest = 0;
                let got = score_in_chunks(&ids, vocab, k, chunk, |tokens| {
                    assert_eq!(tokens, &ids[at..at + tokens.len()]);
                    let rows = logits[at * vocab..(at + tokens.len()) * vocab].to_vec();
                    largest = largest.max(rows.len());
                    at += tokens.len();
                    Ok(rows)
                })
                .unwrap();
                assert_eq!(at, n);
                assert_eq!(largest, chunk.min(n) * vocab, "k={k} chunk={chunk}");
                assert_eq!(got, prompt_logprobs_from(&ids, &logits, vocab, k));
            }
        }
    }

    /// The embedded model's prompt logprobs, computed in chunks (by `prompt_logprobs` and by a
    /// scheduled sequence's prefill), are those of one forward over the whole prompt.
    #[test]
    fn chunked_prompt_logprobs_match_one_forward() {
        let engine = Engine::load(&crate::engine::ModelSource::Embedded).unwrap();
        let vocab = engine.config().vocab_size;
        let ids: Vec<u32> = (0..3 * PROMPT_LOGPROBS_CHUNK as u32 + 5)
            .map(|i| 100 + (i * 37) % 5000)
            .collect();
        let mut kv = engine.model.new_kv();
        let whole = engine
            .model
            .forward(
                &mut [SeqStep {
                    tokens: &ids,
                    kv: &mut kv,
                    all_logits: true,
                }],
                &mut NoTrace,
            )
            .unwrap()
            .pop()
            .unwrap();
        let want = prompt_logprobs_from(&ids, &whole, vocab, 5);
        let chunked = engine
            .prompt_logprobs(&Prompt::Tokens(ids.clone()), 5)
            .unwrap();
        let mut req = GenerateRequest::new(
            Prompt::Tokens(ids.clone()),
            SamplingParams {
                max_tokens: 2,
                temperature: 0.0,
                ..SamplingParams::default()
            },
        );
        req.prompt_logprobs = Some(5);
        let scheduled = engine.generate(&[req]).unwrap().remove(0);
        for got in [&chunked, scheduled.prompt_logprobs.as_ref().unwrap()] {
            assert_eq!(got.len(), want.len());
            for (g, w) in got.iter().zip(&want) {
                assert_eq!((g.position, g.token_id), (w.position, w.token_id));
                match (g.logprob, w.logprob) {
                    (Some(a), Some(b)) => assert!((a - b).abs() <= 1e-5, "{g:?} {w:?}"),
                    (a, b) => assert_eq!(a, b),
                }
                assert_eq!(g.top_logprobs.len(), 5);
                for (a, b) in g.top_logprobs.iter().zip(&w.top_logprobs) {
                    assert!((a.logprob - b.logprob).abs() <= 1e-5, "{g:?} {w:?}");
                }
            }
        }
    }
}
