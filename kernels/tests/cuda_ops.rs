//! Each CUDA kernel against its CPU reference on fresh random inputs, outputs poisoned with NaN
//! first so that an element the kernel does not write fails the comparison. Tolerances: f32
//! weights 1e-5, 16-bit weights on tensor cores 1e-2 (activations rounded to the weight dtype as
//! they enter the tensor cores), both as `|got − want| ≤ tol · (|want| + rms(want))` per element.
//!
//! Without a GPU every test reports `SKIP <test>: no GPU (<reason>)` and passes; with `MOE_REQUIRE_GPU` set
//! a missing GPU fails instead (the GPU run sets it so that a silent skip cannot pass there).

use half::{bf16, f16};
use moe_kernels::attention::{cuda as att_cuda, Attention, AttnSeq};
use moe_kernels::cuda::moe::{stats_bytes, MoeLayer, MoeScratch};
use moe_kernels::cuda::{DevBuf, DevMat, Gpu, HostCopy};
use moe_kernels::expert_ffn::cuda::ExpertStack;
use moe_kernels::expert_ffn::ExpertMats;
use moe_kernels::rms_norm::RmsNorm;
use moe_kernels::rope::Rope;
use moe_kernels::router_topk::{cuda as router_cuda, ExpertLoad, RouterTopK, Scoring};
use moe_kernels::{attention, combine, embedding, expert_ffn, linear, permute, rms_norm, rope};
use moe_kernels::{Mat, WeightDType, WeightData};
use std::sync::Arc;

fn gpu() -> Option<Arc<Gpu>> {
    moe_kernels::cuda::or_skip(Gpu::new(0))
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        ((self.0 >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }
    fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.next() * scale).collect()
    }
    fn below(&mut self, n: usize) -> usize {
        ((self.next() + 1.0) * 0.5 * n as f32) as usize % n
    }
}

fn seed() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64 | 1)
        .unwrap_or(0x9e3779b97f4a7c15)
}

/// Host weights in one dtype, with the f32 values the CPU reference sees.
struct HostW {
    dtype: WeightDType,
    f32s: Vec<f32>,
    bf16s: Vec<bf16>,
    f16s: Vec<f16>,
}
impl HostW {
    fn new(v: Vec<f32>, dtype: WeightDType) -> Self {
        let bf16s: Vec<bf16> = v.iter().map(|&x| bf16::from_f32(x)).collect();
        let f16s: Vec<f16> = v.iter().map(|&x| f16::from_f32(x)).collect();
        HostW {
            dtype,
            f32s: v,
            bf16s,
            f16s,
        }
    }
    fn data(&self) -> WeightData<'_> {
        match self.dtype {
            WeightDType::F32 => WeightData::F32(&self.f32s),
            WeightDType::BF16 => WeightData::BF16(&self.bf16s),
            WeightDType::F16 => WeightData::F16(&self.f16s),
            WeightDType::Quant(t) => panic!("no host copy of {t} weights in these tests"),
        }
    }
    fn mat(&self, rows: usize, cols: usize) -> Mat<'_> {
        Mat::new(self.data(), rows, cols)
    }
    fn dev(&self, gpu: &Arc<Gpu>, rows: usize, cols: usize) -> DevMat {
        DevMat::upload(gpu, &[self.data()], rows, cols).unwrap()
    }
}

fn poisoned(gpu: &Arc<Gpu>, floats: usize) -> DevBuf {
    let b = gpu.alloc(4 * floats).unwrap();
    b.fill_u32(0, floats, 0x7fc0_0000).unwrap();
    b
}

fn read(b: &DevBuf, n: usize) -> Vec<f32> {
    b.read::<f32>(0, n).unwrap()
}

