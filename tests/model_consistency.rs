//! The model agrees with itself: KV-cached decoding with full recomputation, a ragged batch with
//! each sequence alone, a sharded checkpoint with the single file; and the router statistics with
//! transformers' counts, probability sums, co-selections and per-layer aux losses.

use moe::backend::CpuBackend;
use moe::models::{Model, SeqStep};
use moe::trace::NoTrace;
use moe::weights::Weights;
use moe::ModelConfig;
use moe_tests::{
    assert_close, fixture, read_raw_tensors, scratch_model_dir, write_safetensors, Golden, Tol,
};
use std::path::Path;

fn load_dir(dir: &Path) -> Model<CpuBackend> {
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let w = Weights::open_dir(dir).unwrap();
    Model::load(cfg, &w, CpuBackend, &mut |_, _| {}).unwrap()
}

fn prompt_ids(g: &Golden, case: &str, row: usize) -> Vec<u32> {
    let ids = g.get(&format!("{case}.input_ids"));
    let t = ids.shape[1];
    let mask = if g.has(&format!("{case}.attention_mask")) {
        g.get(&format!("{case}.attention_mask")).i
    } else {
        vec![1; ids.i.len()]
    };
    (0..t)
        .filter(|&c| mask[row * t + c] == 1)
        .map(|c| ids.i[row * t + c] as u32)
        .collect()
}

fn all_logits(m: &Model<CpuBackend>, ids: &[u32]) -> Vec<f32> {
    let mut kv = m.new_kv();
    m.forward(
        &mut [SeqStep {
            tokens: ids,
            kv: &mut kv,
            all_logits: true,
        }],
        &mut NoTrace,
    )
    .unwrap()
    .pop()
    .unwrap()
}

#[test]
fn kv_cached_decoding_equals_full_recomputation() {
    for name in ["mixtral-tiny-f32", "mixtral-small-f32"] {
        let m = load_dir(&fixture(name));
        let g = Golden::load(name);
        let ids = prompt_ids(&g, "p0", 0);
        let full = all_logits(&m, &ids);
        let v = m.cfg.vocab_size;
        // Prefill 3 tokens, then one token per step through the cache.
        let mut kv = m.new_kv();
        let mut got = m
            .forward(
                &mut [SeqStep {
                    tokens: &ids[..3],
                    kv: &mut kv,
                    all_logits: true,
                }],
                &mut NoTrace,
            )
            .unwrap()
            .pop()
            .unwrap();
        for i in 3..ids.len() {
            let step = m
                .forward(
                    &mut [SeqStep {
                        tokens: &ids[i..i + 1],
                        kv: &mut kv,
                        all_logits: false,
                    }],
                    &mut NoTrace,
                )
                .unwrap();
            got.extend_from_slice(&step[0]);
        }
        assert_eq!(got.len(), ids.len() * v);
        let c = assert_close(
            &format!("{name} cached vs full"),
            &got,
            &full,
            Tol {
                abs: 1e-6,
                rel: 1e-6,
            },
        );
        eprintln!("{name}: cached vs full max |diff| {:.3e}", c.max_abs);
    }
}

#[test]
fn ragged_batch_equals_each_sequence_alone() {
    for name in ["mixtral-tiny-f32", "mixtral-small-f32", "mixtral-tiny-bf16"] {
        let m = load_dir(&fixture(name));
        let g = Golden::load(name);
        let a = prompt_ids(&g, "p1", 0);
        let b = prompt_ids(&g, "p1", 1);
        let (mut ka, mut kb) = (m.new_kv(), m.new_kv());
        let batch = m
            .forward(
                &mut [
                    SeqStep {
                        tokens: &a,
                        kv: &mut ka,
                        all_logits: true,
                    },
                    SeqStep {
                        tokens: &b,
                        kv: &mut kb,
                        all_logits: true,
                    },
                ],
                &mut NoTrace,
            )
            .unwrap();
        // Every kernel computes a row the same way whatever else is in the batch: bit-identical.
        assert_eq!(
            batch[0],
            all_logits(&m, &a),
            "{name}: row 0 differs from running it alone"
        );
        assert_eq!(
            batch[1],
            all_logits(&m, &b),
            "{name}: row 1 differs from running it alone"
        );
    }
}

