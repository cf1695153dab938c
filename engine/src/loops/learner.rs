//! The student in this process: chat prompts with in-context examples, generation that prefills
//! the prefix a group of prompts shares once and forks its KV cache for each, answer
//! log-likelihoods by continuation scoring, and the router's gate entropy.
//!
//! The student may also sit behind an OpenAI-compatible endpoint ([`Student::remote`]): prompts
//! are still built with a local copy of its tokenizer and chat template, generation and scoring
//! go over HTTP by token ids. What an endpoint cannot give is a typed error, never a guess: the
//! router's gate entropy needs router logits (`moe serve`'s `return_experts` gives only the
//! chosen experts), and prefix KV sharing is an in-process saving (over HTTP every prompt is
//! counted as prefilled whole).

use super::client::{HttpClient, ModelClient};
use crate::backend::{Backend, CpuBackend};
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::generate::{ContinuationScore, GenerateRequest, Prompt};
use crate::models::SeqStep;
use crate::sampling::{log_softmax_into, Sampler, SamplingParams};
use crate::tokenizer::{ChatMessage, Tokenizer};
use crate::trace::{NoTrace, Trace};
use serde::{Deserialize, Serialize};
use std::time::Instant;

/// The student of a loop: a model in this process (on any backend), or one behind an endpoint.
pub struct Student<'a, B: Backend = CpuBackend> {
    /// The model in process; for a remote student, the local copy whose tokenizer, chat
    /// template and end-of-sequence ids build the prompts (its weights are not used).
    pub engine: &'a Engine<B>,
    pub remote: Option<&'a HttpClient>,
    /// A remote student's answers carry the full next-token distribution's entropy (the whole
    /// vocabulary's logprobs per step, a large response); otherwise their `mean_entropy` is NaN.
    pub entropy: bool,
}

// By hand: a derive would ask `B: Clone`, and a student is only references.
impl<B: Backend> Clone for Student<'_, B> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<B: Backend> Copy for Student<'_, B> {}

impl<'a, B: Backend> Student<'a, B> {
    pub fn local(engine: &'a Engine<B>) -> Self {
        Student {
            engine,
            remote: None,
            entropy: false,
        }
    }
    pub fn remote(engine: &'a Engine<B>, client: &'a HttpClient) -> Self {
        Student {
            engine,
            remote: Some(client),
            entropy: false,
        }
    }
    pub fn with_entropy(self) -> Self {
        Student {
            entropy: true,
            ..self
        }
    }
    pub fn name(&self) -> String {
        match self.remote {
            Some(c) => c.name(),
            None => self.engine.info.name.clone(),
        }
    }
    pub fn tokenizer(&self) -> &'a Tokenizer {
        &self.engine.tokenizer
    }
    pub fn eos_ids(&self) -> &'a [u32] {
        &self.engine.eos_ids
    }
}

/// How in-context examples are shown to the student.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ContextFormat {
    /// Earlier user/assistant turns.
    #[default]
    Turns,
    /// Lines `question answer` inside the one user turn, before the question: for models
    /// trained on single turns only, which lose their skill after an end-of-turn.
    Inline,
}

impl ContextFormat {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "turns" => Ok(ContextFormat::Turns),
            "inline" => Ok(ContextFormat::Inline),
            _ => Err(Error::InvalidRequest(format!(
                "unknown context format `{s}` (turns, inline)"
            ))),
        }
    }
}

/// The student's prompt: in-context examples (question, answer) in `format`, then the question;
/// an instruction, when given, opens the last user turn.
pub fn messages_in(
    format: ContextFormat,
    shots: &[(String, String)],
    instruction: Option<&str>,
    question: &str,
) -> Vec<ChatMessage> {
    if format == ContextFormat::Turns || shots.is_empty() {
        return messages(shots, instruction, question);
    }
    let mut q = String::new();
    if let Some(i) = instruction.map(str::trim).filter(|i| !i.is_empty()) {
        q += i;
        q += "\n\n";
    }
    for (eq, ea) in shots {
        q += &format!("{} {}\n", eq.trim(), ea.trim());
    }
    q += question;
    vec![ChatMessage::user(q)]
}

