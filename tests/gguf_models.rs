//! llama.cpp's GGUF files of a tiny Mixtral (`fixtures/gguf-mixtral-a`, 13 weight types) run as
//! models, against both references of `fixtures/gguf-mixtral-a/README.md`:
//!
//! - the float64 dequantize-then-multiply reference (`ref_f64_*`), which our kernels follow
//!   (they multiply dequantized weights by f32 activations): teacher-forced logits within 1e-3 of
//!   it at every element and the same 16 greedy ids;
//! - llama.cpp's own logits, which round activations to 8 bits before each product: the
//!   comparison that survives that rounding (its `check_goldens.py`): the median KL per row at
//!   most 6× the float64 reference's own, at most 15 % of rows with KL above 1e-2, the same top-1
//!   token on every robust row and the same greedy ids up to the first non-robust step.
//!
//! Also the tokenizer built from `tokenizer.ggml.*`: llama.cpp's ids for both prompts and the
//! Hugging Face `tokenizer.json`'s ids on a few hundred strings, and the chat template.

use moe::backend::CpuBackend;
use moe::engine::{Engine, ModelSource};
use moe::models::Model;
use moe_tests::{all_logits, fixture, greedy_ids as greedy, kl_divergence as kl, Golden};

const TYPES: [&str; 13] = [
    "F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K_M", "Q5_K_M", "Q6_K", "Q3_K_M", "Q2_K",
    "IQ4_NL", "IQ4_XS",
];

fn gguf(t: &str) -> std::path::PathBuf {
    fixture("gguf-mixtral-a").join(format!("gguf-mixtral-a.{t}.gguf"))
}

fn engine(t: &str) -> Engine {
    Engine::load(&ModelSource::Gguf(gguf(t))).unwrap_or_else(|e| panic!("{t}: {e}"))
}

fn golden(t: &str) -> Golden {
    Golden::from_file(&fixture("gguf-mixtral-a").join(format!("{t}.golden.safetensors")))
}

fn ids(g: &Golden, key: &str) -> Vec<u32> {
    g.get(key).i.iter().map(|&x| x as u32).collect()
}

/// Largest minus second largest.
fn top_gap(row: &[f32]) -> f32 {
    let mut s: Vec<f32> = row.to_vec();
    s.sort_by(|a, b| b.total_cmp(a));
    s[0] - s[1]
}

fn argmax(row: &[f32]) -> usize {
    moe::sampling::argmax(row) as usize
}

struct Outcome {
    ref_max_abs: f32,
    kl_median: f64,
}

