//! Self-instruct: a model bootstraps new tasks from seed tasks, then writes instances for them.
//!
//! The four steps of the anchor, with our own prompt texts:
//! 1. **Instructions.** Each prompt lists 8 tasks (2 machine-generated once there are any, the
//!    rest seed tasks, shuffled) and asks for more. Sampling: T 0.7, top-p 0.5, presence penalty
//!    2, stops `"\n\n"`, `"\n16"`, `"16."`, `"16 ."`. A response cut at `max_tokens` is
//!    discarded. Candidates are split on `"\n<n>. "`, whitespace-collapsed, capitalised the way
//!    Python's `str.capitalize` does, and filtered: 4–150 words, no blacklisted keyword (image,
//!    graph, picture, file, map, draw, plot, go to), not "Write a program", no punctuation or
//!    non-ASCII first character, and ROUGE-L ≤ 0.7 against every seed and machine instruction.
//! 2. **Classification identification**: a few-shot "Is it classification?" prompt, greedy.
//! 3. **Instances**: output-first (label, then input) for classification tasks, input-first
//!    otherwise; greedy, presence penalty 1.5.
//! 4. **Final filtering** into `{instruction, input, output}` (Alpaca format): drop empty or
//!    colon-ending fields, input == output, tasks whose same input has different outputs,
//!    duplicates; at most 5 instances per task.
//!
//! A run directory holds `manifest.json`, `state.json` (pool size, request index and RNG state,
//! written after every batch, so `--resume` continues exactly where an uninterrupted run would
//! be), `machine_generated_instructions.jsonl`, `is_classification.jsonl`,
//! `machine_generated_instances.jsonl` and `alpaca_data.json`.

use super::append_jsonl;
use super::client::ModelClient;
use super::dedup::{Dedup, NearDupPool};
use super::progress::{Progress, StepRate};
use crate::error::{Error, Result};
use crate::generate::{FinishReason, GenerateRequest, Prompt};
use crate::sampling::SamplingParams;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct SeedTask {
    pub instruction: String,
    #[serde(default)]
    pub instances: Vec<Instance>,
    #[serde(default)]
    pub is_classification: bool,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
pub struct Instance {
    pub input: String,
    pub output: String,
}

#[derive(Clone, Debug)]
pub struct SelfInstructConfig {
    pub seed_tasks: PathBuf,
    pub out: PathBuf,
    pub num_instructions: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub max_tokens: usize,
    pub resume: bool,
    /// Stop step 1 after this many batches in this invocation (a run in slices; `--resume`
    /// continues it).
    pub stop_after_batches: Option<usize>,
    /// Near-duplicate filter of step 1 (ROUGE-L > 0.7, as the anchor, by default).
    pub dedup: Dedup,
}

/// SplitMix64: one u64 of state, persisted between batches.
#[derive(Clone, Copy, Debug, Serialize, Deserialize, PartialEq)]
pub struct LoopRng(pub u64);

impl LoopRng {
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n.max(1) as u64) as usize
    }
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            v.swap(i, self.below(i + 1));
        }
    }
    /// `k` distinct elements, in sampled order.
    pub fn sample<T: Clone>(&mut self, v: &[T], k: usize) -> Vec<T> {
        let mut idx: Vec<usize> = (0..v.len()).collect();
        let k = k.min(v.len());
        for i in 0..k {
            let j = i + self.below(v.len() - i);
            idx.swap(i, j);
        }
        idx[..k].iter().map(|&i| v[i].clone()).collect()
    }
}

/// Python's `str.capitalize`: first character upper-case, the rest lower-case.
pub fn py_capitalize(s: &str) -> String {
    let mut c = s.chars();
    match c.next() {
        None => String::new(),
        Some(f) => f
            .to_uppercase()
            .chain(c.flat_map(|x| x.to_lowercase()))
            .collect(),
    }
}

const BLACKLIST: [&str; 11] = [
    "image", "images", "graph", "graphs", "picture", "pictures", "file", "files", "map", "maps",
    "draw",
];

