//! Alpaca-style teacher→student data: the teacher is shown 3 seed tasks and asked for 20 diverse
//! tasks in a numbered format, sampled at T 1.0 / top-p 1.0 with end-of-sequence banned and a stop
//! after task 20; the numbered response is parsed into `{instruction, input, output}` items and
//! filtered like self-instruct's instructions (length, keywords, "Write a program", first
//! character, ROUGE-L ≤ 0.7 against everything kept, or MinHash for very large pools). The run
//! directory holds `generated_items.jsonl` (kept items with their most similar instructions, appended
//! after every batch), `state.json` (counts and RNG, for `--resume`), and at the end
//! `alpaca_data.json` and `manifest.json`.

use super::append_jsonl;
use super::client::ModelClient;
use super::dedup::{Dedup, NearDupPool};
use super::self_instruct::{read_seed_tasks, text_filter, LoopRng, SeedTask};
use super::tasks::{self, Task};
use crate::error::{Error, Result};
use crate::generate::{FinishReason, GenerateRequest, Prompt};
use crate::sampling::SamplingParams;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::{Path, PathBuf};

#[derive(Clone, Debug)]
pub struct AlpacaConfig {
    pub seed_tasks: PathBuf,
    pub out: PathBuf,
    /// Stop once this many items are kept.
    pub num_items: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub max_tokens: usize,
    pub dedup: Dedup,
    /// Continue the run in `out` (state, RNG and kept items from `state.json`).
    pub resume: bool,
    /// Stop after this many batches in this invocation (a run in slices; `--resume` continues).
    pub stop_after_batches: Option<usize>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct AlpacaItem {
    pub instruction: String,
    pub input: String,
    pub output: String,
}

/// The request text: requirements, then 3 seed tasks numbered 1–3, then "4. Instruction:".
pub fn prompt(seeds: &[SeedTask]) -> String {
    let mut p = String::from(
        "You are asked to come up with 20 diverse tasks. They will be given to a model, and we will check how well it completes them.\n\
         Requirements: do not repeat verbs; vary the language and the kind of task (open questions, classification, \
         editing, reasoning, writing); each instruction is one or two sentences in English; an input, when the task needs \
         one, is a realistic example of at most 100 words, otherwise write \"<noinput>\"; the output answers the \
         instruction in fewer than 100 words.\n\nList of 20 tasks:\n",
    );
    for (i, s) in seeds.iter().enumerate() {
        let inst = s.instances.first();
        let input = inst
            .map(|x| x.input.as_str())
            .filter(|x| !x.is_empty())
            .unwrap_or("<noinput>");
        let output = inst.map(|x| x.output.as_str()).unwrap_or("");
        p += &format!(
            "###\n{n}. Instruction: {}\n{n}. Input:\n{input}\n{n}. Output:\n{output}\n",
            s.instruction.trim(),
            n = i + 1
        );
    }
    p + &format!("###\n{}. Instruction:", seeds.len() + 1)
}

/// Parses a numbered response (which continues after "4. Instruction:"). The last block is
/// dropped when the response was cut at `max_tokens`.
pub fn parse_response(text: &str, first_number: usize, truncated: bool) -> Vec<AlpacaItem> {
    let full = format!("{first_number}. Instruction:{text}");
    let mut items = vec![];
    let blocks: Vec<&str> = full.split("###").collect();
    // A response cut at max_tokens ends in an incomplete block.
    let complete = if truncated {
        blocks.len().saturating_sub(1)
    } else {
        blocks.len()
    };
    for block in &blocks[..complete] {
        let block = block.trim();
        let Some((_, rest)) = block.split_once(". Instruction:") else {
            continue;
        };
        let Some((instruction, rest)) = rest.split_once(". Input:") else {
            continue;
        };
        let Some((input, output)) = rest.split_once(". Output:") else {
            continue;
        };
        // Each marker is preceded by the item number on the line before: drop it.
        let strip_number = |s: &str| -> String {
            let s = s.trim_end();
            let cut = s.rfind('\n').map_or(0, |i| i + 1);
            let tail = &s[cut..];
            if !tail.is_empty() && tail.chars().all(|c| c.is_ascii_digit()) {
                s[..cut].trim().to_string()
            } else {
                s.trim().to_string()
            }
        };
        let instruction = strip_number(instruction)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        let mut input = strip_number(input);
        if input.to_lowercase() == "<noinput>" {
            input.clear();
        }
        items.push(AlpacaItem {
            instruction,
            input,
            output: output.trim().to_string(),
        });
    }
    items
}

/// Progress of a run, saved after every batch: `--resume` reloads it (RNG included) and
/// continues exactly where an uninterrupted run would be.
#[derive(Clone, Debug, Serialize, Deserialize, Default)]
pub struct AlpacaState {
    pub requests: usize,
    pub kept: usize,
    pub parsed: usize,
    pub rng: Option<LoopRng>,
    pub rejected: std::collections::BTreeMap<String, usize>,
    pub generated_tokens: usize,
    /// The options the run was started with (a resume with other options is refused).
    pub seed: u64,
    pub dedup: Option<Dedup>,
}

fn save_state(path: &Path, state: &AlpacaState) -> Result<()> {
    std::fs::write(
        path,
        serde_json::to_string_pretty(state).unwrap_or_default(),
    )
    .map_err(|e| Error::io(path, e))
}

pub fn run(model: &dyn ModelClient, cfg: &AlpacaConfig) -> Result<serde_json::Value> {
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let seeds = read_seed_tasks(&cfg.seed_tasks)?;
    if seeds.len() < 3 {
        return Err(Error::InvalidRequest(format!(
            "{}: need at least 3 seed tasks",
            cfg.seed_tasks.display()
        )));
    }
    let state_path = cfg.out.join("state.json");
    let items_path = cfg.out.join("generated_items.jsonl");
    let mut state = if cfg.resume && state_path.exists() {
        let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
        let st: AlpacaState = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: state_path.clone(),
            message: e.to_string(),
        })?;
        if st.seed != cfg.seed || st.dedup != Some(cfg.dedup) {
            return Err(Error::InvalidRequest(format!(
                "cannot resume {}: it was started with --seed {} and {:?}, this run has --seed {} and {:?}",
                cfg.out.display(),
                st.seed,
                st.dedup,
                cfg.seed,
                cfg.dedup
            )));
        }
        st
    } else {
        std::fs::write(&items_path, "").map_err(|e| Error::io(&items_path, e))?;
        AlpacaState {
            seed: cfg.seed,
            dedup: Some(cfg.dedup),
            ..AlpacaState::default()
        }
    };
    let mut rng = state.rng.unwrap_or(LoopRng(cfg.seed));
    let mut pool = NearDupPool::new(&cfg.dedup);
    let mut names: Vec<String> = vec![];
    for s in &seeds {
        pool.add(&s.instruction);
        names.push(s.instruction.clone());
    }
    // Keep only the items the saved state vouches for (a batch cut off mid-write is redone).
    let mut kept: Vec<AlpacaItem> = vec![];
    if cfg.resume {
        let lines: Vec<serde_json::Value> = super::read_jsonl(&items_path)?;
        if lines.len() < state.kept {
            return Err(Error::InvalidRequest(format!(
                "{} holds {} items but the saved state counts {}; start again without --resume",
                items_path.display(),
                lines.len(),
                state.kept
            )));
        }
        std::fs::write(&items_path, "").map_err(|e| Error::io(&items_path, e))?;
        for l in lines.into_iter().take(state.kept) {
            let it: AlpacaItem = serde_json::from_value(l.clone()).map_err(|e| Error::Json {
                path: items_path.clone(),
                message: e.to_string(),
            })?;
            pool.add(&it.instruction);
            names.push(it.instruction.clone());
            kept.push(it);
            append_jsonl(&items_path, &l)?;
        }
    }
    let resumed_requests = state.requests;
    let state_kept_at_start = kept.len();
    let max_requests = cfg.num_items.max(1) * 10;
    let progress =
        super::progress::Progress::new("alpaca", cfg.num_items as u64, kept.len() as u64, "items");
    let mut batches = 0;
    let mut paused = false;
    while kept.len() < cfg.num_items && state.requests < max_requests {
        if cfg.stop_after_batches.is_some_and(|n| batches >= n) {
            paused = true;
            break;
        }
        batches += 1;
        let reqs: Vec<GenerateRequest> = (0..cfg.batch_size.max(1))
            .map(|b| {
                let params = SamplingParams {
                    temperature: 1.0,
                    top_p: 1.0,
                    max_tokens: cfg.max_tokens,
                    ignore_eos: true,
                    stop: vec!["\n20".into(), "20.".into(), "20 .".into()],
                    seed: Some(cfg.seed ^ ((state.requests + b) as u64).wrapping_mul(0x9E37_79B9)),
                    ..SamplingParams::default()
                };
                GenerateRequest::new(Prompt::Text(prompt(&rng.sample(&seeds, 3))), params)
            })
            .collect();
        state.requests += reqs.len();
        // A prompt past the model's context is recorded and skipped, not fatal.
        let results: Vec<crate::generate::Completion> = match model.generate(&reqs) {
            Ok(r) => r,
            Err(Error::ContextOverflow { .. }) => {
                let mut ok = vec![];
                for r in &reqs {
                    match model.generate(std::slice::from_ref(r)) {
                        Ok(mut c) => ok.append(&mut c),
                        Err(Error::ContextOverflow { .. }) => {
                            *state.rejected.entry("prompt_too_long".into()).or_default() += 1
                        }
                        Err(e) => return Err(e),
                    }
                }
                ok
            }
            Err(e) => return Err(e),
        };
        let before = kept.len();
        let mut batch_tokens = 0;
        for c in results {
            batch_tokens += c.token_ids.len();
            let items = parse_response(&c.text, 4, c.finish_reason == FinishReason::Length);
            state.parsed += items.len();
            for it in items {
                if kept.len() >= cfg.num_items {
                    break;
                }
                if let Some(why) = text_filter(&it.instruction) {
                    *state.rejected.entry(why.into()).or_default() += 1;
                    continue;
                }
                let sim = pool.similarity(&it.instruction);
                if pool.is_duplicate(&sim) {
                    *state.rejected.entry("near_duplicate".into()).or_default() += 1;
                    continue;
                }
                let most_similar: serde_json::Map<String, serde_json::Value> = sim
                    .top
                    .iter()
                    .map(|&(i, score)| (names[i].clone(), json!(score)))
                    .collect();
                append_jsonl(
                    &items_path,
                    &json!({"instruction": it.instruction, "input": it.input, "output": it.output,
                        "most_similar_instructions": most_similar, "avg_similarity_score": sim.mean}),
                )?;
                pool.add(&it.instruction);
                names.push(it.instruction.clone());
                kept.push(it);
            }
        }
        state.generated_tokens += batch_tokens;
        state.kept = kept.len();
        state.rng = Some(rng);
        save_state(&state_path, &state)?;
        progress.inc((kept.len() - before) as u64, batch_tokens as u64);
    }
    // The bar counts kept items; the manifest's rates count prompts, as the other loops do.
    let kept_rate = progress.finish((kept.len() - state_kept_at_start) as u64);
    let rate = super::progress::StepRate {
        items: (state.requests - resumed_requests) as u64,
        ..kept_rate
    };
    if paused {
        return Ok(
            json!({"loop": "alpaca", "paused_after_batches": batches, "kept_items": kept.len()}),
        );
    }
    let path = cfg.out.join("alpaca_data.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&kept).unwrap_or_default(),
    )
    .map_err(|e| Error::io(&path, e))?;
    let summary = json!({
        "loop": "alpaca", "model": model.name(), "seed": cfg.seed, "dedup": cfg.dedup,
        "requests": state.requests, "parsed_items": state.parsed,
        "kept_items": kept.len(), "rejected": state.rejected, "generated_tokens": state.generated_tokens,
        "resumed_from_request": resumed_requests,
        "steps": {"generate": {"prompts": rate.items, "tokens": rate.tokens, "seconds": rate.seconds,
            "prompts_per_s": rate.items_per_sec(), "tokens_per_s": rate.tokens_per_sec(),
            "items_kept": kept_rate.items, "items_per_s": kept_rate.items_per_sec()}},
        "version": env!("CARGO_PKG_VERSION"),
    });
    super::write_manifest(&cfg.out, &summary)?;
    Ok(summary)
}