/// In-context examples (question, answer) as alternating turns, then the question; an
/// instruction, when given, opens the last user turn.
pub fn messages(
    shots: &[(String, String)],
    instruction: Option<&str>,
    question: &str,
) -> Vec<ChatMessage> {
    let mut m = Vec::with_capacity(shots.len() * 2 + 1);
    for (q, a) in shots {
        m.push(ChatMessage::user(q.clone()));
        m.push(ChatMessage::assistant(a.clone()));
    }
    let q = match instruction.map(str::trim) {
        Some(i) if !i.is_empty() => format!("{i}\n\n{question}"),
        _ => question.to_string(),
    };
    m.push(ChatMessage::user(q));
    m
}

/// One generated answer and the model's uncertainty about it.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Answer {
    pub text: String,
    pub tokens: usize,
    /// −Σ log p of the generated tokens (an ending eos included).
    pub nll: f64,
    /// Smallest top-1 − top-2 probability margin over the steps.
    pub min_margin: f64,
    /// Mean over the steps of the entropy (nats) of the full next-token distribution.
    pub mean_entropy: f64,
}

impl Answer {
    /// Probability of the whole generated sequence.
    pub fn seq_prob(&self) -> f64 {
        (-self.nll).exp()
    }
}

/// What prefix sharing saved: prompt tokens asked for vs tokens actually prefilled.
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PrefillStats {
    pub prompts: usize,
    pub prompt_tokens: usize,
    pub prefilled_tokens: usize,
    pub generated_tokens: usize,
    /// Time to the first generated token's logits: the shared prefix and every prompt's rest.
    pub prefill_seconds: f64,
    pub seconds: f64,
}

impl PrefillStats {
    pub fn saved_fraction(&self) -> f64 {
        1.0 - self.prefilled_tokens as f64 / self.prompt_tokens.max(1) as f64
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "prompts": self.prompts, "prompt_tokens": self.prompt_tokens,
            "prefilled_tokens": self.prefilled_tokens, "saved_tokens": self.prompt_tokens - self.prefilled_tokens,
            "saved_fraction": self.saved_fraction(), "generated_tokens": self.generated_tokens, "prefill_seconds": self.prefill_seconds, "seconds": self.seconds,
        })
    }
}

/// Longest prefix every prompt shares, leaving each at least one token of its own.
pub fn shared_prefix_len(prompts: &[Vec<u32>]) -> usize {
    let Some(first) = prompts.first() else {
        return 0;
    };
    let mut n = prompts.iter().map(Vec::len).min().unwrap_or(0);
    for p in &prompts[1..] {
        n = n.min(first.iter().zip(p).take_while(|(a, b)| a == b).count());
    }
    n.min(
        prompts
            .iter()
            .map(Vec::len)
            .min()
            .unwrap_or(0)
            .saturating_sub(1),
    )
}

