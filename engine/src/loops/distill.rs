//! Logit distillation data and teacher/student divergence.
//!
//! The teacher scores a dataset (teacher forcing) and writes per position the top-k next-token
//! logprobs (raw: before temperature and penalties) and the actual token's logprob and rank within
//! them, as JSONL rows `{input_ids, token_ids, top_values, token_logprobs, token_ranks}`. With both
//! models in process, [`divergence`] compares their full next-token distributions: forward
//! KL(teacher‖student), reverse KL, generalised JSD(β), total variation and top-1 agreement.

use super::client::ModelClient;
use crate::backend::Backend;
use crate::engine::Engine;
use crate::error::{Error, Result};
use crate::generate::Prompt;
use crate::models::SeqStep;
use crate::sampling::log_softmax_into;
use crate::tokenizer::ChatMessage;
use crate::trace::NoTrace;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// One dataset record: text, chat messages, or a question with its answer (scored as a two-turn
/// chat, the answer as the assistant's turn).
#[derive(Clone, Debug, Deserialize)]
pub struct Record {
    pub text: Option<String>,
    pub messages: Option<Vec<ChatMessage>>,
    pub question: Option<String>,
    pub answer: Option<String>,
    pub task: Option<String>,
}

/// A record as token ids, and where its completion starts (divergences are taken over the
/// completion: the assistant's turn, or every position for plain text).
#[derive(Clone, Debug)]
pub struct Tokenised {
    pub ids: Vec<u32>,
    pub completion_start: usize,
    pub task: Option<String>,
}

pub fn read_jsonl(path: &Path) -> Result<Vec<Record>> {
    super::read_jsonl(path)
}

/// Tokenises a record with the model's tokenizer (chat template for messages).
pub fn tokenise<B: Backend>(engine: &Engine<B>, r: &Record) -> Result<Tokenised> {
    let tok = &engine.tokenizer;
    let (ids, start) = if let Some(t) = &r.text {
        (tok.encode(t, true)?, 1)
    } else {
        let messages = match (&r.messages, &r.question, &r.answer) {
            (Some(m), _, _) => m.clone(),
            (None, Some(q), Some(a)) => vec![
                ChatMessage::user(q.clone()),
                ChatMessage::assistant(a.clone()),
            ],
            _ => {
                return Err(Error::InvalidRequest(
                    "a record needs `text`, `messages`, or `question` and `answer`".into(),
                ))
            }
        };
        let ids = tok.encode_chat(&messages, false)?;
        let start = if messages.last().is_some_and(|m| m.role == "assistant") {
            tok.encode_chat(&messages[..messages.len() - 1], true)?
                .len()
        } else {
            1
        };
        (ids, start)
    };
    engine.prompt_ids(&Prompt::Tokens(ids.clone()))?;
    let completion_start = start.min(ids.len());
    Ok(Tokenised {
        ids,
        completion_start,
        task: r.task.clone(),
    })
}

/// One scored sequence. Position t holds the distribution of the token after t.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DistillRow {
    pub input_ids: Vec<u32>,
    /// `[T][k]` most likely next tokens after each position.
    pub token_ids: Vec<Vec<u32>>,
    /// `[T][k]` their logprobs, descending.
    pub top_values: Vec<Vec<f32>>,
    /// `[T]` logprob of `input_ids[t]` given the tokens before it (`None` at 0).
    pub token_logprobs: Vec<Option<f32>>,
    /// `[T]` rank (0 = most likely) of `input_ids[t]` among the previous position's top-k, when
    /// it is there.
    pub token_ranks: Vec<Option<usize>>,
}

