//! Learning by teaching (LbT, method M1) and adaptive teaching rounds.
//!
//! M1: for each teaching problem the teacher samples `rationales` rationale+answer pairs
//! (temperature 0.7, top-k 20, one seed each). Each pair becomes the single in-context example
//! for the student on an exam of `exam_problems` related problems (same topic, from the pool) ×
//! `repeats` samples. A pair's LbT score is the number of the student's correct exam answers.
//! The teaching problem's final answer is chosen by `MAJ` (majority of the teacher's answers, the
//! baseline), `MAX` (the answer of the best-scored pair) and `SUM` (the answer with the largest
//! total score); each rule's accuracy against the reference is reported.
//!
//! Exam prompts of one pair share everything up to the exam question (the example and the
//! template), so that prefix is prefilled once and its KV cache forked for every exam prompt;
//! `prefix_cache` in the manifest counts the prompt tokens asked for and actually prefilled.
//!
//! Adaptive rounds (`rounds > 0`): the student is examined on a held-out set with one in-context
//! example per topic; each round the teacher writes new material for the topics the student
//! failed (shown the student's wrong answers in the `cot` style), the material is scored by LbT
//! on pool problems of the topic, and the best replaces the topic's example (or its absence) when
//! the student scores higher with it on that exam. Accuracy per round and topic is reported.
//!
//! Output: `rationales.jsonl`, `problems.jsonl` (one line per teaching problem; `--resume` skips
//! the problems already there), `rounds.jsonl`, `manifest.json`.

use super::append_jsonl;
use super::client::ModelClient;
use super::learner::{self, messages_in, ContextFormat, PrefillStats, Student};
use super::progress::{Progress, StepRate};
use super::self_instruct::LoopRng;
use super::tasks::{self, answer_key, Task};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::generate::{GenerateRequest, Prompt};
use crate::sampling::SamplingParams;
use crate::tokenizer::ChatMessage;
use serde_json::{json, Value};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// The question alone; the teacher's whole response is the example's answer (for models
    /// trained on bare answers).
    Plain,
    /// Asks for step-by-step reasoning ending in `Answer: …`.
    Cot,
}

impl Style {
    pub fn parse(s: &str) -> Result<Style> {
        match s {
            "plain" => Ok(Style::Plain),
            "cot" => Ok(Style::Cot),
            _ => Err(Error::InvalidRequest(format!(
                "unknown style `{s}` (plain, cot)"
            ))),
        }
    }
    fn question(self, q: &str) -> String {
        match self {
            Style::Plain => q.to_string(),
            Style::Cot => format!(
                "{q}\n\nSolve the problem step by step, then give the final answer on its own line as \"Answer: <answer>\"."
            ),
        }
    }
}

#[derive(Clone, Debug)]
pub struct TeachConfig {
    pub out: PathBuf,
    pub pool: Vec<Task>,
    /// Held-out exam of the adaptive rounds.
    pub heldout: Vec<Task>,
    pub teach_problems: usize,
    pub rationales: usize,
    pub exam_problems: usize,
    pub repeats: usize,
    pub teacher_temperature: f32,
    pub teacher_top_k: usize,
    pub exam_temperature: f32,
    pub max_tokens: usize,
    pub style: Style,
    pub share_prefix: bool,
    pub rounds: usize,
    pub seed: u64,
    pub resume: bool,
    pub context: ContextFormat,
    /// Opens the student's answer on the exam (LbT's prefilled assistant turn, e.g.
    /// `[[Solution]]: Let's think step by step.`); examples are shown starting with it too.
    pub prefill: Option<String>,
}

impl TeachConfig {
    /// An example's answer as the student sees it: after the prefill, when there is one.
    fn demo_answer(&self, response: &str) -> String {
        match &self.prefill {
            Some(p) => format!("{p} {response}"),
            None => response.to_string(),
        }
    }
}

fn mix(a: u64, b: u64) -> u64 {
    LoopRng(a ^ b.wrapping_mul(0x9E37_79B9_7F4A_7C15)).next_u64()
}

