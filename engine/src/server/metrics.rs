//! Prometheus text exposition: request counters by status, tokens in and out, queue depth,
//! running batch size, KV cache use, time-to-first-token and inter-token latency histograms, and
//! per model, layer and expert the routed-token counters and router mass.

use crate::scheduler::{SchedulerGauges, SchedulerObserver};
use crate::stats::StatsReport;
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

const BUCKETS: [f64; 14] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
pub(crate) struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, v: f64) {
        for (i, b) in BUCKETS.iter().enumerate() {
            if v <= *b {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += v;
    }

    fn write(&self, out: &mut String, name: &str, labels: &str) {
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}le=\"{b}\"}} {}",
                self.counts[i]
            );
        }
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {}", self.count);
        let _ = writeln!(
            out,
            "{name}_sum{{{}}} {}",
            labels.trim_end_matches(','),
            self.sum
        );
        let _ = writeln!(
            out,
            "{name}_count{{{}}} {}",
            labels.trim_end_matches(','),
            self.count
        );
    }
}

/// One model's figures.
#[derive(Default)]
pub struct ModelMetrics {
    pub prompt_tokens: AtomicU64,
    pub generation_tokens: AtomicU64,
    pub(crate) ttft: Mutex<Histogram>,
    pub(crate) itl: Mutex<Histogram>,
    pub gauges: std::sync::Arc<SchedulerGauges>,
}

impl SchedulerObserver for ModelMetrics {
    fn first_token(&self, ttft_s: f64) {
        self.ttft
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(ttft_s);
    }
    fn next_token(&self, itl_s: f64) {
        self.itl
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .observe(itl_s);
    }
    fn finished(&self, prompt_tokens: usize, generated: usize) {
        self.prompt_tokens
            .fetch_add(prompt_tokens as u64, Ordering::Relaxed);
        self.generation_tokens
            .fetch_add(generated as u64, Ordering::Relaxed);
    }
}

/// Requests by endpoint and status.
#[derive(Default)]
pub struct RequestCounters(Mutex<BTreeMap<(String, u16), u64>>);

impl RequestCounters {
    pub fn count(&self, endpoint: &str, status: u16) {
        *self
            .0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry((endpoint.to_string(), status))
            .or_default() += 1;
    }
}

fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// The whole exposition. `models`: (name, metrics, statistics, KV bytes per block).
pub fn render(
    requests: &RequestCounters,
    models: &[(&str, &ModelMetrics, StatsReport, usize)],
) -> String {
    let mut o = String::new();
    header(
        &mut o,
        "moe_requests_total",
        "counter",
        "HTTP requests by endpoint and status.",
    );
    for ((ep, status), n) in requests.0.lock().unwrap_or_else(|e| e.into_inner()).iter() {
        let _ = writeln!(
            o,
            "moe_requests_total{{endpoint=\"{ep}\",status=\"{status}\"}} {n}"
        );
    }
    let gauge =
        |o: &mut String, name: &str, help: &str, f: &dyn Fn(&ModelMetrics, usize) -> f64| {
            header(o, name, "gauge", help);
            for (m, mm, _, blk) in models {
                let _ = writeln!(o, "{name}{{model=\"{m}\"}} {}", f(mm, *blk));
            }
        };
    let counter = |o: &mut String, name: &str, help: &str, f: &dyn Fn(&ModelMetrics) -> u64| {
        header(o, name, "counter", help);
        for (m, mm, _, _) in models {
            let _ = writeln!(o, "{name}{{model=\"{m}\"}} {}", f(mm));
        }
    };
    counter(
        &mut o,
        "moe_prompt_tokens_total",
        "Prompt tokens of finished sequences.",
        &|m| m.prompt_tokens.load(Ordering::Relaxed),
    );
    counter(
        &mut o,
        "moe_generation_tokens_total",
        "Generated tokens of finished sequences.",
        &|m| m.generation_tokens.load(Ordering::Relaxed),
    );
    gauge(
        &mut o,
        "moe_queue_depth",
        "Sequences waiting for admission.",
        &|m, _| m.gauges.waiting.load(Ordering::Relaxed) as f64,
    );
    gauge(
        &mut o,
        "moe_running_batch_size",
        "Sequences in the running batch.",
        &|m, _| m.gauges.running.load(Ordering::Relaxed) as f64,
    );
    gauge(
        &mut o,
        "moe_kv_cache_used_bytes",
        "KV cache reserved by running sequences.",
        &|m, b| (m.gauges.kv_blocks_used.load(Ordering::Relaxed) * b) as f64,
    );
    gauge(
        &mut o,
        "moe_kv_cache_capacity_bytes",
        "KV cache budget.",
        &|m, b| (m.gauges.kv_blocks_total.load(Ordering::Relaxed) * b) as f64,
    );
    gauge(
        &mut o,
        "moe_kv_cache_usage_ratio",
        "Fraction of the KV budget reserved.",
        &|m, _| {
            let t = m.gauges.kv_blocks_total.load(Ordering::Relaxed).max(1);
            m.gauges.kv_blocks_used.load(Ordering::Relaxed) as f64 / t as f64
        },
    );
    header(
        &mut o,
        "moe_time_to_first_token_seconds",
        "histogram",
        "Time from submission to the first token.",
    );
    for (m, mm, _, _) in models {
        mm.ttft.lock().unwrap_or_else(|e| e.into_inner()).write(
            &mut o,
            "moe_time_to_first_token_seconds",
            &format!("model=\"{m}\","),
        );
    }
    header(
        &mut o,
        "moe_inter_token_latency_seconds",
        "histogram",
        "Time between consecutive tokens of a sequence.",
    );
    for (m, mm, _, _) in models {
        mm.itl.lock().unwrap_or_else(|e| e.into_inner()).write(
            &mut o,
            "moe_inter_token_latency_seconds",
            &format!("model=\"{m}\","),
        );
    }
    header(
        &mut o,
        "moe_expert_tokens_total",
        "counter",
        "Tokens routed to each expert.",
    );
    for (m, _, s, _) in models {
        for l in &s.layers {
            for (e, n) in l.expert_tokens.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "moe_expert_tokens_total{{model=\"{m}\",layer=\"{}\",expert=\"{e}\"}} {n}",
                    l.layer
                );
            }
        }
    }
    header(
        &mut o,
        "moe_expert_router_mass_total",
        "counter",
        "Sum of router probability per expert.",
    );
    for (m, _, s, _) in models {
        for l in &s.layers {
            for (e, x) in l.router_mass.iter().enumerate() {
                let _ = writeln!(
                    o,
                    "moe_expert_router_mass_total{{model=\"{m}\",layer=\"{}\",expert=\"{e}\"}} {x}",
                    l.layer
                );
            }
        }
    }
    header(
        &mut o,
        "moe_router_aux_loss",
        "gauge",
        "Switch aux loss over all routed tokens.",
    );
    for (m, _, s, _) in models {
        let _ = writeln!(o, "moe_router_aux_loss{{model=\"{m}\"}} {}", s.aux_loss);
    }
    o
}
