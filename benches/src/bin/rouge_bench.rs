//! Near-duplicate filtering speed: our ROUGE-L and MinHash against the `rouge_score` package on
//! the same pool, in the same run: one new instruction checked against a pool of 50,000, and a
//! whole run filtered (each instruction against all kept before it, threshold 0.7). Needs a
//! Python with `rouge_score` (`--python PATH`, default `python3`) for the side-by-side figure;
//! `rouge_score` on a whole run is estimated from its measured per-comparison time.
//!
//! `cargo run --release -p moe-benches --bin rouge_bench -- [--pool 50000] [--run 50000] [--python .venv/bin/python]`

use anyhow::{Context, Result};
use moe::loops::minhash::MinHashPool;
use moe::loops::rouge::RougePool;
use std::time::Instant;

const WORDS: &str = "write give explain list describe classify summarize translate generate create find identify \
    a an the short long simple detailed poem story email letter tweet review essay summary list plan recipe \
    about for of to in with on from why how what which sea sky cat dog city friend manager product movie \
    weather health money time music science history children students customers three five ten steps tips \
    ideas reasons examples sentence paragraph following text question answer positive negative neutral";

fn instructions(n: usize, seed: u64) -> Vec<String> {
    let words: Vec<&str> = WORDS.split_whitespace().collect();
    let mut s = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut next = move || {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        s
    };
    (0..n)
        .map(|_| {
            let len = 6 + (next() % 14) as usize;
            let mut t: Vec<&str> = (0..len)
                .map(|_| words[(next() % words.len() as u64) as usize])
                .collect();
            t[0] =
                ["Write", "Give", "Explain", "List", "Describe", "Classify"][(next() % 6) as usize];
            t.join(" ") + "."
        })
        .collect()
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |name: &str, default: &str| -> String {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| default.to_string())
    };
    let pool_n: usize = arg("--pool", "50000").parse()?;
    let run_n: usize = arg("--run", "50000").parse()?;
    let python = arg("--python", "python3");
    let texts = instructions(pool_n, 1);
    let probe = instructions(5, 99);

    let t = Instant::now();
    let mut pool = RougePool::new();
    for x in &texts {
        pool.add(x);
    }
    let build_s = t.elapsed().as_secs_f64();
    let mut one = vec![];
    for p in &probe {
        let t = Instant::now();
        std::hint::black_box(pool.max_score(p));
        one.push(t.elapsed().as_secs_f64());
    }
    one.sort_by(|a, b| a.total_cmp(b));
    let ours_one = one[one.len() / 2];

    // MinHash (Jaccard of words, threshold 0.7) on the same pool: a check takes microseconds,
    // so the time per check is the mean over many probes.
    let t = Instant::now();
    let mut mh = MinHashPool::new(0.7, 1);
    for x in &texts {
        mh.add(x);
    }
    let mh_build_s = t.elapsed().as_secs_f64();
    let mh_probes = instructions(2000, 98);
    let t = Instant::now();
    let mut candidates = 0usize;
    for p in &mh_probes {
        candidates += std::hint::black_box(mh.candidates(p)).len();
    }
    let mh_one = t.elapsed().as_secs_f64() / mh_probes.len() as f64;

    // A whole run: each instruction against every one kept before it, dropped above 0.7.
    let run = instructions(run_n, 7);
    let t = Instant::now();
    let mut kept = RougePool::new();
    let mut n_kept = 0;
    for x in &run {
        if kept.max_score(x) <= 0.7 {
            kept.add(x);
            n_kept += 1;
        }
    }
    let ours_run = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let mut mh_kept = MinHashPool::new(0.7, 1);
    for x in &run {
        if mh_kept.max_score(x) <= 0.7 {
            mh_kept.add(x);
        }
    }
    let mh_run = t.elapsed().as_secs_f64();

    // rouge_score on the same pool and probe, same process tree, same machine.
    let dir = std::env::temp_dir().join(format!("rouge-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    std::fs::write(dir.join("pool.json"), serde_json::to_string(&texts)?)?;
    std::fs::write(dir.join("probe.json"), serde_json::to_string(&probe)?)?;
    let script = r#"
import json, sys, time
from rouge_score import rouge_scorer
d = sys.argv[1]
pool = json.load(open(d + "/pool.json")); probe = json.load(open(d + "/probe.json"))
s = rouge_scorer.RougeScorer(["rougeL"], use_stemmer=False)
t = time.perf_counter()
best = max(s.score(x, probe[0])["rougeL"].fmeasure for x in pool)
print(time.perf_counter() - t)
"#;
    let out = std::process::Command::new(&python)
        .args(["-c", script, dir.to_str().unwrap()])
        .output()
        .context("running python")?;
    let theirs_one: Option<f64> = String::from_utf8_lossy(&out.stdout).trim().parse().ok();
    if theirs_one.is_none() {
        eprintln!(
            "rouge_score not measured: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // Comparisons a whole run makes: every instruction against the kept ones before it.
    let run_comparisons = (0..run_n).map(|i| i.min(n_kept) as f64).sum::<f64>();
    let theirs_run = theirs_one.map(|t| t / pool_n as f64 * run_comparisons);
    let report = serde_json::json!({
        "threads": rayon::current_num_threads(),
        "pool": pool_n, "pool_build_s": build_s, "minhash_pool_build_s": mh_build_s,
        "minhash_banding": mh.banding(),
        "one_vs_pool_s": ours_one, "rouge_score_one_vs_pool_s": theirs_one,
        "speedup": theirs_one.map(|t| t / ours_one),
        "minhash_one_vs_pool_s": mh_one, "minhash_candidates_per_check": candidates as f64 / mh_probes.len() as f64,
        "minhash_speedup_vs_rouge_score": theirs_one.map(|t| t / mh_one),
        "minhash_speedup_vs_our_rouge_l": ours_one / mh_one,
        "run": run_n, "run_kept": n_kept, "run_filter_s": ours_run,
        "minhash_run_kept": mh_kept.len(), "minhash_run_filter_s": mh_run,
        "rouge_score_run_estimate_s": theirs_run,
        "run_speedup": theirs_run.map(|t| t / ours_run),
        "minhash_run_speedup_vs_rouge_score": theirs_run.map(|t| t / mh_run),
        "minhash_run_speedup_vs_our_rouge_l": ours_run / mh_run,
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    Ok(())
}