/// Generates for every prompt (token ids) with its own parameters; stops at eos or
/// `max_tokens`. With `share`, the prompts' common prefix is prefilled once and its KV cache
/// forked for each prompt. Token choice is the engine's sampler, so a seeded request gives the
/// same tokens whether or not the prefix is shared.
pub fn generate_shared<B: Backend>(
    student: &Student<B>,
    prompts: &[Vec<u32>],
    params: &[SamplingParams],
    share: bool,
    stats: &mut PrefillStats,
) -> Result<Vec<Answer>> {
    const CHUNK: usize = 64;
    if prompts.len() > CHUNK {
        let mut out = Vec::with_capacity(prompts.len());
        for (p, q) in prompts.chunks(CHUNK).zip(params.chunks(CHUNK)) {
            out.extend(generate_shared(student, p, q, share, stats)?);
        }
        return Ok(out);
    }
    if prompts.is_empty() {
        return Ok(vec![]);
    }
    if let Some(client) = student.remote {
        return generate_remote(client, student, prompts, params, stats);
    }
    let engine = student.engine;
    let t0 = Instant::now();
    let model = &engine.model;
    let ctx = engine.info.context_length;
    let vocab = model.cfg.vocab_size;
    for p in prompts {
        if p.is_empty() {
            return Err(Error::EmptyPrompt);
        }
        if p.len() >= ctx {
            return Err(Error::ContextOverflow {
                len: p.len() + 1,
                max: ctx,
            });
        }
    }
    let lcp = if share && prompts.len() > 1 {
        shared_prefix_len(prompts)
    } else {
        0
    };
    let mut base = model.new_kv();
    if lcp > 0 {
        model.forward(
            &mut [SeqStep {
                tokens: &prompts[0][..lcp],
                kv: &mut base,
                all_logits: false,
            }],
            &mut NoTrace,
        )?;
    }
    let n = prompts.len();
    stats.prompts += n;
    stats.prompt_tokens += prompts.iter().map(Vec::len).sum::<usize>();
    stats.prefilled_tokens += lcp + prompts.iter().map(|p| p.len() - lcp).sum::<usize>();
    let mut kvs: Vec<_> = (0..n)
        .map(|_| {
            if lcp > 0 {
                model.backend.kv_fork(&base)
            } else {
                Ok(model.new_kv())
            }
        })
        .collect::<Result<_>>()?;
    let mut samplers: Vec<Sampler> = params.iter().map(Sampler::new).collect();
    let mut contexts: Vec<Vec<u32>> = prompts.to_vec();
    let mut gen: Vec<Vec<u32>> = vec![vec![]; n];
    let mut answers = vec![Answer::default(); n];
    let mut margins = vec![f64::INFINITY; n];
    let mut done = vec![false; n];
    let mut lp = vec![0f32; vocab];
    let mut first = true;
    let mut first_step = true;
    loop {
        let active: Vec<usize> = (0..n).filter(|&i| !done[i]).collect();
        if active.is_empty() {
            break;
        }
        let inputs: Vec<Vec<u32>> = active
            .iter()
            .map(|&i| {
                if first {
                    contexts[i][lcp..].to_vec()
                } else {
                    vec![*contexts[i].last().expect("a token")]
                }
            })
            .collect();
        first = false;
        let mut steps: Vec<SeqStep<_>> = Vec::with_capacity(active.len());
        {
            let mut it = kvs.iter_mut().enumerate();
            for (k, &i) in active.iter().enumerate() {
                let kv = loop {
                    let (j, kv) = it.next().expect("an active sequence's cache");
                    if j == i {
                        break kv;
                    }
                };
                steps.push(SeqStep {
                    tokens: &inputs[k],
                    kv,
                    all_logits: false,
                });
            }
        }
        let logits = model.forward(&mut steps, &mut NoTrace)?;
        drop(steps);
        if first_step {
            stats.prefill_seconds += t0.elapsed().as_secs_f64();
            first_step = false;
        }
        for (&i, l) in active.iter().zip(logits) {
            let row = &l[l.len() - vocab..];
            log_softmax_into(row, &mut lp);
            let (mut p1, mut p2, mut h) = (0f64, 0f64, 0f64);
            for &x in &lp {
                let p = (x as f64).exp();
                if p > 0.0 {
                    h -= p * x as f64;
                }
                if p > p1 {
                    p2 = p1;
                    p1 = p;
                } else if p > p2 {
                    p2 = p;
                }
            }
            let n_prompt = prompts[i].len();
            let tok = samplers[i].sample(row, &contexts[i], n_prompt);
            contexts[i].push(tok);
            let a = &mut answers[i];
            a.nll -= lp[tok as usize] as f64;
            a.mean_entropy += h;
            a.tokens += 1;
            margins[i] = margins[i].min(p1 - p2);
            let p = &params[i];
            let eos = !p.ignore_eos && engine.eos_ids.contains(&tok);
            if !eos {
                gen[i].push(tok);
            }
            if eos
                || p.stop_token_ids.contains(&tok)
                || a.tokens >= p.max_tokens.min(ctx - n_prompt)
            {
                done[i] = true;
            }
        }
    }
    for i in 0..n {
        let a = &mut answers[i];
        a.mean_entropy /= a.tokens.max(1) as f64;
        a.min_margin = if margins[i].is_finite() {
            margins[i]
        } else {
            0.0
        };
        a.text = engine.tokenizer.decode(&gen[i], true)?;
        stats.generated_tokens += a.tokens;
    }
    stats.seconds += t0.elapsed().as_secs_f64();
    Ok(answers)
}

