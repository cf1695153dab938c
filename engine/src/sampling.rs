//! Sampling: per-request parameters, a sampler with its own seeded RNG, logprob helpers and stop
//! strings matched across token boundaries.
//!
//! The RNG is a xoshiro256** stream seeded through SplitMix64, written here so that a seed gives
//! the same tokens across versions of any dependency.

use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct SamplingParams {
    /// 0 is greedy.
    pub temperature: f32,
    /// 0 is off.
    pub top_k: usize,
    /// In (0, 1].
    pub top_p: f32,
    /// In [0, 1]: drop tokens below `min_p · p_max`.
    pub min_p: f32,
    /// > 0; over prompt and generated tokens (a positive logit is divided, a negative multiplied).
    pub repetition_penalty: f32,
    /// In [-2, 2]; subtracted once from the logit of every token already generated.
    pub presence_penalty: f32,
    /// In [-2, 2]; subtracted per occurrence among the generated tokens.
    pub frequency_penalty: f32,
    /// Added to the logits; each bias in [-100, 100].
    pub logit_bias: Vec<(u32, f32)>,
    pub seed: Option<u64>,
    /// ≥ 1.
    pub max_tokens: usize,
    /// Stop strings (left out of the text).
    pub stop: Vec<String>,
    pub stop_token_ids: Vec<u32>,
    pub ignore_eos: bool,
    /// Return the chosen token's logprob.
    pub logprobs: bool,
    /// Alternatives per generated token (no cap).
    pub top_logprobs: usize,
}

