//! Active learning: the student scores an unlabelled pool, the most uncertain items go to the
//! teacher (the annotator), and the teacher's labels join the student's in-context pool.
//!
//! Acquisition (higher uncertainty is queried first):
//! - `least_confidence`: `1 − max_y p(y|x)` over the label set; for open answers `1 − P(greedy
//!   answer)`.
//! - `margin`: `p₁ − p₂`, smallest first; over the label set, or for open answers the smallest
//!   top-1 − top-2 margin of the full next-token distribution over the answer's steps.
//! - `entropy`: `−Σ p ln p` over the label set; for open answers the mean full-distribution
//!   token entropy of the greedy answer.
//! - `nll`: the greedy answer's sequence NLL `−Σ log p`.
//! - `committee`: vote entropy of the answers of a committee (the greedy student, members that
//!   sample at temperature 0.7 with their own seeds over shuffled examples, and any extra models).
//! - `gate`: the mean entropy of the router's softmax over experts on the question's tokens, an
//!   MoE-only signal.
//! - `random`: a seeded random order.
//!
//! Each round every strategy queries `batch` items; the student is evaluated on the held-out set
//! before the first query and after every round, with up to `shots` labelled examples of the
//! question's topic in context. Output: `curves.jsonl` (one line per strategy and round),
//! `queries.jsonl` (what each strategy asked and the label it got), `state.json` (the strategies
//! finished, for `--resume`), `manifest.json`.

use super::client::ModelClient;
use super::learner::{
    self, entropy, gate_entropy, label_probs, messages, messages_in, ContextFormat, PrefillStats,
    Student,
};
use super::progress::Progress;
use super::self_instruct::LoopRng;
use super::tasks::{self, answer_key, Task};
use crate::backend::Backend;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::generate::{GenerateRequest, Prompt};
use crate::sampling::SamplingParams;
use crate::tokenizer::ChatMessage;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;

pub const STRATEGIES: [&str; 7] = [
    "random",
    "least_confidence",
    "margin",
    "entropy",
    "nll",
    "committee",
    "gate",
];

/// `1 − max p`.
pub fn least_confidence(p: &[f64]) -> f64 {
    1.0 - p.iter().cloned().fold(0.0, f64::max)
}

/// `p₁ − p₂` (the two largest; `p₁` alone for one class).
pub fn margin(p: &[f64]) -> f64 {
    let mut v = p.to_vec();
    v.sort_by(|a, b| b.total_cmp(a));
    v.first().copied().unwrap_or(0.0) - v.get(1).copied().unwrap_or(0.0)
}

/// `−Σ p ln p`, natural log.
pub fn prediction_entropy(p: &[f64]) -> f64 {
    entropy(p)
}

/// Entropy (natural log) of the committee's vote shares.
pub fn vote_entropy(votes: &[String]) -> f64 {
    let mut c: BTreeMap<&str, usize> = BTreeMap::new();
    for v in votes {
        *c.entry(v).or_default() += 1;
    }
    let n = votes.len().max(1) as f64;
    entropy(&c.values().map(|&k| k as f64 / n).collect::<Vec<_>>())
}

/// Indices of the `b` largest scores, ties broken by `tiebreak` (a per-item random key).
pub fn top_b(scores: &[f64], tiebreak: &[u64], b: usize) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..scores.len()).collect();
    idx.sort_by(|&i, &j| {
        scores[j]
            .total_cmp(&scores[i])
            .then(tiebreak[i].cmp(&tiebreak[j]))
    });
    idx.truncate(b);
    idx
}

#[derive(Clone, Debug)]
pub struct ActiveConfig {
    pub out: PathBuf,
    pub pool: Vec<Task>,
    pub heldout: Vec<Task>,
    pub strategies: Vec<String>,
    pub rounds: usize,
    pub batch: usize,
    pub shots: usize,
    /// Sampling members of the committee besides the greedy student.
    pub committee: usize,
    pub max_tokens: usize,
    pub seed: u64,
    pub context: ContextFormat,
    /// Keep the strategies an earlier run in `out` finished and run the rest.
    pub resume: bool,
    /// Stop after this many strategies in this invocation (a run in slices; `resume` goes on).
    pub stop_after_strategies: Option<usize>,
}

