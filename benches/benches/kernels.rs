//! Criterion benches of the MoE ops at the bench checkpoint's shapes (hidden 1024, ffn 3584,
//! 8 experts, top-2, 16 / 4 heads of 64): router with its load counters, the grouped expert FFN in
//! bf16 and f32 (also batch 1 with its weights streamed from memory, as decode reads them), and
//! attention for decode and prefill; a quantised matrix-vector product per ggml type (dequantize
//! then dot, or the fused kernel); and the cost of a parallel region of the CPU kernels' team.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use half::bf16;
use moe_benches::uniform;
use moe_kernels::attention::{self, Attention, AttnSeq};
use moe_kernels::expert_ffn::{self, ExpertMats};
use moe_kernels::quant::{self, GgmlType};
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
        let p = RouterTopK::softmax_renormalized(EXPERTS, 2);
        g.bench_with_input(BenchmarkId::new("with_counters", n), &n, |b, _| {
            b.iter(|| router_topk::cpu::run(&p, &logits, &mut ids, &mut w, &mut load).unwrap())
        });
        g.bench_with_input(BenchmarkId::new("without_counters", n), &n, |b, _| {
            b.iter(|| route_without_counters(&logits, &mut ids, &mut w))
        });
    }
    g.finish();
}

/// The grouped expert FFN of `n` tokens routed over 8 experts in both weight dtypes (and bf16
/// weights with bf16 activations): 1 token is
/// the memory-bound decode case; 8 and 32 are batched decode; 512 is a prefill (≈128 rows per
/// expert).
fn experts(c: &mut Criterion) {
    let scaled = |v: Vec<f32>| -> Vec<f32> { v.into_iter().map(|x| x * 0.04).collect() };
    let weights: Vec<[Vec<f32>; 3]> = (0..EXPERTS as u64)
        .map(|e| {
            [
                scaled(uniform(FFN * HIDDEN, 3 * e + 1)),
                scaled(uniform(FFN * HIDDEN, 3 * e + 2)),
                scaled(uniform(HIDDEN * FFN, 3 * e + 3)),
            ]
        })
        .collect();
    let halves: Vec<[Vec<bf16>; 3]> = weights
        .iter()
        .map(|m| {
            m.clone()
                .map(|v| v.into_iter().map(bf16::from_f32).collect())
        })
        .collect();
    let f32_mats: Vec<ExpertMats> = weights
        .iter()
        .map(|[w1, w3, w2]| ExpertMats {
            w1: Mat::new(WeightData::F32(w1), FFN, HIDDEN),
            w3: Mat::new(WeightData::F32(w3), FFN, HIDDEN),
            w2: Mat::new(WeightData::F32(w2), HIDDEN, FFN),
        })
        .collect();
    let bf16_mats: Vec<ExpertMats> = halves
        .iter()
        .map(|[w1, w3, w2]| ExpertMats {
            w1: Mat::new(WeightData::BF16(w1), FFN, HIDDEN),
            w3: Mat::new(WeightData::BF16(w3), FFN, HIDDEN),
            w2: Mat::new(WeightData::BF16(w2), HIDDEN, FFN),
        })
        .collect();
    // The same bf16 weights with the activations rounded to bf16 (`--bf16-activations`).
    let rounded_mats: Vec<ExpertMats> = bf16_mats
        .iter()
        .map(|m| ExpertMats {
            w1: m.w1.with_bf16_activations(true),
            w3: m.w3.with_bf16_activations(true),
            w2: m.w2.with_bf16_activations(true),
        })
        .collect();
    for (name, mats) in [
        ("expert_ffn_bf16", &bf16_mats),
        ("expert_ffn_bf16_activations", &rounded_mats),
        ("expert_ffn_f32", &f32_mats),
    ] {
        let mut g = c.benchmark_group(name);
        g.sample_size(10);
        for n in [1usize, 8, 32, 512] {
            let x = uniform(n * HIDDEN, 11);
            let ids: Vec<u32> = (0..n * 2)
                .map(|i| ((i * 5 + i / 2) % EXPERTS) as u32)
                .collect();
            let d = permute::run(&ids, EXPERTS, 2).unwrap();
            let mut out = vec![0f32; n * 2 * HIDDEN];
            g.bench_with_input(BenchmarkId::new("tokens", n), &n, |b, _| {
                b.iter(|| expert_ffn::cpu::run(&x, HIDDEN, &d, mats, &mut out).unwrap())
            });
        }
        g.finish();
    }
}