/// Relative L2 error ≤ `tol`, and every element within `4·tol·(|want| + rms(want))` (rounding
/// errors have tails; an unwritten or misplaced element is off by far more).
#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    let sq = |v: &[f32]| v.iter().map(|&x| (x as f64) * (x as f64)).sum::<f64>();
    let rms = (sq(want) / want.len().max(1) as f64).sqrt() as f32;
    let mut worst = (0usize, 0f32);
    let mut err_sq = 0f64;
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let err = (g - w).abs();
        assert!(
            err <= 4.0 * tol * (w.abs() + rms),
            "{what}: element {i} is {g}, expected {w} (tolerance {tol}, rms {rms})"
        );
        err_sq += (err as f64) * (err as f64);
        if err > worst.1 {
            worst = (i, err);
        }
    }
    let rel = (err_sq / sq(want).max(1e-30)).sqrt();
    assert!(
        rel <= tol as f64,
        "{what}: relative L2 error {rel:.3e} over {tol}"
    );
    println!(
        "{what}: {} elements, rel L2 {rel:.2e}, worst |diff| {:.3e} at {} (rms {rms:.3e})",
        got.len(),
        worst.1,
        worst.0
    );
}

const DTYPES: [(WeightDType, f32); 3] = [
    (WeightDType::F32, 1e-5),
    (WeightDType::BF16, 1e-2),
    (WeightDType::F16, 1e-2),
];

#[test]
fn embedding_gathers_rows() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(seed());
    for (dt, _) in DTYPES {
        let (vocab, h) = (300, 72);
        let table = HostW::new(r.vec(vocab * h, 1.0), dt);
        let ids: Vec<u32> = (0..13).map(|_| r.below(vocab) as u32).collect();
        let mut out = poisoned(&g, ids.len() * h);
        embedding::cuda::embed(&g, &table.dev(&g, vocab, h), &ids, out.slice_mut()).unwrap();
        let mut want = vec![0f32; ids.len() * h];
        embedding::run(&table.mat(vocab, h), &ids, &mut want).unwrap();
        assert_eq!(read(&out, want.len()), want, "{dt:?}");
    }
}

#[test]
fn rms_norm_and_fused_residual_add() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(seed());
    for (dt, _) in DTYPES {
        for &(rows, h) in &[(1usize, 64usize), (7, 4096), (33, 1000)] {
            let p = RmsNorm {
                hidden: h,
                eps: 1e-5,
            };
            let x = r.vec(rows * h, 2.0);
            let y = r.vec(rows * h, 1.0);
            let w = HostW::new(r.vec(h, 1.0), dt);
            let dw = w.dev(&g, 1, h);
            let (mut dx, dy) = (g.upload(&x).unwrap(), g.upload(&y).unwrap());
            let mut out = poisoned(&g, rows * h);
            rms_norm::cuda::rms_norm(&g, dx.slice(), &dw, out.slice_mut(), rows, p.eps).unwrap();
            let mut want = vec![0f32; rows * h];
            rms_norm::cpu::reference(&p, &x, &w.data(), &mut want).unwrap();
            assert_close(
                &format!("rms_norm {dt:?} {rows}x{h}"),
                &read(&out, rows * h),
                &want,
                1e-5,
            );

            let mut out = poisoned(&g, rows * h);
            rms_norm::cuda::add_rms_norm(
                &g,
                dx.slice_mut(),
                dy.slice(),
                &dw,
                out.slice_mut(),
                rows,
                p.eps,
            )
            .unwrap();
            let sum: Vec<f32> = x.iter().zip(&y).map(|(a, b)| a + b).collect();
            rms_norm::cpu::reference(&p, &sum, &w.data(), &mut want).unwrap();
            assert_eq!(read(&dx, rows * h), sum, "residual after the fused add");
            assert_close(
                &format!("add_rms_norm {dt:?}"),
                &read(&out, rows * h),
                &want,
                1e-5,
            );
        }
    }
}

