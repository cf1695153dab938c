//! Deterministic fuzzing of every parser that reads untrusted input, on stable Rust: a seeded
//! PRNG fills a buffer of bytes, `arbitrary::Unstructured` turns those bytes into structured
//! edits of a valid input (a JSON value replaced, a key added or dropped, bytes flipped, the text
//! cut short), and the parser must answer Ok or a named error, never panic.
//!
//! Targets: safetensors headers, `model.safetensors.index.json`, `config.json`, `tokenizer.json`,
//! chat templates, and the server's request bodies (deserialised and checked, no server).
//!
//! Each target runs a fixed number of iterations from a fixed seed, so a failure reproduces; set
//! `MOE_FUZZ_ITERS=N` to run N iterations of every target and `MOE_FUZZ_SEED=S` to explore from
//! another seed (a failure prints both).

use arbitrary::{Result as AResult, Unstructured};
use moe::config::ModelConfig;
use moe::server::types::{ChatRequest, CompletionRequest};
use moe::tokenizer::{ChatMessage, Tokenizer};
use moe::weights::{parse_header, Weights};
use moe::Error;
use moe_tests::{fixture, read_raw_tensors, scratch_model_dir};
use serde_json::{json, Map, Value};
use std::path::Path;

// ---------------------------------------------------------------------------------------------
// Driver
// ---------------------------------------------------------------------------------------------