fn check_type(t: &str) -> Vec<Outcome> {
    let e = engine(t);
    let m = &e.model;
    let v = m.cfg.vocab_size;
    let g = golden(t);
    let mut outcomes = vec![];
    for p in ["p0", "p1"] {
        let prompt = ids(&g, &format!("input_ids_{p}"));
        let n = prompt.len();

        // The float64 reference: teacher-forced on its own continuation, and its greedy ids.
        let ref_gen = ids(&g, &format!("ref_f64_generated_ids_{p}"));
        let tf: Vec<u32> = prompt.iter().chain(&ref_gen[..15]).copied().collect();
        let got = all_logits(m, &tf);
        let want = g.get(&format!("ref_f64_logits_{p}")).f;
        assert_eq!(got.len(), want.len(), "{t} {p}: reference rows");
        let ref_max_abs = got
            .iter()
            .zip(&want)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max);
        assert!(
            ref_max_abs <= 1e-3,
            "{t} {p}: logits {ref_max_abs:e} from the float64 reference (limit 1e-3)"
        );
        assert_eq!(
            greedy(m, &prompt, 16),
            ref_gen,
            "{t} {p}: greedy ids against the float64 reference"
        );

        // llama.cpp: its prompt logits and its greedy steps teacher-forced on its own ids.
        let gen = ids(&g, &format!("generated_ids_{p}"));
        let tf: Vec<u32> = prompt.iter().chain(&gen[..15]).copied().collect();
        let ours = all_logits(m, &tf);
        let mut rows_ours: Vec<&[f32]> = ours.chunks(v).take(n).collect();
        rows_ours.extend(ours.chunks(v).skip(n - 1));
        let theirs_prompt = g.get(&format!("logits_{p}")).f;
        let theirs_gen = g.get(&format!("gen_logits_{p}")).f;
        let rows_theirs: Vec<&[f32]> = theirs_prompt
            .chunks(v)
            .chain(theirs_gen.chunks(v))
            .collect();
        assert_eq!(
            rows_ours.len(),
            rows_theirs.len(),
            "{t} {p}: llama.cpp rows"
        );
        // A row is robust where llama.cpp's top two logits are ≥ 0.25 apart and every layer's
        // second and third expert are ≥ 0.25 apart in log probability at its position.
        let probs = g.get(&format!("router_probs_{p}"));
        let (layers, positions, experts) = (probs.shape[0], probs.shape[1], probs.shape[2]);
        let router_gap = |pos: usize| -> f32 {
            (0..layers)
                .map(|l| {
                    let row = &probs.f[(l * positions + pos) * experts..][..experts];
                    let mut s: Vec<f32> = row.iter().map(|x| x.ln()).collect();
                    s.sort_by(|a, b| b.total_cmp(a));
                    s[1] - s[2]
                })
                .fold(f32::INFINITY, f32::min)
        };
        let row_pos = |r: usize| if r < n { r } else { n - 1 + (r - n) };
        let robust: Vec<bool> = (0..rows_theirs.len())
            .map(|r| top_gap(rows_theirs[r]) >= 0.25 && router_gap(row_pos(r)) >= 0.25)
            .collect();
        let kls: Vec<f64> = rows_theirs
            .iter()
            .zip(&rows_ours)
            .map(|(a, b)| kl(a, b))
            .collect();
        let mut sorted = kls.clone();
        sorted.sort_by(|a, b| a.total_cmp(b));
        let kl_median = (sorted[(sorted.len() - 1) / 2] + sorted[sorted.len() / 2]) / 2.0;
        let yard = g.get(&format!("kl_yardstick_{p}")).f[0] as f64;
        let limit = 6.0 * yard.max(1e-4);
        assert!(
            kl_median <= limit,
            "{t} {p}: median KL from llama.cpp {kl_median:e} above {limit:e}"
        );
        let far = kls.iter().filter(|&&k| k > 1e-2).count();
        assert!(
            far as f64 <= 0.15 * kls.len() as f64,
            "{t} {p}: {far} of {} rows with KL above 1e-2",
            kls.len()
        );
        for (r, &ok) in robust.iter().enumerate() {
            if ok {
                assert_eq!(
                    argmax(rows_ours[r]),
                    argmax(rows_theirs[r]),
                    "{t} {p}: top-1 of robust row {r}"
                );
            }
        }
        let steps = robust[n..].iter().take_while(|&&r| r).count();
        assert_eq!(
            greedy(m, &prompt, steps),
            gen[..steps],
            "{t} {p}: greedy ids against llama.cpp's over its first {steps} robust steps"
        );
        outcomes.push(Outcome {
            ref_max_abs,
            kl_median,
        });
    }
    outcomes
}

#[test]
fn every_weight_type_matches_both_references() {
    for t in TYPES {
        let o = check_type(t);
        eprintln!(
            "{t}: max |logit − float64 ref| {:.2e} / {:.2e}; median KL(llama.cpp ‖ moe) {:.2e} / {:.2e}",
            o[0].ref_max_abs, o[1].ref_max_abs, o[0].kl_median, o[1].kl_median
        );
    }
}