/// The teacher's sampled responses to `question` (one seed each).
fn teacher_samples(
    teacher: &dyn ModelClient,
    cfg: &TeachConfig,
    prompt: &[ChatMessage],
    n: usize,
    seed: u64,
) -> Result<(Vec<String>, usize)> {
    let reqs: Vec<GenerateRequest> = (0..n)
        .map(|j| {
            GenerateRequest::new(
                Prompt::Chat(prompt.to_vec()),
                SamplingParams {
                    temperature: cfg.teacher_temperature,
                    top_k: cfg.teacher_top_k,
                    top_p: 1.0,
                    max_tokens: cfg.max_tokens,
                    seed: Some(mix(seed, j as u64)),
                    ..SamplingParams::default()
                },
            )
        })
        .collect();
    let done = teacher.generate(&reqs)?;
    let tokens = done.iter().map(|c| c.token_ids.len()).sum();
    Ok((
        done.into_iter()
            .map(|c| c.text.trim().to_string())
            .collect(),
        tokens,
    ))
}

/// The student's exam with `demo` as its single in-context example: correct answers out of
/// `exam.len() × repeats`, and each answer.
pub fn exam_score<B: Backend>(
    student: &Student<B>,
    cfg: &TeachConfig,
    demo: Option<(&str, &str)>,
    exam: &[Task],
    seed: u64,
    stats: &mut PrefillStats,
) -> Result<(usize, Vec<String>)> {
    let shots: Vec<(String, String)> = demo
        .map(|(q, a)| vec![(cfg.style.question(q), cfg.demo_answer(a))])
        .unwrap_or_default();
    let mut ids = vec![];
    let mut params = vec![];
    let mut which = vec![];
    for (e, t) in exam.iter().enumerate() {
        let p = exam_ids(student, cfg, &shots, &t.question)?;
        for r in 0..cfg.repeats.max(1) {
            ids.push(p.clone());
            params.push(SamplingParams {
                temperature: cfg.exam_temperature,
                max_tokens: cfg.max_tokens,
                seed: Some(mix(seed, (e * 1000 + r) as u64)),
                ..SamplingParams::default()
            });
            which.push(e);
        }
    }
    let ans = learner::generate_shared(student, &ids, &params, cfg.share_prefix, stats)?;
    let texts: Vec<String> = ans.into_iter().map(|a| a.text).collect();
    let score = which
        .iter()
        .zip(&texts)
        .filter(|(&e, a)| tasks::is_correct(&exam[e], a))
        .count();
    Ok((score, texts))
}

/// An exam prompt: the example, the question, and the assistant's turn opened (with the prefill
/// when there is one).
fn exam_ids<B: Backend>(
    student: &Student<B>,
    cfg: &TeachConfig,
    shots: &[(String, String)],
    question: &str,
) -> Result<Vec<u32>> {
    let mut m = messages_in(cfg.context, shots, None, &cfg.style.question(question));
    let Some(prefill) = cfg.prefill.as_deref() else {
        return student.tokenizer().encode_chat(&m, true);
    };
    // Rendered as a finished assistant turn, then its end-of-turn dropped, so the prefill is
    // tokenised exactly as the template writes it.
    m.push(ChatMessage::assistant(prefill.to_string()));
    let mut ids = student.tokenizer().encode_chat(&m, false)?;
    while ids.last().is_some_and(|t| student.eos_ids().contains(t)) {
        ids.pop();
    }
    Ok(ids)
}

/// MAJ, MAX and SUM over (answer, score) pairs. Ties go to the answer seen first.
pub fn select(pairs: &[(String, usize)]) -> (String, String, String) {
    let mut order: Vec<&str> = vec![];
    let mut count: BTreeMap<&str, usize> = BTreeMap::new();
    let mut sum: BTreeMap<&str, usize> = BTreeMap::new();
    for (a, s) in pairs {
        if !order.contains(&a.as_str()) {
            order.push(a);
        }
        *count.entry(a).or_default() += 1;
        *sum.entry(a).or_default() += s;
    }
    let best_by = |m: &BTreeMap<&str, usize>| -> String {
        let mut best: Option<(&str, usize)> = None;
        for a in &order {
            let v = m[a];
            if best.is_none_or(|(_, b)| v > b) {
                best = Some((a, v));
            }
        }
        best.map(|(a, _)| a.to_string()).unwrap_or_default()
    };
    let mut max: Option<(&str, usize)> = None;
    for (a, s) in pairs {
        if max.is_none_or(|(_, b)| *s > b) {
            max = Some((a, *s));
        }
    }
    (
        best_by(&count),
        max.map(|(a, _)| a.to_string()).unwrap_or_default(),
        best_by(&sum),
    )
}

