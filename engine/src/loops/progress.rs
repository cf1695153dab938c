//! Progress of a loop step on stderr: a bar with counts, rates and ETA on a terminal, and one
//! summary line when the step ends (kept in logs, where the bar is not drawn).

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub struct Progress {
    bar: ProgressBar,
    label: String,
    unit: &'static str,
    tokens: AtomicU64,
    started: Instant,
}

impl Progress {
    /// A step of `total` items (`unit` names them: "prompts", "tasks", ...). `done` items already
    /// finished by an earlier, resumed run count toward the bar but not toward the rates.
    pub fn new(label: &str, total: u64, done: u64, unit: &'static str) -> Self {
        let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
        let template =
            "{prefix} [{bar:30}] {pos}/{len} {msg} elapsed {elapsed_precise} eta {eta_precise}";
        if let Ok(style) = ProgressStyle::with_template(template) {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_prefix(label.to_string());
        bar.set_position(done);
        Progress {
            bar,
            label: label.to_string(),
            unit,
            tokens: AtomicU64::new(0),
            started: Instant::now(),
        }
    }

    /// Records `items` finished items that generated or scored `tokens` tokens.
    pub fn inc(&self, items: u64, tokens: u64) {
        let tokens = self.tokens.fetch_add(tokens, Ordering::Relaxed) + tokens;
        self.bar.inc(items);
        let secs = self.started.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_message(format!(
            "{:.2} {}/s {:.0} tok/s",
            self.bar.per_sec(),
            self.unit,
            tokens as f64 / secs
        ));
    }

    /// Items finished in this run (not counting resumed ones) and tokens, with their rates.
    pub fn finish(&self, items_this_run: u64) -> StepRate {
        self.bar.finish_and_clear();
        let seconds = self.started.elapsed().as_secs_f64();
        let rate = StepRate {
            items: items_this_run,
            tokens: self.tokens.load(Ordering::Relaxed),
            seconds,
        };
        eprintln!(
            "{}: {} {} in {:.1} s ({:.2} {}/s, {:.0} tokens/s)",
            self.label,
            rate.items,
            self.unit,
            seconds,
            rate.items_per_sec(),
            self.unit,
            rate.tokens_per_sec()
        );
        rate
    }
}

/// Throughput of one step, for manifests.
#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
pub struct StepRate {
    pub items: u64,
    pub tokens: u64,
    pub seconds: f64,
}

impl StepRate {
    pub fn items_per_sec(&self) -> f64 {
        self.items as f64 / self.seconds.max(1e-9)
    }
    pub fn tokens_per_sec(&self) -> f64 {
        self.tokens as f64 / self.seconds.max(1e-9)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_count_only_this_run() {
        let p = Progress::new("test", 10, 4, "items");
        p.inc(2, 100);
        p.inc(1, 50);
        let rate = p.finish(3);
        assert_eq!(rate.items, 3);
        assert_eq!(rate.tokens, 150);
        assert!(rate.seconds > 0.0);
        assert!(
            (rate.tokens_per_sec() - 150.0 / rate.seconds).abs() < 1e-6 * rate.tokens_per_sec()
        );
    }
}
