//! `moe bench`: load time, prefill and decode throughput, peak memory, and decode speed as a
//! fraction of this machine's memory-bandwidth floor (bytes of weights one token must read ÷
//! measured read bandwidth), all measured in one run. Medians of `repeats`; every figure is
//! reported as a fraction of its own floor or ceiling. The ceilings come from short probes
//! repeated throughout the run: their 90th percentile is used and their spread reported.

use crate::backend::Backend;
use crate::engine::Engine;
use crate::error::Result;
use crate::models::SeqStep;
use crate::trace::NoTrace;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct BenchOptions {
    pub prefill_lens: Vec<usize>,
    pub decode_tokens: usize,
    pub batch_sizes: Vec<usize>,
    pub repeats: usize,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PrefillResult {
    pub tokens: usize,
    pub tokens_per_s: f64,
    pub seconds: f64,
    /// Floating-point operations of this prefill ([`prefill_flops`]).
    pub flops: f64,
    /// Tokens/s the arithmetic allows: peak FLOP rate × tokens ÷ `flops`.
    pub ceiling_tokens_per_s: f64,
    /// tokens/s ÷ the ceiling.
    pub fraction_of_ceiling: f64,
}

/// Many short measurements of one ceiling, spread over a run. The run uses `p90`, the value nine
/// in ten samples stay under: on a shared machine both ends move. The median fell by half when
/// other processes held a core most of the time, though the free moments between reached the
/// full rate; the best was sometimes an outlier (one repeat with both cores free on a machine
/// that otherwise had one, a read that found its data still cached) twice the usual rate.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Spread {
    pub p90: f64,
    pub best: f64,
    pub median: f64,
    pub worst: f64,
    pub samples: usize,
}