impl Default for SamplingParams {
    fn default() -> Self {
        SamplingParams {
            temperature: 1.0,
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
    pub fn greedy() -> Self {
        SamplingParams {
            temperature: 0.0,
            ..Default::default()
        }
    }

    pub fn is_greedy(&self) -> bool {
        self.temperature == 0.0 || self.top_k == 1
    }

    /// Every field inside its range; `vocab_size` bounds token ids and `top_logprobs`.
    pub fn validate(&self, vocab_size: usize) -> Result<()> {
        if !(self.temperature >= 0.0) || !self.temperature.is_finite() {
            return invalid(
                "temperature",
                format!("{} is not a finite value ≥ 0", self.temperature),
            );
        }
        if !(self.top_p > 0.0 && self.top_p <= 1.0) {
            return invalid("top_p", format!("{} is outside (0, 1]", self.top_p));
        }
        if !(0.0..=1.0).contains(&self.min_p) {
            return invalid("min_p", format!("{} is outside [0, 1]", self.min_p));
        }
        if !(self.repetition_penalty > 0.0) || !self.repetition_penalty.is_finite() {
            return invalid(
                "repetition_penalty",
                format!("{} is not a finite value > 0", self.repetition_penalty),
            );
        }
        for (name, v) in [
            ("presence_penalty", self.presence_penalty),
            ("frequency_penalty", self.frequency_penalty),
        ] {
            if !(-2.0..=2.0).contains(&v) {
                return invalid(name, format!("{v} is outside [-2, 2]"));
            }
        }
        for &(id, b) in &self.logit_bias {
            if id as usize >= vocab_size {
                return invalid(
                    "logit_bias",
                    format!("token id {id} is outside the vocabulary (size {vocab_size})"),
                );
            }
            if !(-100.0..=100.0).contains(&b) {
                return invalid(
                    "logit_bias",
                    format!("bias {b} for token {id} is outside [-100, 100]"),
                );
            }
        }
        if self.max_tokens == 0 {
            return invalid("max_tokens", "must be at least 1".into());
        }
        if self.top_logprobs > vocab_size {
            return invalid(
                "top_logprobs",
                format!(
                    "{} is larger than the vocabulary ({vocab_size})",
                    self.top_logprobs
                ),
            );
        }
        if self.stop.iter().any(|s| s.is_empty()) {
            return invalid("stop", "a stop string is empty".into());
        }
        Ok(())
    }
}

/// xoshiro256** seeded by SplitMix64.
#[derive(Clone, Debug)]
struct Rng([u64; 4]);

impl Rng {
    fn new(seed: u64) -> Self {
        let mut z = seed;
        let mut next = || {
            z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut x = z;
            x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            x ^ (x >> 31)
        };
        Rng([next(), next(), next(), next()])
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

    /// Uniform in [0, 1).
    fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn entropy_seed() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Picks tokens for one request.
pub struct Sampler {
    params: SamplingParams,
    rng: Rng,
    /// Reused `[vocab]` buffer of adjusted logits.
    scratch: Vec<f32>,
    /// Reused candidate list `(id, weight)`.
    candidates: Vec<(u32, f32)>,
}

/// Applies logit bias, repetition penalty over `context`, and presence/frequency penalties over
/// the generated part (`context[n_prompt..]`), in place.
pub(crate) fn apply_penalties(
    p: &SamplingParams,
    logits: &mut [f32],
    context: &[u32],
    n_prompt: usize,
) {
    for &(id, b) in &p.logit_bias {
        if let Some(l) = logits.get_mut(id as usize) {
            *l += b;
        }
    }
    if p.repetition_penalty != 1.0 {
        let mut seen: Vec<u32> = context.to_vec();
        seen.sort_unstable();
        seen.dedup();
        for id in seen {
            if let Some(l) = logits.get_mut(id as usize) {
                *l = if *l > 0.0 {
                    *l / p.repetition_penalty
                } else {
                    *l * p.repetition_penalty
                };
            }
        }
    }
    if p.presence_penalty != 0.0 || p.frequency_penalty != 0.0 {
        let mut generated: Vec<u32> = context[n_prompt.min(context.len())..].to_vec();
        generated.sort_unstable();
        for run in generated.chunk_by(|a, b| a == b) {
            if let Some(l) = logits.get_mut(run[0] as usize) {
                *l -= p.presence_penalty + p.frequency_penalty * run.len() as f32;
            }
        }
    }
}

/// Index of the largest value; exact ties go to the lowest index.
pub fn argmax(v: &[f32]) -> u32 {
    let mut best = 0;
    for (i, &x) in v.iter().enumerate() {
        if x > v[best] {
            best = i;
        }
    }
    best as u32
}

impl Sampler {
    pub fn new(params: &SamplingParams) -> Self {
        Sampler {
            params: params.clone(),
            rng: Rng::new(params.seed.unwrap_or_else(entropy_seed)),
            scratch: vec![],
            candidates: vec![],
        }
    }

    /// The next token. `logits`: raw `[vocab]`; `context`: prompt + generated so far, of which the
    /// first `n_prompt` are the prompt.
    pub fn sample(&mut self, logits: &[f32], context: &[u32], n_prompt: usize) -> u32 {
        let p = &self.params;
        let needs_adjust = !p.logit_bias.is_empty()
            || p.repetition_penalty != 1.0
            || p.presence_penalty != 0.0
            || p.frequency_penalty != 0.0;
        let logits: &[f32] = if needs_adjust {
            self.scratch.clear();
            self.scratch.extend_from_slice(logits);
            apply_penalties(p, &mut self.scratch, context, n_prompt);
            &self.scratch
        } else {
            logits
        };
        if p.is_greedy() {
            return argmax(logits);
        }
        // Temperature, then top-k, top-p and min-p over the candidates, highest first.
        let inv_t = 1.0 / p.temperature;
        self.candidates.clear();
        if p.top_k > 0 && p.top_k < logits.len() {
            self.candidates.extend(top_k_entries(logits, p.top_k));
        } else {
            self.candidates
                .extend(logits.iter().enumerate().map(|(i, &l)| (i as u32, l)));
            self.candidates
                .sort_unstable_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        }
        let max = self.candidates[0].1;
        let mut total = 0f64;
        for c in self.candidates.iter_mut() {
            c.1 = (((c.1 - max) * inv_t) as f64).exp() as f32;
            total += c.1 as f64;
        }
        let mut keep = self.candidates.len();
        if p.top_p < 1.0 {
            let mut acc = 0f64;
            for (i, c) in self.candidates.iter().enumerate() {
                acc += c.1 as f64 / total;
                if acc >= p.top_p as f64 {
                    keep = i + 1;
                    break;
                }
            }
        }
        if p.min_p > 0.0 {
            let floor = p.min_p * self.candidates[0].1;
            keep = keep.min(
                self.candidates
                    .iter()
                    .take_while(|c| c.1 >= floor)
                    .count()
                    .max(1),
            );
        }
        let kept = &self.candidates[..keep];
        let sum: f64 = kept.iter().map(|c| c.1 as f64).sum();
        let mut u = self.rng.next_f64() * sum;
        for c in kept {
            u -= c.1 as f64;
            if u < 0.0 {
                return c.0;
            }
        }
        kept[kept.len() - 1].0
    }
}

/// `log_softmax` in f32 with a max-subtracted log-sum-exp accumulated in f64.
pub fn log_softmax(logits: &[f32]) -> Vec<f32> {
    let mut out = vec![0f32; logits.len()];
    log_softmax_into(logits, &mut out);
    out
}

pub fn log_softmax_into(logits: &[f32], out: &mut [f32]) {
    let m = logits.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
    let z: f64 = logits.iter().map(|&l| ((l - m) as f64).exp()).sum();
    let lse = m + z.ln() as f32;
    for (o, &l) in out.iter_mut().zip(logits) {
        *o = l - lse;
    }
}

/// The `k` largest `(id, value)`, descending; exact ties put the lower id first.
pub fn top_k_entries(values: &[f32], k: usize) -> Vec<(u32, f32)> {
    let k = k.min(values.len());
    if k == 0 {
        return vec![];
    }
    let order = |a: &(u32, f32), b: &(u32, f32)| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0));
    let mut all: Vec<(u32, f32)> = values
        .iter()
        .enumerate()
        .map(|(i, &v)| (i as u32, v))
        .collect();
    if k < all.len() {
        all.select_nth_unstable_by(k - 1, order);
        all.truncate(k);
    }
    all.sort_unstable_by(order);
    all
}

/// What a [`StopMatcher`] releases for one push.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StopStep {
    /// Text that can be shown now.
    pub emit: String,
    /// A stop string completed: the text before it was emitted and the rest dropped.
    pub stopped: bool,
    pub matched: Option<String>,
}

/// Matches stop strings over text that arrives in pieces, holding back only what could still be
/// the start of a stop string.
#[derive(Clone, Debug, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    pending: String,
    done: bool,
}

