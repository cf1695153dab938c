//! GGUF files through the family seam: `general.architecture` picks a family, the file's
//! metadata becomes that family's `config.json` (read by the family's own `config`), its tensors
//! get the family's Hugging Face names (each expert a slab of the stacked `*_exps` tensors,
//! zero-copy), and the tokenizer and chat template come from `tokenizer.ggml.*`.
//!
//! Supported: `llama` with experts (Mixtral, as llama.cpp's converter writes it), `qwen3moe`
//! and `olmoe`. The converter permutes llama's q/k rows to llama.cpp's adjacent-pair RoPE, so
//! that model keeps them as they are and rotates pairs `(2i, 2i+1)`; the other two keep HF's
//! rows and rotate halves (llama.cpp's NeoX RoPE). Routing choices that the metadata does not
//! carry are llama.cpp's for the architecture (Qwen3-MoE renormalises the top-k, OLMoE does not).

use super::{olmoe, qwen3_moe, Family};
use crate::config::ModelConfig;
use crate::error::{Error, Result};
use crate::gguf::{Gguf, GgufTensor, Value};
use crate::tokenizer::Tokenizer;
use crate::weights::{TensorInfo, Weights};
use serde_json::{json, Map};
use std::collections::HashMap;
use std::path::Path;

fn bad(g: &Gguf, message: impl Into<String>) -> Error {
    Error::Checkpoint {
        file: g.path().to_path_buf(),
        message: message.into(),
    }
}

/// A GGUF architecture: the family that reads it and what llama.cpp fixes for it.
struct Arch {
    /// `general.architecture`.
    name: &'static str,
    family: &'static Family,
    /// The family's `config.json` key for the expert count.
    experts_key: &'static str,
    /// The expert width's key when it is not `feed_forward_length`'s.
    expert_width_key: Option<&'static str>,
    /// `norm_topk_prob` as llama.cpp's graph for the architecture fixes it (absent for Mixtral,
    /// which always renormalises).
    renormalize: Option<bool>,
    /// The converter permuted q/k rows to adjacent pairs.
    rope_interleaved: bool,
}

const ARCHS: &[Arch] = &[
    Arch {
        name: "llama",
        family: &super::mixtral::FAMILY,
        experts_key: "num_local_experts",
        expert_width_key: None,
        renormalize: None,
        rope_interleaved: true,
    },
    Arch {
        name: "qwen3moe",
        family: &qwen3_moe::FAMILY,
        experts_key: "num_experts",
        expert_width_key: Some("moe_intermediate_size"),
        renormalize: Some(true),
        rope_interleaved: false,
    },
    Arch {
        name: "olmoe",
        family: &olmoe::FAMILY,
        experts_key: "num_experts",
        expert_width_key: None,
        renormalize: Some(false),
        rope_interleaved: false,
    },
];

/// Opens a GGUF file as a model: its config, its weights (in place) and its tokenizer.
pub fn open(path: &Path) -> Result<(ModelConfig, Weights, Tokenizer)> {
    open_with(path, true)
}

/// [`open`], with `mmap` false reading the file into private memory instead of mapping it.
pub fn open_with(path: &Path, mmap: bool) -> Result<(ModelConfig, Weights, Tokenizer)> {
    let g = Gguf::open_with(path, mmap)?;
    let name = g
        .str("general.architecture")
        .ok_or_else(|| bad(&g, "no `general.architecture`"))?;
    let Some(arch) = ARCHS.iter().find(|a| a.name == name) else {
        let names: Vec<&str> = ARCHS.iter().map(|a| a.name).collect();
        return Err(bad(
            &g,
            format!(
                "GGUF architecture `{name}` is not supported (supported: {}; llama with experts)",
                names.join(", ")
            ),
        ));
    };
    let cfg = config(&g, arch)?;
    let tokenizer = tokenizer(&g)?;
    let entries = tensors(&g, arch.family, cfg.moe.n_experts)?;
    let weights = Weights::from_gguf(g, entries)?;
    Ok((cfg, weights, tokenizer))
}

fn meta_u32(g: &Gguf, key: &str) -> Result<u32> {
    g.u32(key)
        .ok_or_else(|| bad(g, format!("metadata `{key}` is missing or not an integer")))
}