/// Why a candidate instruction was dropped (or `None` if it passes the text filters).
pub fn text_filter(inst: &str) -> Option<&'static str> {
    let words = inst.split_whitespace().count();
    if words <= 3 || words > 150 {
        return Some("length");
    }
    let lower = inst.to_lowercase();
    let tokens: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
        .collect();
    if tokens.iter().any(|t| BLACKLIST.contains(t) || *t == "plot")
        || tokens.windows(2).any(|w| w == ["go", "to"])
    {
        return Some("keyword");
    }
    if inst.starts_with("Write a program") {
        return Some("program");
    }
    match inst.chars().next() {
        Some(c) if c.is_ascii_punctuation() => Some("punctuation"),
        Some(c) if !c.is_ascii() => Some("non_ascii"),
        None => Some("length"),
        _ => None,
    }
}

/// Splits a response to "…\n9." into candidate instructions.
pub fn split_response(text: &str) -> Vec<String> {
    let mut out = vec![];
    let mut rest = text;
    loop {
        // Find "\n<digits>[ ]?. "
        let mut cut = None;
        for (i, _) in rest.match_indices('\n') {
            let tail = &rest[i + 1..];
            let digits = tail.chars().take_while(|c| c.is_ascii_digit()).count();
            if digits == 0 {
                continue;
            }
            let after = &tail[digits..];
            let after = after.strip_prefix(' ').unwrap_or(after);
            if after.starts_with(". ") {
                cut = Some((i, i + 1 + (tail.len() - after.len()) + 2));
                break;
            }
        }
        match cut {
            Some((a, b)) => {
                out.push(rest[..a].to_string());
                rest = &rest[b..];
            }
            None => {
                out.push(rest.to_string());
                break;
            }
        }
    }
    out.into_iter()
        .map(|s| py_capitalize(s.split_whitespace().collect::<Vec<_>>().join(" ").trim()))
        .filter(|s| !s.is_empty())
        .collect()
}

fn clean(s: &str) -> String {
    s.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .trim()
        .trim_end_matches(':')
        .to_string()
}

pub fn instruction_prompt(tasks: &[String]) -> String {
    let mut p = String::from(
        "Below is a numbered list of diverse tasks someone might ask an assistant to do.\n",
    );
    for (i, t) in tasks.iter().enumerate() {
        p += &format!("{}. {}\n", i + 1, clean(t));
    }
    p + &format!("{}.", tasks.len() + 1)
}

const CLF_DEMOS: [(&str, bool); 8] = [
    (
        "Decide whether the review below is positive or negative.",
        true,
    ),
    ("Write a haiku about autumn leaves.", false),
    ("Tell me whether the number is prime.", true),
    ("Summarise the paragraph in one sentence.", false),
    (
        "Which language is this sentence written in: English, French or German?",
        true,
    ),
    ("Suggest three names for a coffee shop.", false),
    ("Is the following email spam? Answer yes or no.", true),
    ("Explain how a rainbow forms.", false),
];

pub fn classification_prompt(instruction: &str) -> String {
    let mut p = String::from(
        "For each task, say whether its answer is one of a small fixed set of labels.\n\n",
    );
    for (t, c) in CLF_DEMOS {
        p += &format!(
            "Task: {t}\nIs it classification? {}\n\n",
            if c { "Yes" } else { "No" }
        );
    }
    p + &format!("Task: {}\nIs it classification?", clean(instruction))
}

pub fn instance_prompt(instruction: &str, is_classification: bool) -> String {
    if is_classification {
        format!(
            "Given a classification task, first write a possible label, then an input that has that label.\n\n\
             Task: Decide whether the review is positive or negative.\nClass label: Positive\nReview: The staff were kind and the food arrived hot.\n\
             Class label: Negative\nReview: We waited an hour and nobody apologised.\n\n\
             Task: {}\n",
            clean(instruction)
        )
    } else {
        format!(
            "Given a task, write an example input (or nothing when the task needs none) and its output.\n\n\
             Task: Convert the temperature to Fahrenheit.\nExample 1\nInput: 20 degrees Celsius\nOutput: 68 degrees Fahrenheit\n\
             Example 2\nInput: 0 degrees Celsius\nOutput: 32 degrees Fahrenheit\n\n\
             Task: {}\n",
            clean(instruction)
        )
    }
}