fn iterations(default: usize) -> usize {
    std::env::var("MOE_FUZZ_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn seed() -> u64 {
    std::env::var("MOE_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x6d6f_655f_667a)
}

/// xorshift64*: a few lines, no dependency, the same stream on every machine.
struct Rng(u64);

impl Rng {
    fn new(seed: u64, target: &str, i: usize) -> Rng {
        let mut s = seed ^ (i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        for b in target.bytes() {
            s = (s ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
        Rng(s | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

/// What one input came to.
enum Outcome {
    Accepted,
    Refused,
}

/// Runs `body` on `default_iters` inputs (see [`iterations`]); a panic names the target, the
/// iteration and the seed. Both outcomes must occur: a target that only ever accepts (or only
/// refuses) is not reaching the parser's checks.
fn fuzz(target: &str, default_iters: usize, body: impl Fn(&mut Unstructured) -> Outcome) {
    let (n, seed) = (iterations(default_iters), seed());
    let t0 = std::time::Instant::now();
    let (mut ok, mut refused) = (0usize, 0usize);
    for i in 0..n {
        let data = Rng::new(seed, target, i).bytes(4096);
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            body(&mut Unstructured::new(&data))
        }));
        match r {
            Ok(Outcome::Accepted) => ok += 1,
            Ok(Outcome::Refused) => refused += 1,
            Err(_) => panic!(
                "{target}: iteration {i} panicked (reproduce with MOE_FUZZ_SEED={seed} \
                 MOE_FUZZ_ITERS={})",
                i + 1
            ),
        }
    }
    eprintln!(
        "{target}: {n} inputs, {ok} accepted, {refused} refused, {:.2?}",
        t0.elapsed()
    );
    assert!(
        ok > 0 && refused > 0,
        "{target}: {ok} accepted, {refused} refused"
    );
}

// ---------------------------------------------------------------------------------------------
// Structured edits
// ---------------------------------------------------------------------------------------------

const STRINGS: &[&str] = &[
    "",
    " ",
    "F32",
    "BF16",
    "F16",
    "I64",
    "U8",
    "F8_E4M3",
    "Q4_0",
    "<s>",
    "</s>",
    "<unk>",
    "mixtral",
    "qwen3_moe",
    "olmoe",
    "qwen2_moe",
    "silu",
    "gelu",
    "BPE",
    "WordPiece",
    "Unigram",
    "TemplateProcessing",
    "BertProcessing",
    "Sequence",
    "ByteLevel",
    "Metaspace",
    "Fixed",
    "BatchLongest",
    "LongestFirst",
    "Right",
    "Left",
    "$A",
    "$B",
    "$0",
    "user",
    "assistant",
    "system",
    "model.safetensors",
    "../model.safetensors",
    "/etc/hostname",
    "./model.safetensors",
    "sub/../../x",
    ".",
    "config.json",
    "model.safetensors.index.json",
    "\u{0}",
    "\u{2581}",
    "日本語",
    "🙂",
    "token_id:5",
    "text",
    "image_url",
];

fn interesting_number(u: &mut Unstructured) -> AResult<Value> {
    Ok(match u.int_in_range(0..=11)? {
        0 => json!(0),
        1 => json!(-1),
        2 => json!(1),
        3 => json!(u64::MAX),
        4 => json!(i64::MIN),
        5 => json!(1u64 << 53),
        6 => json!(1e300),
        7 => json!(-0.0),
        8 => json!(0.5),
        9 => json!(u32::MAX),
        10 => json!(1u64 << 32),
        _ => json!(512),
    })
}

fn short_string(u: &mut Unstructured) -> AResult<String> {
    if u.ratio(1, 2)? {
        Ok(u.choose(STRINGS)?.to_string())
    } else {
        let n = u.int_in_range(0..=24)?;
        let mut s = String::new();
        for _ in 0..n {
            s.push(u.arbitrary::<char>()?);
        }
        Ok(s)
    }
}

/// Any JSON value, nested up to `depth`.
fn json_value(u: &mut Unstructured, depth: u32, keys: &[&str]) -> AResult<Value> {
    Ok(match u.int_in_range(0..=9)? {
        0 => Value::Null,
        1 => Value::Bool(u.arbitrary()?),
        2 => json!(u.int_in_range(-3i64..=600)?),
        3 => json!(u.arbitrary::<u64>()?),
        4 => json!(u.arbitrary::<i64>()?),
        5 => {
            let f: f64 = u.arbitrary()?;
            json!(if f.is_finite() { f } else { 1e308 })
        }
        6 => Value::String(short_string(u)?),
        7 if depth > 0 => {
            let n = u.int_in_range(0..=4)?;
            Value::Array(
                (0..n)
                    .map(|_| json_value(u, depth - 1, keys))
                    .collect::<AResult<_>>()?,
            )
        }
        8 if depth > 0 => {
            let n = u.int_in_range(0..=4)?;
            let mut m = Map::new();
            for _ in 0..n {
                m.insert(key(u, keys)?, json_value(u, depth - 1, keys)?);
            }
            Value::Object(m)
        }
        _ => interesting_number(u)?,
    })
}

fn key(u: &mut Unstructured, keys: &[&str]) -> AResult<String> {
    if !keys.is_empty() && u.ratio(3, 4)? {
        Ok(u.choose(keys)?.to_string())
    } else {
        short_string(u)
    }
}

/// One edit somewhere in `v`: a value replaced, a key added or removed, an element dropped or
/// duplicated. The place is reached by a random walk from the root.
fn edit_json(u: &mut Unstructured, v: &mut Value, keys: &[&str]) -> AResult<()> {
    let mut cur = v;
    loop {
        let descend = u.ratio(3, 4)?;
        let next = match cur {
            Value::Object(m) if descend && !m.is_empty() => {
                let k = u.choose_index(m.len())?;
                let k = m.keys().nth(k).unwrap().clone();
                Some(k)
            }
            Value::Array(a) if descend && !a.is_empty() => {
                Some(u.choose_index(a.len())?.to_string())
            }
            _ => None,
        };
        match next {
            Some(k) => {
                cur = match cur {
                    Value::Object(m) => m.get_mut(&k).unwrap(),
                    Value::Array(a) => &mut a[k.parse::<usize>().unwrap()],
                    _ => unreachable!(),
                }
            }
            None => break,
        }
    }
    match (u.int_in_range(0..=3)?, &mut *cur) {
        (1, Value::Object(m)) => {
            m.insert(key(u, keys)?, json_value(u, 2, keys)?);
        }
        (2, Value::Object(m)) if !m.is_empty() => {
            let k = m.keys().nth(u.choose_index(m.len())?).unwrap().clone();
            m.remove(&k);
        }
        (1, Value::Array(a)) => a.push(json_value(u, 2, keys)?),
        (2, Value::Array(a)) if !a.is_empty() => {
            let i = u.choose_index(a.len())?;
            if u.arbitrary()? {
                a.remove(i);
            } else {
                let x = a[i].clone();
                a.push(x);
            }
        }
        _ => *cur = json_value(u, 2, keys)?,
    }
    Ok(())
}

/// Byte-level damage: flips, overwrites, insertions, a cut.
fn edit_bytes(u: &mut Unstructured, b: &mut Vec<u8>) -> AResult<()> {
    for _ in 0..u.int_in_range(1..=4)? {
        if b.is_empty() {
            break;
        }
        let at = u.choose_index(b.len())?;
        match u.int_in_range(0..=3)? {
            0 => b[at] ^= 1 << u.int_in_range(0..=7)?,
            1 => b[at] = u.arbitrary()?,
            2 => b.insert(at, *u.choose(b"{}[]\",:0\\")?),
            _ => b.truncate(at),
        }
    }
    Ok(())
}

/// A valid document edited 1–3 times, then (sometimes) damaged as bytes.
fn mutated(u: &mut Unstructured, base: &Value, keys: &[&str]) -> AResult<Vec<u8>> {
    let mut v = base.clone();
    for _ in 0..u.int_in_range(1..=3)? {
        edit_json(u, &mut v, keys)?;
    }
    let mut b = serde_json::to_vec(&v).unwrap();
    if u.ratio(1, 4)? {
        edit_bytes(u, &mut b)?;
    }
    Ok(b)
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

// ---------------------------------------------------------------------------------------------
// Targets
// ---------------------------------------------------------------------------------------------

const SAFETENSORS_KEYS: &[&str] = &["dtype", "shape", "data_offsets", "__metadata__", "format"];

/// A small valid safetensors file: its header as JSON and its data.
fn small_safetensors() -> (Value, Vec<u8>) {
    let f32s: Vec<u8> = (0..6).flat_map(|i| (i as f32).to_le_bytes()).collect();
    let halves: Vec<u8> = (0..8u8).collect();
    let header = json!({
        "__metadata__": {"format": "pt"},
        "a.weight": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
        "b.weight": {"dtype": "BF16", "shape": [4], "data_offsets": [24, 32]},
        "c.weight": {"dtype": "F16", "shape": [2, 2], "data_offsets": [32, 40]},
    });
    let mut data = f32s;
    data.extend_from_slice(&halves);
    data.extend_from_slice(&halves);
    (header, data)
}

/// Safetensors headers: `parse_header`, then every tensor it accepts taken and read.
#[test]
fn fuzz_safetensors_header() {
    let (header, data) = small_safetensors();
    fuzz("safetensors header", 20_000, |u| {
        let h = mutated(u, &header, SAFETENSORS_KEYS).unwrap();
        let mut len = (h.len() as u64).to_le_bytes().to_vec();
        if u.ratio(1, 8).unwrap() {
            len = u.arbitrary::<u64>().unwrap().to_le_bytes().to_vec();
        }
        let mut file = len;
        file.extend_from_slice(&h);
        file.extend_from_slice(&data);
        if u.ratio(1, 8).unwrap() {
            let at = u.choose_index(file.len()).unwrap();
            file.truncate(at);
        }
        let path = Path::new("fuzz.safetensors");
        match parse_header(path, &file) {
            Err(e) => {
                assert!(e.to_string().starts_with("fuzz.safetensors: "), "{e}");
                Outcome::Refused
            }
            Ok(infos) => {
                let leaked: &'static [u8] = Box::leak(file.into_boxed_slice());
                let w = Weights::from_static(&[("fuzz.safetensors", leaked)]).unwrap();
                for (name, info) in infos {
                    match w.expect(&name, &info.shape) {
                        Ok(t) => {
                            let d = t.data();
                            let mut all = vec![0f32; d.len()];
                            d.to_f32_into(0, &mut all);
                        }
                        Err(e) => assert!(e.to_string().contains(name.as_str()), "{e}"),
                    }
                }
                Outcome::Accepted
            }
        }
    });
}

/// `model.safetensors.index.json` beside a real shard: `Weights::open_dir` answers with the
/// weights or an error naming a file of the directory.
#[test]
fn fuzz_safetensors_index() {
    let dir = scratch_model_dir("mixtral-small-f32", "fuzz-index");
    std::fs::copy(
        fixture("mixtral-small-f32").join("model.safetensors"),
        dir.join("model.safetensors"),
    )
    .unwrap();
    let names: Vec<String> = read_raw_tensors("mixtral-small-f32")
        .into_iter()
        .map(|t| t.name)
        .collect();
    let mut map = Map::new();
    for n in &names {
        map.insert(n.clone(), "model.safetensors".into());
    }
    let base = json!({"metadata": {"total_size": 3312000}, "weight_map": map});
    let mut keys: Vec<&str> = names.iter().map(|s| s.as_str()).collect();
    keys.extend(["weight_map", "metadata"]);
    let index = dir.join("model.safetensors.index.json");
    let shown = dir.display().to_string();
    fuzz("safetensors index", 1_500, |u| {
        std::fs::write(&index, mutated(u, &base, &keys).unwrap()).unwrap();
        match Weights::open_dir(&dir) {
            Ok(_) => Outcome::Accepted,
            Err(e) => {
                assert!(e.to_string().contains(&shown), "{e}");
                Outcome::Refused
            }
        }
    });
}

const CONFIG_KEYS: &[&str] = &[
    "architectures",
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "moe_intermediate_size",
    "shared_expert_intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "num_local_experts",
    "num_experts",
    "num_experts_per_tok",
    "norm_topk_prob",
    "decoder_sparse_step",
    "mlp_only_layers",
    "attention_bias",
    "clip_qkv",
    "use_sliding_window",
    "rope_theta",
    "rope_parameters",
    "rope_type",
    "rope_scaling",
    "rms_norm_eps",
    "max_position_embeddings",
    "sliding_window",
    "tie_word_embeddings",
    "bos_token_id",
    "eos_token_id",
    "hidden_act",
];

/// `config.json` of every family: `ModelConfig::from_json` gives a config that passes its own
/// checks, or `Error::Config`.
#[test]
fn fuzz_config_json() {
    let bases: Vec<Value> = [
        "mixtral-small-f32",
        "qwen2_moe-tiny-f32",
        "qwen3_moe-tiny-f32",
        "olmoe-tiny-f32",
    ]
    .iter()
    .map(|m| read_json(&fixture(m).join("config.json")))
    .collect();
    fuzz("config.json", 20_000, |u| {
        let base = u.choose(&bases).unwrap();
        let text = mutated(u, base, CONFIG_KEYS).unwrap();
        match ModelConfig::from_json(&String::from_utf8_lossy(&text)) {
            Ok(cfg) => {
                cfg.validate().unwrap();
                Outcome::Accepted
            }
            Err(Error::Config(m)) => {
                assert!(!m.is_empty());
                Outcome::Refused
            }
            Err(e) => panic!("not a config error: {e}"),
        }
    });
}

const TOKENIZER_KEYS: &[&str] = &[
    "type",
    "vocab",
    "merges",
    "special_tokens",
    "single",
    "pair",
    "ids",
    "tokens",
    "SpecialToken",
    "Sequence",
    "id",
    "type_id",
    "padding",
    "truncation",
    "normalizer",
    "pre_tokenizer",
    "post_processor",
    "decoder",
    "added_tokens",
    "content",
    "special",
    "byte_fallback",
    "unk_token",
    "dropout",
    "fuse_unk",
    "processors",
    "sep",
    "cls",
    "strategy",
    "max_length",
    "pad_id",
    "pad_token",
    "direction",
    "stride",
    "prepend_scheme",
    "replacement",
    "<s>",
    "</s>",
    "<unk>",
];

/// `tokenizer.json`: `Tokenizer::from_bytes`, then encodes and decodes with what loads. A file
/// that would panic `tokenizers` at load must be refused by the load checks (the target fails on
/// a panic the backstop caught there). At encode and decode time the backstop is the answer for
/// what cannot be checked up front (a `Strip` decoder with `stop` longer than a token indexes
/// before the token's start): such errors are counted and must still be tokenizer errors.
#[test]
fn fuzz_tokenizer_json() {
    let base = read_json(&fixture("mixtral-small-f32").join("tokenizer.json"));
    let backstop = std::sync::atomic::AtomicUsize::new(0);
    let after_load = |r: Result<(), Error>| match r {
        Ok(()) => {}
        Err(Error::Tokenizer(m)) => {
            if m.contains("inside the tokenizers library") {
                backstop.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        Err(e) => panic!("not a tokenizer error: {e}"),
    };
    fuzz("tokenizer.json", 3_000, |u| {
        let bytes = mutated(u, &base, TOKENIZER_KEYS).unwrap();
        let t = match Tokenizer::from_bytes(&bytes, None) {
            Err(Error::Tokenizer(m)) => {
                assert!(!m.contains("inside the tokenizers library"), "{m}");
                return Outcome::Refused;
            }
            Err(e) => panic!("not a tokenizer error: {e}"),
            Ok(t) => t,
        };
        for _ in 0..3 {
            let text = format!(
                "{} <s>{}",
                short_string(u).unwrap(),
                short_string(u).unwrap()
            );
            for special in [true, false] {
                after_load(t.encode(&text, special).map(|_| ()));
            }
            let ids: Vec<u32> = (0..u.int_in_range(0..=8).unwrap())
                .map(|_| u.int_in_range(0..=600u32).unwrap())
                .collect();
            after_load(t.decode(&ids, u.arbitrary().unwrap()).map(|_| ()));
            let _ = t.token_text(u.int_in_range(0..=600u32).unwrap());
        }
        Outcome::Accepted
    });
    eprintln!(
        "tokenizer.json: {} encodes or decodes answered by the panic backstop",
        backstop.into_inner()
    );
}

/// A random template from pieces of Jinja (loops, conditions, macros that recurse, filters,
/// Python methods, broken tags), up to three levels deep; loops are short so that every input
/// stays far below the evaluation limit (tested on its own in tests/tokenizer.rs).
fn template(u: &mut Unstructured, depth: u32) -> AResult<String> {
    let mut out = String::new();
    for _ in 0..u.int_in_range(1..=4)? {
        let piece = match u.int_in_range(0..=11)? {
            0 => short_string(u)?,
            1 => format!("{{{{ {} }}}}", expr(u)?),
            2 | 3 if depth > 0 => {
                let iter = match u.int_in_range(0..=4)? {
                    0 => "messages".to_string(),
                    1 => format!("range({})", u.int_in_range(-2..=30)?),
                    2 => "messages[1:]".to_string(),
                    3 => "messages|reverse".to_string(),
                    _ => expr(u)?,
                };
                format!(
                    "{{% for message in {iter} %}}{}{{% endfor %}}",
                    template(u, depth - 1)?
                )
            }
            4 if depth > 0 => format!(
                "{{% if {} %}}{}{{% else %}}{}{{% endif %}}",
                expr(u)?,
                template(u, depth - 1)?,
                template(u, depth - 1)?
            ),
            5 => format!("{{% set x = {} %}}", expr(u)?),
            6 if depth > 0 => format!(
                "{{% macro m(a) %}}{}{{% if a %}}{{{{ m(a) }}}}{{% endif %}}{{% endmacro %}}{{{{ m({}) }}}}",
                template(u, depth - 1)?,
                expr(u)?
            ),
            7 => format!("{{{{ raise_exception({}) }}}}", expr(u)?),
            8 => u
                .choose(&[
                    "{% for %}",
                    "{{",
                    "{% endfor %}",
                    "{% if %}",
                    "{{ }}",
                    "{% generation %}",
                    "{#",
                    "{% set %}",
                    "{% include 'x' %}",
                    "{% extends 'y' %}",
                ])?
                .to_string(),
            _ => {
                let b: Vec<u8> = (0..u.int_in_range(0..=12)?)
                    .map(|_| u.arbitrary())
                    .collect::<AResult<_>>()?;
                String::from_utf8_lossy(&b).into_owned()
            }
        };
        out.push_str(&piece);
    }
    Ok(out)
}

fn expr(u: &mut Unstructured) -> AResult<String> {
    let atom = |u: &mut Unstructured| -> AResult<String> {
        Ok(u.choose(&[
            "message['role']",
            "message.content",
            "messages[0]['content']",
            "messages[-1].role",
            "messages[99]",
            "bos_token",
            "eos_token",
            "pad_token",
            "undefined_name",
            "loop.index",
            "add_generation_prompt",
            "tools",
            "x",
            "'text'",
            "42",
            "-1",
            "none",
            "[1, 'a', none]",
            "{'a': 1}",
            "messages|length",
            "range(5)|list",
            "strftime_now('%Y-%m-%d')",
            "namespace(a=1)",
        ])?
        .to_string())
    };
    let a = atom(u)?;
    let b = atom(u)?;
    Ok(match u.int_in_range(0..=16)? {
        0 => format!("{a} ~ {b}"),
        1 => format!("{a} + {b}"),
        2 => format!("{a} * {}", u.int_in_range(-1..=1000)?),
        3 => format!("{a} | tojson"),
        4 => format!("{a} | tojson(indent={})", u.int_in_range(-1..=4)?),
        5 => format!("{a} | length"),
        6 => format!("{a}.strip()"),
        7 => format!("{a}.startswith({b})"),
        8 => format!("{a}.split(' ')"),
        9 => format!("{a}[::-1]"),
        10 => format!("{a} is defined"),
        11 => format!("{a} / 0"),
        12 => format!("{a}.items()"),
        13 => format!("{a}[{b}]"),
        14 => format!("{a} | trim | upper"),
        15 => format!("({a} if {b} else none)"),
        _ => a,
    })
}

fn messages(u: &mut Unstructured) -> AResult<Vec<ChatMessage>> {
    (0..u.int_in_range(0..=4)?)
        .map(|_| {
            let role = match u.int_in_range(0..=4)? {
                0 => "system".to_string(),
                1 | 2 => "user".to_string(),
                3 => "assistant".to_string(),
                _ => short_string(u)?,
            };
            Ok(ChatMessage::new(role, short_string(u)?))
        })
        .collect()
}

/// Chat templates: rendered (and tokenised) text, or `Error::ChatTemplate`.
#[test]
fn fuzz_chat_template() {
    let dir = fixture("mixtral-small-f32");
    let json = std::fs::read(dir.join("tokenizer.json")).unwrap();
    let config = std::fs::read(dir.join("tokenizer_config.json")).unwrap();
    let real = Tokenizer::from_dir(&fixture("qwen3_moe-tiny-f32"))
        .unwrap()
        .chat_template()
        .unwrap()
        .to_string();
    fuzz("chat template", 6_000, |u| {
        let mut t = template(u, 3).unwrap();
        if u.ratio(1, 4).unwrap() {
            // The real template with a piece spliced in.
            let at = u.int_in_range(0..=real.len()).unwrap();
            let at = (0..=at).rev().find(|&i| real.is_char_boundary(i)).unwrap();
            t = format!("{}{t}{}", &real[..at], &real[at..]);
        }
        let tok = Tokenizer::from_bytes(&json, Some(&config))
            .unwrap()
            .with_chat_template(t);
        let msgs = messages(u).unwrap();
        match tok.apply_chat_template(&msgs, u.arbitrary().unwrap()) {
            Ok(text) => {
                tok.encode(&text, false).unwrap();
                Outcome::Accepted
            }
            Err(Error::ChatTemplate(m)) => {
                assert!(!m.is_empty());
                Outcome::Refused
            }
            Err(e) => panic!("not a template error: {e}"),
        }
    });
}

const REQUEST_KEYS: &[&str] = &[
    "model",
    "messages",
    "prompt",
    "role",
    "content",
    "type",
    "text",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "n",
    "stream",
    "stream_options",
    "include_usage",
    "stop",
    "seed",
    "presence_penalty",
    "frequency_penalty",
    "logit_bias",
    "top_k",
    "min_p",
    "repetition_penalty",
    "ignore_eos",
    "return_experts",
    "return_tokens_as_token_ids",
    "logprobs",
    "top_logprobs",
    "echo",
];

/// The server's request bodies as the routes read them: deserialised, then the sampling
/// parameters, `n`, the messages and the prompt checked (and the chat rendered and tokenised);
/// each refusal is a 400 naming the problem.
#[test]
fn fuzz_server_requests() {
    let tok = Tokenizer::from_dir(&fixture("mixtral-small-f32")).unwrap();
    let vocab = tok.vocab_size();
    let chat = json!({
        "model": "m", "messages": [{"role": "user", "content": "What is 2+2?"},
                                   {"role": "assistant", "content": [{"type": "text", "text": "4"}]}],
        "max_tokens": 8, "temperature": 0.7, "top_p": 0.9, "n": 2, "stop": ["\n"], "seed": 1,
        "logprobs": true, "top_logprobs": 3, "logit_bias": {"5": -1.0}, "stream": false,
    });
    let completion = json!({
        "model": "m", "prompt": "Hello", "max_tokens": 8, "temperature": 0, "logprobs": 2,
        "echo": true, "top_k": 5, "min_p": 0.1, "repetition_penalty": 1.1, "stop": "x",
    });
    let check = |r: Result<(), moe::server::types::ApiError>| match r {
        Ok(()) => Outcome::Accepted,
        Err(e) => {
            assert!(e.status == 400 && !e.message.is_empty(), "{e:?}");
            Outcome::Refused
        }
    };
    fuzz("server requests", 20_000, |u| {
        if u.arbitrary().unwrap() {
            let body = mutated(u, &chat, REQUEST_KEYS).unwrap();
            let Ok(req) = serde_json::from_slice::<ChatRequest>(&body) else {
                return Outcome::Refused;
            };
            check((|| {
                req.common.sampling(256, vocab)?;
                req.common.n()?;
                let msgs = req
                    .messages
                    .iter()
                    .flatten()
                    .map(|m| m.to_chat())
                    .collect::<Result<Vec<_>, _>>()?;
                tok.encode_chat(&msgs, true)?;
                Ok(())
            })())
        } else {
            let body = mutated(u, &completion, REQUEST_KEYS).unwrap();
            let Ok(req) = serde_json::from_slice::<CompletionRequest>(&body) else {
                return Outcome::Refused;
            };
            check((|| {
                req.common.sampling(256, vocab)?;
                req.common.n()?;
                if let Some(moe::server::types::PromptField::Text(t)) = &req.prompt {
                    tok.encode(t, true)?;
                }
                Ok(())
            })())
        }
    });
}