#[test]
fn rope_matches_cpu() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(seed());
    for &(hd, heads, il) in &[
        (16usize, 4usize, false),
        (128, 32, false),
        (64, 8, false),
        (32, 8, true),
        (64, 4, true),
    ] {
        let rope_p = Rope::new(hd, 1e6).with_interleaved(il);
        let n = 9;
        let positions: Vec<u32> = (0..n).map(|_| r.below(30000) as u32).collect();
        let mut x = r.vec(n * heads * hd, 1.0);
        let mut dx = g.upload(&x).unwrap();
        let mut dx2 = g.upload(&x).unwrap();
        let (dp, df) = (
            g.upload(&positions).unwrap(),
            g.upload(&rope_p.inv_freq).unwrap(),
        );
        rope::cuda::rope(&g, dx.slice_mut(), dp.slice(), df.slice(), n, heads, hd, il).unwrap();
        rope::cpu::run(&rope_p, &mut x, &positions).unwrap();
        assert_close(&format!("rope hd {hd}"), &read(&dx, x.len()), &x, 1e-5);
        // The table path (cos/sin built once per forward) gives the same rotation.
        let half = hd / 2;
        let (mut cos, mut sin) = (poisoned(&g, n * half), poisoned(&g, n * half));
        rope::cuda::rope_table(
            &g,
            dp.slice(),
            df.slice(),
            n,
            hd,
            cos.slice_mut(),
            sin.slice_mut(),
        )
        .unwrap();
        rope::cuda::rope_apply(
            &g,
            dx2.slice_mut(),
            cos.slice(),
            sin.slice(),
            n,
            heads,
            hd,
            il,
        )
        .unwrap();
        assert_close(
            &format!("rope table hd {hd}"),
            &read(&dx2, x.len()),
            &x,
            1e-5,
        );
        // q and k (fewer heads) rotated in one launch.
        let kv_heads = (heads / 4).max(1);
        let mut q = r.vec(n * heads * hd, 1.0);
        let mut k = r.vec(n * kv_heads * hd, 1.0);
        let (mut dq, mut dk) = (g.upload(&q).unwrap(), g.upload(&k).unwrap());
        rope::cuda::rope_apply2(
            &g,
            dq.slice_mut(),
            heads,
            dk.slice_mut(),
            kv_heads,
            cos.slice(),
            sin.slice(),
            n,
            hd,
            il,
        )
        .unwrap();
        rope::cpu::run(&rope_p, &mut q, &positions).unwrap();
        rope::cpu::run(&rope_p, &mut k, &positions).unwrap();
        assert_close(&format!("rope q hd {hd}"), &read(&dq, q.len()), &q, 1e-5);
        assert_close(&format!("rope k hd {hd}"), &read(&dk, k.len()), &k, 1e-5);
    }
}

#[test]
fn attention_over_device_caches() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(seed());
    for &(nh, nkv, hd, window) in &[
        (4usize, 2usize, 16usize, None),
        (32, 8, 128, Some(5usize)),
        (8, 8, 64, Some(64)),
    ] {
        let p = Attention {
            n_heads: nh,
            n_kv_heads: nkv,
            head_dim: hd,
            scale: (hd as f32).powf(-0.5),
            sliding_window: window,
        };
        let kvw = nkv * hd;
        let n_layers = 2;
        let layer = 1;
        // (cached tokens, new tokens) per sequence
        let seqs = [(0usize, 6usize), (17, 1), (40, 3)];
        let n: usize = seqs.iter().map(|s| s.1).sum();
        let q = r.vec(n * nh * hd, 1.0);
        let k_new = r.vec(n * kvw, 1.0);
        let v_new = r.vec(n * kvw, 1.0);
        let mut host_kv = Vec::new();
        let mut caches = Vec::new();
        let mut meta = Vec::new();
        let mut row = 0;
        for &(cached, new) in &seqs {
            let cap = cached + new + 3;
            let mut k = r.vec(cached * kvw, 1.0);
            let mut v = r.vec(cached * kvw, 1.0);
            // Device layout [layer][k|v][cap][kvw]; fill the cached part of `layer`.
            let mut full = vec![f32::NAN; n_layers * 2 * cap * kvw];
            full[(2 * layer) * cap * kvw..][..cached * kvw].copy_from_slice(&k);
            full[(2 * layer + 1) * cap * kvw..][..cached * kvw].copy_from_slice(&v);
            let buf = g.upload(&full).unwrap();
            for i in 0..new {
                meta.push(att_cuda::RowMeta {
                    kv_base: buf.ptr(),
                    cap: cap as u32,
                    pos: (cached + i) as u32,
                });
            }
            k.extend_from_slice(&k_new[row * kvw..(row + new) * kvw]);
            v.extend_from_slice(&v_new[row * kvw..(row + new) * kvw]);
            host_kv.push((row, new, k, v));
            caches.push(buf);
            row += new;
        }
        let dmeta = g.upload(&meta).unwrap();
        let (dq, dk, dv) = (
            g.upload(&q).unwrap(),
            g.upload(&k_new).unwrap(),
            g.upload(&v_new).unwrap(),
        );
        let out = poisoned(&g, n * nh * hd);
        // SAFETY: q/k/v/out hold n rows of their widths; every row's cache is `caches[..]`,
        // alive to the end of the test, with room for its position in every layer.
        unsafe {
            att_cuda::kv_append(&g, dk.ptr(), dv.ptr(), dmeta.ptr(), n, layer, kvw).unwrap();
            att_cuda::attention(&g, &p, dq.ptr(), dmeta.ptr(), n, layer, out.ptr()).unwrap();
        }
        let views: Vec<AttnSeq> = host_kv
            .iter()
            .map(|(row, new, k, v)| AttnSeq {
                q_row: *row,
                n_new: *new,
                k,
                v,
            })
            .collect();
        let mut want = vec![0f32; n * nh * hd];
        attention::cpu::reference(&p, &q, &views, &mut want).unwrap();
        assert_close(
            &format!("attention {nh}/{nkv}x{hd} window {window:?}"),
            &read(&out, want.len()),
            &want,
            1e-5,
        );
        // The appended keys landed where the cache says.
        let (cached, new) = seqs[1];
        let cap = cached + new + 3;
        let keys = caches[1]
            .read::<f32>(4 * (2 * layer * cap + cached) * kvw, new * kvw)
            .unwrap();
        assert_eq!(keys, host_kv[1].2[cached * kvw..]);
    }
}