/// The `config.json` the GGUF's metadata stands for, read by the architecture's family.
fn config(g: &Gguf, arch: &Arch) -> Result<ModelConfig> {
    let a = arch.name;
    let experts = g.u32(&format!("{a}.expert_count")).unwrap_or(0);
    if experts == 0 {
        return Err(bad(
            g,
            format!(
                "a {a} GGUF without experts (`{a}.expert_count`) is a dense model, not supported"
            ),
        ));
    }
    for key in [
        "rope.scaling.type",
        "attention.sliding_window",
        "expert_weights_scale",
    ] {
        if g.get(&format!("{a}.{key}")).is_some() {
            return Err(bad(g, format!("metadata `{a}.{key}` is not supported yet")));
        }
    }
    let hidden = meta_u32(g, &format!("{a}.embedding_length"))?;
    let heads = meta_u32(g, &format!("{a}.attention.head_count"))?;
    let head_dim = g
        .u32(&format!("{a}.attention.key_length"))
        .unwrap_or(if heads > 0 { hidden / heads } else { 0 });
    if let Some(rot) = g.u32(&format!("{a}.rope.dimension_count")) {
        if rot != head_dim {
            return Err(bad(
                g,
                format!("`{a}.rope.dimension_count` {rot} is not the head size {head_dim} (partial RoPE is not supported)"),
            ));
        }
    }
    let embd = g
        .tensor("token_embd.weight")
        .ok_or_else(|| bad(g, "tensor `token_embd.weight` is missing"))?;
    let vocab = embd.shape().first().copied().unwrap_or(0);
    let mut c = Map::new();
    c.insert("model_type".into(), json!(arch.family.model_types[0]));
    c.insert(
        "architectures".into(),
        json!([arch.family.architectures[0]]),
    );
    c.insert("vocab_size".into(), json!(vocab));
    c.insert("hidden_size".into(), json!(hidden));
    c.insert(
        "intermediate_size".into(),
        json!(meta_u32(g, &format!("{a}.feed_forward_length"))?),
    );
    c.insert(
        "num_hidden_layers".into(),
        json!(meta_u32(g, &format!("{a}.block_count"))?),
    );
    c.insert("num_attention_heads".into(), json!(heads));
    c.insert(
        "num_key_value_heads".into(),
        json!(g
            .u32(&format!("{a}.attention.head_count_kv"))
            .unwrap_or(heads)),
    );
    c.insert("head_dim".into(), json!(head_dim));
    c.insert(arch.experts_key.into(), json!(experts));
    if let Some(key) = arch.expert_width_key {
        c.insert(
            key.into(),
            json!(meta_u32(g, &format!("{a}.expert_feed_forward_length"))?),
        );
    }
    let renormalize = g
        .bool(&format!("{a}.expert_weights_norm"))
        .or(arch.renormalize);
    if let Some(r) = renormalize {
        c.insert("norm_topk_prob".into(), json!(r));
    }
    c.insert(
        "num_experts_per_tok".into(),
        json!(meta_u32(g, &format!("{a}.expert_used_count"))?),
    );
    if let Some(t) = g.f32(&format!("{a}.rope.freq_base")) {
        c.insert("rope_theta".into(), json!(t as f64));
    }
    if let Some(e) = g.f32(&format!("{a}.attention.layer_norm_rms_epsilon")) {
        c.insert("rms_norm_eps".into(), json!(e as f64));
    }
    if let Some(n) = g.u32(&format!("{a}.context_length")) {
        c.insert("max_position_embeddings".into(), json!(n));
    }
    c.insert(
        "tie_word_embeddings".into(),
        json!(g.tensor("output.weight").is_none()),
    );
    if let Some(b) = g.u32("tokenizer.ggml.bos_token_id") {
        c.insert("bos_token_id".into(), json!(b));
    }
    if let Some(e) = g.u32("tokenizer.ggml.eos_token_id") {
        c.insert("eos_token_id".into(), json!(e));
    }
    let mut cfg = ModelConfig::from_json(&serde_json::Value::Object(c).to_string())
        .map_err(|e| bad(g, e.to_string()))?;
    cfg.attention.rope_interleaved = arch.rope_interleaved;
    Ok(cfg)
}