#[test]
fn sharded_checkpoint_equals_single_file() {
    let name = "mixtral-tiny-f32";
    let dir = scratch_model_dir(name, "sharded");
    let tensors = read_raw_tensors(name);
    let mut weight_map = serde_json::Map::new();
    let per = tensors.len().div_ceil(3);
    for (i, chunk) in tensors.chunks(per).enumerate() {
        let file = format!("model-{:05}-of-00003.safetensors", i + 1);
        for t in chunk {
            weight_map.insert(t.name.clone(), file.clone().into());
        }
        write_safetensors(&dir.join(&file), chunk);
    }
    let index = serde_json::json!({"metadata": {}, "weight_map": weight_map});
    std::fs::write(dir.join("model.safetensors.index.json"), index.to_string()).unwrap();
    let sharded = load_dir(&dir);
    let single = load_dir(&fixture(name));
    let ids = prompt_ids(&Golden::load(name), "p0", 0);
    assert_eq!(all_logits(&sharded, &ids), all_logits(&single, &ids));

    // An index naming a tensor that its shard lacks is an error naming the tensor.
    let mut bad = index.clone();
    bad["weight_map"]["model.extra.weight"] = "model-00001-of-00003.safetensors".into();
    std::fs::write(dir.join("model.safetensors.index.json"), bad.to_string()).unwrap();
    let e = Weights::open_dir(&dir)
        .err()
        .expect("index error")
        .to_string();
    assert!(e.contains("model.extra.weight"), "{e}");
}

#[test]
fn statistics_match_transformers() {
    for name in ["mixtral-tiny-f32", "mixtral-small-f32"] {
        let g = Golden::load(name);
        for case in ["p0", "p1"] {
            let m = load_dir(&fixture(name));
            let rows = if case == "p0" { 1 } else { 2 };
            let seqs: Vec<Vec<u32>> = (0..rows).map(|r| prompt_ids(&g, case, r)).collect();
            let mut kvs: Vec<_> = seqs.iter().map(|_| m.new_kv()).collect();
            let mut steps: Vec<_> = seqs
                .iter()
                .zip(kvs.iter_mut())
                .map(|(s, kv)| SeqStep {
                    tokens: s,
                    kv,
                    all_logits: false,
                })
                .collect();
            m.forward(&mut steps, &mut NoTrace).unwrap();
            let report = m.stats().report();
            let e = m.cfg.moe.n_experts;
            let mass = g.get(&format!("{case}.router_prob_sum"));
            let cosel = g.get(&format!("{case}.coselect_counts"));
            let aux_layer = g.get(&format!("{case}.aux_loss_per_layer"));
            for (l, lr) in report.layers.iter().enumerate() {
                let got: Vec<f32> = lr.router_mass.iter().map(|&x| x as f32).collect();
                assert_close(
                    &format!("{name} {case} layer {l} router mass"),
                    &got,
                    &mass.f[l * e..(l + 1) * e],
                    Tol {
                        abs: 1e-5,
                        rel: 1e-5,
                    },
                );
                let want: Vec<u64> = cosel.i[l * e * e..(l + 1) * e * e]
                    .iter()
                    .map(|&x| x as u64)
                    .collect();
                assert_eq!(
                    lr.coselect.concat(),
                    want,
                    "{name} {case} layer {l} co-selection"
                );
                let a = aux_layer.f[l] as f64;
                assert!(
                    (lr.aux_loss - a).abs() <= 1e-5 * a,
                    "{name} {case} layer {l} aux {} vs {a}",
                    lr.aux_loss
                );
                assert_eq!(lr.expert_tokens.iter().sum::<u64>(), lr.tokens * 2);
            }
            // Accumulates across calls, and resets.
            let before = m.stats().layers[0].tokens;
            m.forward(
                &mut [SeqStep {
                    tokens: &seqs[0],
                    kv: &mut m.new_kv(),
                    all_logits: false,
                }],
                &mut NoTrace,
            )
            .unwrap();
            assert_eq!(m.stats().layers[0].tokens, before + seqs[0].len() as u64);
            m.reset_stats();
            assert_eq!(m.stats().layers[0].tokens, 0);
            let json = serde_json::to_value(m.stats().report()).unwrap();
            assert!(json["layers"][0]["expert_tokens"].is_array());
        }
    }
}