#[test]
fn linear_tensor_cores_and_simt() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(seed());
    for (dt, tol) in DTYPES {
        // (tokens, out features, in features): tensor-core shapes and SIMT fallbacks.
        for &(t, n, k) in &[
            (1usize, 192usize, 256usize),
            (7, 64, 4096),
            (64, 1024, 512),
            (130, 80, 96),
            (12, 128, 512),
            (20, 64, 256),
            (5, 24, 40),
        ] {
            let x = r.vec(t * k, 1.0);
            let w = HostW::new(r.vec(n * k, 0.1), dt);
            let dx = g.upload(&x).unwrap();
            let mut out = poisoned(&g, t * n);
            linear::cuda::linear(&g, dx.slice(), &w.dev(&g, n, k), out.slice_mut(), t).unwrap();
            let mut want = vec![0f32; t * n];
            linear::cpu::reference(&x, t, &w.mat(n, k), &mut want).unwrap();
            let path = if linear::cuda::gemv_fits(&[&w.dev(&g, n, k)], t) {
                "gemv"
            } else if linear::cuda::tensor_core_fits(dt, n, k) {
                "tc"
            } else {
                "simt"
            };
            assert_close(
                &format!("linear {dt:?} {path} {t}x{n}x{k}"),
                &read(&out, t * n),
                &want,
                tol,
            );
        }
    }
}

/// q, k and v in one GEMV launch (decode sizes), each output against the CPU reference.
#[test]
fn linear_gemv_three_weights_one_launch() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(seed());
    for (dt, tol) in DTYPES {
        if dt == WeightDType::F32 {
            continue;
        }
        for &(t, k, ns) in &[
            (1usize, 4096usize, [4096usize, 1024, 1024]),
            (3, 512, [256, 64, 64]),
            (8, 1024, [1024, 256, 256]),
            (5, 40, [24, 8, 12]),
        ] {
            let x = r.vec(t * k, 1.0);
            let ws: Vec<HostW> = ns
                .iter()
                .map(|&n| HostW::new(r.vec(n * k, 0.1), dt))
                .collect();
            let dws: Vec<DevMat> = ws.iter().zip(ns).map(|(w, n)| w.dev(&g, n, k)).collect();
            let refs: Vec<&DevMat> = dws.iter().collect();
            assert!(linear::cuda::gemv_shapes_fit(&refs, t));
            let mut outs: Vec<DevBuf> = ns.iter().map(|&n| poisoned(&g, t * n)).collect();
            let mut views: Vec<_> = outs.iter_mut().map(|o| o.slice_mut()).collect();
            let dx = g.upload(&x).unwrap();
            linear::cuda::linear_gemv(&g, dx.slice(), &refs, &mut views, t).unwrap();
            drop(views);
            for (i, &n) in ns.iter().enumerate() {
                let mut want = vec![0f32; t * n];
                linear::cpu::reference(&x, t, &ws[i].mat(n, k), &mut want).unwrap();
                assert_close(
                    &format!("linear gemv {dt:?} weight {i} {t}x{n}x{k}"),
                    &read(&outs[i], t * n),
                    &want,
                    tol,
                );
            }
        }
    }
}