impl StopMatcher {
    pub fn new(stops: &[String]) -> Self {
        StopMatcher {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            pending: String::new(),
            done: false,
        }
    }

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
        // The earliest complete stop string wins.
        if let Some((at, s)) = self
            .stops
            .iter()
            .filter_map(|s| self.pending.find(s.as_str()).map(|i| (i, s)))
            .min_by_key(|(i, _)| *i)
        {
            let emit = self.pending[..at].to_string();
            let matched = s.clone();
            self.pending.clear();
            self.done = true;
            return StopStep {
                emit,
                stopped: true,
                matched: Some(matched),
            };
        }
        // Hold back the longest suffix that is a proper prefix of some stop string.
        let mut hold = 0;
        for s in &self.stops {
            for (i, _) in self.pending.char_indices() {
                let suffix = &self.pending[i..];
                if suffix.len() < s.len() && s.starts_with(suffix) {
                    hold = hold.max(suffix.len());
                    break;
                }
            }
        }
        let cut = self.pending.len() - hold;
        let emit = self.pending[..cut].to_string();
        self.pending.drain(..cut);
        StopStep {
            emit,
            ..Default::default()
        }
    }

    /// The held-back text, at the end of generation.
    pub fn flush(&mut self) -> String {
        std::mem::take(&mut self.pending)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let bad = |p: SamplingParams| match p.validate(100) {
            Err(Error::InvalidSampling { param, .. }) => param,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            bad(SamplingParams {
                temperature: -0.1,
                ..Default::default()
            }),
            "temperature"
        );
        assert_eq!(
            bad(SamplingParams {
                temperature: f32::NAN,
                ..Default::default()
            }),
            "temperature"
        );
        assert_eq!(
            bad(SamplingParams {
                top_p: 0.0,
                ..Default::default()
            }),
            "top_p"
        );
        assert_eq!(
            bad(SamplingParams {
                top_p: 1.01,
                ..Default::default()
            }),
            "top_p"
        );
        assert_eq!(
            bad(SamplingParams {
                min_p: 2.0,
                ..Default::default()
            }),
            "min_p"
        );
        assert_eq!(
            bad(SamplingParams {
                repetition_penalty: 0.0,
                ..Default::default()
            }),
            "repetition_penalty"
        );
        assert_eq!(
            bad(SamplingParams {
                presence_penalty: 3.0,
                ..Default::default()
            }),
            "presence_penalty"
        );
        assert_eq!(
            bad(SamplingParams {
                frequency_penalty: -2.5,
                ..Default::default()
            }),
            "frequency_penalty"
        );
        assert_eq!(
            bad(SamplingParams {
                logit_bias: vec![(100, 1.0)],
                ..Default::default()
            }),
            "logit_bias"
        );
        assert_eq!(
            bad(SamplingParams {
                max_tokens: 0,
                ..Default::default()
            }),
            "max_tokens"
        );
        assert_eq!(
            bad(SamplingParams {
                top_logprobs: 101,
                ..Default::default()
            }),
            "top_logprobs"
        );
        assert_eq!(
            bad(SamplingParams {
                stop: vec!["".into()],
                ..Default::default()
            }),
            "stop"
        );
        SamplingParams::default().validate(100).unwrap();
    }

    #[test]
    fn greedy_takes_the_lowest_id_on_ties_and_top_k_1_is_greedy() {
        let logits = [0.5, 2.0, 2.0, 1.0];
        assert_eq!(
            Sampler::new(&SamplingParams::greedy()).sample(&logits, &[], 0),
            1
        );
        let p = SamplingParams {
            top_k: 1,
            seed: Some(3),
            ..Default::default()
        };
        assert_eq!(Sampler::new(&p).sample(&logits, &[], 0), 1);
    }

    #[test]
    fn seeds_reproduce_and_differ() {
        let logits: Vec<f32> = (0..50).map(|i| (i % 7) as f32 * 0.3).collect();
        let draw = |seed| {
            let mut s = Sampler::new(&SamplingParams {
                seed: Some(seed),
                ..Default::default()
            });
            (0..40)
                .map(|_| s.sample(&logits, &[], 0))
                .collect::<Vec<_>>()
        };
        assert_eq!(draw(5), draw(5));
        assert_ne!(draw(5), draw(6));
    }

    #[test]
    fn frequencies_follow_the_distribution() {
        let probs = [0.1f32, 0.2, 0.3, 0.4];
        let logits: Vec<f32> = probs.iter().map(|p| p.ln()).collect();
        let mut s = Sampler::new(&SamplingParams {
            seed: Some(11),
            ..Default::default()
        });
        let n = 20000;
        let mut counts = [0usize; 4];
        for _ in 0..n {
            counts[s.sample(&logits, &[], 0) as usize] += 1;
        }
        // Chi-square with 3 degrees of freedom; 16.3 is the 0.1% critical value.
        let chi2: f64 = counts
            .iter()
            .zip(probs)
            .map(|(&c, p)| {
                let e = n as f64 * p as f64;
                (c as f64 - e).powi(2) / e
            })
            .sum();
        assert!(chi2 < 16.3, "chi2 {chi2}, counts {counts:?}");
    }

    #[test]
    fn top_p_and_min_p_cut_the_tail() {
        let logits: Vec<f32> = [0.5f32, 0.3, 0.15, 0.05].iter().map(|p| p.ln()).collect();
        let mut s = Sampler::new(&SamplingParams {
            top_p: 0.75,
            seed: Some(1),
            ..Default::default()
        });
        assert!((0..2000).all(|_| s.sample(&logits, &[], 0) < 2));
        let mut s = Sampler::new(&SamplingParams {
            min_p: 0.25,
            seed: Some(1),
            ..Default::default()
        });
        assert!((0..2000).all(|_| s.sample(&logits, &[], 0) < 3));
        let mut s = Sampler::new(&SamplingParams {
            top_k: 2,
            seed: Some(1),
            ..Default::default()
        });
        assert!((0..2000).all(|_| s.sample(&logits, &[], 0) < 2));
    }

    #[test]
    fn penalties_change_logits_as_specified() {
        let p = SamplingParams {
            repetition_penalty: 2.0,
            presence_penalty: 0.5,
            frequency_penalty: 0.25,
            logit_bias: vec![(3, 1.0)],
            ..Default::default()
        };
        let mut l = vec![2.0, -2.0, 1.0, 0.0];
        // Prompt [0, 1]; generated [2, 2].
        apply_penalties(&p, &mut l, &[0, 1, 2, 2], 2);
        assert_eq!(l, vec![1.0, -4.0, 0.5 - 0.5 - 0.5, 1.0]);
    }

    #[test]
    fn log_softmax_and_top_k() {
        let l = [1.0f32, 3.0, -2.0, 3.0, 0.5];
        let lp = log_softmax(&l);
        let z: f64 = l.iter().map(|&x| (x as f64).exp()).sum();
        for (a, &b) in lp.iter().zip(&l) {
            assert!((*a as f64 - (b as f64 - z.ln())).abs() < 1e-6);
        }
        assert_eq!(top_k_entries(&l, 3), vec![(1, 3.0), (3, 3.0), (0, 1.0)]);
        let mut full: Vec<(u32, f32)> = l.iter().enumerate().map(|(i, &v)| (i as u32, v)).collect();
        full.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        assert_eq!(top_k_entries(&l, 10), full);
    }

    #[test]
    fn stop_strings_across_pushes() {
        let mut m = StopMatcher::new(&["bc".into()]);
        assert_eq!(m.push("ab").emit, "a");
        let s = m.push("cd");
        assert!(s.stopped && s.emit.is_empty() && s.matched.as_deref() == Some("bc"));
        let mut m = StopMatcher::new(&["xyz".into(), "q".into()]);
        assert_eq!(m.push("axy").emit, "a");
        assert_eq!(m.push("w").emit, "xyw");
        assert_eq!(m.push("éx").emit, "é");
        assert_eq!(m.flush(), "x");
        let mut m = StopMatcher::new(&["日本".into()]);
        assert_eq!(m.push("語日").emit, "語");
        let s = m.push("本!");
        assert!(s.stopped);
    }
}