/// Generation over HTTP by token ids: the answer's uncertainty from the returned logprobs (the
/// chosen token's and the top two; the whole distribution when `student.entropy`). Nothing is
/// shared, so every prompt token counts as prefilled.
fn generate_remote<B: Backend>(
    client: &HttpClient,
    student: &Student<B>,
    prompts: &[Vec<u32>],
    params: &[SamplingParams],
    stats: &mut PrefillStats,
) -> Result<Vec<Answer>> {
    let t0 = Instant::now();
    let vocab = student.engine.config().vocab_size;
    let reqs: Vec<GenerateRequest> = prompts
        .iter()
        .zip(params)
        .map(|(p, q)| {
            GenerateRequest::new(
                Prompt::Tokens(p.clone()),
                SamplingParams {
                    logprobs: true,
                    top_logprobs: if student.entropy { vocab } else { 2 },
                    ..q.clone()
                },
            )
        })
        .collect();
    let completions = client.generate(&reqs)?;
    stats.prompts += prompts.len();
    let n_prompt: usize = prompts.iter().map(Vec::len).sum();
    stats.prompt_tokens += n_prompt;
    stats.prefilled_tokens += n_prompt;
    let mut out = Vec::with_capacity(completions.len());
    for c in completions {
        let steps = c.logprobs.unwrap_or_default();
        let mut a = Answer {
            text: c.text,
            tokens: steps.len(),
            ..Answer::default()
        };
        let mut margin = f64::INFINITY;
        for t in &steps {
            a.nll -= t.logprob as f64;
            let p = |k: usize| {
                t.top_logprobs
                    .get(k)
                    .map_or(0.0, |x| (x.logprob as f64).exp())
            };
            margin = margin.min(p(0) - p(1));
            if student.entropy {
                a.mean_entropy -= t
                    .top_logprobs
                    .iter()
                    .map(|x| {
                        let p = (x.logprob as f64).exp();
                        if p > 0.0 {
                            p * x.logprob as f64
                        } else {
                            0.0
                        }
                    })
                    .sum::<f64>();
            }
        }
        a.mean_entropy = if student.entropy {
            a.mean_entropy / a.tokens.max(1) as f64
        } else {
            f64::NAN
        };
        a.min_margin = if margin.is_finite() { margin } else { 0.0 };
        stats.generated_tokens += a.tokens;
        out.push(a);
    }
    let secs = t0.elapsed().as_secs_f64();
    stats.seconds += secs;
    stats.prefill_seconds += secs;
    Ok(out)
}

/// Greedy answers for chat prompts, prompts sharing a prefix grouped by the caller.
pub fn greedy<B: Backend>(
    student: &Student<B>,
    prompts: &[Vec<ChatMessage>],
    max_tokens: usize,
    share: bool,
    stats: &mut PrefillStats,
) -> Result<Vec<Answer>> {
    let ids: Vec<Vec<u32>> = prompts
        .iter()
        .map(|m| student.tokenizer().encode_chat(m, true))
        .collect::<Result<_>>()?;
    let params = vec![
        SamplingParams {
            max_tokens,
            ..SamplingParams::greedy()
        };
        ids.len()
    ];
    generate_shared(student, &ids, &params, share, stats)
}

