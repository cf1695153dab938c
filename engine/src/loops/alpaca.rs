//! Alpaca-style teacher→student data: the teacher is shown 3 seed tasks and asked for 20 diverse
//! tasks in a numbered format, sampled at T 1.0 / top-p 1.0 with end-of-sequence banned and a stop
//! after task 20; the numbered response is parsed into `{instruction, input, output}` items and
//! filtered like self-instruct's instructions (length, keywords, "Write a program", first
//! character, ROUGE-L ≤ 0.7 against everything kept). Output: `alpaca_data.json` and
//! `manifest.json` in the run directory.

use super::client::ModelClient;
use super::rouge::RougePool;
use super::self_instruct::{read_seed_tasks, text_filter, LoopRng, SeedTask};
use crate::error::{Error, Result};
use crate::generate::{FinishReason, GenerateRequest, Prompt};
use crate::sampling::SamplingParams;
use serde::{Deserialize, Serialize};
use serde_json::json;
use std::path::PathBuf;

#[derive(Clone, Debug)]
pub struct AlpacaConfig {
    pub seed_tasks: PathBuf,
    pub out: PathBuf,
    /// Stop once this many items are kept.
    pub num_items: usize,
    pub batch_size: usize,
    pub seed: u64,
    pub max_tokens: usize,
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

pub fn run(model: &dyn ModelClient, cfg: &AlpacaConfig) -> Result<serde_json::Value> {
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let t0 = std::time::Instant::now();
    let seeds = read_seed_tasks(&cfg.seed_tasks)?;
    if seeds.len() < 3 {
        return Err(Error::InvalidRequest(format!(
            "{}: need at least 3 seed tasks",
            cfg.seed_tasks.display()
        )));
    }
    let mut rng = LoopRng(cfg.seed);
    let mut pool = RougePool::new();
    for s in &seeds {
        pool.add(&s.instruction);
    }
    let mut kept: Vec<AlpacaItem> = vec![];
    let mut rejected: std::collections::BTreeMap<String, usize> = Default::default();
    let (mut requests, mut tokens, mut parsed) = (0usize, 0usize, 0usize);
    let max_requests = cfg.num_items.max(1) * 10;
    while kept.len() < cfg.num_items && requests < max_requests {
        let reqs: Vec<GenerateRequest> = (0..cfg.batch_size.max(1))
            .map(|b| {
                let params = SamplingParams {
                    temperature: 1.0,
                    top_p: 1.0,
                    max_tokens: cfg.max_tokens,
                    ignore_eos: true,
                    stop: vec!["\n20".into(), "20.".into(), "20 .".into()],
                    seed: Some(cfg.seed ^ ((requests + b) as u64).wrapping_mul(0x9E37_79B9)),
                    ..SamplingParams::default()
                };
                GenerateRequest::new(Prompt::Text(prompt(&rng.sample(&seeds, 3))), params)
            })
            .collect();
        requests += reqs.len();
        // A prompt past the model's context is recorded and skipped, not fatal.
        let results: Vec<crate::generate::Completion> = match model.generate(&reqs) {
            Ok(r) => r,
            Err(Error::ContextOverflow { .. }) => {
                let mut ok = vec![];
                for r in &reqs {
                    match model.generate(std::slice::from_ref(r)) {
                        Ok(mut c) => ok.append(&mut c),
                        Err(Error::ContextOverflow { .. }) => {
                            *rejected.entry("prompt_too_long".into()).or_default() += 1
                        }
                        Err(e) => return Err(e),
                    }
                }
                ok
            }
            Err(e) => return Err(e),
        };
        for c in results {
            tokens += c.token_ids.len();
            let items = parse_response(&c.text, 4, c.finish_reason == FinishReason::Length);
            parsed += items.len();
            for it in items {
                if let Some(why) = text_filter(&it.instruction) {
                    *rejected.entry(why.into()).or_default() += 1;
                    continue;
                }
                if pool.max_score(&it.instruction) > 0.7 {
                    *rejected.entry("rouge".into()).or_default() += 1;
                    continue;
                }
                pool.add(&it.instruction);
                kept.push(it);
            }
        }
    }
    kept.truncate(cfg.num_items);
    let path = cfg.out.join("alpaca_data.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&kept).unwrap_or_default(),
    )
    .map_err(|e| Error::io(&path, e))?;
    let secs = t0.elapsed().as_secs_f64();
    let summary = json!({
        "loop": "alpaca", "model": model.name(), "seed": cfg.seed, "requests": requests, "parsed_items": parsed,
        "kept_items": kept.len(), "rejected": rejected, "generated_tokens": tokens, "seconds": secs,
        "prompts_per_s": requests as f64 / secs, "tokens_per_s": tokens as f64 / secs, "version": env!("CARGO_PKG_VERSION"),
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