/// Instances from a step-3 response.
pub fn parse_instances(raw: &str, is_classification: bool) -> Vec<Instance> {
    let mut out = vec![];
    if is_classification {
        for part in raw.split("Class label:").skip(1) {
            let part = part.trim();
            let (label, rest) = part.split_once('\n').unwrap_or((part, ""));
            out.push(Instance {
                input: rest.trim().to_string(),
                output: label.trim().to_string(),
            });
        }
    } else {
        for part in raw.split("Example").skip(usize::from(
            !raw.trim_start().starts_with("Example") && raw.contains("Example"),
        )) {
            // Drop the example number and read "Input: … Output: …".
            let body = part
                .trim_start_matches(|c: char| c.is_ascii_digit() || c == '.' || c.is_whitespace());
            let Some((inp, outp)) = body.split_once("Output") else {
                continue;
            };
            let outp = outp
                .trim_start_matches(|c: char| c.is_ascii_digit() || c.is_whitespace())
                .trim_start_matches(':');
            let inp = inp.trim().strip_prefix("Input:").unwrap_or(inp.trim());
            out.push(Instance {
                input: inp.trim().to_string(),
                output: outp.trim().to_string(),
            });
        }
    }
    out
}

/// Step 4's filters over one task's instances; `None` drops the whole task.
pub fn filter_instances(instances: Vec<Instance>) -> Option<Vec<Instance>> {
    let mut seen_inputs: std::collections::HashMap<String, String> = Default::default();
    let mut kept: Vec<Instance> = vec![];
    for i in instances {
        if i.output.is_empty()
            || i.input == i.output
            || i.input.ends_with(':')
            || i.output.ends_with(':')
        {
            continue;
        }
        if !i.input.is_empty() {
            if let Some(o) = seen_inputs.get(&i.input) {
                if *o != i.output {
                    return None;
                }
            }
            seen_inputs.insert(i.input.clone(), i.output.clone());
        }
        if !kept.contains(&i) {
            kept.push(i);
        }
    }
    kept.truncate(5);
    Some(kept)
}

#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct RunState {
    pub request_idx: usize,
    pub accepted: usize,
    pub rng: Option<LoopRng>,
    pub rejected: std::collections::BTreeMap<String, usize>,
    pub generated_tokens: usize,
    /// The filter the run was started with (a resume with another is refused).
    #[serde(default)]
    pub dedup: Option<Dedup>,
}

fn read_lines(path: &Path) -> Result<Vec<Value>> {
    if !path.exists() {
        return Ok(vec![]);
    }
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).map_err(|e| Error::Json {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
        })
        .collect()
}

pub fn read_seed_tasks(path: &Path) -> Result<Vec<SeedTask>> {
    read_lines(path)?
        .into_iter()
        .map(|v| {
            serde_json::from_value(v).map_err(|e| Error::Json {
                path: path.to_path_buf(),
                message: e.to_string(),
            })
        })
        .collect()
}

/// A step's throughput in this invocation, for the manifest.
fn rate_json(r: &StepRate) -> Value {
    json!({"prompts": r.items, "tokens": r.tokens, "seconds": r.seconds,
        "prompts_per_s": r.items_per_sec(), "tokens_per_s": r.tokens_per_sec()})
}

