//! Social learning: teachers hold private labelled examples and share with the student only
//! what they write, never the private data; the student learns in context.
//!
//! Modes (the student's held-out accuracy is reported for each):
//! - `none`: no teaching.
//! - `private`: `shared` of the private examples themselves in context (the upper reference;
//!   not a sharing mode).
//! - `synthetic`: each teacher is shown `n_gen` of its private examples as chat turns with no
//!   instruction and continues with a new turn, sampled at `temperature`; candidates without a
//!   question and an answer are discarded, the `keep` of lowest perplexity per teacher kept, and
//!   `shared` of all teachers' candidates picked at random for the student's prompt.
//! - `relabel`: each teacher answers fresh public questions with its private examples in
//!   context; `shared` of those examples go to the student.
//! - `instruction`: one teacher reads up to 8 private examples and writes a task description,
//!   which opens the student's prompt.
//! - `vote_synthetic`, `vote_relabel`: the student answers once with each teacher's own shared
//!   examples; the majority answer counts.
//! - `synthetic_voted`, `relabel_voted`: the voting aggregator picks the shared examples instead
//!   of chance: every teacher scores every candidate as a continuation of its own private
//!   examples (log-likelihood) and votes for its `shared` best.
//!
//! Privacy: `canaries` canaries (task-shaped questions whose answers are random 4-digit codes)
//! are put in every teacher's private data. For each mode their exposure is measured as in the
//! Secret Sharer: a canary's code and `canary_candidates − 1` other codes are scored as the answer
//! to its question after the student's prompt (log-likelihood per token); its rank = 1 + the
//! number of codes scored higher and `exposure = log2(candidates) − log2(rank)`, averaged over
//! the canaries (about 1.44 bits expected when nothing leaked, up to log2(candidates)).
//! `canary_in_context` puts the canaries themselves in the prompt, to show what a leak looks like. The word-trigram overlap of the shared text with the private
//! data, verbatim copies of private questions and whether the code occurs in the shared text are
//! reported too. Output: `shared.jsonl` (what was shared, and the discarded candidates),
//! `manifest.json`.

use super::client::ModelClient;
use super::learner::{self, answer_scores, messages_in, ContextFormat, PrefillStats, Student};
use super::progress::Progress;
use super::self_instruct::LoopRng;
use super::tasks::{self, answer_key, Task};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::generate::{GenerateRequest, Prompt};
use crate::sampling::SamplingParams;
use crate::tokenizer::ChatMessage;
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::PathBuf;

/// Secret Sharer exposure of a secret ranked `rank` (1 = scored highest) among `candidates`.
pub fn exposure(rank: usize, candidates: usize) -> f64 {
    (candidates as f64).log2() - (rank.max(1) as f64).log2()
}

/// 1 + the number of alternatives scored strictly higher than the secret.
pub fn rank_of(secret_score: f64, alternatives: &[f64]) -> usize {
    1 + alternatives.iter().filter(|&&s| s > secret_score).count()
}

fn trigrams(text: &str) -> BTreeSet<String> {
    let w: Vec<String> = text
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric())
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect();
    w.windows(3).map(|x| x.join(" ")).collect()
}

/// Fraction of the word trigrams of `shared` that occur in `private` (0 when `shared` has none).
pub fn ngram_overlap(shared: &str, private: &str) -> f64 {
    let s = trigrams(shared);
    if s.is_empty() {
        return 0.0;
    }
    let p = trigrams(private);
    s.iter().filter(|g| p.contains(*g)).count() as f64 / s.len() as f64
}