/// The whole MoE block against the CPU ops chained (router → permute → experts → combine),
/// and the device counters against the CPU's. Shapes include Qwen3-30B-A3B's (128 experts,
/// top-8, hidden 2048, expert width 768), and each routing rule (softmax renormalised or raw,
/// sigmoid) runs on some of them.
#[test]
fn moe_block_matches_cpu_chain() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(seed());
    for (dt, tol) in DTYPES {
        for (case, &(tokens, e, k, h, f)) in [
            (1usize, 8usize, 2usize, 64usize, 128usize),
            (1, 8, 2, 1024, 2048),
            (3, 8, 2, 4096, 512),
            (5, 8, 2, 256, 96),
            (64, 8, 2, 512, 1024),
            (300, 4, 1, 128, 64),
            (600, 8, 2, 256, 512),
            (37, 16, 4, 40, 24),
            (1, 128, 8, 2048, 768),
            (48, 128, 8, 2048, 768),
            (7, 64, 8, 256, 128),
        ]
        .iter()
        .enumerate()
        {
            let x = r.vec(tokens * h, 1.0);
            let residual = r.vec(tokens * h, 1.0);
            let gate = HostW::new(r.vec(e * h, 0.5), dt);
            let w1 = HostW::new(r.vec(e * f * h, 1.0 / (h as f32).sqrt()), dt);
            let w3 = HostW::new(r.vec(e * f * h, 1.0 / (h as f32).sqrt()), dt);
            let w2 = HostW::new(r.vec(e * h * f, 1.0 / (f as f32).sqrt()), dt);

            // CPU chain.
            let mut logits = vec![0f32; tokens * e];
            linear::cpu::reference(&x, tokens, &gate.mat(e, h), &mut logits).unwrap();
            let p = RouterTopK {
                scoring: if case % 3 == 2 {
                    Scoring::Sigmoid
                } else {
                    Scoring::Softmax
                },
                renormalize: case % 3 != 1,
                ..RouterTopK::softmax_renormalized(e, k)
            };
            let mut ids = vec![0u32; tokens * k];
            let mut wts = vec![0f32; tokens * k];
            let mut load = ExpertLoad::new(e);
            moe_kernels::router_topk::cpu::run(&p, &logits, &mut ids, &mut wts, &mut load).unwrap();
            let d = permute::run(&ids, e, k).unwrap();
            let es = e_size(e, f, h);
            let mats: Vec<ExpertMats> = (0..e)
                .map(|i| ExpertMats {
                    w1: Mat::new(w1.data().slice(i * es.0, es.0), f, h),
                    w3: Mat::new(w3.data().slice(i * es.0, es.0), f, h),
                    w2: Mat::new(w2.data().slice(i * es.1, es.1), h, f),
                })
                .collect();
            let mut eo = vec![0f32; tokens * k * h];
            expert_ffn::cpu::reference(&x, h, &d, &mats, &mut eo).unwrap();
            let mut want = residual.clone();
            combine::run(&eo, h, &d, &wts, &mut want).unwrap();

            // Device block.
            let layer = MoeLayer {
                gate: gate.dev(&g, e, h),
                experts: ExpertStack::new(
                    w1.dev(&g, e * f, h),
                    w3.dev(&g, e * f, h),
                    w2.dev(&g, e * h, f),
                    e,
                )
                .unwrap(),
                router: p,
            };
            let mut stats = g.alloc(stats_bytes(1, e)).unwrap();
            stats.zero().unwrap();
            let (dx, mut dres) = (g.upload(&x).unwrap(), g.upload(&residual).unwrap());
            let mut scratch = MoeScratch::default();
            layer
                .forward(
                    &g,
                    dx.slice(),
                    dres.slice_mut(),
                    tokens,
                    stats.slice_mut(),
                    &mut scratch,
                    true,
                )
                .unwrap();
            let what = format!(
                "moe {dt:?} T{tokens} E{e} k{k} H{h} F{f} {:?} renorm={} tc={}",
                p.scoring,
                p.renormalize,
                layer.experts.tensor_cores()
            );
            let got_logits = scratch.router_logits(tokens, e).unwrap();
            assert_close(&format!("{what} router logits"), &got_logits, &logits, 1e-5);
            let (gids, gw) = scratch.routing(tokens, k).unwrap();
            assert_eq!(gids, ids, "{what}: expert choices");
            assert_close(&format!("{what} routing weights"), &gw, &wts, 1e-5);
            let got = read(&dres, tokens * h);
            // Compare the MoE contribution, not the residual it was added to.
            let delta_got: Vec<f32> = got.iter().zip(&residual).map(|(a, b)| a - b).collect();
            let delta_want: Vec<f32> = want.iter().zip(&residual).map(|(a, b)| a - b).collect();
            assert_close(
                &format!("{what} output"),
                &delta_got,
                &delta_want,
                tol.max(1e-4),
            );
            let words = stats.read::<u64>(0, router_cuda::stats_words(e)).unwrap();
            let mut dev_load = ExpertLoad::new(e);
            router_cuda::add_stats(&words, &mut dev_load);
            assert_eq!(dev_load.tokens, load.tokens, "{what}: tokens");
            assert_eq!(
                dev_load.expert_tokens, load.expert_tokens,
                "{what}: expert counts"
            );
            assert_eq!(dev_load.coselect, load.coselect, "{what}: co-selection");
            for (a, b) in dev_load.prob_mass.iter().zip(&load.prob_mass) {
                assert!(
                    (a - b).abs() <= 1e-5 * b.abs().max(1.0),
                    "{what}: prob mass {a} vs {b}"
                );
            }
            assert!(
                (dev_load.entropy_sum - load.entropy_sum).abs() <= 1e-5 * load.entropy_sum.max(1.0)
            );
        }
    }
}