#[test]
fn tokenizer_and_template_from_metadata() {
    let e = engine("Q8_0");
    let meta: serde_json::Value = serde_json::from_slice(
        &std::fs::read(fixture("gguf-mixtral-a").join("meta.json")).unwrap(),
    )
    .unwrap();
    for p in ["p0", "p1"] {
        let text = meta["prompts"][p]["text"].as_str().unwrap();
        let want: Vec<u32> = meta["prompts"][p]["llama_cpp_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(e.tokenizer.encode(text, true).unwrap(), want, "{p}: {text}");
        assert_eq!(e.tokenizer.decode(&want[1..], true).unwrap(), text);
    }
    // Against the Hugging Face tokenizer.json of the checkpoint the GGUF came from.
    let hf = tokenizers::Tokenizer::from_file(fixture("gguf-mixtral-a").join("hf-tokenizer.json"))
        .unwrap();
    let pieces = [
        "Hello world",
        "  two  spaces ",
        "tabs\tand\nnewlines\n\n",
        "1234567890",
        "café Größe",
        "東京 🦀 🙂",
        "a",
        " ",
        "",
        "experts route tokens",
        "don't stop",
        "x\u{200b}y\u{a0}z",
    ];
    let mut strings = vec![];
    for (i, a) in pieces.iter().enumerate() {
        for b in &pieces[i..] {
            strings.push(format!("{a}{b}"));
        }
    }
    for s in &strings {
        let want = hf.encode(s.as_str(), true).unwrap().get_ids().to_vec();
        assert_eq!(e.tokenizer.encode(s, true).unwrap(), want, "{s:?}");
    }
    assert_eq!(
        (e.tokenizer.bos_id(), e.tokenizer.eos_id()),
        (Some(1), Some(2))
    );
    assert!(e.eos_ids.contains(&2));
    // The Jinja template of `tokenizer.chat_template` (Mixtral's [INST] format).
    let rendered = e
        .tokenizer
        .apply_chat_template(
            &[moe::ChatMessage {
                role: "user".into(),
                content: "What is 2+2?".into(),
            }],
            true,
        )
        .unwrap();
    assert_eq!(rendered, "<s>[INST] What is 2+2? [/INST]");
}

#[test]
fn malformed_gguf_models_are_named_errors() {
    let dir = std::env::temp_dir().join(format!("moe-gguf-bad-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let bytes = std::fs::read(gguf("Q8_0")).unwrap();
    // Cut inside the tensor data: the header parses, a tensor runs past the end.
    let cut = dir.join("cut.gguf");
    std::fs::write(&cut, &bytes[..bytes.len() - 1000]).unwrap();
    let err = Engine::load(&ModelSource::Gguf(cut))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("cut.gguf"), "{err}");
    // Not a GGUF at all.
    let junk = dir.join("junk.gguf");
    std::fs::write(&junk, b"not a gguf file at all").unwrap();
    let err = Engine::load(&ModelSource::Gguf(junk))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("junk.gguf"), "{err}");
    let missing = dir.join("missing.gguf");
    let err = Engine::load(&ModelSource::Gguf(missing))
        .err()
        .unwrap()
        .to_string();
    assert!(err.contains("missing.gguf"), "{err}");
    std::fs::remove_dir_all(&dir).ok();
}

/// In-situ quantisation of a float checkpoint's experts (`LoadOptions::quantize`): the logits'
/// KL divergence from the unquantised model, per prompt position, on the Mixtral fixture's
/// prompt; the quantised tensors are those of the fixture and the rest stays f32.
#[test]
fn in_situ_quantisation_stays_close_to_the_float_model() {
    use moe::engine::LoadOptions;
    use moe_kernels::quant::GgmlType;
    let dir = fixture("mixtral-small-f32");
    let prompt = ids(&Golden::load("mixtral-small-f32"), "p0.input_ids");
    let load = |quantize: Option<GgmlType>, attention: bool| {
        let opts = LoadOptions {
            quantize,
            quantize_attention: attention,
            ..Default::default()
        };
        Engine::load_with(&ModelSource::Dir(dir.clone()), CpuBackend, opts).unwrap()
    };
    let base = load(None, false);
    let v = base.model.cfg.vocab_size;
    let want = all_logits(&base.model, &prompt);
    // (type, attention too, largest median KL, largest KL at any position)
    for (ty, attention, median_max, row_max) in [
        (GgmlType::Q8_0, false, 1e-4, 3e-4),
        (GgmlType::Q8_0, true, 2e-4, 5e-4),
        (GgmlType::Q4_0, false, 1e-2, 3e-2),
    ] {
        let q = load(Some(ty), attention);
        assert!(
            q.model.weight_bytes() < base.model.weight_bytes(),
            "{ty}: quantised weights are smaller"
        );
        let got = all_logits(&q.model, &prompt);
        let mut kls: Vec<f64> = want
            .chunks(v)
            .zip(got.chunks(v))
            .map(|(a, b)| kl(a, b))
            .collect();
        kls.sort_by(|a, b| a.total_cmp(b));
        let median = kls[kls.len() / 2];
        let max = kls[kls.len() - 1];
        eprintln!(
            "{ty} (attention {attention}): KL to f32 median {median:.2e}, max {max:.2e}; weights {} -> {} bytes",
            base.model.weight_bytes(),
            q.model.weight_bytes()
        );
        assert!(
            median <= median_max && max <= row_max,
            "{ty}: KL median {median:e}, max {max:e}"
        );
    }
}

/// Our K-quant quantizers against `llama-quantize` on the same weights: every Q4_K, Q5_K and
/// Q6_K tensor of llama.cpp's files, re-quantized by us from the F16 file's values, comes back
/// with a root-mean-square error at most 10% above llama.cpp's own (which quantized the f32
/// originals with its importance-weighted search).
#[test]
fn k_quant_isq_error_is_level_with_llama_quantize() {
    use moe::gguf::Gguf;
    use moe_kernels::quant::{dequantize_row, quantize_row, GgmlType};
    let f16 = Gguf::open(gguf("F16")).unwrap();
    let mut checked = 0;
    for (file, ty) in [
        ("Q4_K_M", GgmlType::Q4_K),
        ("Q5_K_M", GgmlType::Q5_K),
        ("Q6_K", GgmlType::Q6_K),
    ] {
        let g = Gguf::open(gguf(file)).unwrap();
        let (mut ours_sq, mut theirs_sq, mut n) = (0f64, 0f64, 0usize);
        for t in g.tensors().iter().filter(|t| t.ggml_type == ty) {
            let x = f16.dequantize(f16.tensor(&t.name).unwrap()).unwrap();
            let theirs = g.dequantize(t).unwrap();
            let mut q = vec![];
            quantize_row(ty, &x, &mut q).unwrap();
            let mut ours = vec![0f32; x.len()];
            dequantize_row(ty, &q, &mut ours).unwrap();
            let sq =
                |y: &[f32]| -> f64 { x.iter().zip(y).map(|(a, b)| ((a - b) as f64).powi(2)).sum() };
            let (o, th) = (sq(&ours), sq(&theirs));
            assert!(
                o <= 1.21 * th,
                "{ty} {}: our squared error {o:.4e} against llama-quantize's {th:.4e}",
                t.name
            );
            (ours_sq, theirs_sq, n) = (ours_sq + o, theirs_sq + th, n + x.len());
            checked += 1;
        }
        eprintln!(
            "{ty} ({file}): rms error ours {:.4e}, llama-quantize {:.4e} over {n} weights",
            (ours_sq / n as f64).sqrt(),
            (theirs_sq / n as f64).sqrt()
        );
    }
    assert!(checked >= 10, "only {checked} K-quant tensors compared");
}

/// In-situ K-quant quantisation of the F16 file's experts and attention: the KL divergence of
/// the logits from the F16 model's, on both prompts and the float64 reference's continuation,
/// with llama.cpp's own files of the same type through our engine for scale.
#[test]
fn k_quant_isq_stays_close_to_the_f16_model() {
    use moe::engine::LoadOptions;
    use moe_kernels::quant::GgmlType;
    let g = golden("F16");
    let base = engine("F16");
    let v = base.model.cfg.vocab_size;
    let tokens: Vec<Vec<u32>> = ["p0", "p1"]
        .iter()
        .map(|p| {
            let mut t = ids(&g, &format!("input_ids_{p}"));
            t.extend(&ids(&g, &format!("ref_f64_generated_ids_{p}"))[..15]);
            t
        })
        .collect();
    let median_kl = |m: &Model<CpuBackend>| {
        let mut kls = vec![];
        for t in &tokens {
            let (want, got) = (all_logits(&base.model, t), all_logits(m, t));
            kls.extend(want.chunks(v).zip(got.chunks(v)).map(|(a, b)| kl(a, b)));
        }
        kls.sort_by(|a, b| a.total_cmp(b));
        kls[kls.len() / 2]
    };
    // (type, llama.cpp's file of that type, largest median KL)
    for (ty, file, limit) in [
        (GgmlType::Q4_K, "Q4_K_M", 2e-2),
        (GgmlType::Q5_K, "Q5_K_M", 5e-3),
        (GgmlType::Q6_K, "Q6_K", 1.5e-3),
    ] {
        let opts = LoadOptions {
            quantize: Some(ty),
            quantize_attention: true,
            ..Default::default()
        };
        let q = Engine::load_with(&ModelSource::Gguf(gguf("F16")), CpuBackend, opts).unwrap();
        assert!(
            q.model.weight_bytes() < base.model.weight_bytes() / 2,
            "{ty}: {} of {} bytes",
            q.model.weight_bytes(),
            base.model.weight_bytes()
        );
        let ours = median_kl(&q.model);
        let theirs = median_kl(&engine(file).model);
        eprintln!("{ty}: median KL to F16 {ours:.2e} (llama.cpp's {file} file: {theirs:.2e})");
        assert!(ours <= limit, "{ty}: median KL {ours:e}");
    }
}

/// Every GGUF type through our engine against the original HF float32 model (transformers'
/// logits on the same ids): KL(HF ‖ ours) over the prompt positions and HF's 15 greedy steps
/// teacher-forced, both prompts; the median bounded per type (about 3× what was measured), and
/// the table printed. F16 is the conversion alone; the rest adds each type's rounding.
#[test]
fn kl_to_the_hf_model_per_type() {
    let hf = Golden::from_file(&fixture("gguf-mixtral-a").join("hf-f32.golden.safetensors"));
    // (type, largest median KL)
    let limits = [
        ("F16", 5e-7),
        ("Q8_0", 2.5e-4),
        ("Q6_K", 2.5e-3),
        ("Q5_K_M", 1e-2),
        ("Q5_1", 1e-2),
        ("Q5_0", 1.2e-2),
        ("Q4_K_M", 3e-2),
        ("Q4_1", 4e-2),
        ("Q4_0", 5e-2),
        ("IQ4_NL", 3.5e-2),
        ("IQ4_XS", 4e-2),
        ("Q3_K_M", 1.2e-1),
        ("Q2_K", 4e-1),
    ];
    assert_eq!(limits.len(), TYPES.len());
    for (t, limit) in limits {
        let e = engine(t);
        let v = e.model.cfg.vocab_size;
        let mut kls = vec![];
        for p in ["p0", "p1"] {
            let prompt = ids(&hf, &format!("input_ids_{p}"));
            let gen = ids(&hf, &format!("generated_ids_{p}"));
            let tokens: Vec<u32> = prompt.iter().chain(&gen[..15]).copied().collect();
            let got = all_logits(&e.model, &tokens);
            let mut want = hf.get(&format!("logits_{p}")).f;
            want.extend_from_slice(&hf.get(&format!("gen_logits_{p}")).f[v..]);
            assert_eq!(got.len(), want.len(), "{t} {p}: rows");
            kls.extend(want.chunks(v).zip(got.chunks(v)).map(|(a, b)| kl(a, b)));
        }
        kls.sort_by(|a, b| a.total_cmp(b));
        let (median, max) = (kls[kls.len() / 2], kls[kls.len() - 1]);
        eprintln!("{t}: KL(HF f32 || moe) median {median:.2e}, max {max:.2e}");
        assert!(median <= limit, "{t}: median KL to the HF model {median:e}");
    }
}
