//! Two forward passes at once on one model: prompt scoring (every position's logits, as a
//! blocking task runs it) beside batched greedy decoding (the scheduler's step), each from its
//! own thread, many rounds. Every result must equal the same request run alone (within 1e-6
//! relative). Some scoring prompts have as many tokens as the decode batch has sequences, so
//! both passes carry the same number of attention rows: state shared between passes (attention
//! metadata, RoPE tables, scratch) would show up as another request's numbers or cache. The
//! CUDA variant prints `skipping: <reason>` without a GPU.

use moe::backend::{Backend, CpuBackend};
use moe::models::{Model, SeqStep};
use moe::trace::NoTrace;
use moe::weights::Weights;
use moe::ModelConfig;
use moe_tests::{cuda_or_skip, fixture};
use std::sync::atomic::{AtomicBool, Ordering};

const MODEL: &str = "qwen2_moe-tiny-f32";
const ROUNDS: usize = 24;
const DECODE_STEPS: usize = 8;

fn load_on<B: Backend>(backend: B) -> Model<B> {
    let dir = fixture(MODEL);
    let cfg = ModelConfig::from_file(&dir.join("config.json")).unwrap();
    let w = Weights::open_dir(&dir).unwrap();
    Model::load(cfg, &w, backend, &mut |_, _| {}).unwrap()
}

/// A prompt of `n` tokens from `seed` (ids inside the vocabulary).
fn prompt(seed: u32, n: usize, vocab: usize) -> Vec<u32> {
    (0..n as u32)
        .map(|i| (seed.wrapping_mul(2654435761).wrapping_add(i * 40503) >> 7) % vocab as u32)
        .collect()
}

/// Greedy decoding of both prompts as one batch: the prefill, then `DECODE_STEPS` steps of one
/// token per sequence. Returns every step's logits, per sequence.
fn decode<B: Backend>(m: &Model<B>, prompts: &[Vec<u32>; 2]) -> Vec<Vec<f32>> {
    let v = m.cfg.vocab_size;
    let mut kvs = [m.new_kv(), m.new_kv()];
    let mut out = vec![vec![]; 2];
    let mut next: Vec<Vec<u32>> = prompts.to_vec();
    for _ in 0..=DECODE_STEPS {
        let [k0, k1] = &mut kvs;
        let logits = m
            .forward(
                &mut [
                    SeqStep {
                        tokens: &next[0],
                        kv: k0,
                        all_logits: false,
                    },
                    SeqStep {
                        tokens: &next[1],
                        kv: k1,
                        all_logits: false,
                    },
                ],
                &mut NoTrace,
            )
            .unwrap();
        for (i, l) in logits.iter().enumerate() {
            assert_eq!(l.len(), v);
            out[i].extend_from_slice(l);
            next[i] = vec![moe::sampling::argmax(l)];
        }
    }
    out
}

fn assert_same(what: &str, got: &[f32], want: &[f32]) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= 1e-6 * w.abs().max(1.0),
            "{what}: element {i} is {g}, alone {w}"
        );
    }
}

/// Sets the flag when dropped (also when unwinding).
struct Stop<'a>(&'a AtomicBool);
impl Drop for Stop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

fn concurrent_scoring_and_decoding<B: Backend>(m: &Model<B>) {
    let vocab = m.cfg.vocab_size;
    // Scoring prompts: 2 tokens (the decode batch's row count), and longer ones.
    let scores: Vec<Vec<u32>> = [2, 2, 7, 19, 2, 33]
        .iter()
        .enumerate()
        .map(|(i, &n)| prompt(100 + i as u32, n, vocab))
        .collect();
    let batches: Vec<[Vec<u32>; 2]> = (0..3u32)
        .map(|i| {
            [
                prompt(7 + i, 5, vocab),
                prompt(900 + i, 3 + i as usize, vocab),
            ]
        })
        .collect();
    // Each request alone.
    let score_alone: Vec<Vec<f32>> = scores.iter().map(|p| moe_tests::all_logits(m, p)).collect();
    let decode_alone: Vec<Vec<Vec<f32>>> = batches.iter().map(|b| decode(m, b)).collect();
    // Scoring runs until decoding is done (and at least ROUNDS times), so the two overlap
    // throughout; a failing thread stops the other.
    let done = AtomicBool::new(false);
    std::thread::scope(|s| {
        s.spawn(|| {
            let mut r = 0;
            while r < ROUNDS || !done.load(Ordering::Relaxed) {
                let i = r % scores.len();
                let got = moe_tests::all_logits(m, &scores[i]);
                let ok = std::panic::catch_unwind(|| {
                    assert_same(&format!("round {r} scoring {i}"), &got, &score_alone[i])
                });
                if let Err(e) = ok {
                    done.store(true, Ordering::Relaxed);
                    std::panic::resume_unwind(e);
                }
                r += 1;
            }
        });
        s.spawn(|| {
            let _stop = Stop(&done);
            for r in 0..ROUNDS {
                let i = r % batches.len();
                let got = decode(m, &batches[i]);
                for (q, (g, w)) in got.iter().zip(&decode_alone[i]).enumerate() {
                    assert_same(&format!("round {r} decode batch {i} seq {q}"), g, w);
                }
            }
        });
    });
}

#[test]
fn cpu_concurrent_passes_match_alone() {
    concurrent_scoring_and_decoding(&load_on(CpuBackend));
}

#[test]
fn cuda_concurrent_passes_match_alone() {
    let Some(b) = cuda_or_skip() else { return };
    concurrent_scoring_and_decoding(&load_on(b));
}