/// Up to `k` labelled examples of `topic`, latest last.
fn shots_for(labelled: &[(Task, String)], topic: &str, k: usize) -> Vec<(String, String)> {
    let same: Vec<&(Task, String)> = labelled
        .iter()
        .filter(|(t, _)| t.topic() == topic)
        .collect();
    same[same.len().saturating_sub(k)..]
        .iter()
        .map(|(t, a)| (t.question.clone(), a.clone()))
        .collect()
}

/// The student's greedy answers to `tasks`, grouped by topic so each group shares its examples.
fn answer_all<B: Backend>(
    student: &Student<B>,
    tasks: &[Task],
    labelled: &[(Task, String)],
    shots: usize,
    max_tokens: usize,
    format: ContextFormat,
    stats: &mut PrefillStats,
) -> Result<Vec<learner::Answer>> {
    let mut out = vec![learner::Answer::default(); tasks.len()];
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, t) in tasks.iter().enumerate() {
        groups.entry(t.topic()).or_default().push(i);
    }
    for (topic, idx) in groups {
        let sh = shots_for(labelled, topic, shots);
        let prompts: Vec<Vec<ChatMessage>> = idx
            .iter()
            .map(|&i| messages_in(format, &sh, None, &tasks[i].question))
            .collect();
        let ans = learner::greedy(student, &prompts, max_tokens, true, stats)?;
        for (i, a) in idx.into_iter().zip(ans) {
            out[i] = a;
        }
    }
    Ok(out)
}

/// Accuracy of the student on `heldout` with the labelled pool in context.
fn evaluate<B: Backend>(
    student: &Student<B>,
    cfg: &ActiveConfig,
    labelled: &[(Task, String)],
    stats: &mut PrefillStats,
) -> Result<(Vec<bool>, Value)> {
    let ans = answer_all(
        student,
        &cfg.heldout,
        labelled,
        cfg.shots,
        cfg.max_tokens,
        cfg.context,
        stats,
    )?;
    let correct: Vec<bool> = cfg
        .heldout
        .iter()
        .zip(&ans)
        .map(|(t, a)| tasks::is_correct(t, &a.text))
        .collect();
    let acc = tasks::accuracy_json(&cfg.heldout, &correct);
    Ok((correct, acc))
}