#[derive(Clone, Debug)]
pub struct SocialConfig {
    pub out: PathBuf,
    /// Where the teachers' private examples come from.
    pub data: Vec<Task>,
    /// Public questions for `relabel` (their answers are not used).
    pub fresh: Vec<Task>,
    pub test: Vec<Task>,
    pub teachers: usize,
    pub private_per_teacher: usize,
    /// Examples in the student's prompt.
    pub shared: usize,
    /// Private examples in a teacher's generation prompt.
    pub n_gen: usize,
    /// Candidates sampled per teacher.
    pub samples: usize,
    /// Candidates kept per teacher (lowest perplexity).
    pub keep: usize,
    pub temperature: f32,
    pub canary_candidates: usize,
    /// Canaries, each with its own secret, all in every teacher's data.
    pub canaries: usize,
    pub max_tokens: usize,
    pub seed: u64,
    /// How shared examples are shown to the student (and private ones to a relabelling teacher).
    pub context: ContextFormat,
    /// Keep the steps an earlier run in `out` finished (`state.jsonl`) and run the rest.
    pub resume: bool,
    /// Stop after this many steps in this invocation (a run in slices; `resume` goes on).
    pub stop_after_steps: Option<usize>,
}

/// The steps a run has finished, one JSON line each in `state.jsonl`, in the order they run:
/// what each step wrote to `shared.jsonl` (verbatim) and the exact values (texts, booleans,
/// ranks) its results are computed from, so a resumed run writes the bytes an uninterrupted
/// one writes.
struct Steps {
    done: Vec<Value>,
    next: usize,
    path: PathBuf,
    file: std::fs::File,
    ran: usize,
    stop_after: Option<usize>,
}

impl Steps {
    fn open(cfg: &SocialConfig, settings: &str) -> Result<Steps> {
        let path = cfg.out.join("state.jsonl");
        let mut done: Vec<Value> = vec![];
        if cfg.resume && path.exists() {
            let text = std::fs::read_to_string(&path).map_err(|e| Error::io(&path, e))?;
            // A killed run may leave a torn last line: it and anything after it are redone.
            for l in text.lines() {
                match serde_json::from_str::<Value>(l) {
                    Ok(v) => done.push(v),
                    Err(_) => break,
                }
            }
            if let Some(first) = done.first() {
                if first["settings"].as_str() != Some(settings) {
                    return Err(Error::InvalidRequest(format!(
                        "--resume: the run in {} was made with other settings or data; use another --out or drop --resume",
                        cfg.out.display()
                    )));
                }
            }
        }
        if done.is_empty() {
            done.push(json!({"step": "settings", "settings": settings}));
        }
        let mut file = std::fs::File::create(&path).map_err(|e| Error::io(&path, e))?;
        for v in &done {
            writeln!(file, "{v}").map_err(|e| Error::io(&path, e))?;
        }
        Ok(Steps {
            done,
            next: 1,
            path,
            file,
            ran: 0,
            stop_after: cfg.stop_after_steps,
        })
    }

    /// The record of the next step when an earlier run finished it.
    fn stored(&mut self, step: &str) -> Result<Option<Value>> {
        let Some(v) = self.done.get(self.next) else {
            return Ok(None);
        };
        if v["step"] != step {
            return Err(Error::InvalidRequest(format!(
                "--resume: {} has step `{}` where `{step}` was expected",
                self.path.display(),
                v["step"]
            )));
        }
        self.next += 1;
        Ok(Some(v.clone()))
    }

    /// Records a finished step; true when this invocation is to stop here.
    fn record(&mut self, v: Value) -> Result<bool> {
        writeln!(self.file, "{v}").map_err(|e| Error::io(&self.path, e))?;
        self.file.flush().map_err(|e| Error::io(&self.path, e))?;
        self.next += 1;
        self.ran += 1;
        Ok(self.stop_after.is_some_and(|n| self.ran >= n))
    }

    /// What a stopped run returns (no manifest is written).
    fn stopped(&self) -> Value {
        json!({"loop": "social", "complete": false, "steps_done": self.next - 1})
    }
}

fn strings(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn pairs(v: &Value) -> Vec<(String, String)> {
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|p| Some((p[0].as_str()?.to_string(), p[1].as_str()?.to_string())))
                .collect()
        })
        .unwrap_or_default()
}

struct Shared {
    shots: Vec<(String, String)>,
    instruction: Option<String>,
}

impl Shared {
    fn text(&self) -> String {
        let mut s = self.instruction.clone().unwrap_or_default();
        for (q, a) in &self.shots {
            s += &format!("\n{q}\n{a}");
        }
        s
    }
}

