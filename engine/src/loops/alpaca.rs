//! Alpaca-style teacher→student data: the teacher is shown 3 seed tasks and asked for 20 diverse
//! tasks in a numbered format, sampled at T 1.0 / top-p 1.0 with end-of-sequence banned and a stop
//! after task 20; the numbered response is parsed into `{instruction, input, output}` items and
//! filtered like self-instruct's instructions (length, keywords, "Write a program", first
//! character, ROUGE-L ≤ 0.7 against everything kept, or MinHash for very large pools). The run
//! directory holds `generated_items.jsonl` (kept items with their most similar instructions, appended
//! after every batch), `state.json` (counts and RNG, for `--resume`), and at the end
//! `alpaca_data.json` and `manifest.json`.

use super::client::ModelClient;
use super::dedup::{Dedup, NearDupPool};
use super::self_instruct::{read_seed_tasks, text_filter, LoopRng, SeedTask};
use crate::error::{Error, Result};
use crate::generate::{FinishReason, GenerateRequest, Prompt};
use crate::sampling::SamplingParams;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::io::Write;
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

fn append(path: &Path, v: &serde_json::Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    writeln!(f, "{v}").map_err(|e| Error::io(path, e))
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
            append(&items_path, &l)?;
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
                append(
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
