//! Shared helpers for the integration tests: fixture paths, golden files, and element-wise
//! comparison that names the worst element.

pub mod python;

use half::bf16;
use safetensors::{Dtype, SafeTensors};
use std::path::PathBuf;

/// `tests/fixtures/<name>`, or `$MOE_FIXTURES/<name>` where test binaries run away from the
/// source tree (a GPU machine).
pub fn fixture(name: &str) -> PathBuf {
    match std::env::var_os("MOE_FIXTURES") {
        Some(d) => PathBuf::from(d).join(name),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("fixtures")
            .join(name),
    }
}

/// The `moe` binary: `$MOE_BIN`, else `target/release/moe` (`cargo build --release -p
/// moe-engine --bin moe`; a test crate's build does not build another package's binaries).
pub fn moe_bin() -> PathBuf {
    let bin = match std::env::var_os("MOE_BIN") {
        Some(b) => PathBuf::from(b),
        None => {
            let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(
                || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"),
                PathBuf::from,
            );
            target.join("release").join("moe")
        }
    };
    assert!(
        bin.is_file(),
        "{} is missing: build it with `cargo build --release -p moe-engine --bin moe` or set MOE_BIN",
        bin.display()
    );
    bin
}

/// A path from the repository root (`$MOE_REPO_ROOT` when set).
pub fn repo_path(rel: &str) -> PathBuf {
    match std::env::var_os("MOE_REPO_ROOT") {
        Some(d) => PathBuf::from(d).join(rel),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(rel),
    }
}

/// A golden tensor, widened: floats to f32, ints to i64.
pub struct Golden {
    bytes: Vec<u8>,
}

#[derive(Debug, Clone)]
pub struct GTensor {
    pub shape: Vec<usize>,
    pub f: Vec<f32>,
    pub i: Vec<i64>,
}

impl Golden {
    pub fn load(model: &str) -> Golden {
        let path = fixture(model).join("golden.safetensors");
        Golden {
            bytes: std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }

    /// A golden file elsewhere than `<fixture>/golden.safetensors`.
    pub fn from_file(path: &std::path::Path) -> Golden {
        Golden {
            bytes: std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display())),
        }
    }

    pub fn has(&self, key: &str) -> bool {
        SafeTensors::deserialize(&self.bytes)
            .unwrap()
            .tensor(key)
            .is_ok()
    }

    pub fn get(&self, key: &str) -> GTensor {
        let st = SafeTensors::deserialize(&self.bytes).unwrap();
        let t = st
            .tensor(key)
            .unwrap_or_else(|_| panic!("golden key {key} missing"));
        let data = t.data();
        let (f, i) = match t.dtype() {
            Dtype::F32 => (
                data.chunks(4)
                    .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
                vec![],
            ),
            Dtype::BF16 => (
                data.chunks(2)
                    .map(|c| bf16::from_le_bytes(c.try_into().unwrap()).to_f32())
                    .collect(),
                vec![],
            ),
            Dtype::I64 => (
                vec![],
                data.chunks(8)
                    .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
                    .collect(),
            ),
            d => panic!("unexpected golden dtype {d:?}"),
        };
        GTensor {
            shape: t.shape().to_vec(),
            f,
            i,
        }
    }
}

#[derive(Clone, Copy, Debug)]
pub struct Tol {
    pub abs: f32,
    pub rel: f32,
}

/// Summary of a comparison: worst element and relative L2 error.
#[derive(Debug)]
pub struct Closeness {
    pub max_abs: f32,
    pub rel_l2: f64,
}

/// Every element within `abs + rel·|want|`; on failure names the worst element (index, got, want).
pub fn assert_close(what: &str, got: &[f32], want: &[f32], tol: Tol) -> Closeness {
    assert_eq!(
        got.len(),
        want.len(),
        "{what}: length {} vs {}",
        got.len(),
        want.len()
    );
    let mut worst = (0usize, 0f32);
    let mut max_abs = 0f32;
    let (mut num, mut den) = (0f64, 0f64);
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let d = (g - w).abs();
        assert!(g.is_finite(), "{what}: element {i} is {g}");
        let excess = d - (tol.abs + tol.rel * w.abs());
        if excess > worst.1 {
            worst = (i, excess);
        }
        max_abs = max_abs.max(d);
        num += (d as f64).powi(2);
        den += (w as f64).powi(2);
    }
    let rel_l2 = (num / den.max(1e-30)).sqrt();
    if worst.1 > 0.0 {
        let i = worst.0;
        panic!(
            "{what}: element {i} got {} want {} (|diff| {}, tolerance abs {} + rel {}); max |diff| {max_abs}, rel L2 {rel_l2:.3e}",
            got[i],
            want[i],
            (got[i] - want[i]).abs(),
            tol.abs,
            tol.rel
        );
    }
    Closeness { max_abs, rel_l2 }
}

