//! Criterion benches of the MoE ops at the bench checkpoint's shapes (hidden 1024, ffn 3584,
//! 8 experts, top-2, bf16 weights): router with its load counters, and the grouped expert FFN.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use half::bf16;
use moe_benches::uniform;
use moe_kernels::expert_ffn::{self, ExpertMats};
use moe_kernels::router_topk::{self, ExpertLoad, RouterTopK};
use moe_kernels::{permute, Mat, WeightData};

const HIDDEN: usize = 1024;
const FFN: usize = 3584;
const EXPERTS: usize = 8;

/// Softmax + top-2 + renormalisation alone, to price the counters the fused op adds.
fn route_without_counters(logits: &[f32], ids: &mut [u32], w: &mut [f32]) {
    for (t, row) in logits.chunks(EXPERTS).enumerate() {
        let m = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
        let p: Vec<f32> = row.iter().map(|l| (l - m).exp()).collect();
        let (mut a, mut b) = (0, 1);
        if p[b] > p[a] {
            std::mem::swap(&mut a, &mut b);
        }
        for (i, &v) in p.iter().enumerate().skip(2) {
            if v > p[a] {
                b = a;
                a = i;
            } else if v > p[b] {
                b = i;
            }
        }
        let s = p[a] + p[b];
        ids[t * 2] = a as u32;
        ids[t * 2 + 1] = b as u32;
        w[t * 2] = p[a] / s;
        w[t * 2 + 1] = p[b] / s;
    }
}

fn router(c: &mut Criterion) {
    let mut g = c.benchmark_group("router_topk");
    for n in [1usize, 512] {
        let logits = uniform(n * EXPERTS, 7);
        let mut ids = vec![0u32; n * 2];
        let mut w = vec![0f32; n * 2];
        let mut load = ExpertLoad::new(EXPERTS);
        let p = RouterTopK {
            n_experts: EXPERTS,
            top_k: 2,
        };
        g.bench_with_input(BenchmarkId::new("with_counters", n), &n, |b, _| {
            b.iter(|| router_topk::cpu::run(&p, &logits, &mut ids, &mut w, &mut load).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("without_counters", n), &n, |b, _| {
            b.iter(|| route_without_counters(&logits, &mut ids, &mut w))
        });
    }
    g.finish();
}

fn experts(c: &mut Criterion) {
    let to_bf16 =
        |v: Vec<f32>| -> Vec<bf16> { v.into_iter().map(|x| bf16::from_f32(x * 0.04)).collect() };
    let weights: Vec<(Vec<bf16>, Vec<bf16>, Vec<bf16>)> = (0..EXPERTS as u64)
        .map(|e| {
            (
                to_bf16(uniform(FFN * HIDDEN, 3 * e + 1)),
                to_bf16(uniform(FFN * HIDDEN, 3 * e + 2)),
                to_bf16(uniform(HIDDEN * FFN, 3 * e + 3)),
            )
        })
        .collect();
    let mats: Vec<ExpertMats> = weights
        .iter()
        .map(|(w1, w3, w2)| ExpertMats {
            w1: Mat::new(WeightData::BF16(w1), FFN, HIDDEN),
            w3: Mat::new(WeightData::BF16(w3), FFN, HIDDEN),
            w2: Mat::new(WeightData::BF16(w2), HIDDEN, FFN),
        })
        .collect();
    let mut g = c.benchmark_group("expert_ffn_bf16");
    g.sample_size(10);
    for n in [1usize, 64] {
        let x = uniform(n * HIDDEN, 11);
        let ids: Vec<u32> = (0..n * 2)
            .map(|i| ((i * 5 + i / 2) % EXPERTS) as u32)
            .collect();
        let d = permute::run(&ids, EXPERTS, 2).unwrap();
        let mut out = vec![0f32; n * 2 * HIDDEN];
        g.bench_with_input(BenchmarkId::new("tokens", n), &n, |b, _| {
            b.iter(|| expert_ffn::cpu::run(&x, HIDDEN, &d, &mats, &mut out).unwrap())
        });
    }
    g.finish();
}

criterion_group!(benches, router, experts);
criterion_main!(benches);