/// The teacher's top-k logprobs over `ids`.
pub fn distill_row(teacher: &dyn ModelClient, ids: &[u32], top_k: usize) -> Result<DistillRow> {
    let lps = teacher.prompt_logprobs(&Prompt::Tokens(ids.to_vec()), top_k)?;
    if lps.len() != ids.len() {
        return Err(Error::InvalidRequest(format!(
            "the teacher scored {} of {} tokens",
            lps.len(),
            ids.len()
        )));
    }
    let token_ranks = (0..ids.len())
        .map(|t| {
            if t == 0 {
                None
            } else {
                lps[t - 1]
                    .top_logprobs
                    .iter()
                    .position(|a| a.token_id == ids[t])
            }
        })
        .collect();
    Ok(DistillRow {
        input_ids: ids.to_vec(),
        token_ids: lps
            .iter()
            .map(|l| l.top_logprobs.iter().map(|a| a.token_id).collect())
            .collect(),
        top_values: lps
            .iter()
            .map(|l| l.top_logprobs.iter().map(|a| a.logprob).collect())
            .collect(),
        token_logprobs: lps.iter().map(|l| l.logprob).collect(),
        token_ranks,
    })
}

/// Which shard files a run writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardFormat {
    Parquet,
    Jsonl,
    Both,
}

impl ShardFormat {
    pub fn parse(s: &str) -> Result<Self> {
        match s {
            "parquet" => Ok(ShardFormat::Parquet),
            "jsonl" => Ok(ShardFormat::Jsonl),
            "both" => Ok(ShardFormat::Both),
            other => Err(Error::InvalidRequest(format!(
                "unknown shard format `{other}`: use `parquet`, `jsonl` or `both`"
            ))),
        }
    }
    fn extensions(&self) -> &'static [&'static str] {
        match self {
            ShardFormat::Parquet => &["parquet"],
            ShardFormat::Jsonl => &["jsonl"],
            ShardFormat::Both => &["parquet", "jsonl"],
        }
    }
}

#[derive(Clone, Debug)]
pub struct DistillConfig {
    /// Run directory: shards, `state.json`, `manifest.json`.
    pub out: PathBuf,
    pub top_k: usize,
    pub format: ShardFormat,
    /// Rows per shard (DistillKit writes 256).
    pub shard_rows: usize,
    /// Continue the run in `out` after its last complete shard.
    pub resume: bool,
    /// Stop after writing this many shards in this invocation (a run in slices).
    pub stop_after_shards: Option<usize>,
}

/// Progress of a distillation run, saved after every shard. The dataset and options are kept so
/// a resume against different data or options is refused instead of mixing shards.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
struct DistillState {
    records: usize,
    data_hash: String,
    top_k: usize,
    shard_rows: usize,
    format: ShardFormat,
    rows_done: usize,
    shards: Vec<String>,
    tokens: u64,
}

/// FNV-1a over every sequence's length and ids: identifies the tokenised dataset.
fn data_hash(seqs: &[Tokenised]) -> String {
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    let mut eat = |x: u64| {
        for b in x.to_le_bytes() {
            h ^= b as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01B3);
        }
    };
    for s in seqs {
        eat(s.ids.len() as u64);
        for &id in &s.ids {
            eat(id as u64);
        }
    }
    format!("{h:016x}")
}

fn is_shard_file(name: &str) -> bool {
    let Some(rest) = name.strip_prefix("distill-") else {
        return false;
    };
    let stem = rest
        .strip_suffix(".parquet")
        .or_else(|| rest.strip_suffix(".jsonl"))
        .or_else(|| rest.strip_suffix(".tmp"));
    stem.is_some_and(|s| s.len() == 5 && s.bytes().all(|b| b.is_ascii_digit()))
}