/// The lines of `path` an earlier run finished, kept as written (a float parsed and printed
/// again may change its last digit): those that parse, up to a torn one (a killed run), and that
/// `keep` accepts. The file is rewritten to hold just them, so later lines append cleanly.
fn keep_lines(path: &Path, keep: impl Fn(&Value) -> bool) -> Result<Vec<Value>> {
    if !path.exists() {
        return Ok(vec![]);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut kept = vec![];
    let mut out = String::new();
    for l in text.lines() {
        let Ok(v) = serde_json::from_str::<Value>(l) else {
            break;
        };
        if keep(&v) {
            out += l;
            out += "\n";
            kept.push(v);
        }
    }
    std::fs::write(path, out).map_err(|e| Error::io(path, e))?;
    Ok(kept)
}

/// Teaching problems and, for each, its exam: other pool problems of its topic.
fn plan(cfg: &TeachConfig) -> (Vec<usize>, Vec<Vec<usize>>) {
    let mut rng = LoopRng(cfg.seed ^ 0x7EAC);
    let mut order: Vec<usize> = (0..cfg.pool.len()).collect();
    rng.shuffle(&mut order);
    let teach: Vec<usize> = order.iter().copied().take(cfg.teach_problems).collect();
    let rest: Vec<usize> = order.iter().copied().skip(cfg.teach_problems).collect();
    let exams = teach
        .iter()
        .map(|&tp| {
            let same: Vec<usize> = rest
                .iter()
                .copied()
                .filter(|&i| cfg.pool[i].topic() == cfg.pool[tp].topic())
                .collect();
            rng.sample(&same, cfg.exam_problems)
        })
        .collect();
    (teach, exams)
}

pub fn run<B: Backend>(
    teacher: &dyn ModelClient,
    student: &Student<B>,
    cfg: &TeachConfig,
) -> Result<Value> {
    tasks::check_sizes(
        "teach",
        &[
            ("teach_problems", cfg.teach_problems, 1),
            ("rationales", cfg.rationales, 1),
            ("exam_problems", cfg.exam_problems, 1),
            ("repeats", cfg.repeats, 1),
            ("max_tokens", cfg.max_tokens, 1),
        ],
    )?;
    if cfg.pool.len() < 2 {
        return Err(Error::InvalidRequest(format!(
            "teach: the pool has {} problems; it needs a teaching problem and exam problems",
            cfg.pool.len()
        )));
    }
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let t0 = std::time::Instant::now();
    let problems_path = cfg.out.join("problems.jsonl");
    let rationales_path = cfg.out.join("rationales.jsonl");
    let rounds_path = cfg.out.join("rounds.jsonl");
    let mut done = if cfg.resume {
        let done = keep_lines(&problems_path, |_| true)?;
        // Rationales of a problem the earlier run did not finish are written again; the adaptive
        // rounds run again whole.
        keep_lines(&rationales_path, |r| {
            done.iter().any(|d| d["index"] == r["index"])
        })?;
        if rounds_path.exists() {
            std::fs::remove_file(&rounds_path).map_err(|e| Error::io(&rounds_path, e))?;
        }
        done
    } else {
        for p in [&problems_path, &rationales_path, &rounds_path] {
            if p.exists() {
                std::fs::remove_file(p).map_err(|e| Error::io(p, e))?;
            }
        }
        vec![]
    };
    let (teach, exams) = plan(cfg);
    let mut stats = PrefillStats::default();
    let mut teacher_seconds = 0.0;
    let resumed = teach
        .iter()
        .enumerate()
        .filter(|(k, _)| done.iter().any(|d| d["index"] == json!(k)))
        .count();
    let progress = Progress::new(
        "teach: problems",
        teach.len() as u64,
        resumed as u64,
        "problems",
    );
    for (k, (&tp, exam_idx)) in teach.iter().zip(&exams).enumerate() {
        if done.iter().any(|d| d["index"] == json!(k)) {
            continue;
        }
        let task = &cfg.pool[tp];
        let exam: Vec<Task> = exam_idx.iter().map(|&i| cfg.pool[i].clone()).collect();
        let seed = mix(cfg.seed, k as u64);
        let t1 = std::time::Instant::now();
        let generated_before = stats.generated_tokens;
        let (responses, teacher_tokens) = teacher_samples(
            teacher,
            cfg,
            &[ChatMessage::user(cfg.style.question(&task.question))],
            cfg.rationales,
            seed,
        )?;
        teacher_seconds += t1.elapsed().as_secs_f64();
        let (zero, _) = exam_score(student, cfg, None, &exam, seed, &mut stats)?;
        let mut pairs = vec![];
        for (j, r) in responses.iter().enumerate() {
            let (score, answers) = exam_score(
                student,
                cfg,
                Some((&task.question, r)),
                &exam,
                seed,
                &mut stats,
            )?;
            let ta = answer_key(task, r);
            let ta_correct = tasks::is_correct(task, r);
            append_jsonl(
                &rationales_path,
                &json!({"index": k, "pair": j, "question": task.question, "topic": task.topic, "response": r,
                        "answer": ta, "answer_correct": ta_correct, "lbt_score": score, "student_answers": answers}),
            )?;
            pairs.push((ta, score, ta_correct));
        }
        let sel: Vec<(String, usize)> = pairs.iter().map(|(a, s, _)| (a.clone(), *s)).collect();
        let (maj, max, sum) = select(&sel);
        let ok = |a: &str| {
            tasks::normalize(a) == tasks::normalize(&task.answer) || {
                task.labels.is_some() && tasks::is_correct(task, a)
            }
        };
        let n_exam = (exam.len() * cfg.repeats.max(1)).max(1) as f64;
        let line = json!({
            "index": k, "question": task.question, "topic": task.topic, "reference": task.answer,
            "maj": maj, "max": max, "sum": sum, "maj_correct": ok(&maj), "max_correct": ok(&max), "sum_correct": ok(&sum),
            "teacher_sample_accuracy": pairs.iter().filter(|p| p.2).count() as f64 / pairs.len() as f64,
            "exam_size": exam.len() * cfg.repeats.max(1),
            "student_zero_shot": zero as f64 / n_exam,
            "student_with_example_mean": pairs.iter().map(|p| p.1).sum::<usize>() as f64 / pairs.len() as f64 / n_exam,
            "student_with_best_example": pairs.iter().map(|p| p.1).max().unwrap_or(0) as f64 / n_exam,
            "student_with_correct_examples": mean_score(&pairs, true) .map(|x| x / n_exam),
            "student_with_wrong_examples": mean_score(&pairs, false).map(|x| x / n_exam),
        });
        append_jsonl(&problems_path, &line)?;
        done.push(line);
        progress.inc(
            1,
            (teacher_tokens + stats.generated_tokens - generated_before) as u64,
        );
    }
    let problems_rate = progress.finish((teach.len() - resumed) as u64);
    done.sort_by_key(|d| d["index"].as_u64());
    let rate = |key: &str| {
        done.iter().filter(|d| d[key] == json!(true)).count() as f64 / done.len().max(1) as f64
    };
    let mean = |key: &str| {
        let v: Vec<f64> = done.iter().filter_map(|d| d[key].as_f64()).collect();
        if v.is_empty() {
            Value::Null
        } else {
            json!(v.iter().sum::<f64>() / v.len() as f64)
        }
    };
    let mut per_topic: BTreeMap<String, Value> = BTreeMap::new();
    let topics: std::collections::BTreeSet<String> = done
        .iter()
        .map(|d| d["topic"].as_str().unwrap_or("-").to_string())
        .collect();
    for t in topics {
        let ds: Vec<&Value> = done
            .iter()
            .filter(|d| d["topic"].as_str().unwrap_or("-") == t)
            .collect();
        let r = |key: &str| {
            ds.iter().filter(|d| d[key] == json!(true)).count() as f64 / ds.len() as f64
        };
        let m =
            |key: &str| ds.iter().filter_map(|d| d[key].as_f64()).sum::<f64>() / ds.len() as f64;
        per_topic.insert(
            t,
            json!({"problems": ds.len(), "maj": r("maj_correct"), "max": r("max_correct"), "sum": r("sum_correct"),
                   "student_zero_shot": m("student_zero_shot"), "student_with_example_mean": m("student_with_example_mean")}),
        );
    }
    let (adaptive, adaptive_rate) = if cfg.rounds > 0 {
        let (a, r) = adaptive_rounds(teacher, student, cfg, &teach, &mut stats, &rounds_path)?;
        (a, json!(r))
    } else {
        (Value::Null, Value::Null)
    };
    let secs = t0.elapsed().as_secs_f64();
    let manifest = json!({
        "loop": "teach", "teacher": teacher.name(), "student": student.name(), "seed": cfg.seed,
        "style": format!("{:?}", cfg.style).to_lowercase(), "context": format!("{:?}", cfg.context).to_lowercase(), "prefill": cfg.prefill,"teach_problems": done.len(), "rationales": cfg.rationales,
        "exam_problems": cfg.exam_problems, "repeats": cfg.repeats, "teacher_temperature": cfg.teacher_temperature,
        "teacher_top_k": cfg.teacher_top_k, "exam_temperature": cfg.exam_temperature, "max_tokens": cfg.max_tokens,
        "selection_accuracy": {"maj": rate("maj_correct"), "max": rate("max_correct"), "sum": rate("sum_correct")},
        "teacher_sample_accuracy": mean("teacher_sample_accuracy"),
        "student_exam": {"zero_shot": mean("student_zero_shot"), "with_example_mean": mean("student_with_example_mean"),
                         "with_best_example": mean("student_with_best_example"),
                         "with_correct_examples": mean("student_with_correct_examples"),
                         "with_wrong_examples": mean("student_with_wrong_examples")},
        "per_topic": per_topic, "adaptive": adaptive,
        "prefix_cache": {"enabled": cfg.share_prefix, "student": stats.json()},
        "teacher_seconds": teacher_seconds, "seconds": secs,
        "steps": {"problems": problems_rate, "adaptive": adaptive_rate}, "version": env!("CARGO_PKG_VERSION"),
    });
    super::write_manifest(&cfg.out, &manifest)?;
    Ok(manifest)
}

fn mean_score(pairs: &[(String, usize, bool)], correct: bool) -> Option<f64> {
    let v: Vec<usize> = pairs
        .iter()
        .filter(|p| p.2 == correct)
        .map(|p| p.1)
        .collect();
    (!v.is_empty()).then(|| v.iter().sum::<usize>() as f64 / v.len() as f64)
}

/// The student's held-out answers with one example per topic in context.
fn heldout_exam<B: Backend>(
    student: &Student<B>,
    cfg: &TeachConfig,
    material: &BTreeMap<String, (String, String, usize)>,
    stats: &mut PrefillStats,
) -> Result<(Vec<bool>, Vec<String>)> {
    let mut groups: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
    for (i, t) in cfg.heldout.iter().enumerate() {
        groups.entry(t.topic()).or_default().push(i);
    }
    let mut texts = vec![String::new(); cfg.heldout.len()];
    for (topic, idx) in groups {
        let shots: Vec<(String, String)> = material
            .get(topic)
            .map(|(q, a, _)| vec![(cfg.style.question(q), cfg.demo_answer(a))])
            .unwrap_or_default();
        let prompts: Vec<Vec<u32>> = idx
            .iter()
            .map(|&i| exam_ids(student, cfg, &shots, &cfg.heldout[i].question))
            .collect::<Result<_>>()?;
        let params = vec![
            SamplingParams {
                max_tokens: cfg.max_tokens,
                ..SamplingParams::greedy()
            };
            prompts.len()
        ];
        let ans = learner::generate_shared(student, &prompts, &params, cfg.share_prefix, stats)?;
        for (i, a) in idx.into_iter().zip(ans) {
            texts[i] = a.text;
        }
    }
    let correct = cfg
        .heldout
        .iter()
        .zip(&texts)
        .map(|(t, a)| tasks::is_correct(t, a))
        .collect();
    Ok((correct, texts))
}

fn adaptive_rounds<B: Backend>(
    teacher: &dyn ModelClient,
    student: &Student<B>,
    cfg: &TeachConfig,
    used: &[usize],
    stats: &mut PrefillStats,
    rounds_path: &Path,
) -> Result<(Value, StepRate)> {
    if cfg.heldout.is_empty() {
        return Err(Error::InvalidRequest(
            "adaptive rounds need a held-out set".into(),
        ));
    }
    // topic → (question, example answer, LbT score)
    let mut material: BTreeMap<String, (String, String, usize)> = BTreeMap::new();
    let mut used: Vec<usize> = used.to_vec();
    let mut rng = LoopRng(cfg.seed ^ 0xADA9);
    let mut out = vec![];
    let progress = Progress::new("teach: adaptive rounds", cfg.rounds as u64 + 1, 0, "rounds");
    let mut tokens = stats.generated_tokens;
    for round in 0..=cfg.rounds {
        let (correct, texts) = heldout_exam(student, cfg, &material, stats)?;
        let acc = tasks::accuracy_json(&cfg.heldout, &correct);
        let line = json!({"round": round, "accuracy": acc,
                          "material": material.iter().map(|(k, v)| (k.clone(), json!({"question": v.0, "example": v.1, "lbt_score": v.2}))).collect::<serde_json::Map<_, _>>()});
        append_jsonl(rounds_path, &line)?;
        progress.inc(1, (stats.generated_tokens - tokens) as u64);
        tokens = stats.generated_tokens;
        out.push(line);
        if round == cfg.rounds {
            break;
        }
        // Topics with failures, weakest first.
        let (per, _) = tasks::accuracy_by_topic(&cfg.heldout, &correct);
        let mut weak: Vec<(String, f64)> = per
            .into_iter()
            .filter(|(_, c, n)| c < n)
            .map(|(t, c, n)| (t, c as f64 / n as f64))
            .collect();
        weak.sort_by(|a, b| a.1.total_cmp(&b.1).then(a.0.cmp(&b.0)));
        for (topic, _) in weak {
            let candidates: Vec<usize> = (0..cfg.pool.len())
                .filter(|i| !used.contains(i) && cfg.pool[*i].topic() == topic)
                .collect();
            if candidates.len() < 2 {
                continue;
            }
            let picked = rng.sample(&candidates, 1 + cfg.exam_problems);
            used.extend(&picked);
            let tp = &cfg.pool[picked[0]];
            let exam: Vec<Task> = picked[1..].iter().map(|&i| cfg.pool[i].clone()).collect();
            let failures: Vec<String> = cfg
                .heldout
                .iter()
                .zip(&correct)
                .zip(&texts)
                .filter(|((t, c), _)| !**c && t.topic() == topic)
                .take(3)
                .map(|((t, _), a)| {
                    format!(
                        "Question: {}\nStudent's wrong answer: {}",
                        t.question,
                        tasks::extract_answer(a)
                    )
                })
                .collect();
            let prompt = match cfg.style {
                Style::Plain => vec![ChatMessage::user(tp.question.clone())],
                Style::Cot => vec![ChatMessage::user(format!(
                    "A student got these questions wrong:\n\n{}\n\nWrite a clear worked solution to the following problem that would help this student.\n\n{}",
                    failures.join("\n\n"),
                    cfg.style.question(&tp.question)
                ))],
            };
            let seed = mix(cfg.seed ^ 0xADA9, (round * 1000) as u64 + picked[0] as u64);
            let (responses, _) = teacher_samples(teacher, cfg, &prompt, cfg.rationales, seed)?;
            // The material to beat: the topic's current example (or none) on the same exam.
            let current = material.get(&topic).map(|(q, a, _)| (q.clone(), a.clone()));
            let (base, _) = exam_score(
                student,
                cfg,
                current.as_ref().map(|(q, a)| (q.as_str(), a.as_str())),
                &exam,
                seed,
                stats,
            )?;
            let mut best: Option<(String, usize)> = None;
            for r in responses {
                let (score, _) =
                    exam_score(student, cfg, Some((&tp.question, &r)), &exam, seed, stats)?;
                if best.as_ref().is_none_or(|b| score > b.1) {
                    best = Some((r, score));
                }
            }
            if let Some((r, score)) = best.filter(|b| b.1 > base) {
                material.insert(topic, (tp.question.clone(), r, score));
            }
        }
    }
    Ok((json!(out), progress.finish(cfg.rounds as u64 + 1)))
}
