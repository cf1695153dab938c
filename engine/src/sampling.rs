//! Sampling: per-request parameters, a sampler with its own seeded RNG, logprob helpers and stop
//! strings matched across token boundaries.
//!
//! The RNG is xoshiro256** seeded through SplitMix64 and written out here, so a seed gives the
//! same tokens whatever versions of the dependencies are built. Candidate order is canonical
//! (descending value, then ascending id, or plain id order when nothing is cut), so the token a
//! uniform draw maps to does not depend on how the standard library's selection arranges
//! elements either.

use crate::error::{Error, Result};
use moe_kernels::sample::{Edit, SampleRow, MAX_TOP};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// ≥ 0; 0 is greedy.
    pub temperature: f32,
    /// Keep the `top_k` most likely tokens; 0 is off.
    pub top_k: usize,
    /// In (0, 1]: keep the smallest most-likely set whose probability reaches `top_p`.
    pub top_p: f32,
    /// In [0, 1]: drop tokens whose probability is below `min_p · p_max`.
    pub min_p: f32,
    /// Greater than 0; over prompt and generated tokens, once per distinct token (a positive
    /// logit is divided by it, any other multiplied).
    pub repetition_penalty: f32,
    /// In [-2, 2]; subtracted once from the logit of every token already generated.
    pub presence_penalty: f32,
    /// In [-2, 2]; subtracted once per occurrence among the generated tokens.
    pub frequency_penalty: f32,
    /// `(token id, bias)` added to the logits; each bias in [-100, 100].
    pub logit_bias: Vec<(u32, f32)>,
    /// Seed for the sampler's RNG; `None` seeds from the clock and per-process entropy.
    pub seed: Option<u64>,
    /// ≥ 1.
    pub max_tokens: usize,
    /// Stop strings; the text from a stop string on is left out.
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Return the chosen token's logprob.
    pub logprobs: bool,
    /// Alternatives returned per generated token (no cap beyond the vocabulary).
    pub top_logprobs: usize,
}

/// Greedy (temperature 0), as the CLI and the Python bindings default: a caller that names no
/// temperature gets reproducible output. OpenAI requests set their own default (1) explicitly.
impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 0.0,
            top_k: 0,
            top_p: 1.0,
            min_p: 0.0,
            repetition_penalty: 1.0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            logit_bias: vec![],
            seed: None,
            max_tokens: 256,
            stop: vec![],
            stop_token_ids: vec![],
            ignore_eos: false,
            logprobs: false,
            top_logprobs: 0,
        }
    }
}

fn invalid(param: &'static str, message: String) -> Result<()> {
    Err(Error::InvalidSampling { param, message })
}

impl SamplingParams {
    /// Default parameters with temperature 0 (the same as `default()`; says so at the call site).
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    /// True when sampling reduces to argmax: temperature 0, or only one candidate kept.
    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }

    /// Checks every field against its range; `vocab_size` bounds `logit_bias` ids and
    /// `top_logprobs`. The error names the first field at fault and its allowed range.
    pub fn validate(&self, vocab_size: usize) -> Result<()> {
        // Written as negated comparisons so NaN fails every check.
        if !(self.temperature >= 0.0 && self.temperature.is_finite()) {
            return invalid(
                "temperature",
                format!(
                    "{} is not allowed: must be a finite number ≥ 0 (0 is greedy)",
                    self.temperature
                ),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return invalid(
                "top_p",
                format!("{} is outside the allowed range (0, 1]", self.top_p),
            );
        }
        if !(self.min_p >= 0.0 && self.min_p <= 1.0) {
            return invalid(
                "min_p",
                format!("{} is outside the allowed range [0, 1]", self.min_p),
            );
        }
        if !(self.repetition_penalty > 0.0 && self.repetition_penalty.is_finite()) {
            return invalid(
                "repetition_penalty",
                format!(
                    "{} is not allowed: must be a finite number > 0 (1 is off)",
                    self.repetition_penalty
                ),
            );
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return invalid(name, format!("{v} is outside the allowed range [-2, 2]"));
            }
        }
        for &(id, bias) in &self.logit_bias {
            if id as usize >= vocab_size {
                return invalid(
                    "logit_bias",
                    format!(
                        "token id {id} is outside the vocabulary: ids must be in [0, {vocab_size})"
                    ),
                );
            }
            if !(-100.0..=100.0).contains(&bias) {
                return invalid(
                    "logit_bias",
                    format!("bias {bias} for token {id} is outside the allowed range [-100, 100]"),
                );
            }
        }
        if self.max_tokens == 0 {
            return invalid("max_tokens", "0 is not allowed: must be ≥ 1".into());
        }
        if self.top_logprobs > vocab_size {
            return invalid(
                "top_logprobs",
                format!(
                    "{} is outside the allowed range [0, {vocab_size}] (the vocabulary size)",
                    self.top_logprobs
                ),
            );
        }
        if let Some(i) = self.stop.iter().position(|s| s.is_empty()) {
            return invalid(
                "stop",
                format!("stop string {i} is empty: each must be at least 1 byte"),
            );
        }
        Ok(())
    }
}

/// xoshiro256** (Blackman & Vigna), its state filled from SplitMix64.
#[derive(Clone, Debug)]
struct Rng([u64; 4]);

/// One SplitMix64 step: advances `state` and returns the mixed output.
fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut x = *state;
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed;
        // SplitMix64 never yields four zero words in a row, so the state is never all zero.
        Rng([
            splitmix64(&mut z),
            splitmix64(&mut z),
            splitmix64(&mut z),
            splitmix64(&mut z),
        ])
    }

    fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let result = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        result
    }

    /// Uniform in [0, 1) with 53 random bits.
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }
}

/// A seed from the clock, a per-process counter and std's randomly keyed hasher, for samplers
/// without an explicit seed.
fn entropy_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u64(COUNTER.fetch_add(1, AtomicOrdering::Relaxed));
    let mut z = h.finish();
    splitmix64(&mut z)
}

/// NaN ranks below every number (including -inf); otherwise the value itself.
#[inline]
fn rank_key(v: f32) -> f32 {
    if v.is_nan() {
        f32::NEG_INFINITY
    } else {
        v
    }
}

/// Descending value with NaN after everything, exact ties by ascending id. `-0.0` and `0.0` tie.
#[inline]
fn desc_then_id(a: &(u32, f32), b: &(u32, f32)) -> Ordering {
    let by_value = match (a.1.is_nan(), b.1.is_nan()) {
        (false, false) => b.1.partial_cmp(&a.1).unwrap_or(Ordering::Equal),
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
    };
    by_value.then(a.0.cmp(&b.0))
}

/// Index of the largest value; exact ties go to the lowest index and NaN never wins (all NaN or
/// an empty slice give 0).
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0usize;
    let mut best_v = f32::NEG_INFINITY;
    for (i, &x) in v.iter().enumerate() {
        if x > best_v {
            best = i;
            best_v = x;
        }
    }
    best as u32
}

