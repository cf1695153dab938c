//! Self-instruct end to end on the tiny teacher (trained only on arithmetic-style tasks, its
//! answers to these prompts are not meaningful, so the mechanics are asserted: files, formats, counts, filter statistics,
//! determinism with a seed, and a resumed run equal to an uninterrupted one), and over HTTP.

use moe::engine::{Engine, ModelSource};
use moe::loops::client::{HttpClient, LocalClient};
use moe::loops::self_instruct::{run, SelfInstructConfig};
use moe::server::{start, ServerConfig};
use std::path::PathBuf;
use std::sync::Arc;

fn teacher() -> ModelSource {
    ModelSource::Dir(moe_tests::repo_path("models/moe-teacher-tiny"))
}

/// The Self-Instruct seed tasks kept in the repository (Apache-2.0, `data/self-instruct/`).
fn seed_tasks() -> PathBuf {
    let p = moe_tests::repo_path("data/self-instruct/seed_tasks.jsonl");
    assert!(p.is_file(), "{} is missing", p.display());
    p
}

fn cfg(seed_tasks: &PathBuf, tag: &str) -> SelfInstructConfig {
    let out = std::env::temp_dir().join(format!("moe-si-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    SelfInstructConfig {
        seed_tasks: seed_tasks.clone(),
        out,
        num_instructions: 4,
        batch_size: 3,
        seed: 7,
        max_tokens: 128,
        resume: false,
        stop_after_batches: None,
        dedup: Default::default(),
    }
}

fn read(c: &SelfInstructConfig, f: &str) -> String {
    std::fs::read_to_string(c.out.join(f)).unwrap()
}

#[test]
fn runs_deterministically_and_resumes_exactly() {
    let seeds = seed_tasks();
    let client = LocalClient {
        engine: Arc::new(Engine::load(&teacher()).unwrap()),
    };
    let a = cfg(&seeds, "a");
    let sa = run(&client, &a).unwrap();
    let accepted = sa["accepted_instructions"].as_u64().unwrap() as usize;
    let lines: Vec<serde_json::Value> = read(&a, "machine_generated_instructions.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), accepted);
    for l in &lines {
        assert!(
            l["instruction"].is_string()
                && l["most_similar"].is_object()
                && l["avg_similarity_score"].is_number()
        );
        assert!(l["most_similar"]
            .as_object()
            .unwrap()
            .values()
            .all(|s| s.as_f64().unwrap() <= 0.7));
    }
    let rejected: u64 = sa["rejected"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert!(
        accepted > 0 && rejected > 0,
        "accepted {accepted}, rejected {rejected}"
    );
    assert_eq!(
        read(&a, "is_classification.jsonl").lines().count(),
        accepted
    );
    assert_eq!(
        read(&a, "machine_generated_instances.jsonl")
            .lines()
            .count(),
        accepted
    );
    let alpaca: Vec<serde_json::Value> =
        serde_json::from_str(&read(&a, "alpaca_data.json")).unwrap();
    assert!(alpaca.iter().all(|r| r["instruction"].is_string()
        && r["input"].is_string()
        && r["output"].is_string()));
    assert!(c_manifest(&a)["requests"].as_u64().unwrap() > 0);

    // Same seed, same run.
    let b = cfg(&seeds, "b");
    run(&client, &b).unwrap();
    assert_eq!(
        read(&a, "machine_generated_instructions.jsonl"),
        read(&b, "machine_generated_instructions.jsonl")
    );
    assert_eq!(read(&a, "alpaca_data.json"), read(&b, "alpaca_data.json"));

    // Interrupted after one batch, then resumed: the same files.
    let mut c = cfg(&seeds, "c");
    c.stop_after_batches = Some(1);
    run(&client, &c).unwrap();
    c.stop_after_batches = None;
    c.resume = true;
    run(&client, &c).unwrap();
    assert_eq!(
        read(&a, "machine_generated_instructions.jsonl"),
        read(&c, "machine_generated_instructions.jsonl")
    );
    assert_eq!(read(&a, "alpaca_data.json"), read(&c, "alpaca_data.json"));
}

fn c_manifest(c: &SelfInstructConfig) -> serde_json::Value {
    serde_json::from_str(&read(c, "manifest.json")).unwrap()
}

#[test]
fn runs_against_a_model_behind_moe_serve() {
    let seeds = seed_tasks();
    let h = start(
        vec![("teacher".into(), Engine::load(&teacher()).unwrap())],
        ServerConfig {
            port: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let remote = HttpClient::new(&format!("{}/v1", h.url()), "teacher").unwrap();
    let local = LocalClient {
        engine: Arc::new(Engine::load(&teacher()).unwrap()),
    };
    let (r, l) = (cfg(&seeds, "remote"), cfg(&seeds, "local"));
    run(&remote, &r).unwrap();
    run(&local, &l).unwrap();
    // Same model, same seeds: the same instructions whether in process or over HTTP.
    assert_eq!(read(&r, "alpaca_data.json"), read(&l, "alpaca_data.json"));
    assert_eq!(
        read(&r, "machine_generated_instructions.jsonl")
            .lines()
            .count(),
        read(&l, "machine_generated_instructions.jsonl")
            .lines()
            .count()
    );
    h.shutdown();
}

#[test]
fn alpaca_run_mechanics_and_determinism() {
    use moe::loops::alpaca::{run as alpaca, AlpacaConfig};
    let seeds = seed_tasks();
    let client = LocalClient {
        engine: Arc::new(Engine::load(&teacher()).unwrap()),
    };
    let cfg = |tag: &str| {
        let out = std::env::temp_dir().join(format!("moe-alpaca-{}-{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        AlpacaConfig {
            seed_tasks: seeds.clone(),
            out,
            num_items: 2,
            batch_size: 2,
            seed: 3,
            max_tokens: 96,
            dedup: Default::default(),
            resume: false,
            stop_after_batches: None,
        }
    };
    let (a, b) = (cfg("a"), cfg("b"));
    let sa = alpaca(&client, &a).unwrap();
    alpaca(&client, &b).unwrap();
    let read = |c: &AlpacaConfig| std::fs::read_to_string(c.out.join("alpaca_data.json")).unwrap();
    assert_eq!(read(&a), read(&b), "the same seed gives the same data");
    let items: Vec<serde_json::Value> = serde_json::from_str(&read(&a)).unwrap();
    assert_eq!(items.len() as u64, sa["kept_items"].as_u64().unwrap());
    assert!(sa["requests"].as_u64().unwrap() >= 2);
    assert!(items.iter().all(|i| i["instruction"].is_string()
        && i["input"].is_string()
        && i["output"].is_string()));
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(a.out.join("manifest.json")).unwrap())
            .unwrap();
    let step = &manifest["steps"]["generate"];
    assert_eq!(step["prompts"], sa["requests"]);
    assert!(step["prompts_per_s"].as_f64().unwrap() > 0.0);
    assert!(step["tokens_per_s"].as_f64().unwrap() > 0.0);
    let generated: Vec<serde_json::Value> =
        std::fs::read_to_string(a.out.join("generated_items.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(generated.len(), items.len());
    for (g, i) in generated.iter().zip(&items) {
        assert_eq!(g["instruction"], i["instruction"]);
        assert!(g["most_similar_instructions"].is_object());
    }

    // More items, so that the run spans several batches; interrupted after one batch then
    // resumed, it must write what the uninterrupted run writes.
    let files = ["alpaca_data.json", "generated_items.jsonl"];
    let mut full = cfg("full");
    full.num_items = 6;
    let sf = alpaca(&client, &full).unwrap();
    assert!(
        sf["requests"].as_u64().unwrap() > 2,
        "the run must take more than one batch to test resuming: {sf}"
    );
    let mut cut = cfg("cut");
    cut.num_items = 6;
    cut.stop_after_batches = Some(1);
    let paused = alpaca(&client, &cut).unwrap();
    assert_eq!(paused["paused_after_batches"], 1);
    assert!(!cut.out.join("alpaca_data.json").exists());
    cut.stop_after_batches = None;
    cut.resume = true;
    let sc = alpaca(&client, &cut).unwrap();
    assert_eq!(sc["resumed_from_request"], 2);
    assert_eq!(sc["requests"], sf["requests"]);
    assert_eq!(sc["rejected"], sf["rejected"]);
    for f in files {
        assert_eq!(
            std::fs::read_to_string(full.out.join(f)).unwrap(),
            std::fs::read_to_string(cut.out.join(f)).unwrap(),
            "{f}"
        );
    }
    // A resume with another seed is refused.
    cut.seed = 4;
    let e = alpaca(&client, &cut).unwrap_err().to_string();
    assert!(e.contains("cannot resume") && e.contains("--seed 3"), "{e}");
}

/// The MinHash filter in a whole self-instruct run: the same mechanics, and every kept
/// instruction's recorded Jaccard similarities stay at or below the threshold.
#[test]
fn self_instruct_with_minhash_dedup() {
    let seeds = seed_tasks();
    let client = LocalClient {
        engine: Arc::new(Engine::load(&teacher()).unwrap()),
    };
    let mut c = cfg(&seeds, "minhash");
    c.dedup = moe::loops::dedup::Dedup::parse("minhash", 0.5, 1).unwrap();
    let s = run(&client, &c).unwrap();
    let lines: Vec<serde_json::Value> = read(&c, "machine_generated_instructions.jsonl")
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        lines.len() as u64,
        s["accepted_instructions"].as_u64().unwrap()
    );
    assert!(!lines.is_empty());
    for l in &lines {
        assert!(l["avg_similarity_score"].is_null());
        assert!(l["most_similar"]
            .as_object()
            .unwrap()
            .values()
            .all(|v| v.as_f64().unwrap() <= 0.5));
    }
    let m = c_manifest(&c);
    assert_eq!(m["dedup"]["method"], "minhash");
    // Resuming with the other filter is refused before anything is generated.
    let mut other = c.clone();
    other.resume = true;
    other.dedup = Default::default();
    let e = run(&client, &other).unwrap_err().to_string();
    assert!(e.contains("cannot resume") && e.contains("MinHash"), "{e}");
    for step in ["instructions", "classification", "instances"] {
        let st = &m["steps"][step];
        assert!(st["prompts"].as_u64().unwrap() > 0, "{step}: {st}");
        assert!(st["tokens_per_s"].as_f64().unwrap() > 0.0, "{step}: {st}");
    }
}

/// The Alpaca check on tasks with checkable answers: every task gets one item, its verdict is
/// `is_correct` of its output, and the per-task counts add up to the lines written.
#[test]
fn alpaca_check_on_tasks_counts_add_up() {
    use moe::loops::alpaca::{check_on_tasks, CheckConfig};
    use moe::loops::tasks;
    let client = LocalClient {
        engine: Arc::new(Engine::load(&teacher()).unwrap()),
    };
    let mut ts = tasks::generate("add,rev", 8, 5).unwrap();
    // Two templated near-twins: the second must be dropped by the near-duplicate filter.
    ts.push(tasks::Task::new(
        "add",
        "What is the sum of 12 and 30?".into(),
        "42".into(),
    ));
    ts.push(tasks::Task::new(
        "add",
        "What is the sum of 12 and 31?".into(),
        "43".into(),
    ));
    let out = std::env::temp_dir().join(format!("moe-alpaca-check-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    let cfg = CheckConfig {
        out: out.clone(),
        requests: 2,
        batch_size: 2,
        seed: 1,
        max_tokens: 48,
        dedup: Default::default(),
    };
    let s = check_on_tasks(&client, &ts, &cfg).unwrap();
    let lines: Vec<serde_json::Value> = std::fs::read_to_string(out.join("check_items.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), ts.len());
    for (l, t) in lines.iter().zip(&ts) {
        assert_eq!(l["instruction"], t.question.as_str());
        assert_eq!(
            l["correct"].as_bool().unwrap(),
            tasks::is_correct(t, l["output"].as_str().unwrap())
        );
    }
    assert_eq!(lines[9]["rejected"], "near_duplicate", "{}", lines[9]);
    let all = &s["teacher_outputs"]["all"];
    assert_eq!(all["items"], ts.len());
    let count = |f: &dyn Fn(&serde_json::Value) -> bool| lines.iter().filter(|l| f(l)).count();
    assert_eq!(all["correct"], count(&|l| l["correct"] == true));
    assert_eq!(all["kept"], count(&|l| l["rejected"].is_null()));
    assert_eq!(
        all["kept_correct"],
        count(&|l| l["rejected"].is_null() && l["correct"] == true)
    );
    assert!(
        all["correct"].as_u64().unwrap() >= 5,
        "the trained teacher answers most of these: {s}"
    );
    assert_eq!(s["anchor_generation"]["requests"], 2);
    assert!(out.join("check_summary.json").exists());
}