/// A tensor to write into a hand-made safetensors file.
pub struct RawTensor {
    pub name: String,
    pub dtype: String,
    pub shape: Vec<usize>,
    pub data: Vec<u8>,
    /// Overrides the computed `[begin, end]` (to make broken headers).
    pub offsets: Option<[u64; 2]>,
}

/// Writes a safetensors file by hand, so tests can break it in any way.
pub fn write_safetensors(path: &std::path::Path, tensors: &[RawTensor]) {
    let mut header = serde_json::Map::new();
    header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
    let mut data = Vec::new();
    for t in tensors {
        let begin = data.len() as u64;
        data.extend_from_slice(&t.data);
        let offs = t.offsets.unwrap_or([begin, data.len() as u64]);
        header.insert(
            t.name.clone(),
            serde_json::json!({"dtype": t.dtype, "shape": t.shape, "data_offsets": offs}),
        );
    }
    let mut h = serde_json::to_vec(&header).unwrap();
    while (h.len() + 8) % 8 != 0 {
        h.push(b' ');
    }
    let mut out = (h.len() as u64).to_le_bytes().to_vec();
    out.extend_from_slice(&h);
    out.extend_from_slice(&data);
    std::fs::write(path, out).unwrap();
}

/// Every tensor of a fixture's checkpoint as `RawTensor`s (f32/bf16 data kept as bytes).
pub fn read_raw_tensors(model: &str) -> Vec<RawTensor> {
    let bytes = std::fs::read(fixture(model).join("model.safetensors")).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut v: Vec<RawTensor> = st
        .tensors()
        .into_iter()
        .map(|(name, t)| RawTensor {
            name,
            dtype: format!("{:?}", t.dtype()),
            shape: t.shape().to_vec(),
            data: t.data().to_vec(),
            offsets: None,
        })
        .collect();
    v.sort_by(|a, b| a.name.cmp(&b.name));
    v
}

/// A fresh temporary directory holding a fixture's config and tokenizer files (no weights).
pub fn scratch_model_dir(model: &str, tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("moe-test-{}-{tag}-{model}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        std::fs::copy(fixture(model).join(f), dir.join(f)).unwrap();
    }
    dir
}

/// A CUDA backend on device 0, or `None` after reporting `SKIP <test>: no GPU (<reason>)`. With
/// `MOE_REQUIRE_GPU` set, a missing GPU fails instead (so a GPU run cannot pass by skipping).
pub fn cuda_or_skip() -> Option<moe::CudaBackend> {
    moe_kernels::cuda::or_skip(moe::CudaBackend::new(0))
}

/// The real tokens of each row of a golden case, and for every real token its flat index
/// `b·T + t` (all tokens where the case has no attention mask).
pub fn real_rows(g: &Golden, case: &str) -> (Vec<Vec<u32>>, Vec<usize>) {
    let ids = g.get(&format!("{case}.input_ids"));
    let (b, t) = (ids.shape[0], ids.shape[1]);
    let mask = if g.has(&format!("{case}.attention_mask")) {
        g.get(&format!("{case}.attention_mask")).i
    } else {
        vec![1; b * t]
    };
    let mut seqs = vec![];
    let mut flat = vec![];
    for r in 0..b {
        let mut s = vec![];
        for c in 0..t {
            if mask[r * t + c] == 1 {
                s.push(ids.i[r * t + c] as u32);
                flat.push(r * t + c);
            }
        }
        seqs.push(s);
    }
    (seqs, flat)
}

/// Rows `flat` of a `[.., cols]` tensor.
pub fn pick(v: &[f32], cols: usize, flat: &[usize]) -> Vec<f32> {
    flat.iter()
        .flat_map(|&i| v[i * cols..(i + 1) * cols].iter().copied())
        .collect()
}

/// Every sequence's logits at every position in one ragged batch, with every tap recorded.
pub fn forward_traced<B: moe::Backend>(
    m: &moe::models::Model<B>,
    seqs: &[Vec<u32>],
) -> (Vec<Vec<f32>>, moe::trace::Recorder) {
    let mut kvs: Vec<_> = seqs.iter().map(|_| m.new_kv()).collect();
    let mut steps: Vec<moe::models::SeqStep<_>> = seqs
        .iter()
        .zip(kvs.iter_mut())
        .map(|(s, kv)| moe::models::SeqStep {
            tokens: s,
            kv,
            all_logits: true,
        })
        .collect();
    let mut rec = moe::trace::Recorder::default();
    let logits = m.forward(&mut steps, &mut rec).unwrap();
    (logits, rec)
}

/// Greedy decoding of 16 tokens past any end-of-sequence token, with the top-8 logprobs of each
/// step (how the goldens' generations were made).
pub fn greedy_16() -> moe::SamplingParams {
    moe::SamplingParams {
        max_tokens: 16,
        ignore_eos: true,
        logprobs: true,
        top_logprobs: 8,
        ..moe::SamplingParams::greedy()
    }
}