/// Logit storage the penalties can address by token id.
trait LogitSlots {
    fn slot(&mut self, id: u32) -> Option<&mut f32>;
}

impl LogitSlots for [f32] {
    fn slot(&mut self, id: u32) -> Option<&mut f32> {
        self.get_mut(id as usize)
    }
}

/// `(id, logit)` pairs still in id order, so entry `i` holds token `i`.
impl LogitSlots for [(u32, f32)] {
    fn slot(&mut self, id: u32) -> Option<&mut f32> {
        self.get_mut(id as usize).map(|e| &mut e.1)
    }
}

fn needs_penalties(p: &SamplingParams) -> bool {
    !p.logit_bias.is_empty()
        || p.repetition_penalty != 1.0
        || p.presence_penalty != 0.0
        || p.frequency_penalty != 0.0
}

/// Logit bias, then the repetition penalty once per distinct token of `context`, then presence
/// and frequency penalties over `context[n_prompt..]`. Ids outside the vocabulary are skipped.
/// `ids` is a reusable buffer of context length.
fn penalize<L: LogitSlots + ?Sized>(
    p: &SamplingParams,
    logits: &mut L,
    context: &[u32],
    n_prompt: usize,
    ids: &mut Vec<u32>,
) {
    for &(id, bias) in &p.logit_bias {
        if let Some(l) = logits.slot(id) {
            *l += bias;
        }
    }
    if p.repetition_penalty != 1.0 {
        ids.clear();
        ids.extend_from_slice(context);
        ids.sort_unstable();
        ids.dedup();
        for &id in ids.iter() {
            if let Some(l) = logits.slot(id) {
                *l = if *l > 0.0 {
                    *l / p.repetition_penalty
                } else {
                    *l * p.repetition_penalty
                };
            }
        }
    }
    if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
        ids.clear();
        ids.extend_from_slice(&context[n_prompt.min(context.len())..]);
        ids.sort_unstable();
        for run in ids.chunk_by(|a, b| a == b) {
            if let Some(l) = logits.slot(run[0]) {
                *l -= p.frequency_penalty * run.len() as f32 + p.presence_penalty;
            }
        }
    }
}

/// Applies logit bias, repetition penalty over `context`, and presence/frequency penalties over
/// the generated part `context[n_prompt..]`, in place, exactly as [`Sampler::sample`] does.
#[cfg_attr(not(test), allow(dead_code))]
pub(crate) fn apply_penalties(
    p: &SamplingParams,
    logits: &mut [f32],
    context: &[u32],
    n_prompt: usize,
) {
    penalize(p, logits, context, n_prompt, &mut Vec::new());
}

/// The penalties and logit bias of [`penalize`] as one edit per token id (`l' = rep(l + bias) −
/// sub`), for a device that applies them where the logits are. Duplicate bias ids are summed.
fn penalty_edits(p: &SamplingParams, context: &[u32], n_prompt: usize) -> Vec<Edit> {
    use std::collections::BTreeMap;
    let mut edits: BTreeMap<u32, Edit> = BTreeMap::new();
    let mut at = |id: u32, f: &mut dyn FnMut(&mut Edit)| {
        let e = edits.entry(id).or_insert(Edit {
            id,
            bias: 0.0,
            rep: 1.0,
            sub: 0.0,
        });
        f(e);
    };
    for &(id, bias) in &p.logit_bias {
        at(id, &mut |e| e.bias += bias);
    }
    if p.repetition_penalty != 1.0 {
        for &id in context {
            at(id, &mut |e| e.rep = p.repetition_penalty);
        }
    }
    if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
        let mut ids = context[n_prompt.min(context.len())..].to_vec();
        ids.sort_unstable();
        for run in ids.chunk_by(|a, b| a == b) {
            let sub = p.frequency_penalty * run.len() as f32 + p.presence_penalty;
            at(run[0], &mut |e| e.sub = sub);
        }
    }
    edits.into_values().collect()
}

/// Picks tokens for one request with its own RNG.
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// The one `[vocab]` buffer: `(id, adjusted logit)`, later `(id, weight)`; reused per call.
    scratch: Vec<(u32, f32)>,
    /// Reused context-length buffer for counting repeated ids.
    ids: Vec<u32>,
}

impl Sampler {
    /// Seeds from `params.seed`, or from the clock and process entropy when it is `None`.
    pub fn new(params: &SamplingParams) -> Self {
        Sampler {
            params: params.clone(),
            rng: Rng::new(params.seed.unwrap_or_else(entropy_seed)),
            scratch: Vec::new(),
            ids: Vec::new(),
        }
    }

    pub fn params(&self) -> &SamplingParams {
        &self.params
    }

    /// What a device needs to pick the next token as [`Sampler::sample`] would over the same
    /// logits: the parameters, the penalty edits over `context`, and for a non-greedy pick this
    /// sampler's one uniform draw (the RNG stays here, so a seed gives the same stream on every
    /// backend). The returned row's edit range is left for the caller to set.
    pub fn device_row(&mut self, context: &[u32], n_prompt: usize) -> (SampleRow, Vec<Edit>) {
        let p = &self.params;
        let edits = if needs_penalties(p) {
            penalty_edits(p, context, n_prompt)
        } else {
            vec![]
        };
        let greedy = p.is_greedy();
        let row = SampleRow {
            temperature: if greedy { 0.0 } else { p.temperature },
            top_k: p.top_k.min(u32::MAX as usize) as u32,
            top_p: p.top_p,
            min_p: p.min_p,
            u: if greedy { 0.0 } else { self.rng.next_f64() },
            edit_begin: 0,
            edit_end: 0,
            n_top: p.top_logprobs.min(MAX_TOP) as u32,
            want_logprobs: (p.logprobs || p.top_logprobs > 0) as u32,
        };
        (row, edits)
    }

