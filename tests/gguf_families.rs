//! Qwen3-MoE and OLMoE as GGUF files (`fixtures/gguf-families`, written in llama.cpp's layout
//! from the reference checkpoints by `tests/python/make_family_gguf.py`, Q8_0 by
//! `llama-quantize`): the F32 file against transformers' goldens on every element of the logits,
//! both files against llama.cpp's own logits and greedy ids, and the GPT-2 BPE tokenizer built
//! from the metadata against llama.cpp's ids.

use moe::engine::{Engine, ModelSource};
use moe_tests::{
    all_logits, assert_close, fixture, greedy_ids as greedy, kl_divergence as kl, pick, real_rows,
    Golden, Tol,
};

const FAMILIES: [&str; 2] = ["qwen3_moe-tiny-f32", "olmoe-tiny-f32"];

fn path(name: &str, ty: &str) -> std::path::PathBuf {
    fixture("gguf-families").join(format!("{name}.{ty}.gguf"))
}

fn engine(name: &str, ty: &str) -> Engine {
    Engine::load(&ModelSource::Gguf(path(name, ty))).unwrap_or_else(|e| panic!("{name} {ty}: {e}"))
}

fn llama_golden(name: &str, ty: &str) -> Golden {
    Golden::from_file(&fixture("gguf-families").join(format!("{name}.{ty}.llama.safetensors")))
}

fn ids(g: &Golden, key: &str) -> Vec<u32> {
    g.get(key).i.iter().map(|&x| x as u32).collect()
}

/// The F32 file is the reference checkpoint: every logit of both golden cases (one prompt with
/// the chat markers, a ragged batch of two) within the family tests' float32 tolerance of
/// transformers', and the config it implies is the one `config.json` gives.
#[test]
fn f32_files_match_transformers() {
    for name in FAMILIES {
        let e = engine(name, "F32");
        let from_json = moe::ModelConfig::from_file(&fixture(name).join("config.json")).unwrap();
        let (a, b) = (&e.model.cfg, &from_json);
        assert_eq!(
            (
                a.family,
                a.num_hidden_layers,
                a.hidden_size,
                a.num_attention_heads,
                a.num_key_value_heads,
                a.head_dim,
                a.vocab_size
            ),
            (
                b.family,
                b.num_hidden_layers,
                b.hidden_size,
                b.num_attention_heads,
                b.num_key_value_heads,
                b.head_dim,
                b.vocab_size
            ),
            "{name}: shape"
        );
        assert_eq!(
            format!("{:?}", a.moe),
            format!("{:?}", b.moe),
            "{name}: MoE"
        );
        assert_eq!(
            format!("{:?}", a.attention),
            format!("{:?}", b.attention),
            "{name}: attention"
        );
        assert_eq!(
            (a.rope_theta, a.rms_norm_eps),
            (b.rope_theta, b.rms_norm_eps),
            "{name}: rope and norm constants"
        );
        let g = Golden::load(name);
        let v = a.vocab_size;
        for case in ["p0", "p1"] {
            let (rows, flat) = real_rows(&g, case);
            let mut got = vec![];
            for r in &rows {
                got.extend(all_logits(&e.model, r));
            }
            let want = pick(&g.get(&format!("{case}.logits")).f, v, &flat);
            let c = assert_close(
                &format!("{name} {case} logits"),
                &got,
                &want,
                Tol {
                    abs: 2e-5,
                    rel: 1e-5,
                },
            );
            eprintln!("{name} {case}: largest logit error {:.2e}", c.max_abs);
        }
    }
}