/// The prompt `messages` and each answer as the assistant's turn, as token ids: the common
/// prompt and each answer's own tokens (its end-of-turn included), split where they differ.
pub fn continuation_ids(
    tok: &Tokenizer,
    messages: &[ChatMessage],
    answers: &[String],
) -> Result<(Vec<u32>, Vec<Vec<u32>>)> {
    let prompt = tok.encode_chat(messages, true)?;
    let mut common = prompt.len();
    let mut wholes = Vec::with_capacity(answers.len());
    for a in answers {
        let mut m = messages.to_vec();
        m.push(ChatMessage::assistant(a.clone()));
        let w = tok.encode_chat(&m, false)?;
        common = common.min(prompt.iter().zip(&w).take_while(|(x, y)| x == y).count());
        wholes.push(w);
    }
    let common = common.max(1).min(prompt.len());
    let conts = wholes
        .into_iter()
        .map(|w| w[common.min(w.len())..].to_vec())
        .collect();
    Ok((prompt[..common].to_vec(), conts))
}

/// Log-likelihood of each answer as the assistant's turn after `messages` (one shared prefill).
pub fn answer_scores<B: Backend>(
    student: &Student<B>,
    messages: &[ChatMessage],
    answers: &[String],
) -> Result<Vec<ContinuationScore>> {
    let (p, c) = continuation_ids(student.tokenizer(), messages, answers)?;
    match student.remote {
        Some(client) => client.score_ids(&p, &c),
        None => student.engine.score_continuations(&p, &c),
    }
}

/// Softmax over the label set of the labels' log-likelihoods.
pub fn label_probs<B: Backend>(
    student: &Student<B>,
    messages: &[ChatMessage],
    labels: &[String],
) -> Result<Vec<f64>> {
    let s = answer_scores(student, messages, labels)?;
    Ok(softmax(&s.iter().map(|x| x.total).collect::<Vec<_>>()))
}

pub fn softmax(x: &[f64]) -> Vec<f64> {
    let m = x.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    let e: Vec<f64> = x.iter().map(|&v| (v - m).exp()).collect();
    let z: f64 = e.iter().sum();
    e.into_iter().map(|v| v / z).collect()
}

/// Keeps each layer's router logits.
#[derive(Default)]
struct GateTrace {
    layers: Vec<(usize, Vec<f32>)>,
}

impl Trace for GateTrace {
    fn enabled(&self) -> bool {
        true
    }
    fn wants(&self, key: &str) -> bool {
        key.ends_with(".router_logits")
    }
    fn record(&mut self, _key: &str, cols: usize, data: &[f32]) {
        self.layers.push((cols, data.to_vec()));
    }
}

/// Mean entropy (nats) of the router's softmax over all experts, over every layer and the
/// tokens of `ids` from `from` on: how unsure the gates are about where a text belongs.
pub fn gate_entropy<B: Backend>(student: &Student<B>, ids: &[u32], from: usize) -> Result<f64> {
    if let Some(client) = student.remote {
        return Err(gate_unavailable(client));
    }
    let engine = student.engine;
    let mut kv = engine.model.new_kv();
    let mut tr = GateTrace::default();
    engine.model.forward(
        &mut [SeqStep {
            tokens: ids,
            kv: &mut kv,
            all_logits: false,
        }],
        &mut tr,
    )?;
    let (mut sum, mut count) = (0f64, 0usize);
    for (cols, data) in &tr.layers {
        for (r, row) in data.chunks(*cols).enumerate() {
            if r < from {
                continue;
            }
            let p = softmax(&row.iter().map(|&x| x as f64).collect::<Vec<_>>());
            sum += entropy(&p);
            count += 1;
        }
    }
    Ok(sum / count.max(1) as f64)
}

/// Why a remote student has no gate entropy.
pub fn gate_unavailable(client: &HttpClient) -> Error {
    Error::FeatureUnavailable {
        endpoint: client.base_url.clone(),
        feature: "the router's gate entropy (acquisition strategy `gate`): it needs every \
                  router logit, and `return_experts` gives only the chosen experts; run the \
                  student in process for `gate`"
            .into(),
    }
}

/// `−Σ p ln p`.
pub fn entropy(p: &[f64]) -> f64 {
    -p.iter()
        .filter(|&&x| x > 0.0)
        .map(|&x| x * x.ln())
        .sum::<f64>()
}