    /// Picks the next token. `logits`: raw model logits `[vocab]`; `context`: prompt plus the ids
    /// generated so far, of which the first `n_prompt` are the prompt.
    ///
    /// Applies logit bias, the repetition penalty (whole context) and presence/frequency
    /// penalties (generated part), then either takes the argmax (exact ties → lowest id) or
    /// scales by temperature, keeps the top-k, cuts to top-p, drops below min-p and draws one
    /// token with the RNG. NaN logits count as -inf. Greedy picks draw nothing from the RNG;
    /// every other pick draws exactly one number.
    ///
    /// # Panics
    /// If `logits` is empty.
    pub fn sample(&mut self, logits: &[f32], context: &[u32], n_prompt: usize) -> u32 {
        assert!(!logits.is_empty(), "Sampler::sample: empty logits");
        let p = &self.params;
        let penalties = needs_penalties(p);
        if p.is_greedy() && !penalties {
            return argmax(logits);
        }
        self.scratch.clear();
        self.scratch.extend(
            logits
                .iter()
                .enumerate()
                .map(|(i, &l)| (i as u32, rank_key(l))),
        );
        if penalties {
            penalize(
                p,
                self.scratch.as_mut_slice(),
                context,
                n_prompt,
                &mut self.ids,
            );
        }
        let cand: &mut [(u32, f32)] = &mut self.scratch;
        if p.is_greedy() {
            return cand
                .iter()
                .fold((0u32, f32::NEG_INFINITY), |best, &(i, l)| {
                    if l > best.1 {
                        (i, l)
                    } else {
                        best
                    }
                })
                .0;
        }

        // Top-k: the k best, in canonical order.
        let mut sorted = false;
        let cand = if p.top_k > 0 && p.top_k < cand.len() {
            cand.select_nth_unstable_by(p.top_k - 1, desc_then_id);
            let head = &mut cand[..p.top_k];
            head.sort_unstable_by(desc_then_id);
            sorted = true;
            head
        } else {
            cand
        };

        let max = cand.iter().fold(f32::NEG_INFINITY, |m, c| m.max(c.1));
        if max == f32::NEG_INFINITY {
            // Every candidate is masked out: fall back to the lowest id among them.
            return cand.iter().map(|c| c.0).min().unwrap_or(0);
        }
        // Weights relative to the best candidate, which gets exactly 1; -inf gets 0. Summed in
        // the candidates' canonical order.
        let inv_t = 1.0 / p.temperature;
        let mut total = 0f64;
        for c in cand.iter_mut() {
            c.1 = if c.1 == max {
                1.0
            } else {
                ((c.1 - max) * inv_t).exp()
            };
            total += c.1 as f64;
        }

        let n = cand.len();
        let mut keep = n;
        if p.top_p < 1.0 {
            // The shortest best-first prefix holding `top_p` of the mass. Unless top-k already
            // sorted them, the candidates are ordered lazily: select a head, sort just the head,
            // scan it, and grow the head fourfold while the mass is not reached. The prefix and
            // its running sum come out the same as with a full sort.
            let target = p.top_p as f64 * total;
            let mut acc = 0f64;
            let mut done = 0;
            let mut head = if sorted { n } else { n.min(64) };
            'grow: loop {
                if !sorted {
                    if head < n {
                        cand[done..].select_nth_unstable_by(head - done - 1, desc_then_id);
                    }
                    cand[done..head].sort_unstable_by(desc_then_id);
                }
                for (i, c) in cand[..head].iter().enumerate().skip(done) {
                    acc += c.1 as f64;
                    if acc >= target {
                        keep = i + 1;
                        break 'grow;
                    }
                }
                if head == n {
                    break;
                }
                done = head;
                head = n.min(head * 4);
            }
        }
        let kept = &mut cand[..keep];
        if p.min_p > 0.0 {
            // The best weight is 1, so the floor is min_p itself; the best always survives.
            for c in kept.iter_mut() {
                if c.1 < p.min_p {
                    c.1 = 0.0;
                }
            }
        }

        let sum: f64 = kept.iter().map(|c| c.1 as f64).sum();
        let mut u = self.rng.next_f64() * sum;
        let mut last_positive = kept[0].0;
        for c in kept.iter() {
            if c.1 > 0.0 {
                last_positive = c.0;
                u -= c.1 as f64;
                if u < 0.0 {
                    return c.0;
                }
            }
        }
        // Rounding left a sliver of `u`: the last token with positive weight takes it.
        last_positive
    }
}

/// `log_softmax` in f32 with a max-subtracted log-sum-exp accumulated in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; logits.len()];
    log_softmax_into(logits, &mut out);
    out
}

/// [`log_softmax`] into `out`, which must have the length of `logits`. A non-finite maximum
/// (all -inf, or +inf present) gives NaN where the result is undefined, as in PyTorch.
///
/// # Panics
/// If `out.len() != logits.len()`.
pub fn log_softmax_into(logits: &[f32], out: &mut [f32]) {
    assert_eq!(
        out.len(),
        logits.len(),
        "log_softmax_into: output length differs from input"
    );
    let m = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let z: f64 = logits.iter().map(|&l| (l as f64 - m).exp()).sum();
    let shift = m + z.ln();
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = (l as f64 - shift) as f32;
    }
}

/// The `k` largest `(id, value)`, descending; exact ties put the lower id first and NaN ranks
/// last. O(V + k log k): a selection, then a sort of the `k` selected.
pub fn top_k_entries(values: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(values.len());
    if k == 0 {
        return vec![];
    }
    let mut all: Vec<(u32, f32)> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, v))
        .collect();
    if k < all.len() {
        all.select_nth_unstable_by(k - 1, desc_then_id);
        all.truncate(k);
    }
    all.sort_unstable_by(desc_then_id);
    all
}

/// What a [`StopMatcher`] releases for one push.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StopStep {
    /// Text that can be shown now.
    pub emit: String,
    /// A stop string completed: the text before it was emitted and the rest dropped.
    pub stopped: bool,
    /// The stop string that completed.
    pub matched: Option<String>,
}

/// Matches stop strings over text that arrives in pieces, holding back only the longest tail
/// that could still be the start of a stop string.
///
/// The first stop string to complete, reading the text character by character, wins (on the same
/// last character, the longer one); so the result does not depend on how the text is split into
/// pushes.
#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    done: bool,
}