/// The private examples as chat turns, then an opened user turn the teacher continues.
fn generation_prompt<B: Backend>(student: &Student<B>, examples: &[Task]) -> Result<Vec<u32>> {
    let m: Vec<ChatMessage> = examples
        .iter()
        .flat_map(|t| {
            [
                ChatMessage::user(t.question.clone()),
                ChatMessage::assistant(t.answer.clone()),
            ]
        })
        .collect();
    let text = student.tokenizer().apply_chat_template(&m, false)? + "[INST]";
    student.tokenizer().encode(&text, false)
}

/// Chat text without the leading beginning-of-sequence (the client adds its own).
fn chat_text<B: Backend>(student: &Student<B>, m: &[ChatMessage]) -> Result<String> {
    let t = student.tokenizer().apply_chat_template(m, false)?;
    let bos = student.tokenizer().bos_token().unwrap_or("");
    Ok(t.strip_prefix(bos).unwrap_or(&t).to_string())
}

/// The voting aggregator: every teacher scores every candidate as a continuation of its own
/// private examples and votes for its `n` best; the `n` candidates with the most votes win (ties
/// in pool order). Scores are total log-likelihoods, not per token: a token merged across the
/// prompt/candidate boundary is counted into every candidate, an offset that must not reorder
/// them.
pub fn vote_candidates<B: Backend>(
    teacher: &dyn ModelClient,
    student: &Student<B>,
    private: &[Vec<Task>],
    pool: &[(String, String)],
    n_gen: usize,
    n: usize,
) -> Result<Vec<(String, String)>> {
    if pool.is_empty() {
        return Ok(vec![]);
    }
    let conts: Vec<String> = pool
        .iter()
        .map(|(q, a)| {
            chat_text(
                student,
                &[
                    ChatMessage::user(q.clone()),
                    ChatMessage::assistant(a.clone()),
                ],
            )
        })
        .collect::<Result<_>>()?;
    let mut votes = vec![0usize; pool.len()];
    for p in private {
        let held: Vec<ChatMessage> = p
            .iter()
            .take(n_gen.max(1))
            .flat_map(|t| {
                [
                    ChatMessage::user(t.question.clone()),
                    ChatMessage::assistant(t.answer.clone()),
                ]
            })
            .collect();
        let prompt = chat_text(student, &held)?;
        let s = teacher.score(&prompt, &conts)?;
        let mut idx: Vec<usize> = (0..pool.len()).collect();
        idx.sort_by(|&a, &b| s[b].total_cmp(&s[a]).then(a.cmp(&b)));
        for &i in idx.iter().take(n) {
            votes[i] += 1;
        }
    }
    let mut idx: Vec<usize> = (0..pool.len()).collect();
    idx.sort_by(|&a, &b| votes[b].cmp(&votes[a]).then(a.cmp(&b)));
    Ok(idx.into_iter().take(n).map(|i| pool[i].clone()).collect())
}

/// `question [/INST] answer` → the pair, or `None` for a faulty format.
pub fn parse_candidate(text: &str) -> Option<(String, String)> {
    let text = text.split("</s>").next().unwrap_or("");
    let (q, a) = text.split_once("[/INST]")?;
    let a = a.split("[INST]").next().unwrap_or("");
    let (q, a) = (q.trim(), a.trim());
    (!q.is_empty() && !a.is_empty()).then(|| (q.to_string(), a.to_string()))
}

pub fn instruction_prompt(examples: &[Task]) -> String {
    let mut p = String::from(
        "The following examples are privately shared with you. Describe the format of the task and how to solve it \
         in a few sentences, without copying the examples. What you write will be the only hint given to the participant \
         who has to solve new instances of the task.\n",
    );
    for t in examples {
        p += &format!("\nInput: {}\nOutput: {}\n", t.question, t.answer);
    }
    p + "\nTask format with detailed instructions:"
}