/// Uncertainty of each unlabelled item under `strategy` (higher is queried first).
#[allow(clippy::too_many_arguments)]
fn uncertainty<B: Backend>(
    strategy: &str,
    student: &Student<B>,
    committee_models: &[&Engine<B>],
    cfg: &ActiveConfig,
    items: &[Task],
    labelled: &[(Task, String)],
    round: usize,
    stats: &mut PrefillStats,
) -> Result<Vec<f64>> {
    let needs_answers = matches!(strategy, "least_confidence" | "margin" | "entropy" | "nll");
    // Open answers' entropy needs the whole next-token distribution (asked of a remote student
    // only here: it is the vocabulary's logprobs at every step).
    let with_entropy = student.with_entropy();
    let answers = if needs_answers {
        answer_all(
            if strategy == "entropy" {
                &with_entropy
            } else {
                student
            },
            items,
            labelled,
            cfg.shots,
            cfg.max_tokens,
            cfg.context,
            stats,
        )?
    } else {
        vec![]
    };
    let mut out = Vec::with_capacity(items.len());
    match strategy {
        "random" => {
            let mut rng = LoopRng(cfg.seed ^ 0xA11CE ^ (round as u64) << 32);
            out.extend(items.iter().map(|_| rng.next_u64() as f64));
        }
        "least_confidence" | "margin" | "entropy" => {
            for (t, a) in items.iter().zip(&answers) {
                let v = match &t.labels {
                    Some(labels) => {
                        let sh = shots_for(labelled, t.topic(), cfg.shots);
                        let p = label_probs(
                            student,
                            &messages_in(cfg.context, &sh, None, &t.question),
                            labels,
                        )?;
                        match strategy {
                            "least_confidence" => least_confidence(&p),
                            "margin" => -margin(&p),
                            _ => prediction_entropy(&p),
                        }
                    }
                    None => match strategy {
                        "least_confidence" => 1.0 - a.seq_prob(),
                        "margin" => -a.min_margin,
                        _ => a.mean_entropy,
                    },
                };
                out.push(v);
            }
        }
        "nll" => out.extend(answers.iter().map(|a| a.nll)),
        "committee" => {
            let mut votes: Vec<Vec<String>> = vec![vec![]; items.len()];
            let mut members: Vec<(Student<B>, Option<u64>)> = vec![(*student, None)];
            for m in 0..cfg.committee {
                members.push((*student, Some(m as u64 + 1)));
            }
            for e in committee_models {
                members.push((Student::local(e), None));
            }
            for (member, sample_seed) in members {
                let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
                for (i, t) in items.iter().enumerate() {
                    groups.entry(t.topic()).or_default().push(i);
                }
                for (topic, idx) in groups {
                    let mut sh = shots_for(labelled, topic, cfg.shots);
                    let params = match sample_seed {
                        None => SamplingParams {
                            max_tokens: cfg.max_tokens,
                            ..SamplingParams::greedy()
                        },
                        Some(s) => {
                            LoopRng(cfg.seed ^ s.wrapping_mul(0x51_7CC1) ^ round as u64)
                                .shuffle(&mut sh);
                            SamplingParams {
                                temperature: 0.7,
                                max_tokens: cfg.max_tokens,
                                seed: Some(cfg.seed ^ s.wrapping_mul(0x9E37_79B9) ^ round as u64),
                                ..SamplingParams::default()
                            }
                        }
                    };
                    let ids: Vec<Vec<u32>> = idx
                        .iter()
                        .map(|&i| {
                            member.tokenizer().encode_chat(
                                &messages_in(cfg.context, &sh, None, &items[i].question),
                                true,
                            )
                        })
                        .collect::<Result<_>>()?;
                    let ps: Vec<SamplingParams> = idx
                        .iter()
                        .map(|&i| SamplingParams {
                            seed: params
                                .seed
                                .map(|s| s ^ (i as u64).wrapping_mul(0x2545_F491)),
                            ..params.clone()
                        })
                        .collect();
                    let ans = learner::generate_shared(&member, &ids, &ps, true, stats)?;
                    for (i, a) in idx.into_iter().zip(ans) {
                        votes[i].push(answer_key(&items[i], &a.text));
                    }
                }
            }
            out.extend(votes.iter().map(|v| vote_entropy(v)));
        }
        "gate" => {
            for t in items {
                let m = messages(&[], None, &t.question);
                let ids = student.tokenizer().encode_chat(&m, true)?;
                // The template's opening tokens are the same for every question: skip `<s>`.
                out.push(gate_entropy(student, &ids, 1)?);
            }
        }
        other => {
            return Err(Error::InvalidRequest(format!(
                "unknown strategy `{other}` (known: {})",
                STRATEGIES.join(", ")
            )))
        }
    }
    Ok(out)
}

/// The teacher's labels for `items` (greedy answers, the label extracted).
pub fn teacher_labels(
    teacher: &dyn ModelClient,
    items: &[Task],
    max_tokens: usize,
) -> Result<Vec<String>> {
    let reqs: Vec<GenerateRequest> = items
        .iter()
        .map(|t| {
            GenerateRequest::new(
                Prompt::Chat(vec![ChatMessage::user(t.question.clone())]),
                SamplingParams {
                    max_tokens,
                    ..SamplingParams::greedy()
                },
            )
        })
        .collect();
    Ok(teacher
        .generate(&reqs)?
        .into_iter()
        .zip(items)
        .map(|(c, t)| match &t.labels {
            Some(l) => {
                tasks::extract_label(&c.text, l).unwrap_or_else(|| tasks::extract_answer(&c.text))
            }
            None => tasks::extract_answer(&c.text),
        })
        .collect())
}