impl Spread {
    pub fn of(mut v: Vec<f64>) -> Self {
        assert!(!v.is_empty(), "a probe needs at least one sample");
        v.sort_by(|a, b| b.total_cmp(a));
        Spread {
            p90: v[v.len() / 10],
            best: v[0],
            median: v[v.len() / 2],
            worst: v[v.len() - 1],
            samples: v.len(),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DecodeResult {
    pub batch: usize,
    pub steps: usize,
    /// Generated tokens per second over the whole batch.
    pub tokens_per_s: f64,
    pub ms_per_step: f64,
    /// The lower of the memory floor (batch × bandwidth ÷ bytes a step reads, with the bandwidth
    /// probed right before each repeat) and the arithmetic ceiling, tokens/s; median of repeats.
    pub floor_tokens_per_s: f64,
    /// Which of the two sets the floor: "memory" or "compute".
    pub bound: String,
    /// Median over repeats of each repeat's tokens/s ÷ its own floor.
    pub fraction_of_floor: f64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BenchReport {
    pub model: String,
    pub backend: String,
    pub threads: usize,
    pub cpu: String,
    /// The stored weights' dtype (`bf16`, `f32`, `q8_0`, or each dtype's share of the bytes).
    pub weight_dtype: String,
    /// Bytes of stored weights per parameter, over the whole checkpoint.
    pub bytes_per_param: f64,
    /// Activations rounded to bf16 in products with bf16 weights (`--bf16-activations`).
    #[serde(default)]
    pub bf16_activations: bool,
    pub total_params: usize,
    pub active_params_per_token: usize,
    pub weight_bytes: usize,
    pub load_seconds: f64,
    /// Load plus the forward pass of a one-token prompt that gives the first token, before
    /// anything else ran (the ceilings are measured after it).
    pub first_token_seconds: f64,
    /// Resident memory right after that first token: the mapped weights it touched (one token's
    /// experts per layer), not the whole checkpoint.
    pub rss_after_first_token_bytes: Option<u64>,
    /// Read bandwidth, GB/s (10⁹ bytes): the `p90` of `read_bandwidth_spread`, the probe's
    /// reads at the start of the run and before every decode repeat; each decode repeat is held
    /// to the bandwidth probed right before it.
    pub read_bandwidth_gbs: f64,
    pub read_bandwidth_spread: Spread,
    /// Bytes of weights one decode token reads (attention, router, top-k experts, lm_head).
    pub active_bytes_per_token: usize,
    /// Decode tokens/s the bandwidth allows at batch 1 (the batch-1 entry's floor when measured).
    pub decode_floor_tokens_per_s: f64,
    pub prefill: Vec<PrefillResult>,
    pub decode: Vec<DecodeResult>,
    /// The smallest decode batch whose floor is the arithmetic ceiling rather than the memory
    /// (at the run's bandwidth and compute): where batching stops paying for itself.
    pub compute_bound_from_batch: Option<usize>,
    /// Batch-1 decode ÷ its floor (median over repeats).
    pub decode_fraction_of_floor: Option<f64>,
    /// Measured f32 FMA throughput of all threads, GFLOP/s: the `p90` of `compute_spread`, the
    /// probe's repeats at the start of the run and before every timed repeat.
    pub compute_gflops: f64,
    pub compute_spread: Spread,
    /// The prefill ran faster than the compute probe read, so the ceiling is what it achieved
    /// (a fraction of the ceiling cannot pass 1.0).
    pub compute_raised_to_achieved: bool,
    /// Decode tokens/s the arithmetic allows (2 flops per active parameter per token: every
    /// decoded token needs its logits, so the lm_head counts in full).
    pub decode_ceiling_tokens_per_s: f64,
    /// Peak resident set size of the engine: the process's, less the bandwidth probe's buffer.
    pub peak_rss_bytes: Option<u64>,
    pub repeats: usize,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Peak resident set size of this process (`VmHWM`), on Linux.
pub fn peak_rss_bytes() -> Option<u64> {
    status_kib("VmHWM:").map(|kb| kb * 1024)
}

/// Resident set size now (`VmRSS`), on Linux.
pub fn rss_bytes() -> Option<u64> {
    status_kib("VmRSS:").map(|kb| kb * 1024)
}

fn status_kib(field: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = s.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// Measures the read bandwidth of all rayon threads by summing a buffer four times the size of
/// the machine's last-level cache (at least 128 MiB), so the passes come from memory: a
/// 128 MiB buffer read from a 300 MiB L3 at more than twice the memory's rate. The buffer asks
/// for 2 MiB pages as the weights' maps do (see `weights`), so the floor is what the machine
/// reads with the same page size, not a slower 4 KiB-page read.
pub struct BandwidthProbe {
    buf: Buffer,
}

/// The largest cache CPU 0 reports (Linux sysfs), in bytes.
fn last_level_cache_bytes() -> Option<usize> {
    let dir = std::fs::read_dir("/sys/devices/system/cpu/cpu0/cache").ok()?;
    dir.filter_map(|e| {
        let size = std::fs::read_to_string(e.ok()?.path().join("size")).ok()?;
        let size = size.trim();
        let (digits, unit) = size.split_at(size.find(|c: char| !c.is_ascii_digit())?);
        let n: usize = digits.parse().ok()?;
        Some(match unit {
            "K" => n << 10,
            "M" => n << 20,
            "G" => n << 30,
            _ => n,
        })
    })
    .max()
}

enum Buffer {
    Mapped(memmap2::MmapMut),
    Heap(Vec<f32>),
}

impl Buffer {
    fn floats(&self) -> &[f32] {
        match self {
            Buffer::Mapped(m) => bytemuck::cast_slice(m),
            Buffer::Heap(v) => v,
        }
    }
}

impl Default for BandwidthProbe {
    fn default() -> Self {
        // f32 elements; at most 4 GiB, so a cache size misread cannot exhaust memory.
        let n = (last_level_cache_bytes().unwrap_or(0) * 4).clamp(128 << 20, 4 << 30) / 4;
        let fill = |v: &mut [f32]| {
            v.par_iter_mut()
                .enumerate()
                .for_each(|(i, x)| *x = (i & 7) as f32)
        };
        let buf = match memmap2::MmapMut::map_anon(n * 4) {
            Ok(mut m) => {
                #[cfg(target_os = "linux")]
                let _ = m.advise(memmap2::Advice::HugePage);
                fill(bytemuck::cast_slice_mut(&mut m));
                Buffer::Mapped(m)
            }
            Err(_) => {
                let mut v = vec![0f32; n];
                fill(&mut v);
                Buffer::Heap(v)
            }
        };
        BandwidthProbe { buf }
    }
}

impl BandwidthProbe {
    /// Bytes the probe holds resident while it lives.
    pub fn bytes(&self) -> u64 {
        (self.buf.floats().len() * 4) as u64
    }

    /// GB/s of every timed read in `passes` passes after a warm-up one.
    /// Each pass reads the buffer twice, once as the hardware prefetchers stream it and once with
    /// software prefetches running ahead as the matrix-vector products issue them (faster on
    /// some CPUs, slower on others), each time as [`PROBE_SLICES`] slices timed one by one, so a
    /// few passes give many samples. A slice comes from memory, since the whole buffer, four
    /// times the last-level cache, is read between two reads of it.
    pub fn measure(&self, passes: usize) -> Vec<f64> {
        let buf = self.buf.floats();
        let slice = buf.len().div_ceil(PROBE_SLICES);
        let chunk = (slice / (rayon::current_num_threads() * 4)).max(16);
        let mut speeds = vec![];
        for pass in 0..passes.max(1) + 1 {
            for prefetch in [false, true] {
                for s in buf.chunks(slice) {
                    let t = Instant::now();
                    let sum: f32 = s.par_chunks(chunk).map(|c| sum_lines(c, prefetch)).sum();
                    std::hint::black_box(sum);
                    if pass > 0 {
                        speeds.push((s.len() * 4) as f64 / t.elapsed().as_secs_f64() / 1e9);
                    }
                }
            }
        }
        speeds
    }
}

/// The sum of `c`, a 64-byte line at a time; with `prefetch`, each line also asks for the line
/// [`PROBE_PREFETCH_AHEAD`] bytes further on.
fn sum_lines(c: &[f32], prefetch: bool) -> f32 {
    let mut acc = [0f32; 16];
    for (j, w) in c.chunks_exact(16).enumerate() {
        #[cfg(target_arch = "x86_64")]
        if prefetch {
            let at = c.as_ptr().wrapping_add(j * 16 + PROBE_PREFETCH_AHEAD / 4) as *const i8;
            // SAFETY: a prefetch never faults, whatever the address; SSE is part of x86_64.
            unsafe { std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(at) };
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (j, prefetch);
        for i in 0..16 {
            acc[i] += w[i];
        }
    }
    acc.iter().sum()
}

/// Slices of the bandwidth probe's buffer timed separately (each at least 16 MiB, as the buffer
/// is at least 128 MiB).
const PROBE_SLICES: usize = 8;

/// How far ahead the probe's prefetching read asks for lines: the reach of the matrix-vector
/// products' own prefetches.
const PROBE_PREFETCH_AHEAD: usize = 12 << 10;

/// Peak f32 FMA throughput of all rayon threads, GFLOP/s (10 independent accumulator chains per
/// thread, of the widest vectors the CPU has: AVX-512, AVX2+FMA, or what the compiler makes of
/// the portable loop), for each of `repeats` repeats of about a millisecond.
/// With `bf16_products` (activations rounded to bf16) on a CPU with AVX-512 BF16, the peak of the
/// pairwise bf16 dot products instead, which is what those products can reach.
pub fn measure_compute_gflops(repeats: usize, bf16_products: bool) -> Vec<f64> {
    const ITERS: usize = 4_000_000;
    let per_thread = || -> f64 {
        #[cfg(target_arch = "x86_64")]
        if bf16_products && moe_kernels::dot::has_avx512_bf16() {
            // SAFETY: AVX-512 BF16 is present (checked above).
            return unsafe { dpbf16_loop_avx512(ITERS) };
        }
        #[cfg(target_arch = "x86_64")]
        if moe_kernels::dot::has_avx512() {
            // SAFETY: AVX-512F is present (checked above).
            return unsafe { fma_loop_avx512(ITERS) };
        }
        #[cfg(target_arch = "x86_64")]
        if moe_kernels::dot::has_avx2() {
            // SAFETY: AVX2 and FMA are present (checked above).
            return unsafe { fma_loop_avx2(ITERS) };
        }
        let mut acc = [[0f32; 8]; 10];
        let (a, b) = (
            std::hint::black_box(1.000_000_1f32),
            std::hint::black_box(0.999_999_9f32),
        );
        for _ in 0..ITERS / 10 {
            for row in acc.iter_mut() {
                for v in row.iter_mut() {
                    *v = v.mul_add(a, b);
                }
            }
        }
        std::hint::black_box(acc);
        (ITERS / 10 * 10 * 8 * 2) as f64
    };
    let threads = rayon::current_num_threads();
    let mut speeds = vec![];
    for _ in 0..repeats.max(1) {
        let t = Instant::now();
        let flops: f64 = (0..threads).into_par_iter().map(|_| per_thread()).sum();
        speeds.push(flops / t.elapsed().as_secs_f64() / 1e9);
    }
    speeds
}

/// Repeats of the compute probe and passes of the bandwidth probe at the start of a run, and
/// before each timed repeat after it (see [`run_bench`]).
const COMPUTE_PROBES: usize = 31;
const BANDWIDTH_PASSES: usize = 11;
const COMPUTE_PROBES_PER_REPEAT: usize = 5;
const BANDWIDTH_PASSES_PER_REPEAT: usize = 5;

/// Floating-point operations of one prefill of `len` tokens that asks for the last token's
/// logits only, as the bench's (and generation's) prefill does: two per multiply-add of every
/// matrix product each token goes through (q, k, v, o; the router, its top-k experts and any
/// shared expert, or a dense layer's MLP), of the attention scores and weighted values over each
/// token's causal window, and of the lm_head once, for the last token. Norms, RoPE, softmax and
/// activation functions are left out (a few flops per element, not per parameter).
pub fn prefill_flops(cfg: &crate::config::ModelConfig, len: usize) -> f64 {
    let h = cfg.hidden_size as f64;
    let (q, kv) = (cfg.q_width() as f64, cfg.kv_width() as f64);
    let ffn = |moe: bool| -> f64 {
        if !moe {
            return 3.0 * h * cfg.intermediate_size as f64;
        }
        let shared = cfg.moe.shared_expert.map_or(0.0, |s| {
            3.0 * h * s.width as f64 + if s.sigmoid_gate { h } else { 0.0 }
        });
        h * cfg.moe.n_experts as f64
            + cfg.moe.top_k as f64 * 3.0 * h * cfg.moe.expert_width as f64
            + shared
    };
    let per_token: f64 = cfg
        .moe_layers
        .iter()
        .map(|&moe| 2.0 * h * q + 2.0 * h * kv + ffn(moe))
        .sum();
    // Token t (from 0) attends to t + 1 positions, or the window: q·k and p·v, q_width each.
    let window = cfg.sliding_window.unwrap_or(usize::MAX);
    let attended: f64 = (0..len).map(|t| (t + 1).min(window) as f64).sum();
    let attention = cfg.num_hidden_layers as f64 * 2.0 * q * attended;
    let lm_head = cfg.vocab_size as f64 * h;
    2.0 * (len as f64 * per_token + attention + lm_head)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn fma_loop_avx2(iters: usize) -> f64 {
    use std::arch::x86_64::*;
    let a = _mm256_set1_ps(std::hint::black_box(1.000_000_1));
    let b = _mm256_set1_ps(std::hint::black_box(0.999_999_9));
    let mut acc = [_mm256_setzero_ps(); 10];
    for _ in 0..iters / 10 {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, a, b);
        }
    }
    std::hint::black_box(acc);
    (iters / 10 * 10 * 8 * 2) as f64
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn fma_loop_avx512(iters: usize) -> f64 {
    use std::arch::x86_64::*;
    let a = _mm512_set1_ps(std::hint::black_box(1.000_000_1));
    let b = _mm512_set1_ps(std::hint::black_box(0.999_999_9));
    let mut acc = [_mm512_setzero_ps(); 10];
    for _ in 0..iters / 10 {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, a, b);
        }
    }
    std::hint::black_box(acc);
    (iters / 10 * 10 * 16 * 2) as f64
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn dpbf16_loop_avx512(iters: usize) -> f64 {
    use std::arch::x86_64::*;
    let a: __m512bh = std::mem::transmute(_mm512_set1_epi16(std::hint::black_box(0x3f80)));
    let mut acc = [_mm512_setzero_ps(); 10];
    for _ in 0..iters / 10 {
        for v in acc.iter_mut() {
            *v = _mm512_dpbf16_ps(*v, a, a);
        }
    }
    std::hint::black_box(acc);
    // 32 products and 32 additions per instruction.
    (iters / 10 * 10 * 32 * 2) as f64
}

/// Parameters one decode step of `batch` sequences reads: all a single token reads but the
/// experts, plus each layer's expected number of distinct experts when every token picks `k` of
/// `E` uniformly, `E · (1 − ((E − k) / E)^batch)` (the bench's random weights route nearly
/// uniformly; trained routers are more skewed and touch fewer).
fn params_read_per_step(cfg: &crate::config::ModelConfig, batch: usize) -> f64 {
    let expert = 3 * cfg.hidden_size * cfg.moe.expert_width;
    let (e, k) = (cfg.moe.n_experts as f64, cfg.moe.top_k as f64);
    let distinct = e * (1.0 - ((e - k) / e).powi(batch as i32));
    let moe_layers = cfg.moe_layer_ids().len();
    let others = cfg.active_params() - moe_layers * cfg.moe.top_k * expert;
    others as f64 + moe_layers as f64 * distinct * expert as f64
}

/// Deterministic pseudo-random ids in `[3, vocab)`.
fn ids(n: usize, vocab: usize, seed: u64) -> Vec<u32> {
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            3 + (s % (vocab as u64 - 3)) as u32
        })
        .collect()
}

pub fn run_bench<B: Backend>(engine: &Engine<B>, o: &BenchOptions) -> Result<BenchReport> {
    let m = &engine.model;
    let cfg = &m.cfg;
    let ctx = engine.info.context_length;
    let bytes_per_param = engine.info.weight_bytes as f64 / cfg.total_params() as f64;
    let active_bytes = (cfg.active_params() as f64 * bytes_per_param) as usize;
    let first_prompt = ids(1, cfg.vocab_size, 7);
    let t = Instant::now();
    m.forward(
        &mut [SeqStep {
            tokens: &first_prompt,
            kv: &mut m.new_kv(),
            all_logits: false,
        }],
        &mut NoTrace,
    )?;
    let first_token_seconds = engine.info.load_time.as_secs_f64() + t.elapsed().as_secs_f64();
    let rss_after_first_token_bytes = rss_bytes();
    // A device reports its own ceilings. On the CPU both probes run at the start and again
    // before every timed repeat, and each ceiling is the 90th percentile of all its samples (see
    // [`Spread`]): a shared machine's load comes and goes within seconds (another process on one
    // of two cores halves the compute probe), so the best of a burst of probes at the start
    // caught one moment (three runs gave compute-bound batches of 2, 7 and 4). Each decode repeat is also held to the
    // bandwidth probed right before it, the floor of its own moment.
    let device = m.backend.measured_ceilings();
    let probe = device.is_none().then(BandwidthProbe::default);
    let bf16 = engine.info.bf16_activations;
    let (mut bw_samples, mut gf_samples) = match (device, &probe) {
        (Some((bw, gf)), _) => (vec![bw], vec![gf]),
        (None, Some(p)) => (
            p.measure(BANDWIDTH_PASSES),
            measure_compute_gflops(COMPUTE_PROBES, bf16),
        ),
        (None, None) => unreachable!("a probe exists where the device reports no ceilings"),
    };
    let sample_compute = |gf: &mut Vec<f64>| {
        if device.is_none() {
            gf.extend(measure_compute_gflops(COMPUTE_PROBES_PER_REPEAT, bf16));
        }
    };

    let mut prefill_seconds = vec![];
    for &len in &o.prefill_lens {
        let len = len.min(ctx);
        let prompt = ids(len, cfg.vocab_size, len as u64);
        let mut times = vec![];
        for _ in 0..o.repeats {
            sample_compute(&mut gf_samples);
            let mut kv = m.new_kv();
            let t = Instant::now();
            m.forward(
                &mut [SeqStep {
                    tokens: &prompt,
                    kv: &mut kv,
                    all_logits: false,
                }],
                &mut NoTrace,
            )?;
            times.push(t.elapsed().as_secs_f64());
        }
        prefill_seconds.push((len, median(times)));
    }

    let prompt_len = 16.min(ctx / 2);
    let steps = o
        .decode_tokens
        .min(ctx.saturating_sub(prompt_len + 1))
        .max(1);
    // Per batch size: each repeat's seconds and the bandwidth probed right before it.
    let mut decode_runs: Vec<(usize, Vec<(f64, f64)>)> = vec![];
    for &batch in &o.batch_sizes {
        let mut runs = vec![];
        for r in 0..o.repeats {
            sample_compute(&mut gf_samples);
            let now = match &probe {
                Some(p) => p.measure(BANDWIDTH_PASSES_PER_REPEAT),
                None => vec![bw_samples[0]],
            };
            let bandwidth = Spread::of(now.clone()).p90;
            bw_samples.extend(now);
            let prompts: Vec<Vec<u32>> = (0..batch)
                .map(|b| ids(prompt_len, cfg.vocab_size, (r * 1000 + b) as u64))
                .collect();
            let mut kvs: Vec<B::Kv> = (0..batch).map(|_| m.new_kv()).collect();
            let mut steps_in: Vec<SeqStep<B::Kv>> = prompts
                .iter()
                .zip(kvs.iter_mut())
                .map(|(p, kv)| SeqStep {
                    tokens: p,
                    kv,
                    all_logits: false,
                })
                .collect();
            let mut logits = m.forward(&mut steps_in, &mut NoTrace)?;
            let t = Instant::now();
            for _ in 0..steps {
                let next: Vec<[u32; 1]> = logits
                    .iter()
                    .map(|l| {
                        [l.iter()
                            .enumerate()
                            .fold((0, f32::MIN), |a, (i, &v)| if v > a.1 { (i, v) } else { a })
                            .0 as u32]
                    })
                    .collect();
                let mut st: Vec<SeqStep<B::Kv>> = next
                    .iter()
                    .zip(kvs.iter_mut())
                    .map(|(tok, kv)| SeqStep {
                        tokens: tok,
                        kv,
                        all_logits: false,
                    })
                    .collect();
                logits = m.forward(&mut st, &mut NoTrace)?;
            }
            runs.push((t.elapsed().as_secs_f64(), bandwidth));
        }
        decode_runs.push((batch, runs));
    }

    // Every sample is in: the ceilings, then each figure against them.
    let (bandwidth_spread, compute_spread) = (Spread::of(bw_samples), Spread::of(gf_samples));
    let achieved = prefill_seconds
        .iter()
        .map(|&(len, s)| prefill_flops(cfg, len) / s / 1e9)
        .fold(0.0, f64::max);
    let (gflops, compute_raised_to_achieved) = compute_ceiling(compute_spread.p90, achieved);
    let bandwidth = bandwidth_spread.p90;
    let floor = bandwidth * 1e9 / active_bytes as f64;
    let ceiling = gflops * 1e9 / (2.0 * cfg.active_params() as f64);
    let prefill: Vec<PrefillResult> = prefill_seconds
        .into_iter()
        .map(|(len, s)| {
            let flops = prefill_flops(cfg, len);
            let ceiling = gflops * 1e9 * len as f64 / flops;
            PrefillResult {
                tokens: len,
                tokens_per_s: len as f64 / s,
                seconds: s,
                flops,
                ceiling_tokens_per_s: ceiling,
                fraction_of_ceiling: len as f64 / s / ceiling,
            }
        })
        .collect();
    let step_floor = |batch: usize, bandwidth: f64| {
        let memory =
            batch as f64 * bandwidth * 1e9 / (params_read_per_step(cfg, batch) * bytes_per_param);
        (memory.min(ceiling), memory <= ceiling)
    };
    let memory_bound = |batch| step_floor(batch, bandwidth).1;
    let mut b1_fraction = None;
    let mut decode = vec![];
    for (batch, runs) in decode_runs {
        let floors: Vec<f64> = runs
            .iter()
            .map(|&(_, bw)| step_floor(batch, bw).0)
            .collect();
        let fractions = runs
            .iter()
            .zip(&floors)
            .map(|(&(seconds, _), floor)| (batch * steps) as f64 / seconds / floor)
            .collect();
        let s = median(runs.iter().map(|r| r.0).collect());
        let fraction = median(fractions);
        if batch == 1 {
            b1_fraction = Some(fraction);
        }
        decode.push(DecodeResult {
            batch,
            steps,
            tokens_per_s: (batch * steps) as f64 / s,
            ms_per_step: s * 1e3 / steps as f64,
            floor_tokens_per_s: median(floors),
            bound: if memory_bound(batch) {
                "memory"
            } else {
                "compute"
            }
            .to_string(),
            fraction_of_floor: fraction,
        });
    }
    Ok(BenchReport {
        model: engine.info.name.clone(),
        backend: m.backend.name().to_string(),
        threads: rayon::current_num_threads(),
        cpu: cpu_name(),
        weight_dtype: engine.info.weight_dtype.clone(),
        bytes_per_param,
        bf16_activations: engine.info.bf16_activations,
        total_params: cfg.total_params(),
        active_params_per_token: cfg.active_params(),
        weight_bytes: engine.info.weight_bytes,
        load_seconds: engine.info.load_time.as_secs_f64(),
        first_token_seconds,
        rss_after_first_token_bytes,
        read_bandwidth_gbs: bandwidth,
        read_bandwidth_spread: bandwidth_spread,
        active_bytes_per_token: active_bytes,
        decode_floor_tokens_per_s: decode
            .iter()
            .find(|d| d.batch == 1)
            .map_or(floor, |d| d.floor_tokens_per_s),
        prefill,
        decode,
        decode_fraction_of_floor: b1_fraction,
        compute_bound_from_batch: (1..=4096).find(|&b| !memory_bound(b)),
        compute_gflops: gflops,
        compute_spread,
        compute_raised_to_achieved,
        decode_ceiling_tokens_per_s: ceiling,
        // The probe's buffer is resident from its fill to the end of the run; the engine's peak
        // is the process's without it.
        peak_rss_bytes: peak_rss_bytes()
            .map(|b| b.saturating_sub(probe.as_ref().map_or(0, BandwidthProbe::bytes))),
        repeats: o.repeats,
    })
}

impl BenchReport {
    pub fn table(&self) -> String {
        let mut s = format!(
            "model {} ({} params, {} active/token, {}, {:.2} bytes/param{}) on {} × {} threads\n",
            self.model,
            self.total_params,
            self.active_params_per_token,
            self.weight_dtype,
            self.bytes_per_param,
            if self.bf16_activations {
                ", bf16 activations"
            } else {
                ""
            },
            self.cpu,
            self.threads
        );
        s += &format!(
            "load {:.3} s   first token {:.3} s (RSS {:.1} MiB)   peak RSS {:.1} MiB\n",
            self.load_seconds,
            self.first_token_seconds,
            self.rss_after_first_token_bytes.unwrap_or(0) as f64 / 1048576.0,
            self.peak_rss_bytes.unwrap_or(0) as f64 / 1048576.0
        );
        let spread = |x: &Spread| {
            format!(
                "90th percentile of {}; best {:.1}, median {:.1}, worst {:.1}",
                x.samples, x.best, x.median, x.worst
            )
        };
        s += &format!(
            "read bandwidth {:.1} GB/s ({})\n",
            self.read_bandwidth_gbs,
            spread(&self.read_bandwidth_spread)
        );
        s += &format!(
            "compute {:.1} GFLOP/s ({}) -> decode ceiling {:.1} tok/s\n",
            self.compute_gflops,
            spread(&self.compute_spread),
            self.decode_ceiling_tokens_per_s
        );
        for p in &self.prefill {
            s += &format!(
                "prefill {:>5} tokens: {:>9.1} tok/s ({:.0}% of its ceiling {:.1} tok/s, {:.3} GFLOP)\n",
                p.tokens,
                p.tokens_per_s,
                p.fraction_of_ceiling * 100.0,
                p.ceiling_tokens_per_s,
                p.flops / 1e9
            );
        }
        for d in &self.decode {
            s += &format!(
                "decode batch {:>3}: {:>9.1} tok/s ({:.2} ms/step; {:.0}% of its {}-bound floor {:.1} tok/s)\n",
                d.batch,
                d.tokens_per_s,
                d.ms_per_step,
                d.fraction_of_floor * 100.0,
                d.bound,
                d.floor_tokens_per_s
            );
        }
        s += &format!(
            "decode floor {:.1} tok/s ({} bytes/token); batch-1 decode at {:.0}% of it\n",
            self.decode_floor_tokens_per_s,
            self.active_bytes_per_token,
            self.decode_fraction_of_floor.unwrap_or(0.0) * 100.0
        );
        if let Some(b) = self.compute_bound_from_batch {
            s += &format!("decode is compute-bound from batch {b} on\n");
        }
        s
    }
}

/// The compute ceiling in GFLOP/s: the probe's reading, or what a prefill demonstrably achieved
/// where that is more (the probe under-reads on a busy machine); and whether it was raised.
fn compute_ceiling(probe: f64, achieved: f64) -> (f64, bool) {
    if achieved > probe {
        (achieved, true)
    } else {
        (probe, false)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_prefill_faster_than_the_probe_raises_the_ceiling_to_it() {
        assert_eq!(super::compute_ceiling(100.0, 80.0), (100.0, false));
        let (c, raised) = super::compute_ceiling(100.0, 130.0);
        assert!(raised);
        // The fastest prefill is then exactly at its ceiling, never above.
        assert_eq!(130.0 / c, 1.0);
    }

    use super::*;
    use crate::config::ModelConfig;

    #[test]
    fn a_step_reads_one_tokens_params_at_batch_1_and_every_expert_at_large_batches() {
        let cfg = ModelConfig::from_json(
            r#"{"architectures":["MixtralForCausalLM"],"vocab_size":32000,"hidden_size":1024,
            "intermediate_size":3584,"num_hidden_layers":8,"num_attention_heads":16,
            "num_key_value_heads":4,"num_local_experts":8,"num_experts_per_tok":2,
            "rope_theta":1e6,"eos_token_id":2,"tie_word_embeddings":false}"#,
        )
        .unwrap();
        let one = params_read_per_step(&cfg, 1);
        assert!((one - cfg.active_params() as f64).abs() < 1.0, "{one}");
        // Two of eight experts per token: 8 tokens touch 8·(1 − 0.75⁸) ≈ 7.20 experts per layer.
        let expert = (3 * 1024 * 3584) as f64;
        let eight = params_read_per_step(&cfg, 8);
        let want = one + 8.0 * (8.0 * (1.0 - 0.75f64.powi(8)) - 2.0) * expert;
        assert!((eight - want).abs() < 1.0, "{eight} vs {want}");
        // Every expert, every layer: all parameters but the embedding table (one row is read).
        let all = params_read_per_step(&cfg, 10_000);
        let want = (cfg.total_params() - 32000 * 1024 + 1024) as f64;
        assert!((all - want).abs() / want < 1e-9, "{all} vs {want}");
    }

    #[test]
    fn prefill_flops_count_the_lm_head_once_and_attention_over_the_causal_prefix() {
        // The embedded student's shape: hidden 128, 4 heads of 32 (2 for k/v), 2 layers of 4
        // experts of width 256, top-2, vocabulary 32000.
        let json = r#"{"architectures":["MixtralForCausalLM"],"vocab_size":32000,"hidden_size":128,
            "intermediate_size":256,"num_hidden_layers":2,"num_attention_heads":4,"head_dim":32,
            "num_key_value_heads":2,"num_local_experts":4,"num_experts_per_tok":2,
            "rope_theta":1e6,"eos_token_id":2,"tie_word_embeddings":true"#;
        let cfg = ModelConfig::from_json(&format!("{json}}}")).unwrap();
        // By hand, multiply-adds of a 3-token prefill. Per token and layer: q 128·128, k and v
        // 128·64 each, o 128·128; router 128·4; two experts of three 128·256 matrices.
        let per_layer = 16384 + 8192 + 8192 + 16384 + 512 + 2 * 3 * 32768;
        assert_eq!(per_layer, 246_272);
        let tokens = 3 * 2 * per_layer;
        // Tokens 0, 1, 2 attend to 1, 2, 3 positions: q·k and p·v of 128 each, in 2 layers.
        let attention = (1 + 2 + 3) * 256 * 2;
        // The lm_head once: only the last token's logits are asked for.
        let lm_head = 32000 * 128;
        let want = 2.0 * (tokens + attention + lm_head) as f64;
        assert_eq!(want, 11_153_408.0);
        assert_eq!(prefill_flops(&cfg, 3), want);
        // The lm_head is 8× the rest of a token's products here, so counting it for every token
        // (2 flops per active parameter per token) overstates a 512-token prefill's work about
        // 8×, which is how prefills came out at several times their ceiling.
        let old = 512.0 * 2.0 * cfg.active_params() as f64;
        assert!(old > 4.0 * prefill_flops(&cfg, 512), "{old}");
        // A sliding window of 2 caps the third token's positions at 2.
        let windowed = ModelConfig::from_json(&format!(r#"{json},"sliding_window":2}}"#)).unwrap();
        assert_eq!(
            prefill_flops(&cfg, 3) - prefill_flops(&windowed, 3),
            2.0 * 256.0 * 2.0
        );
    }

    #[test]
    fn a_spread_takes_the_90th_percentile_median_best_and_worst() {
        // 1..=20 shuffled: two samples are above the 90th percentile.
        let v: Vec<f64> = (0..20).map(|i| ((i * 7) % 20 + 1) as f64).collect();
        assert_eq!(
            Spread::of(v),
            Spread {
                p90: 18.0,
                best: 20.0,
                median: 10.0,
                worst: 1.0,
                samples: 20
            }
        );
        assert_eq!(Spread::of(vec![4.0]).p90, 4.0);
    }

    #[test]
    fn qwen3_steps_count_moe_layers_experts_and_explicit_head_dim() {
        // The Qwen3-shaped bench checkpoint, with layer 1 made dense and head_dim ≠ hidden/heads.
        let cfg = ModelConfig::from_json(
            r#"{"architectures":["Qwen3MoeForCausalLM"],"model_type":"qwen3_moe","vocab_size":32000,
            "hidden_size":1024,"intermediate_size":3072,"moe_intermediate_size":512,
            "num_hidden_layers":8,"num_attention_heads":16,"num_key_value_heads":4,"head_dim":128,
            "num_experts":64,"num_experts_per_tok":8,"norm_topk_prob":true,"decoder_sparse_step":1,
            "mlp_only_layers":[1],"rope_theta":1e6,"eos_token_id":2,"tie_word_embeddings":false}"#,
        )
        .unwrap();
        let (h, q, kv) = (1024, 16 * 128, 4 * 128);
        let attn = 2 * h * q + 2 * h * kv;
        let expert = 3 * h * 512;
        let moe = h * 64 + 8 * expert;
        let dense = 3 * h * 3072;
        let active = 8 * (attn + 2 * h) + 7 * moe + dense + h + 32000 * h + h;
        // With or without the per-head q/k norm weights (2 × head_dim a layer).
        let got = cfg.active_params();
        assert!(
            got == active || got == active + 8 * 2 * 128,
            "{got} vs {active}"
        );
        let one = params_read_per_step(&cfg, 1);
        assert!((one - got as f64).abs() < 1.0, "{one}");
        // Eight of 64 experts per token: 8 tokens touch 64·(1 − (56/64)⁸) experts per MoE layer.
        let eight = params_read_per_step(&cfg, 8);
        let distinct = 64.0 * (1.0 - (56.0f64 / 64.0).powi(8));
        let want = one + 7.0 * (distinct - 8.0) * expert as f64;
        assert!((eight - want).abs() < 1.0, "{eight} vs {want}");
    }
}