/// Against llama.cpp on the same files: our tokenizer gives its prompt ids, and the prompt
/// logits are within `abs` of its own (F32: float32 arithmetic on both sides) or, for Q8_0
/// where llama.cpp rounds the activations to 8 bits and we do not, within a median KL; the
/// 8 greedy ids are its ids.
#[test]
fn files_match_llama_cpp() {
    for name in FAMILIES {
        for (ty, max_abs, median_kl) in [("F32", 1e-4f32, 1e-9f64), ("Q8_0", f32::INFINITY, 2e-4)] {
            let e = engine(name, ty);
            let g = llama_golden(name, ty);
            let v = e.model.cfg.vocab_size;
            for p in ["p0", "p1"] {
                let prompt = ids(&g, &format!("input_ids_{p}"));
                let text: serde_json::Value = serde_json::from_str(
                    &std::fs::read_to_string(fixture("gguf-families").join("prompts.json"))
                        .unwrap(),
                )
                .unwrap();
                let text = text[p].as_str().unwrap();
                assert_eq!(
                    e.tokenizer.encode(text, true).unwrap(),
                    prompt,
                    "{name} {ty} {p}: prompt ids"
                );
                let got = all_logits(&e.model, &prompt);
                let want = g.get(&format!("logits_{p}")).f;
                assert_eq!(got.len(), want.len());
                let worst = got
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0f32, f32::max);
                let mut kls: Vec<f64> = got
                    .chunks(v)
                    .zip(want.chunks(v))
                    .map(|(a, b)| kl(b, a))
                    .collect();
                kls.sort_by(|a, b| a.total_cmp(b));
                let median = kls[kls.len() / 2];
                eprintln!(
                    "{name} {ty} {p}: largest logit difference {worst:.2e}, median KL {median:.2e}"
                );
                assert!(
                    worst <= max_abs,
                    "{name} {ty} {p}: logits differ by {worst}"
                );
                assert!(median <= median_kl, "{name} {ty} {p}: median KL {median:e}");
                let want_ids = ids(&g, &format!("generated_ids_{p}"));
                assert_eq!(
                    greedy(&e.model, &prompt, want_ids.len()),
                    want_ids,
                    "{name} {ty} {p}: greedy ids"
                );
            }
        }
    }
}

/// The byte-level BPE built from `tokenizer.ggml.*` gives llama.cpp's ids on every string the
/// fixtures were tokenized with, except one: text that spells a special token (`<|im_start|>`)
/// is parsed as that token here, as transformers does, where llama.cpp's dumper asked for plain
/// text. The chat template comes from the metadata.
#[test]
fn tokenizer_from_metadata_matches_llama_cpp() {
    let strings: Vec<String> = serde_json::from_str(
        &std::fs::read_to_string(fixture("gguf-families").join("tokenizer-strings.json")).unwrap(),
    )
    .unwrap();
    for name in FAMILIES {
        let e = engine(name, "F32");
        let g = llama_golden(name, "F32");
        let hf = moe::tokenizer::Tokenizer::from_dir(&fixture(name)).unwrap();
        let mut compared = 0;
        for (i, s) in strings.iter().enumerate() {
            let ours = e.tokenizer.encode(s, true).unwrap();
            assert_eq!(
                ours,
                hf.encode(s, true).unwrap(),
                "{name}: {s:?} against transformers' tokenizer"
            );
            if s.contains("<|") {
                continue;
            }
            assert_eq!(ours, ids(&g, &format!("tokenize_{i}")), "{name}: {s:?}");
            assert_eq!(
                e.tokenizer.decode(&ours, false).unwrap(),
                *s,
                "{name}: decode {s:?}"
            );
            compared += 1;
        }
        assert!(compared >= 9, "{name}: {compared} strings compared");
        if name.starts_with("qwen3") {
            assert_eq!(
                e.tokenizer.chat_template(),
                hf.chat_template(),
                "{name}: chat template"
            );
        }
    }
}

/// A GGUF of an architecture we do not read, and a pre-tokenizer we do not know, are named.
#[test]
fn unsupported_architecture_and_pre_tokenizer_are_named() {
    let bytes = std::fs::read(path("olmoe-tiny-f32", "F32")).unwrap();
    let dir = std::env::temp_dir().join(format!("moe-gguf-families-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for (from, to, message) in [
        (
            &b"olmoe"[..],
            &b"bloom"[..],
            "GGUF architecture `bloom` is not supported",
        ),
        (
            &b"\x04\x00\x00\x00\x00\x00\x00\x00olmo"[..],
            &b"\x04\x00\x00\x00\x00\x00\x00\x00zzzz"[..],
            "pre-tokenizer `zzzz`",
        ),
    ] {
        // Same-length replacements keep every offset valid.
        let at = bytes
            .windows(from.len())
            .position(|w| w == from)
            .unwrap_or_else(|| panic!("{message}: pattern not in the file"));
        let mut b = bytes.clone();
        b[at..at + to.len()].copy_from_slice(to);
        let f = dir.join("model.gguf");
        std::fs::write(&f, &b).unwrap();
        let err = match Engine::load(&ModelSource::Gguf(f)) {
            Ok(_) => panic!("{message}: loaded"),
            Err(e) => e.to_string(),
        };
        assert!(err.contains(message), "{err}");
    }
    std::fs::remove_dir_all(&dir).ok();
}