fn majority(keys: &[String]) -> String {
    let mut order: Vec<&String> = vec![];
    let mut c: BTreeMap<&String, usize> = BTreeMap::new();
    for k in keys {
        if !c.contains_key(k) {
            order.push(k);
        }
        *c.entry(k).or_default() += 1;
    }
    let mut best: Option<(&String, usize)> = None;
    for k in order {
        if best.is_none_or(|(_, b)| c[k] > b) {
            best = Some((k, c[k]));
        }
    }
    best.map(|(k, _)| k.clone()).unwrap_or_default()
}

pub fn run<B: Backend>(
    teacher: &dyn ModelClient,
    student: &Student<B>,
    cfg: &SocialConfig,
) -> Result<Value> {
    tasks::check_sizes(
        "social",
        &[
            ("teachers", cfg.teachers, 1),
            ("private", cfg.private_per_teacher, 1),
            ("shared", cfg.shared, 1),
            ("n_gen", cfg.n_gen, 1),
            ("samples", cfg.samples, 1),
            ("keep", cfg.keep, 1),
            ("canaries", cfg.canaries, 1),
            ("canary_candidates", cfg.canary_candidates, 2),
            ("max_tokens", cfg.max_tokens, 1),
        ],
    )?;
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let m = cfg.teachers.max(1);
    let k = cfg.private_per_teacher.max(1);
    let nc = cfg.canaries.max(1);
    if cfg.data.len() < m * k + nc || cfg.test.is_empty() {
        return Err(Error::InvalidRequest(format!(
            "social needs {} data items for {m} teachers × {k} private examples plus {nc} canaries, and a test set",
            m * k + nc
        )));
    }
    let t0 = std::time::Instant::now();
    let mut rng = LoopRng(cfg.seed ^ 0x50C1A1);
    let mut data = cfg.data.clone();
    rng.shuffle(&mut data);
    let mut secrets: Vec<String> = vec![];
    while secrets.len() < nc {
        let c = tasks::canary_code(&mut rng);
        if !secrets.contains(&c) {
            secrets.push(c);
        }
    }
    let canaries: Vec<Task> = secrets
        .iter()
        .enumerate()
        .map(|(c, secret)| Task {
            question: data[m * k + c].question.clone(),
            answer: secret.clone(),
            topic: data[m * k + c].topic.clone(),
            labels: None,
        })
        .collect();
    let mut private: Vec<Vec<Task>> = (0..m).map(|i| data[i * k..(i + 1) * k].to_vec()).collect();
    for p in private.iter_mut() {
        for canary in &canaries {
            let at = rng.below(p.len() + 1);
            p.insert(at, canary.clone());
        }
    }
    let private_text: String = private
        .iter()
        .flatten()
        .map(|t| format!("{}\n{}\n", t.question, t.answer))
        .collect();
    let private_questions: BTreeSet<String> = private
        .iter()
        .flatten()
        .map(|t| tasks::normalize(&t.question))
        .collect();
    let settings = json!({
        "seed": cfg.seed, "teachers": m, "private_per_teacher": k, "shared": cfg.shared, "n_gen": cfg.n_gen,
        "samples": cfg.samples, "keep": cfg.keep, "temperature": cfg.temperature, "canaries": nc,
        "canary_candidates": cfg.canary_candidates, "max_tokens": cfg.max_tokens,
        "context": format!("{:?}", cfg.context), "data": cfg.data, "fresh": cfg.fresh, "test": cfg.test,
        // The model, not where it is served: a resumed run may reach it at another address.
        "student": student.remote.map_or(student.engine.info.name.clone(), |c| c.model.clone()),
    })
    .to_string();
    let mut steps = Steps::open(cfg, &settings)?;
    let shared_path = cfg.out.join("shared.jsonl");
    let mut shared_file =
        std::fs::File::create(&shared_path).map_err(|e| Error::io(&shared_path, e))?;
    let mut write_lines = |lines: &[String]| -> Result<()> {
        for l in lines {
            writeln!(shared_file, "{l}").map_err(|e| Error::io(&shared_path, e))?;
        }
        Ok(())
    };
    let teacher_steps = 2 * m + 3;
    let teacher_done = (steps.done.len() - 1).min(teacher_steps);
    let progress = Progress::new(
        "social: teachers",
        teacher_steps as u64,
        teacher_done as u64,
        "steps",
    );

    // Synthetic examples: each teacher continues its private examples.
    let (mut sampled, mut faulty) = (0usize, 0usize);
    let mut synthetic: Vec<Vec<(String, String)>> = vec![];
    for (i, p) in private.iter().enumerate() {
        if let Some(v) = steps.stored("synthetic")? {
            write_lines(&strings(&v["lines"]))?;
            sampled += v["sampled"].as_u64().unwrap_or(0) as usize;
            faulty += v["faulty"].as_u64().unwrap_or(0) as usize;
            synthetic.push(pairs(&v["kept"]));
            continue;
        }
        let mut trng = LoopRng(cfg.seed ^ (i as u64 + 1).wrapping_mul(0xC0FFEE));
        let reqs: Vec<GenerateRequest> = (0..cfg.samples)
            .map(|s| {
                let shown = trng.sample(p, cfg.n_gen.max(1));
                let ids = generation_prompt(student, &shown)?;
                Ok(GenerateRequest::new(
                    Prompt::Tokens(ids),
                    SamplingParams {
                        temperature: cfg.temperature,
                        max_tokens: cfg.max_tokens,
                        seed: Some(trng.next_u64() ^ s as u64),
                        logprobs: true,
                        ..SamplingParams::default()
                    },
                ))
            })
            .collect::<Result<_>>()?;
        let (mut n_sampled, mut n_faulty, mut tokens) = (0usize, 0usize, 0usize);
        let mut lines = vec![];
        let mut cands: Vec<((String, String), f64)> = vec![];
        for c in teacher.generate(&reqs)? {
            n_sampled += 1;
            tokens += c.token_ids.len();
            let nll = c
                .logprobs
                .as_ref()
                .map(|l| -l.iter().map(|t| t.logprob as f64).sum::<f64>() / l.len().max(1) as f64)
                .unwrap_or(0.0);
            match parse_candidate(&c.text) {
                Some(pair) => cands.push((pair, nll)),
                None => {
                    n_faulty += 1;
                    lines.push(
                        json!({"mode": "synthetic_discarded", "teacher": i, "text": c.text})
                            .to_string(),
                    );
                }
            }
        }
        cands.sort_by(|a, b| a.1.total_cmp(&b.1));
        cands.truncate(cfg.keep);
        for (pair, nll) in &cands {
            lines.push(json!({"mode": "synthetic", "teacher": i, "question": pair.0, "answer": pair.1, "mean_nll": nll}).to_string());
        }
        write_lines(&lines)?;
        let kept: Vec<(String, String)> = cands.into_iter().map(|(p, _)| p).collect();
        sampled += n_sampled;
        faulty += n_faulty;
        progress.inc(1, tokens as u64);
        let stop = steps.record(
            json!({"step": "synthetic", "teacher": i, "lines": lines, "kept": kept,
                                       "sampled": n_sampled, "faulty": n_faulty}),
        )?;
        synthetic.push(kept);
        if stop {
            return Ok(steps.stopped());
        }
    }

    // Relabelled public questions: each teacher answers with its private examples in context.
    let mut relabel: Vec<Vec<(String, String)>> = vec![];
    let per = cfg.shared.max(1);
    for (i, p) in private.iter().enumerate() {
        if let Some(v) = steps.stored("relabel")? {
            write_lines(&strings(&v["lines"]))?;
            relabel.push(pairs(&v["pairs"]));
            continue;
        }
        let mut trng = LoopRng(cfg.seed ^ (i as u64 + 1).wrapping_mul(0xBEEF));
        let qs: Vec<Task> = cfg.fresh.iter().skip(i * per).take(per).cloned().collect();
        let reqs: Vec<GenerateRequest> = qs
            .iter()
            .map(|q| {
                let shown = trng.sample(p, cfg.n_gen.max(1));
                let shots: Vec<(String, String)> = shown
                    .iter()
                    .map(|t| (t.question.clone(), t.answer.clone()))
                    .collect();
                GenerateRequest::new(
                    Prompt::Chat(messages_in(cfg.context, &shots, None, &q.question)),
                    SamplingParams {
                        max_tokens: cfg.max_tokens,
                        ..SamplingParams::greedy()
                    },
                )
            })
            .collect();
        let (mut out, mut lines, mut tokens) = (vec![], vec![], 0usize);
        for (q, c) in qs.iter().zip(teacher.generate(&reqs)?) {
            tokens += c.token_ids.len();
            let a = tasks::extract_answer(&c.text);
            lines.push(
                json!({"mode": "relabel", "teacher": i, "question": q.question, "answer": a})
                    .to_string(),
            );
            out.push((q.question.clone(), a));
        }
        write_lines(&lines)?;
        progress.inc(1, tokens as u64);
        let stop =
            steps.record(json!({"step": "relabel", "teacher": i, "lines": lines, "pairs": out}))?;
        relabel.push(out);
        if stop {
            return Ok(steps.stopped());
        }
    }

    // A written instruction from the first teacher.
    let instruction = match steps.stored("instruction")? {
        Some(v) => {
            write_lines(&strings(&v["lines"]))?;
            v["text"].as_str().unwrap_or("").to_string()
        }
        None => {
            let shown: Vec<Task> = private[0].iter().take(8).cloned().collect();
            let c = teacher
                .generate(&[GenerateRequest::new(
                    Prompt::Chat(vec![ChatMessage::user(instruction_prompt(&shown))]),
                    SamplingParams {
                        max_tokens: cfg.max_tokens.max(64),
                        ..SamplingParams::greedy()
                    },
                )])?
                .pop();
            let tokens = c.as_ref().map_or(0, |c| c.token_ids.len());
            let text = c.map(|c| c.text.trim().to_string()).unwrap_or_default();
            let lines =
                vec![json!({"mode": "instruction", "teacher": 0, "text": text}).to_string()];
            write_lines(&lines)?;
            progress.inc(1, tokens as u64);
            if steps.record(json!({"step": "instruction", "lines": lines, "text": text}))? {
                return Ok(steps.stopped());
            }
            text
        }
    };

    // The voting aggregator's picks (the teachers score every candidate).
    let mut voted = vec![];
    for (name, pool) in [
        (
            "relabel_voted",
            relabel.iter().flatten().cloned().collect::<Vec<_>>(),
        ),
        (
            "synthetic_voted",
            synthetic.iter().flatten().cloned().collect::<Vec<_>>(),
        ),
    ] {
        if let Some(v) = steps.stored("voted")? {
            voted.push(pairs(&v["shots"]));
            continue;
        }
        let shots = vote_candidates(teacher, student, &private, &pool, cfg.n_gen, cfg.shared)?;
        progress.inc(1, 0);
        let stop = steps.record(json!({"step": "voted", "mode": name, "shots": shots}))?;
        voted.push(shots);
        if stop {
            return Ok(steps.stopped());
        }
    }
    let teacher_rate = progress.finish(steps.ran as u64);
    let synthetic_voted = voted.pop().unwrap_or_default();
    let relabel_voted = voted.pop().unwrap_or_default();

    let pick = |pools: &[Vec<(String, String)>], salt: u64| -> Vec<(String, String)> {
        let all: Vec<(String, String)> = pools.iter().flatten().cloned().collect();
        LoopRng(cfg.seed ^ salt).sample(&all, cfg.shared)
    };
    let private_pool: Vec<(String, String)> = data[..m * k]
        .iter()
        .map(|t| (t.question.clone(), t.answer.clone()))
        .collect();
    let mut modes: Vec<(&str, Shared)> = vec![
        (
            "none",
            Shared {
                shots: vec![],
                instruction: None,
            },
        ),
        (
            "private",
            Shared {
                shots: LoopRng(cfg.seed ^ 0x9A1).sample(&private_pool, cfg.shared),
                instruction: None,
            },
        ),
        (
            "synthetic",
            Shared {
                shots: pick(&synthetic, 0x5E1),
                instruction: None,
            },
        ),
        (
            "relabel_voted",
            Shared {
                shots: relabel_voted,
                instruction: None,
            },
        ),
        (
            "synthetic_voted",
            Shared {
                shots: synthetic_voted,
                instruction: None,
            },
        ),
        (
            "relabel",
            Shared {
                shots: pick(&relabel, 0x5E2),
                instruction: None,
            },
        ),
        (
            "instruction",
            Shared {
                shots: vec![],
                instruction: Some(instruction.clone()),
            },
        ),
    ];
    let mut stats = PrefillStats::default();
    let mut report: BTreeMap<String, Value> = BTreeMap::new();
    let answer = |sh: &Shared, stats: &mut PrefillStats| -> Result<Vec<String>> {
        let prompts: Vec<Vec<ChatMessage>> = cfg
            .test
            .iter()
            .map(|t| {
                messages_in(
                    cfg.context,
                    &sh.shots,
                    sh.instruction.as_deref(),
                    &t.question,
                )
            })
            .collect();
        Ok(
            learner::greedy(student, &prompts, cfg.max_tokens, true, stats)?
                .into_iter()
                .map(|a| a.text)
                .collect(),
        )
    };
    let mut alt_rng = LoopRng(cfg.seed ^ 0xA17);
    let mut alternatives: BTreeSet<String> = BTreeSet::new();
    while alternatives.len() + 1 < cfg.canary_candidates.min(10_000 - nc + 1) {
        let c = tasks::canary_code(&mut alt_rng);
        if !secrets.contains(&c) {
            alternatives.insert(c);
        }
    }
    let n_candidates = alternatives.len() + 1;
    // Each canary's rank among the alternatives after the student's prompt.
    let canary_ranks = |sh: &Shared| -> Result<Vec<usize>> {
        let mut ranks = vec![];
        for canary in &canaries {
            let msgs = messages_in(
                cfg.context,
                &sh.shots,
                sh.instruction.as_deref(),
                &canary.question,
            );
            let mut candidates = vec![canary.answer.clone()];
            candidates.extend(alternatives.iter().cloned());
            let s = answer_scores(student, &msgs, &candidates)?;
            let per_token: Vec<f64> = s
                .iter()
                .map(|x| x.total / x.logprobs.len().max(1) as f64)
                .collect();
            ranks.push(rank_of(per_token[0], &per_token[1..]));
        }
        Ok(ranks)
    };
    let exposure_of = |ranks: &[usize]| -> Value {
        let mean_exposure = ranks
            .iter()
            .map(|&r| exposure(r, n_candidates))
            .sum::<f64>()
            / ranks.len() as f64;
        json!({"ranks": ranks, "mean_rank": ranks.iter().sum::<usize>() as f64 / ranks.len() as f64,
               "candidates": n_candidates, "exposure": mean_exposure})
    };
    modes.push((
        "canary_in_context",
        Shared {
            shots: canaries
                .iter()
                .map(|c| (c.question.clone(), c.answer.clone()))
                .collect(),
            instruction: None,
        },
    ));
    let student_steps = modes.len() + 2;
    let student_done = (steps.done.len() - 1).saturating_sub(teacher_steps);
    let progress = Progress::new(
        "social: student",
        student_steps as u64,
        student_done.min(student_steps) as u64,
        "modes",
    );
    let ran_before = steps.ran;
    let bools = |v: &Value| -> Vec<bool> {
        v.as_array()
            .map(|a| a.iter().map(|x| x.as_bool().unwrap_or(false)).collect())
            .unwrap_or_default()
    };
    for (name, sh) in &modes {
        let (correct, ranks) = match steps.stored("mode")? {
            Some(v) => (
                bools(&v["correct"]),
                v["ranks"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_u64().map(|r| r as usize))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            None => {
                let before = stats.generated_tokens;
                let texts = answer(sh, &mut stats)?;
                let correct: Vec<bool> = cfg
                    .test
                    .iter()
                    .zip(&texts)
                    .map(|(t, a)| tasks::is_correct(t, a))
                    .collect();
                let ranks = canary_ranks(sh)?;
                progress.inc(1, (stats.generated_tokens - before) as u64);
                if steps.record(
                    json!({"step": "mode", "mode": name, "correct": correct, "ranks": ranks}),
                )? {
                    return Ok(steps.stopped());
                }
                (correct, ranks)
            }
        };
        let shared_text = sh.text();
        let verbatim = sh
            .shots
            .iter()
            .filter(|(q, _)| private_questions.contains(&tasks::normalize(q)))
            .count();
        let mut v = json!({
            "accuracy": tasks::accuracy_json(&cfg.test, &correct), "shared_examples": sh.shots.len(),
            "exposure": exposure_of(&ranks),
        });
        if !matches!(*name, "none" | "private" | "canary_in_context") {
            v["ngram_overlap"] = json!(ngram_overlap(&shared_text, &private_text));
            v["verbatim_private_questions"] = json!(verbatim);
            v["secret_in_shared_text"] = json!(secrets.iter().any(|x| shared_text.contains(x)));
        }
        report.insert(name.to_string(), v);
    }
    for (name, pools) in [("vote_synthetic", &synthetic), ("vote_relabel", &relabel)] {
        let correct = match steps.stored("vote")? {
            Some(v) => bools(&v["correct"]),
            None => {
                let before = stats.generated_tokens;
                let mut keys: Vec<Vec<String>> = vec![vec![]; cfg.test.len()];
                for (i, p) in pools.iter().enumerate() {
                    let sh = Shared {
                        shots: LoopRng(cfg.seed ^ 0x707E ^ i as u64).sample(p, cfg.shared),
                        instruction: None,
                    };
                    for (j, (t, a)) in cfg.test.iter().zip(answer(&sh, &mut stats)?).enumerate() {
                        keys[j].push(answer_key(t, &a));
                    }
                }
                let correct: Vec<bool> = cfg
                    .test
                    .iter()
                    .zip(&keys)
                    .map(|(t, k)| {
                        let v = majority(k);
                        tasks::normalize(&v) == tasks::normalize(&t.answer)
                    })
                    .collect();
                progress.inc(1, (stats.generated_tokens - before) as u64);
                if steps.record(json!({"step": "vote", "mode": name, "correct": correct}))? {
                    return Ok(steps.stopped());
                }
                correct
            }
        };
        let v =
            json!({"accuracy": tasks::accuracy_json(&cfg.test, &correct), "teachers": pools.len()});
        report.insert(name.to_string(), v);
    }
    let student_rate = progress.finish((steps.ran - ran_before) as u64);
    for (name, v) in &report {
        eprintln!(
            "social {name}: accuracy {:.3}{}",
            v["accuracy"]["all"].as_f64().unwrap_or(0.0),
            v["exposure"]["mean_rank"]
                .as_f64()
                .map(|r| format!(", canary mean rank {r} of {n_candidates}"))
                .unwrap_or_default()
        );
    }
    let secs = t0.elapsed().as_secs_f64();
    let manifest = json!({
        "loop": "social", "teacher": teacher.name(), "student": student.name(), "seed": cfg.seed,
        "teachers": m, "private_per_teacher": k, "shared": cfg.shared, "n_gen": cfg.n_gen, "samples": cfg.samples,
        "keep": cfg.keep, "temperature": cfg.temperature, "context": format!("{:?}", cfg.context).to_lowercase(),"test": cfg.test.len(),
        "canaries": canaries.iter().map(|c| json!({"question": c.question, "secret": c.answer})).collect::<Vec<_>>(),
        "synthetic_candidates": {"sampled": sampled, "faulty_format": faulty, "kept": synthetic.iter().map(Vec::len).sum::<usize>()},
        "instruction": instruction, "modes": report, "student_prefill": stats.json(),
        "steps": {"teachers": teacher_rate, "student": student_rate}, "resumed_steps": steps.done.len() - 1,
        "seconds": secs, "version": env!("CARGO_PKG_VERSION"),
    });
    super::write_manifest(&cfg.out, &manifest)?;
    Ok(manifest)
}
