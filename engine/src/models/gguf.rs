//! GGUF files through the family seam: `general.architecture` picks a family, the file's
//! metadata becomes that family's `config.json` (read by the family's own `config`), its tensors
//! get the family's Hugging Face names (each expert a slab of the stacked `*_exps` tensors,
//! zero-copy), and the tokenizer and chat template come from `tokenizer.ggml.*`.
//!
//! Supported: `llama` with experts (Mixtral, as llama.cpp's converter writes it). Its q/k rows
//! are permuted by the converter to llama.cpp's adjacent-pair RoPE, so the model keeps them as
//! they are and rotates pairs `(2i, 2i+1)`.

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

/// Opens a GGUF file as a model: its config, its weights (in place) and its tokenizer.
pub fn open(path: &Path) -> Result<(ModelConfig, Weights, Tokenizer)> {
    open_with(path, true)
}

/// [`open`], with `mmap` false reading the file into private memory instead of mapping it.
pub fn open_with(path: &Path, mmap: bool) -> Result<(ModelConfig, Weights, Tokenizer)> {
    let g = Gguf::open_with(path, mmap)?;
    let arch = g
        .str("general.architecture")
        .ok_or_else(|| bad(&g, "no `general.architecture`"))?
        .to_string();
    match arch.as_str() {
        "llama" => {}
        other => {
            return Err(bad(
                &g,
                format!(
                    "GGUF architecture `{other}` is not supported (supported: llama with experts)"
                ),
            ))
        }
    }
    let cfg = llama_config(&g)?;
    let tokenizer = tokenizer(&g)?;
    let entries = llama_tensors(&g, cfg.moe.n_experts)?;
    let weights = Weights::from_gguf(g, entries)?;
    Ok((cfg, weights, tokenizer))
}

fn meta_u32(g: &Gguf, key: &str) -> Result<u32> {
    g.u32(key)
        .ok_or_else(|| bad(g, format!("metadata `{key}` is missing or not an integer")))
}

/// The `config.json` a llama-with-experts GGUF stands for, read by the Mixtral family.
fn llama_config(g: &Gguf) -> Result<ModelConfig> {
    let a = "llama";
    let experts = g.u32(&format!("{a}.expert_count")).unwrap_or(0);
    if experts == 0 {
        return Err(bad(
            g,
            "a llama GGUF without experts (`llama.expert_count`) is a dense model, not supported",
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
    c.insert("model_type".into(), json!("mixtral"));
    c.insert("architectures".into(), json!(["MixtralForCausalLM"]));
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
    c.insert("num_local_experts".into(), json!(experts));
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
    cfg.attention.rope_interleaved = true;
    Ok(cfg)
}

/// Every tensor under its Hugging Face (Mixtral) name; each expert of a stacked `*_exps` tensor
/// `[E, out, in]` as its own `[out, in]` slab.
fn llama_tensors(g: &Gguf, n_experts: usize) -> Result<Vec<(String, TensorInfo)>> {
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
            return Err(bad(g, format!("tensor `{name}` is not a llama tensor")));
        };
        let p = format!("model.layers.{layer}");
        let hf = match part {
            "attn_norm.weight" => format!("{p}.input_layernorm.weight"),
            "attn_q.weight" => format!("{p}.self_attn.q_proj.weight"),
            "attn_k.weight" => format!("{p}.self_attn.k_proj.weight"),
            "attn_v.weight" => format!("{p}.self_attn.v_proj.weight"),
            "attn_output.weight" => format!("{p}.self_attn.o_proj.weight"),
            "ffn_norm.weight" => format!("{p}.post_attention_layernorm.weight"),
            "ffn_gate_inp.weight" => format!("{p}.block_sparse_moe.gate.weight"),
            "ffn_gate_exps.weight" | "ffn_up_exps.weight" | "ffn_down_exps.weight" => {
                let w = match part {
                    "ffn_gate_exps.weight" => "w1",
                    "ffn_up_exps.weight" => "w3",
                    _ => "w2",
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
                        format!("{p}.block_sparse_moe.experts.{x}.{w}.weight"),
                        info(
                            t,
                            vec![rows, cols],
                            start + x * slab..start + (x + 1) * slab,
                        ),
                    ));
                }
                continue;
            }
            _ => return Err(bad(g, format!("tensor `{name}` is not a llama tensor"))),
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

/// The tokenizer of `tokenizer.ggml.*` as a `tokenizers` pipeline, with the chat template.
fn tokenizer(g: &Gguf) -> Result<Tokenizer> {
    let model = g
        .str("tokenizer.ggml.model")
        .ok_or_else(|| bad(g, "metadata `tokenizer.ggml.model` is missing"))?;
    if model != "llama" {
        return Err(bad(
            g,
            format!("tokenizer model `{model}` is not supported yet (supported: llama)"),
        ));
    }
    let tokens = strings(g, "tokenizer.ggml.tokens")?;
    let n = tokens.len();
    let scores: Vec<f32> = match g.array("tokenizer.ggml.scores") {
        Some(a) => a.iter().map(|v| v.as_f32().unwrap_or(0.0)).collect(),
        None => vec![0.0; n],
    };
    let types: Vec<i64> = match g.array("tokenizer.ggml.token_type") {
        Some(a) => a.iter().map(|v| v.as_i64().unwrap_or(1)).collect(),
        None => vec![1; n],
    };
    if scores.len() != n || types.len() != n {
        return Err(bad(
            g,
            format!(
                "{n} tokens with {} scores and {} token types",
                scores.len(),
                types.len()
            ),
        ));
    }
    let id_of = |key: &str| g.u32(key).filter(|&i| (i as usize) < n);
    let unk = id_of("tokenizer.ggml.unknown_token_id");
    let bos = id_of("tokenizer.ggml.bos_token_id");
    let eos = id_of("tokenizer.ggml.eos_token_id");
    let add_bos = g.bool("tokenizer.ggml.add_bos_token").unwrap_or(true);
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
    let special = |i: usize| matches!(types[i], 2..=4);
    let added: Vec<serde_json::Value> = (0..n)
        .filter(|&i| special(i))
        .map(|i| {
            json!({"id": i, "content": tokens[i], "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": types[i] != 4})
        })
        .collect();
    let vocab_json: Map<String, serde_json::Value> = tokens
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let post = match bos.filter(|_| add_bos) {
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
    let tj = json!({
        "version": "1.0", "truncation": null, "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u{2581}"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}]},
        "pre_tokenizer": null,
        "post_processor": post,
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": null,
            "unk_token": unk.map(|u| tokens[u as usize].clone()),
            "continuing_subword_prefix": null, "end_of_word_suffix": null,
            "fuse_unk": true, "byte_fallback": true, "ignore_merges": false,
            "vocab": vocab_json,
            "merges": merges.iter().map(|m| json!([m.3, m.4])).collect::<Vec<_>>()}
    });
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