/// Batch-1 expert FFN with its weights coming from memory, as in decode: each iteration takes the
/// next of `LAYERS` distinct pairs of experts (bf16 44 MB a pair, 528 MB in all, held in 2 MiB
/// pages as the checkpoint's maps are), where `expert_ffn_*/tokens/1` repeats two experts that
/// a 32 MiB L3 partly keeps. Reported as bytes of weights read per second.
fn experts_streamed(c: &mut Criterion) {
    const LAYERS: usize = 12;
    let mut g = c.benchmark_group("expert_ffn_streamed");
    g.sample_size(10);
    let per_matrix = FFN * HIDDEN;
    for (name, size) in [("bf16", 2usize), ("f32", 4)] {
        let elements = LAYERS * 2 * 3 * per_matrix;
        let Ok(mut map) = memmap2::MmapMut::map_anon(elements * size) else {
            eprintln!(
                "expert_ffn_streamed/{name}: no memory for {} MB",
                elements * size >> 20
            );
            continue;
        };
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        let mats = if size == 2 {
            layer_pairs(fill(&mut map, bf16::from_f32), WeightData::BF16, LAYERS)
        } else {
            layer_pairs(fill(&mut map, |v| v), WeightData::F32, LAYERS)
        };
        let x = uniform(HIDDEN, 11);
        let d = permute::run(&[0, 1], EXPERTS, 2).unwrap();
        let mut out = vec![0f32; 2 * HIDDEN];
        let mut layer = 0;
        g.throughput(Throughput::Bytes((2 * 3 * per_matrix * size) as u64));
        g.bench_function(BenchmarkId::new(name, "tokens/1"), |b| {
            b.iter(|| {
                layer = (layer + 1) % LAYERS;
                expert_ffn::cpu::run(&x, HIDDEN, &d, &mats[layer], &mut out).unwrap()
            })
        });
    }
    g.finish();
}

/// Fills `map` with the same matrix of weights over and over, as `T`.
fn fill<T: bytemuck::Pod>(map: &mut [u8], from_f32: impl Fn(f32) -> T) -> &[T] {
    let one: Vec<T> = uniform(FFN * HIDDEN, 5)
        .into_iter()
        .map(|v| from_f32(v * 0.04))
        .collect();
    let w: &mut [T] = bytemuck::cast_slice_mut(map);
    for chunk in w.chunks_mut(one.len()) {
        chunk.copy_from_slice(&one[..chunk.len()]);
    }
    w
}

/// For each of `layers` layers, the expert list the routing sees: experts 0 and 1 are the
/// layer's own pair of consecutive (w1, w3, w2) triples in `w`, the rest repeat them and get no
/// token.
fn layer_pairs<'a, T>(
    w: &'a [T],
    data: impl Fn(&'a [T]) -> WeightData<'a>,
    layers: usize,
) -> Vec<Vec<ExpertMats<'a>>> {
    let n = FFN * HIDDEN;
    let mat = |i: usize, rows, cols| Mat::new(data(&w[i * n..(i + 1) * n]), rows, cols);
    (0..layers)
        .map(|l| {
            (0..EXPERTS)
                .map(|e| {
                    let at = 3 * (2 * l + e % 2);
                    ExpertMats {
                        w1: mat(at, FFN, HIDDEN),
                        w3: mat(at + 1, FFN, HIDDEN),
                        w2: mat(at + 2, HIDDEN, FFN),
                    }
                })
                .collect()
        })
        .collect()
}

/// Attention at the bench checkpoint's heads (16 query / 4 KV heads of 64): one decoded token
/// against caches of 512 and 4096 positions, and a whole 512-token prompt.
fn attention(c: &mut Criterion) {
    let p = Attention {
        n_heads: 16,
        n_kv_heads: 4,
        head_dim: 64,
        scale: 0.125,
        sliding_window: None,
    };
    let (q_width, kv_width) = (16 * 64, 4 * 64);
    let mut g = c.benchmark_group("attention");
    g.sample_size(20);
    for (name, n_new, ctx) in [
        ("decode", 1, 64),
        ("decode", 1, 512),
        ("decode", 1, 4096),
        ("prefill", 512, 512),
    ] {
        let q = uniform(n_new * q_width, 21);
        let k = uniform(ctx * kv_width, 22);
        let v = uniform(ctx * kv_width, 23);
        let seqs = [AttnSeq {
            q_row: 0,
            n_new,
            k: &k,
            v: &v,
        }];
        let mut out = vec![0f32; q.len()];
        g.bench_with_input(BenchmarkId::new(name, ctx), &ctx, |b, _| {
            b.iter(|| attention::cpu::run(&p, &q, &seqs, &mut out).unwrap())
        });
    }
    g.finish();
}

