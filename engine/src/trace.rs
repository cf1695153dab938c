//! Named taps of intermediates. Keys match the golden files' names: `embeddings`,
//! `layer.{l}.attn_out`, `layer.{l}.mlp_out` (the feed-forward block's output),
//! `layer.{l}.router_logits`, `layer.{l}.topk_experts`, `layer.{l}.topk_weights`,
//! `layer.{l}.shared_expert_out`, `layer.{l}.shared_expert_gate` (MoE layers only),
//! `layer.{l}.hidden_out`, `hidden_states`, `logits` (rows of the whole batch, sequences in order).

use std::collections::BTreeMap;

pub trait Trace {
    /// False skips the copies taps need.
    fn enabled(&self) -> bool;
    /// Whether the tap `key` is recorded (all of them when enabled, by default).
    fn wants(&self, _key: &str) -> bool {
        self.enabled()
    }
    fn record(&mut self, key: &str, cols: usize, data: &[f32]);
}

/// Records nothing.
pub struct NoTrace;

impl Trace for NoTrace {
    fn enabled(&self) -> bool {
        false
    }
    fn record(&mut self, _: &str, _: usize, _: &[f32]) {}
}

/// Keeps every tap in memory: `key → (cols, data)`.
#[derive(Default, Debug)]
pub struct Recorder {
    pub taps: BTreeMap<String, (usize, Vec<f32>)>,
}

impl Trace for Recorder {
    fn enabled(&self) -> bool {
        true
    }
    fn record(&mut self, key: &str, cols: usize, data: &[f32]) {
        self.taps.insert(key.to_string(), (cols, data.to_vec()));
    }
}

impl Recorder {
    pub fn get(&self, key: &str) -> Option<&[f32]> {
        self.taps.get(key).map(|(_, d)| d.as_slice())
    }
}

/// Records only the experts each row chose (`layer.{l}.topk_experts`), for requests that ask
/// which experts served them.
#[derive(Default, Debug)]
pub struct RoutingRecorder {
    /// Per layer: `[rows, top_k]` expert ids.
    pub layers: Vec<Vec<u32>>,
    pub top_k: usize,
}

impl RoutingRecorder {
    /// Each of `rows`' experts, one `[layer][top_k]` list per row.
    pub fn rows(&self, rows: std::ops::Range<usize>) -> impl Iterator<Item = Vec<Vec<u32>>> + '_ {
        let k = self.top_k;
        rows.map(move |r| {
            self.layers
                .iter()
                .map(|l| l[r * k..(r + 1) * k].to_vec())
                .collect()
        })
    }
}

impl Trace for RoutingRecorder {
    fn enabled(&self) -> bool {
        true
    }
    fn wants(&self, key: &str) -> bool {
        key.ends_with(".topk_experts")
    }
    fn record(&mut self, _key: &str, cols: usize, data: &[f32]) {
        self.top_k = cols;
        self.layers.push(data.iter().map(|&e| e as u32).collect());
    }
}