pub fn run<B: Backend>(
    teacher: &dyn ModelClient,
    student: &Student<B>,
    committee_models: &[&Engine<B>],
    cfg: &ActiveConfig,
) -> Result<Value> {
    tasks::check_sizes(
        "active",
        &[
            ("rounds", cfg.rounds, 1),
            ("batch", cfg.batch, 1),
            ("shots", cfg.shots, 1),
            ("max_tokens", cfg.max_tokens, 1),
            ("strategies", cfg.strategies.len(), 1),
        ],
    )?;
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    if cfg.pool.is_empty() || cfg.heldout.is_empty() {
        return Err(Error::InvalidRequest(
            "the pool and the held-out set must not be empty".into(),
        ));
    }
    for s in &cfg.strategies {
        if !STRATEGIES.contains(&s.as_str()) {
            return Err(Error::InvalidRequest(format!(
                "unknown strategy `{s}` (known: {})",
                STRATEGIES.join(", ")
            )));
        }
        // Refused before any work, rather than after the strategies before it.
        if let (Some(client), "gate") = (student.remote, s.as_str()) {
            return Err(learner::gate_unavailable(client));
        }
    }
    let t0 = std::time::Instant::now();
    let mut stats = PrefillStats::default();
    let curves_path = cfg.out.join("curves.jsonl");
    let queries_path = cfg.out.join("queries.jsonl");
    let state_path = cfg.out.join("state.json");
    // Strategies finished by an earlier run: their lines are kept, the rest are dropped.
    let mut finished: Vec<String> = vec![];
    let (mut kept_curves, mut kept_queries) = (vec![], vec![]);
    if cfg.resume && state_path.exists() {
        let st: Value = serde_json::from_str(
            &std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?,
        )
        .unwrap_or(Value::Null);
        finished = st["finished"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|v| v.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        // Lines are kept as written: a float parsed and printed again may change its last digit.
        let keep = |path: &std::path::Path| -> Result<Vec<(Value, String)>> {
            let text = std::fs::read_to_string(path).unwrap_or_default();
            Ok(text
                .lines()
                .filter_map(|l| {
                    serde_json::from_str::<Value>(l)
                        .ok()
                        .map(|v| (v, l.to_string()))
                })
                .filter(|(v, _)| finished.iter().any(|f| v["strategy"] == f.as_str()))
                .collect())
        };
        kept_curves = keep(&curves_path)?;
        kept_queries = keep(&queries_path)?;
    }
    let mut curves = std::fs::File::create(&curves_path).map_err(|e| Error::io(&curves_path, e))?;
    let mut queries =
        std::fs::File::create(&queries_path).map_err(|e| Error::io(&queries_path, e))?;
    for (_, v) in &kept_curves {
        writeln!(curves, "{v}").map_err(|e| Error::io(&curves_path, e))?;
    }
    for (_, v) in &kept_queries {
        writeln!(queries, "{v}").map_err(|e| Error::io(&queries_path, e))?;
    }
    let mut tiebreak_rng = LoopRng(cfg.seed);
    let tiebreak: Vec<u64> = cfg.pool.iter().map(|_| tiebreak_rng.next_u64()).collect();
    // Labels are cached so every strategy that asks for an item gets the same label.
    let mut label_cache: BTreeMap<usize, String> = BTreeMap::new();
    for (q, _) in &kept_queries {
        if let (Some(i), Some(l)) = (q["pool_index"].as_u64(), q["teacher_label"].as_str()) {
            label_cache.insert(i as usize, l.to_string());
        }
    }
    let mut teacher_calls = 0usize;
    let (_, zero_shot) = evaluate(student, cfg, &[], &mut stats)?;
    let mut summary: BTreeMap<String, Value> = BTreeMap::new();
    let total_rounds = cfg.strategies.len() * cfg.rounds;
    let resumed_rounds = cfg
        .strategies
        .iter()
        .filter(|s| finished.contains(s))
        .count()
        * cfg.rounds;
    let progress = Progress::new(
        "active: rounds",
        total_rounds as u64,
        resumed_rounds as u64,
        "rounds",
    );
    let mut rounds_run = 0u64;
    for strategy in &cfg.strategies {
        if finished.contains(strategy) {
            let curve: Vec<Value> = kept_curves
                .iter()
                .map(|(v, _)| v)
                .filter(|v| v["strategy"] == strategy.as_str())
                .map(|v| json!({"labels": v["labels"], "accuracy": v["accuracy"]}))
                .collect();
            let qs: Vec<&Value> = kept_queries
                .iter()
                .map(|(v, _)| v)
                .filter(|v| v["strategy"] == strategy.as_str())
                .collect();
            let right = qs.iter().filter(|v| v["label_correct"] == true).count();
            summary.insert(
                strategy.clone(),
                json!({"curve": curve, "teacher_label_accuracy": right as f64 / qs.len().max(1) as f64}),
            );
            continue;
        }
        let mut labelled: Vec<(Task, String)> = vec![];
        let mut remaining: Vec<usize> = (0..cfg.pool.len()).collect();
        let mut curve = vec![json!({"labels": 0, "accuracy": zero_shot})];
        let line = json!({"strategy": strategy, "round": 0, "labels": 0, "accuracy": zero_shot});
        writeln!(curves, "{line}").map_err(|e| Error::io(&curves_path, e))?;
        let (mut label_right, mut label_total) = (0usize, 0usize);
        for round in 1..=cfg.rounds {
            if remaining.is_empty() {
                break;
            }
            let generated_before = stats.generated_tokens;
            let items: Vec<Task> = remaining.iter().map(|&i| cfg.pool[i].clone()).collect();
            let scores = uncertainty(
                strategy,
                student,
                committee_models,
                cfg,
                &items,
                &labelled,
                round,
                &mut stats,
            )?;
            let tb: Vec<u64> = remaining.iter().map(|&i| tiebreak[i]).collect();
            let picked: Vec<usize> = top_b(&scores, &tb, cfg.batch)
                .into_iter()
                .map(|k| remaining[k])
                .collect();
            let need: Vec<usize> = picked
                .iter()
                .copied()
                .filter(|i| !label_cache.contains_key(i))
                .collect();
            if !need.is_empty() {
                let asked: Vec<Task> = need.iter().map(|&i| cfg.pool[i].clone()).collect();
                teacher_calls += asked.len();
                for (i, l) in need
                    .iter()
                    .zip(teacher_labels(teacher, &asked, cfg.max_tokens)?)
                {
                    label_cache.insert(*i, l);
                }
            }
            for &i in &picked {
                let t = &cfg.pool[i];
                let label = label_cache[&i].clone();
                let right = tasks::normalize(&label) == tasks::normalize(&t.answer);
                label_right += right as usize;
                label_total += 1;
                let score = scores[remaining.iter().position(|&r| r == i).unwrap_or(0)];
                let q = json!({"strategy": strategy, "round": round, "pool_index": i, "question": t.question,
                               "topic": t.topic, "teacher_label": label, "reference": t.answer, "label_correct": right,
                               "uncertainty": score});
                writeln!(queries, "{q}").map_err(|e| Error::io(&queries_path, e))?;
                labelled.push((t.clone(), label));
            }
            remaining.retain(|i| !picked.contains(i));
            let (_, acc) = evaluate(student, cfg, &labelled, &mut stats)?;
            let line = json!({"strategy": strategy, "round": round, "labels": labelled.len(), "accuracy": acc});
            writeln!(curves, "{line}").map_err(|e| Error::io(&curves_path, e))?;
            curve.push(json!({"labels": labelled.len(), "accuracy": acc}));
            rounds_run += 1;
            progress.inc(1, (stats.generated_tokens - generated_before) as u64);
        }
        summary.insert(
            strategy.clone(),
            json!({"curve": curve, "teacher_label_accuracy": label_right as f64 / label_total.max(1) as f64}),
        );
        finished.push(strategy.clone());
        std::fs::write(&state_path, json!({"finished": finished}).to_string())
            .map_err(|e| Error::io(&state_path, e))?;
        if cfg
            .stop_after_strategies
            .is_some_and(|n| summary.len() >= n)
        {
            break;
        }
    }
    let rounds_rate = progress.finish(rounds_run);
    let secs = t0.elapsed().as_secs_f64();
    let manifest = json!({
        "loop": "active", "teacher": teacher.name(), "student": student.name(),
        "committee_models": committee_models.iter().map(|e| e.info.name.clone()).collect::<Vec<_>>(),
        "seed": cfg.seed, "pool": cfg.pool.len(), "heldout": cfg.heldout.len(), "rounds": cfg.rounds,
        "batch": cfg.batch, "shots": cfg.shots, "committee": cfg.committee, "max_tokens": cfg.max_tokens, "context": format!("{:?}", cfg.context).to_lowercase(),"strategies": summary, "teacher_labels_requested": teacher_calls,
        "student_prefill": stats.json(), "steps": {"rounds": rounds_rate}, "seconds": secs,
        "version": env!("CARGO_PKG_VERSION"),
    });
    super::write_manifest(&cfg.out, &manifest)?;
    Ok(manifest)
}
