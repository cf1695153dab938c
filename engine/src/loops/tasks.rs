//! Tasks whose answers can be checked offline: the JSONL format, built-in generators, answer
//! extraction and scoring.
//!
//! A task file has one JSON object a line: `{"question", "answer", "topic"?, "labels"?}`
//! (`task` is accepted for `topic`, so `eval.jsonl`-style files load as they are). With
//! `labels`, the task is a classification over that fixed set and is scored by label match;
//! otherwise by exact match after [`normalize`].
//!
//! Generators (seeded, no download): the eight families the bundled models were trained on
//! (`add`, `sub`, `mul`, `cmp`, `sort`, `rev`, `count`, `seq`, with the same phrasings), `arith`
//! (multi-step arithmetic word problems), `insert` (GPT-3's random insertion: recover a word
//! with a symbol inserted after each letter), and the classification tasks `sentiment`,
//! `parity` and `subject` (templated sentences with a known label).

use super::self_instruct::LoopRng;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::path::Path;

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Task {
    pub question: String,
    pub answer: String,
    #[serde(default, alias = "task", skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Vec<String>>,
}

impl Task {
    pub fn new(topic: &str, question: String, answer: String) -> Self {
        Task {
            question,
            answer,
            topic: Some(topic.to_string()),
            labels: None,
        }
    }
    pub fn topic(&self) -> &str {
        self.topic.as_deref().unwrap_or("-")
    }
}

/// Checks the sizes of a loop's configuration: each `(name, value, least)` names the setting
/// (and its command-line flag) in the error.
pub fn check_sizes(loop_name: &str, sizes: &[(&str, usize, usize)]) -> Result<()> {
    for &(name, value, least) in sizes {
        if value < least {
            return Err(Error::InvalidRequest(format!(
                "{loop_name}: {name} (--{}) must be at least {least}, got {value}",
                name.replace('_', "-")
            )));
        }
    }
    Ok(())
}

pub fn read_tasks(path: &Path) -> Result<Vec<Task>> {
    super::read_jsonl(path)
}

pub fn write_tasks(path: &Path, tasks: &[Task]) -> Result<()> {
    let mut s = String::new();
    for t in tasks {
        s += &serde_json::to_string(t).unwrap_or_default();
        s.push('\n');
    }
    std::fs::write(path, s).map_err(|e| Error::io(path, e))
}

/// Every generator family.
pub const FAMILIES: [&str; 14] = [
    "add",
    "sub",
    "mul",
    "cmp",
    "sort",
    "rev",
    "count",
    "seq",
    "arith",
    "insert",
    "sentiment",
    "parity",
    "subject",
    "canary",
];

/// `n` tasks drawn round-robin from `families` (comma-separated names, or `models` for the
/// eight trained families), deterministic in `seed`.
pub fn generate(families: &str, n: usize, seed: u64) -> Result<Vec<Task>> {
    let fams: Vec<&str> = if families.trim() == "models" {
        FAMILIES[..8].to_vec()
    } else {
        families
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .collect()
    };
    if let Some(bad) = fams
        .iter()
        .find(|f| !FAMILIES.contains(f) || **f == "canary")
    {
        return Err(Error::InvalidRequest(format!(
            "unknown task family `{bad}` (known: models, {})",
            FAMILIES[..13].join(", ")
        )));
    }
    if fams.is_empty() {
        return Err(Error::InvalidRequest("no task family given".into()));
    }
    let mut rng = LoopRng(seed ^ 0x7A5C_0DE5);
    Ok((0..n)
        .map(|i| one(fams[i % fams.len()], &mut rng))
        .collect())
}

fn pick<'a>(rng: &mut LoopRng, v: &[&'a str]) -> &'a str {
    v[rng.below(v.len())]
}

fn range(rng: &mut LoopRng, lo: i64, hi: i64) -> i64 {
    lo + rng.below((hi - lo + 1) as usize) as i64
}

/// An operand with 1 to `max_digits` digits, the digit count uniform (small numbers are as common
/// as large ones, as in the models' training data).
fn operand(rng: &mut LoopRng, max_digits: u32) -> i64 {
    let d = 1 + rng.below(max_digits as usize) as u32;
    rng.below(10usize.pow(d)) as i64
}

