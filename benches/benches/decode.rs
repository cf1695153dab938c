//! Criterion bench of one decode step (batch 1, 64 cached tokens) on the embedded student model.

use criterion::{criterion_group, criterion_main, Criterion};
use moe::backend::Backend;
use moe::engine::{Engine, ModelSource};
use moe::models::SeqStep;
use moe::trace::NoTrace;

fn decode_step(c: &mut Criterion) {
    let engine = Engine::load(&ModelSource::Embedded).expect("embedded model");
    let m = &engine.model;
    let prompt: Vec<u32> = (0..64).map(|i| 100 + i * 7).collect();
    let mut kv = m.new_kv();
    m.forward(
        &mut [SeqStep {
            tokens: &prompt,
            kv: &mut kv,
            all_logits: false,
        }],
        &mut NoTrace,
    )
    .unwrap();
    c.bench_function("decode_step_student", |b| {
        b.iter(|| {
            let out = m
                .forward(
                    &mut [SeqStep {
                        tokens: &[42],
                        kv: &mut kv,
                        all_logits: false,
                    }],
                    &mut NoTrace,
                )
                .unwrap();
            m.backend.kv_truncate(&mut kv, prompt.len());
            out
        })
    });
}

criterion_group!(benches, decode_step);
criterion_main!(benches);