/// Scores `seqs` with the teacher and writes shards of `shard_rows` rows as the run proceeds;
/// returns this invocation's summary (shards, tokens, rates). A resumed run redoes only the rows
/// after the last complete shard, and teacher forcing is deterministic, so its shards are
/// byte-identical to an uninterrupted run's.
pub fn run(
    teacher: &dyn ModelClient,
    seqs: &[Tokenised],
    cfg: &DistillConfig,
) -> Result<serde_json::Value> {
    if cfg.shard_rows == 0 {
        return Err(Error::InvalidRequest(
            "--shard-rows must be at least 1".into(),
        ));
    }
    if cfg.top_k == 0 {
        return Err(Error::InvalidRequest("--top-k must be at least 1".into()));
    }
    std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
    let state_path = cfg.out.join("state.json");
    let fresh = DistillState {
        records: seqs.len(),
        data_hash: data_hash(seqs),
        top_k: cfg.top_k,
        shard_rows: cfg.shard_rows,
        format: cfg.format,
        rows_done: 0,
        shards: vec![],
        tokens: 0,
    };
    let mut state = if cfg.resume && state_path.exists() {
        let text = std::fs::read_to_string(&state_path).map_err(|e| Error::io(&state_path, e))?;
        let saved: DistillState = serde_json::from_str(&text).map_err(|e| Error::Json {
            path: state_path.clone(),
            message: e.to_string(),
        })?;
        let mismatch = [
            (
                "records",
                saved.records.to_string(),
                fresh.records.to_string(),
            ),
            (
                "data (token hash)",
                saved.data_hash.clone(),
                fresh.data_hash.clone(),
            ),
            ("--top-k", saved.top_k.to_string(), fresh.top_k.to_string()),
            (
                "--shard-rows",
                saved.shard_rows.to_string(),
                fresh.shard_rows.to_string(),
            ),
            (
                "--format",
                format!("{:?}", saved.format).to_lowercase(),
                format!("{:?}", fresh.format).to_lowercase(),
            ),
        ]
        .into_iter()
        .find(|(_, a, b)| a != b);
        if let Some((what, a, b)) = mismatch {
            return Err(Error::InvalidRequest(format!(
                "cannot resume {}: it was started with {what} {a}, this run has {b}",
                cfg.out.display()
            )));
        }
        saved
    } else {
        // A fresh run: shards of an earlier run in this directory must not mix with ours.
        let entries = std::fs::read_dir(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
        for entry in entries.flatten() {
            if is_shard_file(&entry.file_name().to_string_lossy()) {
                let p = entry.path();
                std::fs::remove_file(&p).map_err(|e| Error::io(&p, e))?;
            }
        }
        fresh
    };
    let resumed_from = state.rows_done;
    let progress = super::progress::Progress::new(
        "distill",
        seqs.len() as u64,
        state.rows_done as u64,
        "prompts",
    );
    let mut written_now = 0;
    let mut paused = false;
    while state.rows_done < seqs.len() {
        if cfg.stop_after_shards.is_some_and(|n| written_now >= n) {
            paused = true;
            break;
        }
        let end = (state.rows_done + cfg.shard_rows).min(seqs.len());
        let mut rows = Vec::with_capacity(end - state.rows_done);
        for (i, s) in seqs[state.rows_done..end].iter().enumerate() {
            let row = distill_row(teacher, &s.ids, cfg.top_k).map_err(|e| {
                Error::InvalidRequest(format!("record {}: {e}", state.rows_done + i + 1))
            })?;
            progress.inc(1, row.input_ids.len() as u64);
            state.tokens += row.input_ids.len() as u64;
            rows.push(row);
        }
        let index = state.rows_done / cfg.shard_rows;
        for ext in cfg.format.extensions() {
            let name = format!("distill-{index:05}.{ext}");
            let path = cfg.out.join(&name);
            if *ext == "parquet" {
                super::shards::write_parquet(&path, &rows)?;
            } else {
                super::shards::write_jsonl(&path, &rows)?;
            }
            state.shards.push(name);
        }
        state.rows_done = end;
        written_now += 1;
        std::fs::write(
            &state_path,
            serde_json::to_string_pretty(&state).unwrap_or_default(),
        )
        .map_err(|e| Error::io(&state_path, e))?;
    }
    let rate = progress.finish((state.rows_done - resumed_from) as u64);
    Ok(serde_json::json!({
        "records": seqs.len(), "top_k": cfg.top_k, "format": cfg.format, "shard_rows": cfg.shard_rows,
        "shards": state.shards, "rows_done": state.rows_done, "tokens": state.tokens,
        "resumed_from_row": resumed_from, "paused": paused, "data_hash": state.data_hash,
        "step": rate, "prompts_per_s": rate.items_per_sec(), "tokens_per_s": rate.tokens_per_sec(),
    }))
}

/// Divergences of two next-token distributions given as logits (full vocabulary, f64 sums).
#[derive(Clone, Copy, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Divergence {
    /// KL(teacher ‖ student)
    pub forward_kl: f64,
    /// KL(student ‖ teacher)
    pub reverse_kl: f64,
    /// β·KL(T‖M) + (1−β)·KL(S‖M), M = β·T + (1−β)·S
    pub jsd: f64,
    /// ½ Σ |T − S|
    pub tvd: f64,
    /// 1 when both argmaxes agree.
    pub top1_agree: f64,
}