/// One token through a `HIDDEN × FFN` matrix (w2's shape) of each quantised type, on one thread,
/// three ways giving the same bits: the scalar reference dequantizer into a four-row buffer then
/// the f32 `dot4` (what a type without fast kernels runs), the vectorised dequantizer then `dot4`
/// (the batched path), and the fused kernel (one token). Reported as bytes of weights per second.
fn quant_matvec(c: &mut Criterion) {
    let mut g = c.benchmark_group("quant_matvec");
    g.sample_size(20)
        .warm_up_time(std::time::Duration::from_secs(1))
        .measurement_time(std::time::Duration::from_secs(2));
    let (rows, k) = (HIDDEN, FFN);
    let x = uniform(k, 11);
    let mut buf = vec![0f32; 4 * k];
    let mut y = vec![0f32; rows];
    for t in quant::ALL_TYPES.into_iter().filter(|t| t.is_quantized()) {
        let rb = t.bytes_for(k).unwrap();
        let w = random_blocks(t, rows * rb);
        let quad = |r: usize| -> [&[u8]; 4] { std::array::from_fn(|j| &w[(r + j) * rb..][..rb]) };
        g.throughput(Throughput::Bytes(w.len() as u64));
        let deq: [(&str, fn(GgmlType, &[u8], &mut [f32]) -> _); 2] = [
            ("reference", quant::dequantize_row),
            ("dequantize_fast", quant::dequantize_row_fast),
        ];
        for (name, deq) in deq {
            g.bench_function(BenchmarkId::new(name, t), |b| {
                b.iter(|| {
                    for r in (0..rows).step_by(4) {
                        deq(t, &w[r * rb..(r + 4) * rb], &mut buf).unwrap();
                        let ws = std::array::from_fn(|j| WeightData::F32(&buf[j * k..][..k]));
                        y[r..r + 4].copy_from_slice(&moe_kernels::dot::dot4(&x, ws));
                    }
                })
            });
        }
        if let Some(fused) = quant::fused_dot4(t) {
            g.bench_function(BenchmarkId::new("fused", t), |b| {
                b.iter(|| {
                    for r in (0..rows).step_by(4) {
                        y[r..r + 4].copy_from_slice(&fused(&x, quad(r)).unwrap());
                    }
                })
            });
        }
    }
    g.finish();
}

/// `bytes` random bytes of blocks of `t` with finite f16 scales of a trained model's size (NaN or
/// huge scales would time a different float path).
fn random_blocks(t: GgmlType, bytes: usize) -> Vec<u8> {
    let scales: &[usize] = match t {
        GgmlType::Q2_K => &[80, 82],
        GgmlType::Q3_K => &[108],
        GgmlType::Q6_K => &[208],
        GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4_K | GgmlType::Q5_K => &[0, 2],
        _ => &[0],
    };
    let noise = uniform(bytes / 4 + 1, 17);
    let mut w: Vec<u8> = (0..bytes)
        .map(|i| (noise[i / 4].to_bits() >> (8 * (i % 4))) as u8)
        .collect();
    for (b, blk) in w.chunks_exact_mut(t.block_bytes()).enumerate() {
        for &o in scales {
            let d = half::f16::from_f32(1e-3 * (1.0 + (b % 7) as f32));
            blk[o..o + 2].copy_from_slice(&d.to_bits().to_le_bytes());
        }
    }
    w
}

/// A parallel region of the team a forward pass runs on, with as many items as a decode step's
/// regions have (4: attention, 28: two experts' gate/up, 125: the lm_head) and a fixed ≈ 0.1 µs of
/// work each, so the time above the work is what handing out the items costs.
fn team_region(c: &mut Criterion) {
    let mut g = c.benchmark_group("team_region");
    for items in [4usize, 28, 125] {
        g.bench_with_input(BenchmarkId::from_parameter(items), &items, |b, &items| {
            b.iter_custom(|iters| {
                moe_kernels::team::with_team(|| {
                    let t = std::time::Instant::now();
                    for _ in 0..iters {
                        moe_kernels::team::parallel_for(items, |i| {
                            let mut a = i as u64;
                            for k in 0..std::hint::black_box(300u64) {
                                a = std::hint::black_box(a.wrapping_mul(6364136223846793005) ^ k);
                            }
                        });
                    }
                    t.elapsed()
                })
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    router,
    experts,
    experts_streamed,
    attention,
    quant_matvec,
    team_region
);
criterion_main!(benches);