/// Runs (or resumes) all four steps; returns the run's summary.
pub fn run(model: &dyn ModelClient, cfg: &SelfInstructConfig) -> Result<Value> {
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let t0 = std::time::Instant::now();
    let seeds = read_seed_tasks(&cfg.seed_tasks)?;
    if seeds.is_empty() {
        return Err(Error::InvalidRequest(format!(
            "{}: no seed tasks",
            cfg.seed_tasks.display()
        )));
    }
    let machine_path = cfg.out.join("machine_generated_instructions.jsonl");
    let state_path = cfg.out.join("state.json");
    let mut state: RunState = if cfg.resume && state_path.exists() {
        let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
        serde_json::from_str(&text).map_err(|e| Error::Json {
            path: state_path.clone(),
            message: e.to_string(),
        })?
    } else {
        for f in [
            "machine_generated_instructions.jsonl",
            "is_classification.jsonl",
            "machine_generated_instances.jsonl",
        ] {
            let path = cfg.out.join(f);
            std::fs::write(&path, "").map_err(|e| Error::io(&path, e))?;
        }
        RunState {
            dedup: Some(cfg.dedup),
            ..RunState::default()
        }
    };
    if state.dedup.is_some_and(|d| d != cfg.dedup) {
        return Err(Error::InvalidRequest(format!(
            "cannot resume {}: it was started with the near-duplicate filter {:?}, this run has {:?}",
            cfg.out.display(),
            state.dedup,
            cfg.dedup
        )));
    }
    let mut rng = state.rng.unwrap_or(LoopRng(cfg.seed));
    // Keep only what the saved state vouches for (a batch cut off mid-write is redone).
    let mut machine: Vec<String> = read_lines(&machine_path)?
        .into_iter()
        .take(state.accepted)
        .filter_map(|v| v["instruction"].as_str().map(str::to_string))
        .collect();
    if machine.len() < state.accepted {
        return Err(Error::InvalidRequest(
            "the run directory lost accepted instructions; start again without --resume".into(),
        ));
    }
    let mut pool = NearDupPool::new(&cfg.dedup);
    let mut all: Vec<String> = vec![];
    for s in seeds.iter().map(|s| &s.instruction).chain(&machine) {
        pool.add(s);
        all.push(s.clone());
    }
    if cfg.resume {
        // Rewrite the file to exactly the vouched-for lines.
        let lines = read_lines(&machine_path)?;
        let _ = std::fs::remove_file(&machine_path);
        for l in lines.into_iter().take(state.accepted) {
            append_jsonl(&machine_path, &l)?;
        }
    }
    let seed_texts: Vec<String> = seeds.iter().map(|s| s.instruction.clone()).collect();
    let max_requests = cfg.num_instructions.saturating_mul(20).max(50);
    let mut batches = 0;
    let (requests_at_start, accepted_at_start) = (state.request_idx, machine.len());
    let progress = Progress::new(
        "self-instruct: instructions",
        cfg.num_instructions as u64,
        machine.len() as u64,
        "instructions",
    );
    while machine.len() < cfg.num_instructions && state.request_idx < max_requests {
        if cfg.stop_after_batches.is_some_and(|n| batches >= n) {
            progress.finish((machine.len() - accepted_at_start) as u64);
            return Ok(
                json!({"loop": "self-instruct", "paused_after_batches": batches, "accepted_instructions": machine.len()}),
            );
        }
        batches += 1;
        let mut requests = vec![];
        for b in 0..cfg.batch_size {
            let mut tasks = rng.sample(&machine, 2);
            tasks.extend(rng.sample(&seed_texts, 8 - tasks.len()));
            rng.shuffle(&mut tasks);
            let params = SamplingParams {
                temperature: 0.7,
                top_p: 0.5,
                presence_penalty: 2.0,
                max_tokens: cfg.max_tokens,
                stop: vec!["\n\n".into(), "\n16".into(), "16.".into(), "16 .".into()],
                seed: Some(cfg.seed ^ ((state.request_idx + b) as u64).wrapping_mul(0x9E37_79B9)),
                ..SamplingParams::default()
            };
            requests.push(GenerateRequest::new(
                Prompt::Text(instruction_prompt(&tasks)),
                params,
            ));
        }
        let results = model.generate(&requests)?;
        let (accepted_before, batch_tokens) = (
            machine.len(),
            results.iter().map(|c| c.token_ids.len()).sum::<usize>(),
        );
        for (b, c) in results.iter().enumerate() {
            state.generated_tokens += c.token_ids.len();
            if c.finish_reason == FinishReason::Length {
                *state
                    .rejected
                    .entry("truncated_response".into())
                    .or_default() += 1;
                continue;
            }
            for inst in split_response(&c.text) {
                if let Some(why) = text_filter(&inst) {
                    *state.rejected.entry(why.into()).or_default() += 1;
                    continue;
                }
                let sim = pool.similarity(&inst);
                if pool.is_duplicate(&sim) {
                    *state.rejected.entry("near_duplicate".into()).or_default() += 1;
                    continue;
                }
                let most_similar: serde_json::Map<String, Value> = sim
                    .top
                    .iter()
                    .map(|&(i, score)| (all[i].clone(), json!(score)))
                    .collect();
                let avg = sim.mean;
                append_jsonl(
                    &machine_path,
                    &json!({"instruction": inst, "most_similar": most_similar, "avg_similarity_score": avg, "request_idx": state.request_idx + b}),
                )?;
                pool.add(&inst);
                all.push(inst.clone());
                machine.push(inst);
                if machine.len() >= cfg.num_instructions {
                    break;
                }
            }
            if machine.len() >= cfg.num_instructions {
                break;
            }
        }
        state.request_idx += cfg.batch_size;
        state.accepted = machine.len();
        progress.inc(
            (machine.len() - accepted_before) as u64,
            batch_tokens as u64,
        );
        state.rng = Some(rng);
        std::fs::write(
            &state_path,
            serde_json::to_string_pretty(&state).unwrap_or_default(),
        )
        .map_err(|e| Error::io(&state_path, e))?;
    }

    let accepted_rate = progress.finish((machine.len() - accepted_at_start) as u64);
    let instructions_rate = StepRate {
        items: (state.request_idx - requests_at_start) as u64,
        ..accepted_rate
    };
    // Step 2: classification identification (greedy, 3 tokens).
    let greedy = |max_tokens: usize, stop: Vec<String>, presence: f32| SamplingParams {
        max_tokens,
        stop,
        presence_penalty: presence,
        ..SamplingParams::greedy()
    };
    let clf_reqs: Vec<GenerateRequest> = machine
        .iter()
        .map(|m| {
            GenerateRequest::new(
                Prompt::Text(classification_prompt(m)),
                greedy(3, vec!["\n".into(), "Task".into()], 0.0),
            )
        })
        .collect();
    let mut clf = vec![];
    let clf_path = cfg.out.join("is_classification.jsonl");
    std::fs::write(&clf_path, "").map_err(|e| Error::io(&clf_path, e))?;
    let progress = Progress::new(
        "self-instruct: classification",
        machine.len() as u64,
        0,
        "prompts",
    );
    for (chunk, insts) in clf_reqs
        .chunks(cfg.batch_size.max(1))
        .zip(machine.chunks(cfg.batch_size.max(1)))
    {
        let results = model.generate(chunk)?;
        let tokens = results.iter().map(|c| c.token_ids.len()).sum::<usize>();
        progress.inc(results.len() as u64, tokens as u64);
        for (c, inst) in results.into_iter().zip(insts) {
            let yes = matches!(c.text.trim(), "Yes" | "yes" | "YES");
            append_jsonl(
                &clf_path,
                &json!({"instruction": inst, "is_classification": c.text}),
            )?;
            clf.push(yes);
        }
    }
    let clf_rate = progress.finish(machine.len() as u64);
    // Step 3: instances.
    let inst_path = cfg.out.join("machine_generated_instances.jsonl");
    std::fs::write(&inst_path, "").map_err(|e| Error::io(&inst_path, e))?;
    let mut raw = vec![];
    let tasks: Vec<(&String, bool)> = machine.iter().zip(clf.iter().copied()).collect();
    let progress = Progress::new("self-instruct: instances", tasks.len() as u64, 0, "prompts");
    for chunk in tasks.chunks(cfg.batch_size.max(1)) {
        let reqs: Vec<GenerateRequest> = chunk
            .iter()
            .map(|(m, is_clf)| {
                let stop = vec!["Example 6".into(), "Task:".into()];
                GenerateRequest::new(
                    Prompt::Text(instance_prompt(m, *is_clf)),
                    greedy(cfg.max_tokens.min(350), stop, 1.5),
                )
            })
            .collect();
        let results = model.generate(&reqs)?;
        let tokens = results.iter().map(|c| c.token_ids.len()).sum::<usize>();
        progress.inc(results.len() as u64, tokens as u64);
        for ((m, is_clf), c) in chunk.iter().zip(results) {
            append_jsonl(
                &inst_path,
                &json!({"instruction": m, "is_classification": is_clf, "raw_instances": c.text, "finish_reason": c.finish_reason.as_str()}),
            )?;
            raw.push(((*m).clone(), *is_clf, c));
        }
    }
    let instances_rate = progress.finish(tasks.len() as u64);
    // Step 4: final filtering into the Alpaca format.
    let mut alpaca = vec![];
    let mut dropped_tasks = 0;
    for (m, is_clf, c) in &raw {
        let mut instances = parse_instances(&c.text, *is_clf);
        if c.finish_reason == FinishReason::Length {
            instances.pop();
        }
        match filter_instances(instances) {
            Some(v) => alpaca.extend(
                v.into_iter()
                    .map(|i| json!({"instruction": m, "input": i.input, "output": i.output})),
            ),
            None => dropped_tasks += 1,
        }
    }
    let alpaca_path = cfg.out.join("alpaca_data.json");
    std::fs::write(
        &alpaca_path,
        serde_json::to_string_pretty(&alpaca).unwrap_or_default(),
    )
    .map_err(|e| Error::io(&alpaca_path, e))?;
    let secs = t0.elapsed().as_secs_f64();
    let summary = json!({
        "loop": "self-instruct", "model": model.name(), "seed": cfg.seed, "seed_tasks": seeds.len(),
        "requests": state.request_idx, "accepted_instructions": machine.len(), "rejected": state.rejected,
        "classification_tasks": clf.iter().filter(|&&c| c).count(), "instances": alpaca.len(), "tasks_dropped_for_conflicts": dropped_tasks,
        "generated_tokens": state.generated_tokens, "seconds": secs, "dedup": cfg.dedup,
        "resumed_from_request": requests_at_start,
        "steps": {
            "instructions": rate_json(&instructions_rate),
            "classification": rate_json(&clf_rate),
            "instances": rate_json(&instances_rate),
        },
        "version": env!("CARGO_PKG_VERSION"),
    });
    super::write_manifest(&cfg.out, &summary)?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filters_and_parsers_on_hand_made_cases() {
        assert_eq!(py_capitalize("hELLO World"), "Hello world");
        assert_eq!(text_filter("Tell me a joke"), None);
        assert_eq!(text_filter("Too short"), Some("length"));
        assert_eq!(
            text_filter("Describe the image below in detail"),
            Some("keyword")
        );
        assert_eq!(
            text_filter("Explain how to go to the station"),
            Some("keyword")
        );
        assert_eq!(
            text_filter("Explain how to plot a function"),
            Some("keyword")
        );
        assert_eq!(
            text_filter("Write a program that sorts numbers"),
            Some("program")
        );
        assert_eq!(
            text_filter("\"Quote this sentence for me please"),
            Some("punctuation")
        );
        assert_eq!(
            text_filter("Éxplain the rules of chess to me"),
            Some("non_ascii")
        );
        assert_eq!(text_filter("Explain the mapping between these words"), None);
        assert_eq!(
            split_response(" Give me a recipe\n10. list three   colors\n11 . Name a city"),
            ["Give me a recipe", "List three colors", "Name a city"]
        );
        assert_eq!(
            parse_instances(
                "Class label: Positive\nGreat film.\nClass label: Negative\nBoring.",
                true
            ),
            [
                Instance {
                    input: "Great film.".into(),
                    output: "Positive".into()
                },
                Instance {
                    input: "Boring.".into(),
                    output: "Negative".into()
                }
            ]
        );
        assert_eq!(
            parse_instances(
                "Example 1\nInput: 2+2\nOutput: 4\nExample 2\nInput: 3+3\nOutput: 6",
                false
            ),
            [
                Instance {
                    input: "2+2".into(),
                    output: "4".into()
                },
                Instance {
                    input: "3+3".into(),
                    output: "6".into()
                }
            ]
        );
        let i = |a: &str, b: &str| Instance {
            input: a.into(),
            output: b.into(),
        };
        assert_eq!(
            filter_instances(vec![
                i("a", "b"),
                i("a", "b"),
                i("x", "x"),
                i("y", ""),
                i("z:", "q")
            ]),
            Some(vec![i("a", "b")])
        );
        assert_eq!(filter_instances(vec![i("a", "b"), i("a", "c")]), None);
        let mut r = LoopRng(1);
        let s = r.sample(&[1, 2, 3, 4, 5], 3);
        assert_eq!(s.len(), 3);
        assert!(s.iter().all(|x| (1..=5).contains(x)));
    }
}