/// Greedy ids equal to transformers', the chosen token's logprob and the top-8 logprobs within
/// 1e-4 at every step (ids compared where the neighbouring values are more than 1e-4 apart).
pub fn check_greedy_generation<B: moe::Backend>(
    e: &moe::Engine<B>,
    name: &str,
    ids_key: &str,
    with_logprobs: bool,
) {
    use moe::generate::{FinishReason, GenerateRequest, Prompt};
    let g = Golden::load(name);
    for case in ["p0", "p1"] {
        let (rows, _) = real_rows(&g, case);
        let reqs: Vec<GenerateRequest> = rows
            .iter()
            .map(|r| GenerateRequest::new(Prompt::Tokens(r.clone()), greedy_16()))
            .collect();
        let out = e.generate(&reqs).unwrap();
        let want = g.get(&format!("{case}.{ids_key}"));
        for (b, c) in out.iter().enumerate() {
            let w: Vec<u32> = want.i[b * 16..(b + 1) * 16]
                .iter()
                .map(|&x| x as u32)
                .collect();
            assert_eq!(c.token_ids, w, "{name} {case} row {b} greedy ids");
            assert_eq!(c.finish_reason, FinishReason::Length);
            if !with_logprobs {
                continue;
            }
            let lps = c.logprobs.as_ref().unwrap();
            let chosen = g.get(&format!("{case}.gen_chosen_logprob"));
            let got: Vec<f32> = lps.iter().map(|l| l.logprob).collect();
            assert_close(
                &format!("{name} {case} row {b} chosen logprob"),
                &got,
                &chosen.f[b * 16..(b + 1) * 16],
                Tol {
                    abs: 1e-4,
                    rel: 0.0,
                },
            );
            let top = g.get(&format!("{case}.gen_top_logprobs"));
            let top_ids = g.get(&format!("{case}.gen_top_logprob_ids"));
            for (s, l) in lps.iter().enumerate() {
                let base = (b * 16 + s) * 8;
                let got: Vec<f32> = l.top_logprobs.iter().map(|t| t.logprob).collect();
                assert_close(
                    &format!("{name} {case} row {b} step {s} top-8"),
                    &got,
                    &top.f[base..base + 8],
                    Tol {
                        abs: 1e-4,
                        rel: 0.0,
                    },
                );
                for j in 0..8 {
                    let v = top.f[base + j];
                    let clear = (j == 0 || top.f[base + j - 1] - v > 1e-4)
                        && (j == 7 || v - top.f[base + j + 1] > 1e-4);
                    if clear {
                        assert_eq!(
                            l.top_logprobs[j].token_id as i64,
                            top_ids.i[base + j],
                            "{name} {case} row {b} step {s} rank {j}"
                        );
                    }
                }
            }
        }
    }
}

/// Logits of every position of `tokens`, in one pass on a fresh cache.
pub fn all_logits<B: moe::Backend>(m: &moe::models::Model<B>, tokens: &[u32]) -> Vec<f32> {
    let mut kv = m.new_kv();
    m.forward(
        &mut [moe::models::SeqStep {
            tokens,
            kv: &mut kv,
            all_logits: true,
        }],
        &mut moe::trace::NoTrace,
    )
    .unwrap()
    .remove(0)
}

/// Greedy continuation of `prompt` by `steps` one-token steps through the KV cache (the lowest
/// id on exact ties, as llama.cpp's dumper and transformers pick).
pub fn greedy_ids<B: moe::Backend>(
    m: &moe::models::Model<B>,
    prompt: &[u32],
    steps: usize,
) -> Vec<u32> {
    let v = m.cfg.vocab_size;
    let mut kv = m.new_kv();
    let mut out = vec![];
    let mut next = prompt.to_vec();
    for _ in 0..steps {
        let l = m
            .forward(
                &mut [moe::models::SeqStep {
                    tokens: &next,
                    kv: &mut kv,
                    all_logits: false,
                }],
                &mut moe::trace::NoTrace,
            )
            .unwrap()
            .remove(0);
        let id = moe::sampling::argmax(&l[l.len() - v..]);
        out.push(id);
        next = vec![id];
    }
    out
}

/// KL(p ‖ q) of two logit rows, in float64.
pub fn kl_divergence(p: &[f32], q: &[f32]) -> f64 {
    let log_softmax = |row: &[f32]| -> Vec<f64> {
        let m = row.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b as f64));
        let z: f64 = row.iter().map(|&x| (x as f64 - m).exp()).sum();
        row.iter().map(|&x| x as f64 - m - z.ln()).collect()
    };
    let (lp, lq) = (log_softmax(p), log_softmax(q));
    lp.iter().zip(&lq).map(|(a, b)| a.exp() * (a - b)).sum()
}