impl Divergence {
    fn add(&mut self, o: &Divergence) {
        self.forward_kl += o.forward_kl;
        self.reverse_kl += o.reverse_kl;
        self.jsd += o.jsd;
        self.tvd += o.tvd;
        self.top1_agree += o.top1_agree;
    }

    fn scale(&self, s: f64) -> Divergence {
        Divergence {
            forward_kl: self.forward_kl * s,
            reverse_kl: self.reverse_kl * s,
            jsd: self.jsd * s,
            tvd: self.tvd * s,
            top1_agree: self.top1_agree * s,
        }
    }
}

/// From two log-probability vectors over the same vocabulary.
pub fn divergence(teacher_lp: &[f32], student_lp: &[f32], beta: f64) -> Divergence {
    let (mut fkl, mut rkl, mut jt, mut js, mut tvd) = (0f64, 0f64, 0f64, 0f64, 0f64);
    let (mut bt, mut bs) = ((0usize, f32::NEG_INFINITY), (0usize, f32::NEG_INFINITY));
    for (i, (&a, &b)) in teacher_lp.iter().zip(student_lp).enumerate() {
        let (lt, ls) = (a as f64, b as f64);
        let (pt, ps) = (lt.exp(), ls.exp());
        if pt > 0.0 {
            fkl += pt * (lt - ls);
        }
        if ps > 0.0 {
            rkl += ps * (ls - lt);
        }
        let m = beta * pt + (1.0 - beta) * ps;
        if m > 0.0 {
            let lm = m.ln();
            if pt > 0.0 {
                jt += pt * (lt - lm);
            }
            if ps > 0.0 {
                js += ps * (ls - lm);
            }
        }
        tvd += (pt - ps).abs();
        if a > bt.1 {
            bt = (i, a);
        }
        if b > bs.1 {
            bs = (i, b);
        }
    }
    Divergence {
        forward_kl: fkl,
        reverse_kl: rkl,
        jsd: beta * jt + (1.0 - beta) * js,
        tvd: 0.5 * tvd,
        top1_agree: (bt.0 == bs.0) as u8 as f64,
    }
}

/// Refuses a teacher/student pair whose vocabularies differ, naming the difference.
pub fn check_vocabularies<T: Backend, S: Backend>(
    teacher: &Engine<T>,
    student: &Engine<S>,
) -> Result<()> {
    let (vt, vs) = (teacher.config().vocab_size, student.config().vocab_size);
    if vt != vs {
        return Err(Error::InvalidRequest(format!(
            "teacher `{}` has a vocabulary of {vt} tokens and student `{}` {vs}: logit distillation needs the same tokenizer",
            teacher.info.name, student.info.name
        )));
    }
    for id in (0..vt as u32).step_by((vt / 997).max(1)) {
        let (a, b) = (
            teacher.tokenizer.id_to_token(id),
            student.tokenizer.id_to_token(id),
        );
        if a != b {
            return Err(Error::InvalidRequest(format!(
                "teacher and student tokenizers differ at id {id}: {a:?} vs {b:?}: logit distillation needs the same tokenizer"
            )));
        }
    }
    Ok(())
}

/// Per-sequence divergence averaged over its completion positions.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SequenceDivergence {
    pub task: Option<String>,
    pub positions: usize,
    pub mean: Divergence,
    /// Per completion position.
    pub per_position: Vec<Divergence>,
}