/// Every tensor under its Hugging Face name in `family`; each expert of a stacked `*_exps`
/// tensor `[E, out, in]` as its own `[out, in]` slab.
fn tensors(g: &Gguf, family: &Family, n_experts: usize) -> Result<Vec<(String, TensorInfo)>> {
    let names = &family.names;
    let moe = names.moe;
    let mut out = Vec::new();
    let info = |t: &GgufTensor, shape: Vec<usize>, range: std::ops::Range<usize>| TensorInfo {
        dtype: t.ggml_type.name().to_string(),
        shape,
        start: range.start,
        end: range.end,
    };
    for t in g.tensors() {
        let name = t.name.as_str();
        let plain = match name {
            "token_embd.weight" => Some("model.embed_tokens.weight".to_string()),
            "output_norm.weight" => Some("model.norm.weight".to_string()),
            "output.weight" => Some("lm_head.weight".to_string()),
            _ => None,
        };
        if let Some(hf) = plain {
            out.push((hf, info(t, t.shape(), t.file_range())));
            continue;
        }
        let Some((layer, part)) = name
            .strip_prefix("blk.")
            .and_then(|r| r.split_once('.'))
            .and_then(|(l, p)| Some((l.parse::<usize>().ok()?, p)))
        else {
            return Err(bad(
                g,
                format!("tensor `{name}` is not a {} tensor", family.name),
            ));
        };
        let p = format!("model.layers.{layer}");
        let hf = match part {
            "attn_norm.weight" => format!("{p}.input_layernorm.weight"),
            "attn_q.weight" | "attn_q.bias" | "attn_k.weight" | "attn_k.bias" | "attn_v.weight"
            | "attn_v.bias" | "attn_output.weight" | "attn_output.bias" => {
                let (proj, suffix) = part.split_once('.').unwrap_or((part, "weight"));
                let hf = match proj {
                    "attn_q" => "q_proj",
                    "attn_k" => "k_proj",
                    "attn_v" => "v_proj",
                    _ => "o_proj",
                };
                format!("{p}.self_attn.{hf}.{suffix}")
            }
            "attn_q_norm.weight" => format!("{p}.self_attn.q_norm.weight"),
            "attn_k_norm.weight" => format!("{p}.self_attn.k_norm.weight"),
            "ffn_norm.weight" => format!("{p}.post_attention_layernorm.weight"),
            "ffn_gate_inp.weight" => format!("{p}.{moe}.{}.weight", names.router),
            "ffn_gate_exps.weight" | "ffn_up_exps.weight" | "ffn_down_exps.weight" => {
                let w = match part {
                    "ffn_gate_exps.weight" => names.expert[0],
                    "ffn_up_exps.weight" => names.expert[1],
                    _ => names.expert[2],
                };
                let shape = t.shape();
                let [e, rows, cols] = shape[..] else {
                    return Err(bad(
                        g,
                        format!("tensor `{name}` has shape {shape:?}, not [experts, out, in]"),
                    ));
                };
                if e != n_experts {
                    return Err(bad(
                        g,
                        format!(
                            "tensor `{name}` stacks {e} experts, the metadata says {n_experts}"
                        ),
                    ));
                }
                let slab = rows * t.row_bytes();
                let start = t.file_range().start;
                for x in 0..e {
                    out.push((
                        format!("{p}.{moe}.experts.{x}.{w}.weight"),
                        info(
                            t,
                            vec![rows, cols],
                            start + x * slab..start + (x + 1) * slab,
                        ),
                    ));
                }
                continue;
            }
            _ => {
                return Err(bad(
                    g,
                    format!("tensor `{name}` is not a {} tensor", family.name),
                ))
            }
        };
        out.push((hf, info(t, t.shape(), t.file_range())));
    }
    Ok(out)
}

fn strings(g: &Gguf, key: &str) -> Result<Vec<String>> {
    g.array(key)
        .ok_or_else(|| bad(g, format!("metadata `{key}` is missing")))?
        .iter()
        .map(|v| {
            v.as_str()
                .map(str::to_string)
                .ok_or_else(|| bad(g, format!("metadata `{key}` holds a non-string")))
        })
        .collect()
}

/// The tokenizer of `tokenizer.ggml.*` as a `tokenizers` pipeline, with the chat template:
/// `llama` (SentencePiece BPE with byte fallback) or `gpt2` (byte-level BPE with merges, split
/// first by the pre-tokenizer `tokenizer.ggml.pre` names).
fn tokenizer(g: &Gguf) -> Result<Tokenizer> {
    let model = g
        .str("tokenizer.ggml.model")
        .ok_or_else(|| bad(g, "metadata `tokenizer.ggml.model` is missing"))?;
    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    let n = tokens.len();
    let types: Vec<i64> = match g.array("tokenizer.ggml.token_type") {
        Some(a) => a.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
        None => vec![1; n],
    };
    if types.len() != n {
        return Err(bad(
            g,
            format!("{n} tokens with {} token types", types.len()),
        ));
    }
    let id_of = |key: &str| g.u32(key).filter(|&i| (i as usize) < n);
    let unk = id_of("tokenizer.ggml.unknown_token_id");
    let bos = id_of("tokenizer.ggml.bos_token_id");
    let eos = id_of("tokenizer.ggml.eos_token_id");
    let (mut tj, default_add_bos) = match model {
        "llama" => (spm_pipeline(g, &tokens, unk)?, true),
        "gpt2" => (byte_level_pipeline(g, &tokens)?, false),
        other => {
            return Err(bad(
                g,
                format!("tokenizer model `{other}` is not supported yet (supported: llama, gpt2)"),
            ))
        }
    };
    let add_bos = g
        .bool("tokenizer.ggml.add_bos_token")
        .unwrap_or(default_add_bos);
    // Control (3) and user-defined (4) tokens match as whole strings before the model runs;
    // unknown (2) ones are special too. Unused padding entries (5) are left to the model.
    let special = |i: usize| matches!(types[i], 2..=4);
    tj["added_tokens"] = (0..n)
        .filter(|&i| special(i))
        .map(|i| {
            json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": types[i] != 4})
        })
        .collect();
    tj["post_processor"] = match bos.filter(|_| add_bos) {
        Some(b) => {
            let t = &tokens[b as usize];
            json!({"type": "TemplateProcessing",
                "single": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                "pair": [{"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                         {"SpecialToken": {"id": t, "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}}],
                "special_tokens": {t: {"id": t, "ids": [b], "tokens": [t]}}})
        }
        None => serde_json::Value::Null,
    };
    let mut tc = Map::new();
    tc.insert("add_bos_token".into(), json!(add_bos));
    for (key, id) in [("bos_token", bos), ("eos_token", eos), ("unk_token", unk)] {
        if let Some(i) = id {
            tc.insert(key.into(), json!(tokens[i as usize]));
        }
    }
    if let Some(Value::String(t)) = g.get("tokenizer.chat_template") {
        tc.insert("chat_template".into(), json!(t));
    }
    Tokenizer::from_bytes(
        tj.to_string().as_bytes(),
        Some(serde_json::Value::Object(tc).to_string().as_bytes()),
    )
    .map_err(|e| bad(g, format!("tokenizer from metadata: {e}")))
}