/// Options of [`check_on_tasks`].
#[derive(Clone, Debug)]
pub struct CheckConfig {
    pub out: PathBuf,
    /// Alpaca prompts (3 tasks shown as seed examples, 20 asked) sent to the teacher.
    pub requests: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub max_tokens: usize,
    pub dedup: Dedup,
}

/// Seed tasks made of checkable tasks: the question as the instruction, no input, the answer as
/// the output.
pub fn seeds_from_tasks(tasks: &[Task]) -> Vec<SeedTask> {
    tasks
        .iter()
        .map(|t| SeedTask {
            instruction: t.question.clone(),
            instances: vec![super::self_instruct::Instance {
                input: String::new(),
                output: t.answer.clone(),
            }],
            is_classification: t.labels.is_some(),
        })
        .collect()
}

/// How much of an Alpaca-style generation on tasks with checkable answers is correct, and how
/// much survives the filters. Two parts:
/// 1. **As the anchor**: `requests` Alpaca prompts seeded with 3 of the tasks each, at the
///    anchor's sampling; the parsed items are counted, and an item whose instruction is one of
///    the tasks' questions is checked against that task's answer (others cannot be checked).
/// 2. **Teacher-written outputs**: for every task, the teacher writes the output of the item
///    whose instruction is the task's question, under its chat template and at the anchor's
///    sampling (T 1.0, top-p 1.0, seeded); each output is checked with [`tasks::is_correct`] and
///    the item goes through the loop's filters (text filters, near-duplicates against the items
///    kept before it, empty output).
///
/// Writes `check_items.jsonl` (one line per item of part 2, with its verdicts) and
/// `check_summary.json` into `out`; returns the summary.
pub fn check_on_tasks(
    model: &dyn ModelClient,
    tasks: &[Task],
    cfg: &CheckConfig,
) -> Result<serde_json::Value> {
    if tasks.len() < 3 {
        return Err(Error::InvalidRequest(
            "the check needs at least 3 tasks".into(),
        ));
    }
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let seeds = seeds_from_tasks(tasks);
    let by_question: std::collections::HashMap<&str, &Task> =
        tasks.iter().map(|t| (t.question.as_str(), t)).collect();

    // Part 1: the anchor's generation, seeded with the tasks.
    let mut rng = LoopRng(cfg.seed);
    let (mut parsed, mut checkable, mut correct_parsed, mut tokens1) = (0, 0, 0, 0);
    let progress =
        super::progress::Progress::new("alpaca check: generate", cfg.requests as u64, 0, "prompts");
    let mut sent = 0;
    while sent < cfg.requests {
        let n = cfg.batch_size.max(1).min(cfg.requests - sent);
        let reqs: Vec<GenerateRequest> = (0..n)
            .map(|b| {
                let params = SamplingParams {
                    temperature: 1.0,
                    top_p: 1.0,
                    max_tokens: cfg.max_tokens,
                    ignore_eos: true,
                    stop: vec!["\n20".into(), "20.".into(), "20 .".into()],
                    seed: Some(cfg.seed ^ ((sent + b) as u64).wrapping_mul(0x9E37_79B9)),
                    ..SamplingParams::default()
                };
                GenerateRequest::new(Prompt::Text(prompt(&rng.sample(&seeds, 3))), params)
            })
            .collect();
        sent += n;
        let results = model.generate(&reqs)?;
        let t: usize = results.iter().map(|c| c.token_ids.len()).sum();
        tokens1 += t;
        progress.inc(results.len() as u64, t as u64);
        for c in results {
            for it in parse_response(&c.text, 4, c.finish_reason == FinishReason::Length) {
                parsed += 1;
                if let Some(task) = by_question.get(it.instruction.as_str()) {
                    checkable += 1;
                    correct_parsed += tasks::is_correct(task, &it.output) as usize;
                }
            }
        }
    }
    let gen_rate = progress.finish(cfg.requests as u64);

    // Part 2: the teacher writes every task's output; verdicts and filters per item.
    let items_path = cfg.out.join("check_items.jsonl");
    std::fs::write(&items_path, "").map_err(|e| Error::io(&items_path, e))?;
    #[derive(Default, Clone, Copy)]
    struct Counts {
        items: usize,
        correct: usize,
        kept: usize,
        kept_correct: usize,
    }
    let mut per: std::collections::BTreeMap<String, Counts> = Default::default();
    let mut rejected: std::collections::BTreeMap<String, usize> = Default::default();
    // Each item is compared with the items kept before it (not with the tasks as seeds: the
    // instructions are the tasks' own questions).
    let mut kept_pool = NearDupPool::new(&cfg.dedup);
    let progress =
        super::progress::Progress::new("alpaca check: outputs", tasks.len() as u64, 0, "prompts");
    let mut index = 0;
    for chunk in tasks.chunks(cfg.batch_size.max(1)) {
        let reqs: Vec<GenerateRequest> = chunk
            .iter()
            .enumerate()
            .map(|(b, t)| {
                let params = SamplingParams {
                    temperature: 1.0,
                    top_p: 1.0,
                    max_tokens: 32,
                    seed: Some(cfg.seed ^ ((index + b) as u64).wrapping_mul(0x2545_F491)),
                    ..SamplingParams::default()
                };
                GenerateRequest::new(
                    Prompt::Chat(vec![crate::tokenizer::ChatMessage::user(
                        t.question.clone(),
                    )]),
                    params,
                )
            })
            .collect();
        index += chunk.len();
        let results = model.generate(&reqs)?;
        progress.inc(
            results.len() as u64,
            results.iter().map(|c| c.token_ids.len() as u64).sum(),
        );
        for (t, c) in chunk.iter().zip(results) {
            let output = c.text.trim().to_string();
            let ok = tasks::is_correct(t, &output);
            let why: Option<String> = if let Some(w) = text_filter(&t.question) {
                Some(w.to_string())
            } else if output.is_empty() {
                Some("empty_output".into())
            } else {
                let sim = kept_pool.similarity(&t.question);
                kept_pool
                    .is_duplicate(&sim)
                    .then(|| "near_duplicate".to_string())
            };
            let e = per.entry(t.topic().to_string()).or_default();
            e.items += 1;
            e.correct += ok as usize;
            match &why {
                Some(w) => *rejected.entry(w.clone()).or_default() += 1,
                None => {
                    kept_pool.add(&t.question);
                    e.kept += 1;
                    e.kept_correct += ok as usize;
                }
            }
            append_jsonl(
                &items_path,
                &json!({"task": t.topic(), "instruction": t.question, "input": "", "output": output,
                    "answer": t.answer, "correct": ok, "rejected": why}),
            )?;
        }
    }
    let out_rate = progress.finish(tasks.len() as u64);
    let total = per.values().fold(Counts::default(), |a, c| Counts {
        items: a.items + c.items,
        correct: a.correct + c.correct,
        kept: a.kept + c.kept,
        kept_correct: a.kept_correct + c.kept_correct,
    });
    let row = |c: &Counts| json!({"items": c.items, "correct": c.correct, "kept": c.kept, "kept_correct": c.kept_correct});
    let summary = json!({
        "loop": "alpaca-check", "model": model.name(), "seed": cfg.seed, "dedup": cfg.dedup,
        "anchor_generation": {"requests": cfg.requests, "parsed_items": parsed,
            "checkable_items": checkable, "correct_items": correct_parsed, "generated_tokens": tokens1,
            "prompts_per_s": gen_rate.items_per_sec(), "tokens_per_s": gen_rate.tokens_per_sec()},
        "teacher_outputs": {"per_task": per.iter().map(|(k, c)| (k.clone(), row(c))).collect::<serde_json::Map<_, _>>(),
            "all": row(&total), "rejected": rejected, "generated_tokens": out_rate.tokens,
            "prompts_per_s": out_rate.items_per_sec(), "tokens_per_s": out_rate.tokens_per_sec()},
        "version": env!("CARGO_PKG_VERSION"),
    });
    let path = cfg.out.join("check_summary.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&summary).unwrap_or_default(),
    )
    .map_err(|e| Error::io(&path, e))?;
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbered_responses() {
        let text = " Name three primary colors.\n4. Input:\n<noinput>\n4. Output:\nRed, blue and yellow.\n\n###\n\
                    5. Instruction: Translate the sentence to French.\n5. Input:\nI like tea.\n5. Output:\nJ'aime le thé.\n###\n6. Instruction: Cut";
        let items = parse_response(text, 4, true);
        assert_eq!(
            items,
            [
                AlpacaItem {
                    instruction: "Name three primary colors.".into(),
                    input: "".into(),
                    output: "Red, blue and yellow.".into()
                },
                AlpacaItem {
                    instruction: "Translate the sentence to French.".into(),
                    input: "I like tea.".into(),
                    output: "J'aime le thé.".into()
                },
            ]
        );
        assert_eq!(
            parse_response(text, 4, false).len(),
            2,
            "an item without input and output is not an item"
        );
        let complete = "X.\n4. Input:\na\n4. Output:\nb\n###\n5. Instruction: Y z w.\n5. Input:\n<noinput>\n5. Output:\nc";
        assert_eq!(parse_response(complete, 4, false).len(), 2);
        assert_eq!(
            parse_response(complete, 4, true).len(),
            1,
            "the last block of a cut response is dropped"
        );
    }
}