/// Runs both models over each sequence and compares their next-token distributions at every
/// position that predicts a completion token. The two models may sit on different backends.
pub fn evaluate<T: Backend, S: Backend>(
    teacher: &Engine<T>,
    student: &Engine<S>,
    data: &[Tokenised],
    beta: f64,
) -> Result<Vec<SequenceDivergence>> {
    check_vocabularies(teacher, student)?;
    let v = teacher.config().vocab_size;
    let (mut lt, mut ls) = (vec![0f32; v], vec![0f32; v]);
    let progress = super::progress::Progress::new("distill eval", data.len() as u64, 0, "prompts");
    let out = data
        .iter()
        .map(|d| {
            let (t, s) = (all_logits(teacher, &d.ids)?, all_logits(student, &d.ids)?);
            let first = d.completion_start.saturating_sub(1);
            let mut per = vec![];
            let mut sum = Divergence::default();
            for pos in first..d.ids.len().saturating_sub(1) {
                log_softmax_into(&t[pos * v..(pos + 1) * v], &mut lt);
                log_softmax_into(&s[pos * v..(pos + 1) * v], &mut ls);
                let dv = divergence(&lt, &ls, beta);
                sum.add(&dv);
                per.push(dv);
            }
            let n = per.len();
            // Both models read every token of the sequence.
            progress.inc(1, d.ids.len() as u64);
            Ok(SequenceDivergence {
                task: d.task.clone(),
                positions: n,
                mean: sum.scale(1.0 / n.max(1) as f64),
                per_position: per,
            })
        })
        .collect();
    progress.finish(data.len() as u64);
    out
}

/// Every position's logits of one sequence (teacher forcing from an empty cache).
fn all_logits<B: Backend>(e: &Engine<B>, ids: &[u32]) -> Result<Vec<f32>> {
    let mut kv = e.model.new_kv();
    Ok(e.model
        .forward(
            &mut [SeqStep {
                tokens: ids,
                kv: &mut kv,
                all_logits: true,
            }],
            &mut NoTrace,
        )?
        .pop()
        .expect("one"))
}

/// Position-weighted means: overall and per task.
pub fn summarise(seqs: &[SequenceDivergence]) -> (Divergence, Vec<(String, usize, Divergence)>) {
    let mut all = Divergence::default();
    let mut n = 0usize;
    let mut tasks: std::collections::BTreeMap<String, (usize, Divergence)> = Default::default();
    for s in seqs {
        for p in &s.per_position {
            all.add(p);
            n += 1;
            let e = tasks
                .entry(s.task.clone().unwrap_or_else(|| "-".into()))
                .or_default();
            e.0 += 1;
            e.1.add(p);
        }
    }
    let per_task = tasks
        .into_iter()
        .map(|(k, (c, d))| (k, c, d.scale(1.0 / c.max(1) as f64)))
        .collect();
    (all.scale(1.0 / n.max(1) as f64), per_task)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lp(p: &[f64]) -> Vec<f32> {
        p.iter().map(|x| x.ln() as f32).collect()
    }

    #[test]
    fn divergences_by_formula() {
        let (t, s) = ([0.5, 0.3, 0.2], [0.2, 0.5, 0.3]);
        let d = divergence(&lp(&t), &lp(&s), 0.5);
        let kl = |a: &[f64], b: &[f64]| a.iter().zip(b).map(|(x, y)| x * (x / y).ln()).sum::<f64>();
        let m: Vec<f64> = t.iter().zip(&s).map(|(a, b)| 0.5 * a + 0.5 * b).collect();
        assert!((d.forward_kl - kl(&t, &s)).abs() < 1e-6);
        assert!((d.reverse_kl - kl(&s, &t)).abs() < 1e-6);
        assert!((d.jsd - (0.5 * kl(&t, &m) + 0.5 * kl(&s, &m))).abs() < 1e-6);
        assert!((d.tvd - 0.3).abs() < 1e-6);
        assert_eq!(d.top1_agree, 0.0);
        let same = divergence(&lp(&t), &lp(&t), 0.1);
        assert!(
            same.forward_kl.abs() < 1e-9
                && same.jsd.abs() < 1e-9
                && same.tvd.abs() < 1e-9
                && same.top1_agree == 1.0
        );
    }
}