fn vocab_json(tokens: &[String]) -> Map<String, serde_json::Value> {
    tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect()
}

/// SentencePiece BPE: `▁` for spaces, byte fallback, merges from the pieces' scores.
fn spm_pipeline(g: &Gguf, tokens: &[String], unk: Option<u32>) -> Result<serde_json::Value> {
    let n = tokens.len();
    let scores: Vec<f32> = match g.array("tokenizer.ggml.scores") {
        Some(a) => a.iter().map(|v| v.as_f32().unwrap_or(0.0)).collect(),
        None => vec![0.0; n],
    };
    if scores.len() != n {
        return Err(bad(g, format!("{n} tokens with {} scores", scores.len())));
    }
    let vocab: HashMap<&str, usize> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.as_str(), i))
        .collect();
    // SentencePiece BPE as merges: every split of a piece into two pieces of the vocabulary,
    // ranked by the merged piece's score (higher first), then by the parts' ids (as
    // transformers' SentencePiece converter orders them).
    let mut merges: Vec<(f32, usize, usize, &str, &str)> = Vec::new();
    for (piece, &score) in tokens.iter().zip(&scores) {
        for (cut, _) in piece.char_indices().skip(1) {
            let (l, r) = piece.split_at(cut);
            if let (Some(&li), Some(&ri)) = (vocab.get(l), vocab.get(r)) {
                merges.push((score, li, ri, l, r));
            }
        }
    }
    merges.sort_by(|a, b| b.0.total_cmp(&a.0).then(a.1.cmp(&b.1)).then(a.2.cmp(&b.2)));
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u{2581}"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}]},
        "pre_tokenizer": null,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null,
            "unk_token": unk.map(|u| tokens[u as usize].clone()),
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab_json(tokens),
            "merges": merges.iter().map(|m| json!([m.3, m.4])).collect::<Vec<_>>()}
    }))
}

/// The split pattern of a `tokenizer.ggml.pre` name: the regular expression of the model
/// family's own `tokenizer.json` that llama.cpp's pre-tokenizer of that name stands for.
fn pre_tokenizer_regex(pre: &str) -> Option<&'static str> {
    match pre {
        "qwen2" => Some(
            r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+",
        ),
        "default" | "gpt-2" | "olmo" => {
            Some(r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+")
        }
        _ => None,
    }
}

/// GPT-2 byte-level BPE: the pre-tokenizer's split, bytes as printable characters, ranked merges.
fn byte_level_pipeline(g: &Gguf, tokens: &[String]) -> Result<serde_json::Value> {
    let pre = g.str("tokenizer.ggml.pre").unwrap_or("default");
    let regex = pre_tokenizer_regex(pre).ok_or_else(|| {
        bad(
            g,
            format!(
                "pre-tokenizer `{pre}` (`tokenizer.ggml.pre`) is not supported yet (supported: qwen2, gpt-2, olmo, default)"
            ),
        )
    })?;
    let merges = strings(g, "tokenizer.ggml.merges")?;
    let mut pairs = Vec::with_capacity(merges.len());
    for m in &merges {
        let (l, r) = m
            .split_once(' ')
            .ok_or_else(|| bad(g, format!("merge `{m}` is not two pieces")))?;
        pairs.push(json!([l, r]));
    }
    Ok(json!({
        "version": "1.0", "truncation": null, "padding": null,
        "normalizer": null,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": false},
            {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false}]},
        "decoder": {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": false, "use_regex": false},
        "model": {"type": "BPE", "dropout": null, "unk_token": null,
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
            "vocab": vocab_json(tokens), "merges": pairs}
    }))
}