fn e_size(_e: usize, f: usize, h: usize) -> (usize, usize) {
    (f * h, h * f)
}

#[test]
fn argmax_rows_ties_to_the_lowest_index() {
    let Some(g) = gpu() else { return };
    let mut r = Rng(seed());
    let (rows, cols) = (7, 32000);
    let mut x = r.vec(rows * cols, 4.0);
    // Row 1: an exact tie between two far-apart columns; row 2: NaNs and a tie; row 3: all -inf.
    x[cols + 100] = 9.0;
    x[cols + 31000] = 9.0;
    x[2 * cols + 5] = f32::NAN;
    x[2 * cols + 7] = 8.5;
    x[2 * cols + 8] = 8.5;
    for v in &mut x[3 * cols..4 * cols] {
        *v = f32::NEG_INFINITY;
    }
    let dx = g.upload(&x).unwrap();
    let mut out = g.alloc(4 * rows).unwrap();
    out.fill_u32(0, rows, 0xdead_beef).unwrap();
    rms_norm::cuda::argmax_rows(&g, dx.slice(), rows, cols, out.slice_mut()).unwrap();
    let got = out.read::<u32>(0, rows).unwrap();
    for (i, row) in x.chunks(cols).enumerate() {
        let mut best = (0u32, f32::NEG_INFINITY);
        for (c, &v) in row.iter().enumerate() {
            if v > best.1 {
                best = (c as u32, v);
            }
        }
        assert_eq!(got[i], best.0, "row {i}");
    }
    assert_eq!(got[1], 100);
    assert_eq!(got[3], 0);
}