fn pseudo_word(rng: &mut LoopRng, lo: usize, hi: usize) -> String {
    const C: &[u8] = b"bcdfghjklmnprstvwz";
    const V: &[u8] = b"aeiou";
    let len = lo + rng.below(hi - lo + 1);
    let start_vowel = rng.below(2) == 0;
    (0..len)
        .map(|i| {
            let set = if (i % 2 == 0) == start_vowel { V } else { C };
            set[rng.below(set.len())] as char
        })
        .collect()
}

fn spaced(s: &str) -> String {
    s.chars()
        .map(|c| c.to_string())
        .collect::<Vec<_>>()
        .join(" ")
}

const WORDS: [&str; 48] = [
    "garden", "window", "planet", "silver", "market", "rabbit", "pencil", "forest", "castle",
    "bridge", "doctor", "button", "candle", "dragon", "engine", "finger", "guitar", "hammer",
    "island", "jacket", "kitten", "ladder", "mirror", "needle", "orange", "pillow", "rocket",
    "saddle", "ticket", "valley", "wizard", "yellow", "anchor", "basket", "cotton", "dinner",
    "fabric", "helmet", "lemon", "magnet", "number", "office", "pepper", "river", "summer",
    "tunnel", "velvet", "winter",
];

fn one(family: &str, rng: &mut LoopRng) -> Task {
    let f = family;
    match family {
        "add" => {
            let (a, b) = (operand(rng, 3), operand(rng, 3));
            let q = match rng.below(5) {
                0 => format!("Add {a} and {b}."),
                1 => format!("Compute {a} plus {b}."),
                2 => format!("{a} + {b} = ?"),
                3 => format!("What is {a} + {b}?"),
                _ => format!("What is the sum of {a} and {b}?"),
            };
            Task::new(f, q, (a + b).to_string())
        }
        "sub" => {
            let (a, b) = (operand(rng, 3), operand(rng, 3));
            let q = match rng.below(5) {
                0 => format!("Compute {a} minus {b}."),
                1 => format!("{a} - {b} = ?"),
                2 => format!("Subtract {b} from {a}."),
                3 => format!("What is {a} - {b}?"),
                _ => format!("What is {a} take away {b}?"),
            };
            Task::new(f, q, (a - b).to_string())
        }
        "mul" => {
            let (a, b) = (operand(rng, 2), operand(rng, 2));
            let q = match rng.below(5) {
                0 => format!("Multiply {a} by {b}."),
                1 => format!("{a} x {b} = ?"),
                2 => format!("What is {a} * {b}?"),
                3 => format!("What is {a} times {b}?"),
                _ => format!("What is the product of {a} and {b}?"),
            };
            Task::new(f, q, (a * b).to_string())
        }
        "cmp" => {
            let a = operand(rng, 3);
            let mut b = operand(rng, 3);
            if a == b {
                b = (a + 1) % 1000;
            }
            let (hi, lo) = (a.max(b), a.min(b));
            let (q, ans) = match rng.below(6) {
                0 => (format!("What is the maximum of {a} and {b}?"), hi),
                1 => (format!("What is the minimum of {a} and {b}?"), lo),
                2 => (format!("Which is larger, {a} or {b}?"), hi),
                3 => (format!("Which is smaller, {a} or {b}?"), lo),
                4 => (format!("Which number is bigger: {a} or {b}?"), hi),
                _ => (format!("Which number is less: {a} or {b}?"), lo),
            };
            let mut t = Task::new(f, q, ans.to_string());
            t.labels = Some(vec![a.to_string(), b.to_string()]);
            t
        }
        "sort" => {
            let k = 3 + rng.below(3);
            let mut v: Vec<i64> = (0..k).map(|_| range(rng, 0, 99)).collect();
            let list = |v: &[i64]| {
                v.iter()
                    .map(|x| x.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let shown = list(&v);
            let q = match rng.below(4) {
                0 => format!("Arrange from lowest to highest: {shown}"),
                1 => format!("Put these numbers in increasing order: {shown}"),
                2 => format!("Sort in ascending order: {shown}"),
                _ => format!("Sort these numbers from smallest to largest: {shown}"),
            };
            v.sort();
            Task::new(f, q, list(&v))
        }
        "rev" => {
            let w = pseudo_word(rng, 3, 5);
            let r: String = w.chars().rev().collect();
            let (q, a) = match rng.below(5) {
                0 => (format!("Reverse the letters: {}", spaced(&w)), spaced(&r)),
                1 => (
                    format!("Spell backwards, letter by letter: {}", spaced(&w)),
                    spaced(&r),
                ),
                2 => (format!("Reverse the word {w}."), r),
                3 => (format!("What is {w} spelled backwards?"), r),
                _ => (format!("Write {w} backwards."), r),
            };
            Task::new(f, q, a)
        }
        "count" => {
            const L: &[u8] = b"abcdeghijklmnoprstuvwz";
            let len = 4 + rng.below(5);
            let mut w: Vec<u8> = (0..len).map(|_| L[rng.below(L.len())]).collect();
            // The letter is absent a fifth of the time, and sometimes repeated.
            let letter = if rng.below(5) == 0 {
                L[rng.below(L.len())]
            } else {
                w[rng.below(w.len())]
            };
            if rng.below(2) == 0 {
                for _ in 0..1 + rng.below(2) {
                    let i = rng.below(w.len());
                    w[i] = letter;
                }
            }
            let w = String::from_utf8(w).unwrap_or_default();
            let l = letter as char;
            let n = w.chars().filter(|&c| c == l).count();
            let q = match rng.below(4) {
                0 => format!("Count how many times {l} occurs in: {}", spaced(&w)),
                1 => format!("Count the letter {l} in {w}."),
                2 => format!("How many times does the letter {l} appear in {w}?"),
                _ => format!("How many {l}'s are in {w}?"),
            };
            Task::new(f, q, n.to_string())
        }
        "seq" => {
            let (a, d) = (range(rng, 0, 50), range(rng, 1, 12));
            let k = 4 + rng.below(2);
            let terms: Vec<String> = (0..k).map(|i| (a + d * i as i64).to_string()).collect();
            let q = match rng.below(2) {
                0 => format!("Next number in the sequence: {}, ?", terms.join(", ")),
                _ => format!("Continue the pattern: {}, ...", terms.join(", ")),
            };
            Task::new(f, q, (a + d * k as i64).to_string())
        }
        "arith" => {
            const NAMES: [&str; 8] = ["Ann", "Ben", "Cleo", "Dev", "Eva", "Finn", "Gus", "Hana"];
            const THINGS: [&str; 6] = ["apples", "marbles", "stamps", "coins", "books", "shells"];
            let (name, thing) = (pick(rng, &NAMES), pick(rng, &THINGS));
            let mut total = range(rng, 5, 40);
            let mut q = format!("{name} has {total} {thing}.");
            let steps = 2 + rng.below(2);
            for s in 0..steps {
                let then = if s == 0 { "" } else { "Then " };
                match rng.below(3) {
                    0 => {
                        let x = range(rng, 2, 20);
                        total += x;
                        q += &format!(
                            " {then}{} buys {x} more.",
                            if s == 0 { "She" } else { "she" }
                        );
                    }
                    1 => {
                        let x = range(rng, 1, total.max(1));
                        total -= x;
                        q += &format!(
                            " {then}{} gives away {x}.",
                            if s == 0 { "She" } else { "she" }
                        );
                    }
                    _ => {
                        let x = range(rng, 2, 3);
                        total *= x;
                        let times = if x == 2 { "doubles" } else { "triples" };
                        q += &format!(
                            " {then}{} {times} what she has.",
                            if s == 0 { "She" } else { "she" }
                        );
                    }
                }
            }
            q += &format!(" How many {thing} does {name} have now?");
            Task::new(f, q, total.to_string())
        }
        "insert" => {
            const SYMS: [char; 6] = ['.', ',', '!', '/', '-', '*'];
            let w = pick(rng, &WORDS);
            let mut s = String::new();
            let n = w.chars().count();
            for (i, c) in w.chars().enumerate() {
                s.push(c);
                if i + 1 < n {
                    s.push(SYMS[rng.below(SYMS.len())]);
                }
            }
            Task::new(
                f,
                format!("Remove the inserted symbols to recover the word: {s}"),
                w.to_string(),
            )
        }
        "sentiment" => {
            const ITEMS: [&str; 8] = [
                "movie", "meal", "hotel", "concert", "book", "phone", "service", "game",
            ];
            const POS: [&str; 6] = [
                "wonderful",
                "delightful",
                "excellent",
                "great",
                "lovely",
                "superb",
            ];
            const NEG: [&str; 6] = [
                "terrible",
                "awful",
                "boring",
                "dreadful",
                "poor",
                "disappointing",
            ];
            let item = pick(rng, &ITEMS);
            let positive = rng.below(2) == 0;
            let adj = if positive {
                pick(rng, &POS)
            } else {
                pick(rng, &NEG)
            };
            let q = match rng.below(3) {
                0 => format!("Review: The {item} was {adj}.\nIs this review positive or negative?"),
                1 => format!("Review: What a {adj} {item}!\nIs this review positive or negative?"),
                _ => format!(
                    "Review: I found the {item} {adj} overall.\nIs this review positive or negative?"
                ),
            };
            let mut t = Task::new(f, q, if positive { "positive" } else { "negative" }.into());
            t.labels = Some(vec!["positive".into(), "negative".into()]);
            t
        }
        "parity" => {
            let n = range(rng, 0, 999);
            let mut t = Task::new(
                f,
                format!("Is {n} even or odd?"),
                if n % 2 == 0 { "even" } else { "odd" }.into(),
            );
            t.labels = Some(vec!["even".into(), "odd".into()]);
            t
        }
        "subject" => {
            const S: [(&str, [&str; 4]); 4] = [
                (
                    "sport",
                    ["football", "tennis", "the marathon", "the swimming final"],
                ),
                ("food", ["the soup", "the bread", "the curry", "the cake"]),
                ("weather", ["the rain", "the storm", "the snow", "the fog"]),
                (
                    "music",
                    ["the violin", "the choir", "the album", "the drummer"],
                ),
            ];
            let (label, nouns) = S[rng.below(S.len())];
            let noun = pick(rng, &nouns);
            let q = match rng.below(3) {
                0 => format!("Sentence: Everyone was talking about {noun} today."),
                1 => format!("Sentence: I read a long article about {noun}."),
                _ => format!("Sentence: My friend would not stop mentioning {noun}."),
            } + "\nWhich subject is it about: sport, food, weather or music?";
            let mut t = Task::new(f, q, label.into());
            t.labels = Some(S.iter().map(|(l, _)| l.to_string()).collect());
            t
        }
        _ => unreachable!("families are checked before generating"),
    }
}

/// A random 4-digit code, the canary secret of the privacy measurements.
pub fn canary_code(rng: &mut LoopRng) -> String {
    format!("{:04}", rng.below(10_000))
}

/// Lower-case, whitespace collapsed, surrounding quotes, `$` and a final period removed;
/// numbers in canonical form (`1,234` → `1234`, `7.0` → `7`).
pub fn normalize(s: &str) -> String {
    let mut t = s.trim();
    loop {
        let before = t;
        t = t.trim_end_matches(['.', '!']).trim();
        t = t
            .strip_prefix('$')
            .map(str::trim)
            .unwrap_or(t)
            .strip_suffix('$')
            .map(str::trim)
            .unwrap_or(t);
        for q in ['"', '\'', '`'] {
            if t.len() >= 2 && t.starts_with(q) && t.ends_with(q) {
                t = t[1..t.len() - 1].trim();
            }
        }
        if t == before {
            break;
        }
    }
    let lower = t
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase();
    let digits_grouped = {
        let u = lower.strip_prefix('-').unwrap_or(&lower);
        let parts: Vec<&str> = u.split(',').collect();
        parts.len() > 1
            && !parts[0].is_empty()
            && parts[0].len() <= 3
            && parts.iter().all(|p| p.chars().all(|c| c.is_ascii_digit()))
            && parts[1..].iter().all(|p| p.len() == 3)
    };
    let num = if digits_grouped {
        lower.replace(',', "")
    } else {
        lower.clone()
    };
    if num.chars().any(|c| c.is_ascii_digit()) {
        if let Ok(x) = num.parse::<f64>() {
            if x.fract() == 0.0 && x.abs() < 1e15 {
                return format!("{}", x as i64);
            }
            return format!("{x}");
        }
    }
    lower
}

/// The answer in a response: text before an end-of-turn marker; after the last answer marker
/// (`[[Final Answer]]:`, `Final answer:`, `Answer:`, `####`) when there is one; its first
/// non-empty line.
pub fn extract_answer(response: &str) -> String {
    let mut r = response;
    for end in ["</s>", "[INST]"] {
        if let Some(i) = r.find(end) {
            r = &r[..i];
        }
    }
    let lower = r.to_lowercase();
    let mut cut = None;
    for m in ["[[final answer]]:", "final answer:", "answer:", "####"] {
        if let Some(i) = lower.rfind(m) {
            let end = i + m.len();
            // The latest marker wins; at one place the longest (its suffix `answer:` is inside).
            if cut.is_none_or(|c| end > c) {
                cut = Some(end);
            }
        }
    }
    let tail = cut.map_or(r, |c| &r[c..]);
    tail.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("")
        .to_string()
}

/// The label a response names: the one equal to its normalised answer, else the only label that
/// occurs in it as a word.
pub fn extract_label(response: &str, labels: &[String]) -> Option<String> {
    let a = normalize(&extract_answer(response));
    if let Some(l) = labels.iter().find(|l| normalize(l) == a) {
        return Some(l.clone());
    }
    let words: Vec<String> = response
        .to_lowercase()
        .split(|c: char| !c.is_alphanumeric() && c != '-')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    let found: Vec<&String> = labels
        .iter()
        .filter(|l| {
            let l = normalize(l);
            words.contains(&l)
        })
        .collect();
    match found.as_slice() {
        [one] => Some((*one).clone()),
        _ => None,
    }
}

/// Whether a response answers the task: label match for a task with labels, else exact match
/// of the normalised extracted answer.
pub fn is_correct(task: &Task, response: &str) -> bool {
    match &task.labels {
        Some(labels) => extract_label(response, labels)
            .is_some_and(|l| normalize(&l) == normalize(&task.answer)),
        None => normalize(&extract_answer(response)) == normalize(&task.answer),
    }
}

/// The normalised answer a response gives (its label for a labelled task), used to vote.
pub fn answer_key(task: &Task, response: &str) -> String {
    match &task.labels {
        Some(labels) => extract_label(response, labels)
            .map(|l| normalize(&l))
            .unwrap_or_else(|| normalize(&extract_answer(response))),
        None => normalize(&extract_answer(response)),
    }
}

/// Per-topic `(topic, correct, total)` and the overall fraction.
pub fn accuracy_by_topic(tasks: &[Task], correct: &[bool]) -> (Vec<(String, usize, usize)>, f64) {
    let mut m: std::collections::BTreeMap<String, (usize, usize)> = Default::default();
    for (t, &c) in tasks.iter().zip(correct) {
        let e = m.entry(t.topic().to_string()).or_default();
        e.0 += c as usize;
        e.1 += 1;
    }
    let n = correct.len().max(1);
    (
        m.into_iter().map(|(k, (c, t))| (k, c, t)).collect(),
        correct.iter().filter(|&&c| c).count() as f64 / n as f64,
    )
}

/// `{topic: accuracy}` as JSON, plus `"all"`.
pub fn accuracy_json(tasks: &[Task], correct: &[bool]) -> serde_json::Value {
    let (per, all) = accuracy_by_topic(tasks, correct);
    let mut m = serde_json::Map::new();
    for (t, c, n) in per {
        m.insert(t, serde_json::json!(c as f64 / n.max(1) as f64));
    }
    m.insert("all".into(), serde_json::json!(all));
    serde_json::Value::Object(m)
}