impl StopMatcher {
    /// Empty stop strings are ignored.
    pub fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
            done: false,
        }
    }

    /// True once a stop string has completed; later pushes release nothing.
    pub fn is_stopped(&self) -> bool {
        self.done
    }

    /// Feeds newly decoded text. Returns the text that can no longer be part of a stop string,
    /// holding back a possible partial match; when a stop string completes, returns the text
    /// before it and drops the rest.
    pub fn push(&mut self, delta: &str) -> StopStep {
        if self.done {
            return StopStep::default();
        }
        self.pending.push_str(delta);
        if self.stops.is_empty() {
            return StopStep {
                emit: std::mem::take(&mut self.pending),
                ..Default::default()
            };
        }
        // Everything already released cannot begin a stop string, so any match lies inside
        // `pending`. For each stop its first occurrence also ends first; take the earliest end,
        // then the earliest start.
        let mut best: Option<(usize, usize, usize)> = None; // (end, start, stop index)
        for (si, s) in self.stops.iter().enumerate() {
            if let Some(start) = self.pending.find(s.as_str()) {
                let cand = (start + s.len(), start, si);
                if best.is_none_or(|b| (cand.0, cand.1) < (b.0, b.1)) {
                    best = Some(cand);
                }
            }
        }
        if let Some((_, start, si)) = best {
            let mut emit = std::mem::take(&mut self.pending);
            emit.truncate(start);
            self.done = true;
            return StopStep {
                emit,
                stopped: true,
                matched: Some(self.stops[si].clone()),
            };
        }
        // Hold back the longest suffix that is a proper prefix of some stop string. Stop strings
        // are valid UTF-8, so a byte-level prefix match always starts on a char boundary.
        let bytes = self.pending.as_bytes();
        let mut hold = 0;
        for s in &self.stops {
            let s = s.as_bytes();
            let longest = (s.len() - 1).min(bytes.len());
            for len in (hold + 1..=longest).rev() {
                if s.starts_with(&bytes[bytes.len() - len..]) {
                    hold = len;
                    break;
                }
            }
        }
        let cut = self.pending.len() - hold;
        debug_assert!(self.pending.is_char_boundary(cut));
        let rest = self.pending.split_off(cut);
        StopStep {
            emit: std::mem::replace(&mut self.pending, rest),
            ..Default::default()
        }
    }

    /// The held-back text, at the end of generation (empty once a stop string completed).
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sampling at temperature 1, which these tests vary from.
    fn params(f: impl FnOnce(&mut SamplingParams)) -> SamplingParams {
        let mut p = SamplingParams {
            temperature: 1.0,
            ..SamplingParams::default()
        };
        f(&mut p);
        p
    }

    fn seeded(seed: u64, f: impl FnOnce(&mut SamplingParams)) -> Sampler {
        Sampler::new(&params(|p| {
            p.seed = Some(seed);
            f(p)
        }))
    }

    /// Deterministic pseudo-random logits in [-scale, scale).
    fn random_logits(rng: &mut Rng, n: usize, scale: f32) -> Vec<f32> {
        (0..n)
            .map(|_| (rng.next_f64() as f32 * 2.0 - 1.0) * scale)
            .collect()
    }

    fn full_sort(values: &[f32]) -> Vec<(u32, f32)> {
        let mut all: Vec<(u32, f32)> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| (i as u32, v))
            .collect();
        all.sort_by(|a, b| b.1.partial_cmp(&a.1).unwrap().then(a.0.cmp(&b.0)));
        all
    }

    fn chi_square(counts: &[usize], probs: &[f64]) -> f64 {
        let n: usize = counts.iter().sum();
        counts
            .iter()
            .zip(probs)
            .map(|(&c, &p)| {
                let e = n as f64 * p;
                (c as f64 - e).powi(2) / e
            })
            .sum()
    }

    fn counts(s: &mut Sampler, logits: &[f32], draws: usize) -> Vec<usize> {
        let mut c = vec![0usize; logits.len()];
        for _ in 0..draws {
            c[s.sample(logits, &[], 0) as usize] += 1;
        }
        c
    }

    // ---- parameters ----

    #[test]
    fn defaults_are_valid_and_as_documented() {
        let p = SamplingParams::default();
        assert_eq!(p.temperature, 0.0);
        assert!(p.is_greedy());
        // Greedy picks the argmax whatever the seed (none here).
        assert_eq!(Sampler::new(&p).sample(&[0.1, 2.5, -1.0, 2.4], &[], 0), 1);
        assert_eq!(p.top_k, 0);
        assert_eq!(p.top_p, 1.0);
        assert_eq!(p.min_p, 0.0);
        assert_eq!(p.repetition_penalty, 1.0);
        assert_eq!(p.max_tokens, 256);
        assert!(p.seed.is_none() && p.stop.is_empty() && !p.logprobs && p.top_logprobs == 0);
        p.validate(10).unwrap();
        assert!(!params(|_| {}).is_greedy());
        let g = SamplingParams::greedy();
        assert_eq!(g.temperature, 0.0);
        assert!(g.is_greedy());
        g.validate(10).unwrap();
        assert!(params(|p| p.top_k = 1).is_greedy());
    }

    #[test]
    fn validate_names_each_field_and_its_range() {
        let vocab = 100;
        let fails = |f: fn(&mut SamplingParams), field: &str, range: &str| match params(f)
            .validate(vocab)
        {
            Err(Error::InvalidSampling { param, message }) => {
                assert_eq!(param, field, "{message}");
                assert!(
                    message.contains(range),
                    "{field}: `{message}` lacks `{range}`"
                );
                let shown = Error::InvalidSampling { param, message }.to_string();
                assert!(shown.contains(field), "{shown}");
            }
            other => panic!("{field}: expected InvalidSampling, got {other:?}"),
        };
        fails(|p| p.temperature = -0.1, "temperature", "≥ 0");
        fails(|p| p.temperature = f32::NAN, "temperature", "≥ 0");
        fails(|p| p.temperature = f32::INFINITY, "temperature", "≥ 0");
        fails(|p| p.top_p = 0.0, "top_p", "(0, 1]");
        fails(|p| p.top_p = 1.01, "top_p", "(0, 1]");
        fails(|p| p.top_p = f32::NAN, "top_p", "(0, 1]");
        fails(|p| p.min_p = -0.01, "min_p", "[0, 1]");
        fails(|p| p.min_p = 1.5, "min_p", "[0, 1]");
        fails(|p| p.min_p = f32::NAN, "min_p", "[0, 1]");
        fails(|p| p.repetition_penalty = 0.0, "repetition_penalty", "> 0");
        fails(|p| p.repetition_penalty = -1.0, "repetition_penalty", "> 0");
        fails(
            |p| p.repetition_penalty = f32::NAN,
            "repetition_penalty",
            "> 0",
        );
        fails(|p| p.presence_penalty = 2.5, "presence_penalty", "[-2, 2]");
        fails(
            |p| p.presence_penalty = f32::NAN,
            "presence_penalty",
            "[-2, 2]",
        );
        fails(
            |p| p.frequency_penalty = -2.01,
            "frequency_penalty",
            "[-2, 2]",
        );
        fails(
            |p| p.logit_bias = vec![(100, 1.0)],
            "logit_bias",
            "[0, 100)",
        );
        fails(
            |p| p.logit_bias = vec![(5, 100.5)],
            "logit_bias",
            "[-100, 100]",
        );
        fails(
            |p| p.logit_bias = vec![(5, f32::NAN)],
            "logit_bias",
            "[-100, 100]",
        );
        fails(|p| p.max_tokens = 0, "max_tokens", "≥ 1");
        fails(|p| p.top_logprobs = 101, "top_logprobs", "[0, 100]");
        fails(
            |p| p.stop = vec!["ok".into(), String::new()],
            "stop",
            "empty",
        );

        // Range edges are allowed.
        let edges = params(|p| {
            p.temperature = 0.0;
            p.top_p = 1.0;
            p.min_p = 1.0;
            p.repetition_penalty = 1e-3;
            p.presence_penalty = -2.0;
            p.frequency_penalty = 2.0;
            p.logit_bias = vec![(0, -100.0), (99, 100.0)];
            p.max_tokens = 1;
            p.top_logprobs = 100;
            p.stop = vec!["x".into()];
        });
        edges.validate(vocab).unwrap();
        // No cap on top_logprobs beyond the vocabulary.
        params(|p| p.top_logprobs = 50_000)
            .validate(50_000)
            .unwrap();
    }

    // ---- RNG ----

    #[test]
    fn rng_matches_reference_splitmix64_and_xoshiro256starstar() {
        // SplitMix64 from 0: the published reference outputs.
        let mut z = 0u64;
        let sm: Vec<u64> = (0..4).map(|_| splitmix64(&mut z)).collect();
        assert_eq!(
            sm,
            [
                0xe220a8397b1dcdaf,
                0x6e789e6aa1b965f4,
                0x06c45d188009454f,
                0xf88bb8a8724c81ec
            ]
        );
        // xoshiro256** from that state, checked against an independent implementation.
        let mut r = Rng::new(0);
        let out: Vec<u64> = (0..4).map(|_| r.next_u64()).collect();
        assert_eq!(
            out,
            [
                0x99ec5f36cb75f2b4,
                0xbf6e1f784956452a,
                0x1a5f849d4933e6e0,
                0x6aa594f1262d2d2c
            ]
        );
        let mut r = Rng::new(42);
        assert_eq!(r.next_u64(), 0x15780b2e0c2ec716);
        assert_eq!(r.next_u64(), 0x6104d9866d113a7e);
        let mut r = Rng::new(7);
        for _ in 0..10_000 {
            let u = r.next_f64();
            assert!((0.0..1.0).contains(&u));
        }
    }

    // ---- greedy ----

    #[test]
    fn greedy_takes_the_lowest_id_on_exact_ties() {
        let mut g = Sampler::new(&SamplingParams::greedy());
        assert_eq!(g.sample(&[0.5, 2.0, 2.0, 1.0], &[], 0), 1);
        assert_eq!(g.sample(&[3.0, 3.0, 3.0], &[], 0), 0);
        assert_eq!(g.sample(&[-0.0, 0.0], &[], 0), 0);
        assert_eq!(g.sample(&[f32::NAN, 1.0, f32::NAN, 1.0], &[], 0), 1);
        assert_eq!(g.sample(&[f32::NEG_INFINITY; 3], &[], 0), 0);
        assert_eq!(argmax(&[1.0, 5.0, 5.0]), 1);
        // Same through the penalty path: the bias makes ids 2 and 3 tie.
        let mut g = Sampler::new(&SamplingParams {
            logit_bias: vec![(3, 1.0)],
            ..SamplingParams::greedy()
        });
        assert_eq!(g.sample(&[0.0, 1.0, 2.0, 1.0], &[], 0), 2);
    }

    #[test]
    fn top_k_1_equals_greedy() {
        let mut rng = Rng::new(99);
        let mut g = Sampler::new(&SamplingParams::greedy());
        for seed in 0..200 {
            let mut s = seeded(seed, |p| {
                p.top_k = 1;
                p.temperature = 1.5;
            });
            let mut logits = random_logits(&mut rng, 64, 4.0);
            if seed % 3 == 0 {
                // Force an exact tie at the top.
                let m = argmax(&logits) as usize;
                logits[(m + 7) % 64] = logits[m];
            }
            assert_eq!(s.sample(&logits, &[], 0), g.sample(&logits, &[], 0));
        }
    }

    #[test]
    fn greedy_and_top_k_1_use_the_penalized_logits() {
        let logits = [1.0, 3.0, 2.0];
        for p in [
            SamplingParams {
                repetition_penalty: 2.0,
                ..SamplingParams::greedy()
            },
            params(|p| {
                p.top_k = 1;
                p.repetition_penalty = 2.0;
                p.seed = Some(1);
            }),
        ] {
            let mut s = Sampler::new(&p);
            assert_eq!(s.sample(&logits, &[], 0), 1);
            // 3 / 2 = 1.5 < 2.
            assert_eq!(s.sample(&logits, &[1], 1), 2);
        }
    }

    // ---- seeded sampling ----

    #[test]
    fn seeds_reproduce_and_different_seeds_differ() {
        let mut rng = Rng::new(5);
        let steps: Vec<Vec<f32>> = (0..300).map(|_| random_logits(&mut rng, 40, 2.0)).collect();
        let run = |seed: u64, f: fn(&mut SamplingParams)| {
            let mut s = seeded(seed, f);
            let mut ctx = vec![1u32, 2, 3];
            for l in &steps {
                let t = s.sample(l, &ctx, 3);
                ctx.push(t);
            }
            ctx
        };
        let configs: [fn(&mut SamplingParams); 4] = [
            |_| {},
            |p| {
                p.temperature = 0.7;
                p.top_k = 10;
                p.top_p = 0.9;
            },
            |p| {
                p.min_p = 0.1;
                p.repetition_penalty = 1.3;
                p.presence_penalty = 0.5;
                p.frequency_penalty = 0.3;
            },
            |p| p.logit_bias = vec![(0, 2.0), (1, -100.0)],
        ];
        for f in configs {
            let a = run(7, f);
            assert_eq!(a, run(7, f));
            for other in [8, 9, 1 << 40] {
                let b = run(other, f);
                let same = a.iter().zip(&b).filter(|(x, y)| x == y).count();
                assert!(same < a.len() * 3 / 4, "seed 7 vs {other}: {same} equal");
            }
        }
    }

    #[test]
    fn a_seeded_sampler_depends_only_on_its_own_inputs() {
        let logits = [0.1f32, 0.4, 0.2, 0.3, -0.5, 1.0];
        let mut alone = seeded(3, |_| {});
        let a: Vec<u32> = (0..200).map(|_| alone.sample(&logits, &[], 0)).collect();
        // Interleaved with another sampler, and with unseeded ones created meanwhile.
        let mut s = seeded(3, |_| {});
        let mut other = seeded(3, |_| {});
        let mut b = vec![];
        for i in 0..200 {
            other.sample(&[5.0, 1.0, 2.0], &[0, 1], 1);
            let _ = Sampler::new(&params(|_| {})).sample(&logits, &[], 0);
            if i % 2 == 0 {
                let _ = seeded(i, |_| {}).sample(&logits, &[], 0);
            }
            b.push(s.sample(&logits, &[], 0));
        }
        assert_eq!(a, b);
    }

    #[test]
    fn unseeded_samplers_differ() {
        let logits = vec![0.0f32; 1000];
        let draw = || {
            let mut s = Sampler::new(&params(|_| {}));
            (0..20)
                .map(|_| s.sample(&logits, &[], 0))
                .collect::<Vec<_>>()
        };
        assert_ne!(draw(), draw());
    }

    #[test]
    fn frequencies_match_the_distribution() {
        // Chi-square with 3 degrees of freedom: 16.27 is the 0.1% critical value.
        let probs = [0.1f64, 0.2, 0.3, 0.4];
        let logits: Vec<f32> = probs.iter().map(|p| (p.ln() + 3.0) as f32).collect();
        for seed in [11, 12, 13] {
            let c = counts(&mut seeded(seed, |_| {}), &logits, 20_000);
            let chi2 = chi_square(&c, &probs);
            assert!(chi2 < 16.27, "seed {seed}: chi2 {chi2}, counts {c:?}");
        }
        // Temperature 0.5 squares the probabilities.
        let z: f64 = probs.iter().map(|p| p * p).sum();
        let sq: Vec<f64> = probs.iter().map(|p| p * p / z).collect();
        let c = counts(&mut seeded(21, |p| p.temperature = 0.5), &logits, 20_000);
        let chi2 = chi_square(&c, &sq);
        assert!(chi2 < 16.27, "T=0.5: chi2 {chi2}, counts {c:?}");
        // Top-k 2 renormalizes over the two best (df 1: 10.83 at 0.1%).
        let c = counts(&mut seeded(22, |p| p.top_k = 2), &logits, 20_000);
        assert_eq!(c[0] + c[1], 0);
        let chi2 = chi_square(&c[2..], &[3.0 / 7.0, 4.0 / 7.0]);
        assert!(chi2 < 10.83, "top_k 2: chi2 {chi2}, counts {c:?}");
    }

    #[test]
    fn top_p_min_p_and_top_k_never_sample_the_tail() {
        // Probabilities 0.5, 0.3, 0.15, 0.05.
        let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let draws = 5000;
        // Top-p 0.75: {0, 1} reaches 0.8.
        let c = counts(&mut seeded(1, |p| p.top_p = 0.75), &logits, draws);
        assert!(c[2] == 0 && c[3] == 0 && c[0] > 0 && c[1] > 0, "{c:?}");
        // Top-p 0.5: the first token alone reaches it.
        let c = counts(&mut seeded(1, |p| p.top_p = 0.5), &logits, draws);
        assert_eq!(c[0], draws, "{c:?}");
        // Min-p 0.25: floor 0.125, so 0.05 goes and 0.15 stays.
        let c = counts(&mut seeded(1, |p| p.min_p = 0.25), &logits, draws);
        assert!(c[3] == 0 && c[2] > 0, "{c:?}");
        // Min-p 0.7: only the best.
        let c = counts(&mut seeded(1, |p| p.min_p = 0.7), &logits, draws);
        assert_eq!(c[0], draws, "{c:?}");
        // Min-p 1 keeps exact ties with the best.
        let c = counts(&mut seeded(1, |p| p.min_p = 1.0), &[2.0, 1.0, 2.0], draws);
        assert!(c[1] == 0 && c[0] > 0 && c[2] > 0, "{c:?}");
        // Top-k 2, then top-p 0.6 over the renormalized pair (0.625, 0.375): only the best.
        let c = counts(
            &mut seeded(1, |p| {
                p.top_k = 2;
                p.top_p = 0.6;
            }),
            &logits,
            draws,
        );
        assert_eq!(c[0], draws, "{c:?}");
        // Temperature is applied before the cut: at T=2 the probabilities flatten to about
        // 0.37, 0.29, 0.20, 0.12, so top-p 0.75 keeps three.
        let c = counts(
            &mut seeded(1, |p| {
                p.top_p = 0.75;
                p.temperature = 2.0;
            }),
            &logits,
            draws,
        );
        assert!(c[3] == 0 && c[2] > 0, "{c:?}");
    }

    /// Reference top-p/min-p sampler: a full sort, then the same draw.
    fn reference_draw(logits: &[f32], t: f32, top_p: f32, min_p: f32, rng: &mut Rng) -> u32 {
        let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut w: Vec<(u32, f32)> = logits
            .iter()
            .enumerate()
            .map(|(i, &l)| {
                (
                    i as u32,
                    if l == max {
                        1.0
                    } else {
                        ((l - max) * (1.0 / t)).exp()
                    },
                )
            })
            .collect();
        let total: f64 = w.iter().map(|c| c.1 as f64).sum();
        w.sort_by(desc_then_id);
        let mut acc = 0f64;
        let keep = w
            .iter()
            .position(|c| {
                acc += c.1 as f64;
                acc >= top_p as f64 * total
            })
            .map_or(w.len(), |i| i + 1);
        let kept: Vec<(u32, f32)> = w[..keep]
            .iter()
            .map(|&(i, x)| (i, if x < min_p { 0.0 } else { x }))
            .collect();
        let sum: f64 = kept.iter().map(|c| c.1 as f64).sum();
        let mut u = rng.next_f64() * sum;
        let mut last = kept[0].0;
        for &(i, x) in &kept {
            if x > 0.0 {
                last = i;
                u -= x as f64;
                if u < 0.0 {
                    return i;
                }
            }
        }
        last
    }

    #[test]
    fn lazy_top_p_equals_a_full_sort() {
        let mut gen = Rng::new(41);
        // Flat and peaked distributions, so the head grows several times or not at all.
        for (vocab, scale, top_p, min_p, t) in [
            (5000, 0.5, 0.95, 0.0, 1.0),
            (5000, 8.0, 0.9, 0.0, 0.8),
            (3000, 2.0, 0.99, 0.3, 1.3),
            (100, 1.0, 0.5, 0.0, 1.0),
            (64, 1.0, 0.7, 0.0, 1.0),
            (65, 1.0, 0.999, 0.0, 1.0),
        ] {
            let mut s = seeded(77, |p| {
                p.top_p = top_p;
                p.min_p = min_p;
                p.temperature = t;
            });
            let mut r = Rng::new(77);
            for _ in 0..100 {
                let l = random_logits(&mut gen, vocab, scale);
                assert_eq!(
                    s.sample(&l, &[], 0),
                    reference_draw(&l, t, top_p, min_p, &mut r),
                    "vocab {vocab} scale {scale} top_p {top_p}"
                );
            }
        }
    }

    #[test]
    fn masked_tokens_are_never_sampled() {
        let logits = [0.0f32, f32::NEG_INFINITY, 0.0, f32::NAN, 0.0];
        let mut s = seeded(4, |p| p.logit_bias = vec![(2, -100.0)]);
        let c = counts(&mut s, &logits, 5000);
        assert!(
            c[1] == 0 && c[3] == 0 && c[2] == 0 && c[0] > 0 && c[4] > 0,
            "{c:?}"
        );
        // A +100 bias wins practically always.
        let mut s = seeded(4, |p| p.logit_bias = vec![(3, 100.0)]);
        assert!((0..1000).all(|_| s.sample(&[1.0, 2.0, 3.0, 0.0], &[], 0) == 3));
        // All masked: the lowest id.
        let mut s = seeded(4, |p| p.top_p = 0.9);
        assert_eq!(s.sample(&[f32::NEG_INFINITY; 4], &[], 0), 0);
        // A tiny temperature is greedy in effect, without NaN.
        let mut s = seeded(4, |p| p.temperature = 1e-30);
        assert!((0..100).all(|_| s.sample(&[1.0, 1.5, 1.4999], &[], 0) == 1));
    }

    #[test]
    fn scratch_is_allocated_once_and_reused() {
        let mut rng = Rng::new(8);
        let mut s = seeded(2, |p| {
            p.top_k = 50;
            p.top_p = 0.9;
            p.repetition_penalty = 1.2;
        });
        let logits = random_logits(&mut rng, 4096, 3.0);
        let ctx: Vec<u32> = (0..64).collect();
        s.sample(&logits, &ctx, 32);
        let (ptr, cap) = (s.scratch.as_ptr(), s.scratch.capacity());
        let ids_ptr = s.ids.as_ptr();
        for _ in 0..50 {
            let l = random_logits(&mut rng, 4096, 3.0);
            s.sample(&l, &ctx, 32);
        }
        assert_eq!((s.scratch.as_ptr(), s.scratch.capacity()), (ptr, cap));
        assert_eq!(s.ids.as_ptr(), ids_ptr);
    }

    // ---- penalties ----

    #[test]
    fn penalties_change_logits_exactly_as_specified() {
        let p = params(|p| {
            p.repetition_penalty = 2.0;
            p.presence_penalty = 0.5;
            p.frequency_penalty = 0.25;
            p.logit_bias = vec![(3, 1.0), (5, -0.5)];
        });
        let mut l = vec![2.0, -2.0, 1.0, 0.0, 4.0, 3.0, 0.0];
        // Prompt [0, 1, 1, 9]; generated [2, 2, 4]. Id 9 is outside the vocabulary.
        apply_penalties(&p, &mut l, &[0, 1, 1, 9, 2, 2, 4], 4);
        assert_eq!(
            l,
            vec![
                1.0,                      // prompt, positive: 2 / 2
                -4.0,                     // prompt twice, negative: -2 · 2, once
                0.5 - (0.25 * 2.0 + 0.5), // generated twice: 1 / 2 − 2·freq − presence
                1.0,                      // bias only: 0 + 1
                2.0 - (0.25 + 0.5),       // generated once: 4 / 2 − freq − presence
                2.5,                      // bias only: 3 − 0.5
                0.0,                      // untouched
            ]
        );

        // Bias is applied before the repetition penalty, which sees the biased sign.
        let p = params(|p| {
            p.repetition_penalty = 4.0;
            p.logit_bias = vec![(0, 2.0)];
        });
        let mut l = vec![-1.0];
        apply_penalties(&p, &mut l, &[0], 1);
        assert_eq!(l, vec![0.25]);

        // Zero is multiplied (stays zero); a penalty below 1 raises repeated tokens.
        let p = params(|p| p.repetition_penalty = 0.5);
        let mut l = vec![0.0, 3.0, -3.0];
        apply_penalties(&p, &mut l, &[0, 1, 2], 3);
        assert_eq!(l, vec![0.0, 6.0, -1.5]);

        // Presence/frequency ignore the prompt; negative values reward repeats.
        let p = params(|p| {
            p.presence_penalty = -1.0;
            p.frequency_penalty = -0.5;
        });
        let mut l = vec![0.0, 0.0, 0.0];
        apply_penalties(&p, &mut l, &[0, 0, 1, 2, 2, 2], 3);
        assert_eq!(l, vec![0.0, 0.0, 2.5]);

        // n_prompt past the context means nothing was generated.
        let p = params(|p| p.frequency_penalty = 1.0);
        let mut l = vec![1.0, 1.0];
        apply_penalties(&p, &mut l, &[0, 1], 10);
        assert_eq!(l, vec![1.0, 1.0]);

        // Defaults change nothing.
        let mut l = vec![1.0, -1.0, 0.0];
        apply_penalties(&SamplingParams::default(), &mut l, &[0, 1, 2, 2], 1);
        assert_eq!(l, vec![1.0, -1.0, 0.0]);
    }

    #[test]
    fn the_sampler_applies_the_same_penalties() {
        // With a frequency penalty, greedy over the sampler equals argmax of apply_penalties.
        let mut rng = Rng::new(31);
        let p = SamplingParams {
            repetition_penalty: 1.7,
            presence_penalty: 0.4,
            frequency_penalty: 0.9,
            logit_bias: vec![(3, 0.75)],
            ..SamplingParams::greedy()
        };
        let mut s = Sampler::new(&p);
        let mut ctx = vec![0u32, 1, 2];
        for _ in 0..100 {
            let raw = random_logits(&mut rng, 16, 2.0);
            let mut l = raw.clone();
            apply_penalties(&p, &mut l, &ctx, 3);
            let t = s.sample(&raw, &ctx, 3);
            assert_eq!(t, argmax(&l));
            ctx.push(t);
        }
    }

    // ---- log_softmax / top_k_entries ----

    #[test]
    fn log_softmax_matches_f64_and_normalizes() {
        let mut rng = Rng::new(17);
        for (n, scale, offset) in [
            (5, 3.0, 0.0),
            (1000, 10.0, 0.0),
            (32000, 8.0, 50.0),
            (3, 1.0, -80.0),
        ] {
            let l: Vec<f32> = random_logits(&mut rng, n, scale)
                .into_iter()
                .map(|x| x + offset)
                .collect();
            let lp = log_softmax(&l);
            let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
            for (&a, &x) in lp.iter().zip(&l) {
                let want = x as f64 - z.ln();
                // 1e-6 absolute; relative past magnitude 1, where f32's own spacing exceeds it.
                let tol = 1e-6 * want.abs().max(1.0);
                assert!((a as f64 - want).abs() < tol, "{a} vs {want}");
            }
            let total: f64 = lp.iter().map(|&a| (a as f64).exp()).sum();
            assert!((total - 1.0).abs() < 1e-6, "n={n}: sum {total}");
            let mut into = vec![0f32; n];
            log_softmax_into(&l, &mut into);
            assert_eq!(into, lp);
        }
        // Large logits that would overflow a plain exp.
        let lp = log_softmax(&[1000.0, 1000.0]);
        assert!(lp
            .iter()
            .all(|&a| (a + std::f32::consts::LN_2).abs() < 1e-6));
        // -inf stays -inf.
        let lp = log_softmax(&[0.0, f32::NEG_INFINITY]);
        assert_eq!(lp, vec![0.0, f32::NEG_INFINITY]);
        assert!(log_softmax(&[]).is_empty());
    }

    #[test]
    #[should_panic(expected = "output length")]
    fn log_softmax_into_checks_the_length() {
        log_softmax_into(&[1.0, 2.0], &mut [0.0]);
    }

    #[test]
    fn top_k_entries_equals_a_full_sort() {
        let mut rng = Rng::new(23);
        for n in [1usize, 2, 7, 100, 1000] {
            // Values on a coarse grid so exact ties are common.
            let v: Vec<f32> = (0..n)
                .map(|_| (rng.next_f64() * 10.0).floor() as f32 - 5.0)
                .collect();
            let full = full_sort(&v);
            for k in [0, 1, 2, 3, n / 2, n.saturating_sub(1), n, n + 5] {
                let got = top_k_entries(&v, k);
                assert_eq!(got, full[..k.min(n)], "n={n} k={k}");
            }
        }
        assert_eq!(
            top_k_entries(&[1.0, 3.0, -2.0, 3.0, 0.5], 3),
            vec![(1, 3.0), (3, 3.0), (0, 1.0)]
        );
        assert!(top_k_entries(&[], 3).is_empty());
        // NaN ranks last.
        let got = top_k_entries(&[f32::NAN, 1.0, f32::NEG_INFINITY], 2);
        assert_eq!(got, vec![(1, 1.0), (2, f32::NEG_INFINITY)]);
    }

    // ---- StopMatcher ----

    fn stops(s: &[&str]) -> StopMatcher {
        StopMatcher::new(&s.iter().map(|s| s.to_string()).collect::<Vec<_>>())
    }

    /// Pushes the pieces; returns all emitted text (plus flush if never stopped) and the match.
    fn run(m: &mut StopMatcher, pieces: &[&str]) -> (String, Option<String>) {
        let mut out = String::new();
        for piece in pieces {
            let step = m.push(piece);
            out += &step.emit;
            if step.stopped {
                return (out, step.matched);
            }
        }
        out += &m.flush();
        (out, None)
    }

    #[test]
    fn stop_split_across_pushes() {
        let mut m = stops(&["bc"]);
        let s = m.push("ab");
        assert_eq!(
            s,
            StopStep {
                emit: "a".into(),
                stopped: false,
                matched: None
            }
        );
        let s = m.push("c");
        assert_eq!(
            s,
            StopStep {
                emit: String::new(),
                stopped: true,
                matched: Some("bc".into())
            }
        );
        assert!(m.is_stopped());
        // Afterwards nothing more comes out.
        assert_eq!(m.push("more"), StopStep::default());
        assert_eq!(m.flush(), "");

        // Text before the stop in the same push is emitted; text after it is dropped.
        let mut m = stops(&["STOP"]);
        assert_eq!(m.push("hello S").emit, "hello ");
        assert_eq!(m.push("T").emit, "");
        let s = m.push("OP and more");
        assert!(s.stopped && s.emit.is_empty());
        let mut m = stops(&["STOP"]);
        let s = m.push("one STOP two");
        assert_eq!((s.emit.as_str(), s.stopped), ("one ", true));
    }

    #[test]
    fn held_back_partial_is_released_when_it_fails_to_match() {
        let mut m = stops(&["xyz"]);
        assert_eq!(m.push("axy").emit, "a");
        assert_eq!(m.push("w").emit, "xyw");
        // A failed partial that restarts a match keeps only the new start.
        assert_eq!(m.push("xx").emit, "x");
        assert_eq!(m.push("y").emit, "");
        assert_eq!(m.push("x").emit, "xy");
        assert_eq!(m.flush(), "x");
        // Overlapping self-prefix: "aab" with stop "aaa" holds "aa" then releases all.
        let mut m = stops(&["aaa"]);
        assert_eq!(m.push("aa").emit, "");
        assert_eq!(m.push("b").emit, "aab");
        // No stops: everything passes straight through.
        let mut m = stops(&[]);
        assert_eq!(m.push("abc").emit, "abc");
        assert_eq!(m.flush(), "");
        // Empty stop strings are ignored.
        let mut m = stops(&[""]);
        assert_eq!(m.push("abc").emit, "abc");
    }

    #[test]
    fn multiple_stops() {
        let mut m = stops(&["xyz", "q"]);
        assert_eq!(m.push("axy").emit, "a");
        let s = m.push("q!");
        assert_eq!(
            s,
            StopStep {
                emit: "xy".into(),
                stopped: true,
                matched: Some("q".into())
            }
        );
        // The hold covers the longest possible partial among all stops.
        let mut m = stops(&["abcd", "cde"]);
        assert_eq!(m.push("zabc").emit, "z");
        let s = m.push("x");
        assert_eq!((s.emit.as_str(), s.stopped), ("abcx", false));
        // The stop that completes first wins, even if another started earlier.
        for pieces in [&["xabcd"][..], &["xab", "cd"], &["x", "a", "b", "c", "d"]] {
            assert_eq!(
                run(&mut stops(&["abcd", "bc"]), pieces),
                ("xa".to_string(), Some("bc".to_string()))
            );
        }
        // Completing on the same character, the longer one wins.
        assert_eq!(
            run(&mut stops(&["c", "abc"]), &["xab", "c"]),
            ("x".to_string(), Some("abc".to_string()))
        );
    }

    #[test]
    fn multibyte_characters() {
        let mut m = stops(&["日本"]);
        assert_eq!(m.push("語日").emit, "語");
        let s = m.push("本!");
        assert!(s.stopped && s.emit.is_empty() && s.matched.as_deref() == Some("日本"));

        // A stop whose first byte is shared with other characters: "é" and "è" share the lead
        // byte 0xC3, so a byte-level partial never splits a char.
        let mut m = stops(&["é!"]);
        assert_eq!(m.push("aè").emit, "aè");
        assert_eq!(m.push("é").emit, "");
        assert_eq!(m.push("é").emit, "é");
        let s = m.push("!x");
        assert_eq!((s.emit.as_str(), s.stopped), ("", true));

        let mut m = stops(&["🙂🙃"]);
        assert_eq!(m.push("ok 🙂").emit, "ok ");
        assert_eq!(m.push("🙂").emit, "🙂");
        assert_eq!(m.flush(), "🙂");
    }

    #[test]
    fn flush_returns_the_held_back_text() {
        let mut m = stops(&["</s>"]);
        assert_eq!(m.push("done</").emit, "done");
        assert_eq!(m.flush(), "</");
        assert_eq!(m.flush(), "");
        // The matcher keeps working after a flush.
        assert_eq!(m.push("x<").emit, "x");
        assert_eq!(m.flush(), "<");
    }

    #[test]
    fn output_does_not_depend_on_how_the_text_is_split() {
        let text = "αβ<e|nd> the end|> ok 日本語 STOP! tail";
        let cases: [&[&str]; 3] = [&["<|end|>", "STOP"], &["日本", "end|"], &["zzz", "語 S"]];
        let chars: Vec<&str> = text
            .char_indices()
            .map(|(i, c)| &text[i..i + c.len_utf8()])
            .collect();
        for stop_list in cases {
            let whole = run(&mut stops(stop_list), &[text]);
            let by_char = run(&mut stops(stop_list), &chars);
            assert_eq!(whole, by_char, "{stop_list:?}");
            // Every split into two pieces at a char boundary.
            for (i, _) in text.char_indices() {
                let split = run(&mut stops(stop_list), &[&text[..i], &text[i..]]);
                assert_eq!(whole, split, "{stop_list:?} split at {i}");
            }
            // Expected result from a plain search over the whole text.
            let first = stop_list
                .iter()
                .filter_map(|s| text.find(s).map(|i| (i + s.len(), i, *s)))
                .min();
            match first {
                Some((_, start, s)) => {
                    assert_eq!(whole, (text[..start].to_string(), Some(s.to_string())))
                }
                None => assert_eq!(whole, (text.to_string(), None)),
            }
        }
    }
}
