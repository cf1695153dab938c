//! `moe loop teach|social|active` from the command line: each runs with the default models at
//! small sizes and writes its run directory and manifest; bad arguments exit 1 with a message
//! naming the problem, never a panic.

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn moe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moe"))
        .args(args)
        // The defaults come from the repository's models.toml (teacher and student roles).
        .current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join(".."))
        .output()
        .expect("run moe")
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("moe-cli-loops-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn lines(p: &Path) -> Vec<Value> {
    read(p)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{}: {e}: {l}", p.display())))
        .collect()
}

/// Runs a loop, checks it succeeded, and returns the manifest it wrote (the one it printed too).
fn run_loop(args: &[&str], out: &Path) -> Value {
    let mut all = vec!["loop"];
    all.extend_from_slice(args);
    let o = out.to_str().unwrap();
    all.extend_from_slice(&["--out", o]);
    let r = moe(&all);
    let err = String::from_utf8_lossy(&r.stderr);
    assert!(r.status.success(), "moe {all:?}: {err}");
    let printed: Value = serde_json::from_slice(&r.stdout).expect("the manifest on stdout");
    let written: Value = serde_json::from_str(&read(&out.join("manifest.json"))).unwrap();
    assert_eq!(printed["loop"], written["loop"]);
    assert_eq!(printed.to_string().len(), written.to_string().len());
    written
}

/// Exit status 1, `needle` in the message, no panic.
fn fails_with(args: &[&str], needle: &str) {
    let mut all = vec!["loop"];
    all.extend_from_slice(args);
    let r = moe(&all);
    let err = String::from_utf8_lossy(&r.stderr);
    assert_ne!(r.status.code(), Some(0), "moe {all:?} should fail");
    assert!(
        err.contains(needle),
        "moe {all:?}: stderr {err:?} should mention {needle:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

#[test]
fn help_names_each_loops_options() {
    for (cmd, flags) in [
        (
            "teach",
            &[
                "--rationales",
                "--exam-problems",
                "--no-prefix-cache",
                "--resume",
            ][..],
        ),
        (
            "social",
            &["--teachers", "--canary-candidates", "--resume"][..],
        ),
        ("active", &["--strategies", "--committee", "--resume"][..]),
    ] {
        let r = moe(&["loop", cmd, "--help"]);
        assert!(r.status.success(), "{cmd} --help");
        let text = String::from_utf8_lossy(&r.stdout);
        for f in flags
            .iter()
            .chain(&["--student-url", "--student-model", "--teacher-url", "--out"])
        {
            assert!(text.contains(f), "moe loop {cmd} --help lacks {f}:\n{text}");
        }
    }
}

#[test]
fn teach_writes_its_run_directory() {
    let d = tmp("teach");
    let m = run_loop(
        &[
            "teach",
            "--families",
            "mul",
            "--pool-size",
            "20",
            "--teach-problems",
            "2",
            "--rationales",
            "2",
            "--exam-problems",
            "2",
            "--repeats",
            "1",
            "--max-tokens",
            "8",
        ],
        &d,
    );
    assert_eq!(lines(&d.join("problems.jsonl")).len(), 2);
    let r = lines(&d.join("rationales.jsonl"));
    assert_eq!(r.len(), 2 * 2);
    for x in &r {
        assert!(x["lbt_score"].as_u64().unwrap() <= 2, "{x}");
        assert_eq!(x["student_answers"].as_array().unwrap().len(), 2);
    }
    assert_eq!(m["loop"], "teach");
    assert_eq!(m["teach_problems"], 2);
    assert_eq!(m["rationales"], 2);
    assert_eq!(m["steps"]["problems"]["items"], 2);
    assert!(m["adaptive"].is_null());
    for rule in ["maj", "max", "sum"] {
        let a = m["selection_accuracy"][rule].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&a), "{rule}: {a}");
    }
    let pc = &m["prefix_cache"]["student"];
    assert_eq!(m["prefix_cache"]["enabled"], true);
    assert!(pc["saved_tokens"].as_u64().unwrap() > 0, "{pc}");
    assert!(m["student"].as_str().is_some() && m["teacher"].as_str().is_some());
}

#[test]
fn social_writes_its_run_directory() {
    let d = tmp("social");
    let args = [
        "social",
        "--families",
        "mul",
        "--teachers",
        "2",
        "--private",
        "2",
        "--shared",
        "1",
        "--n-gen",
        "1",
        "--samples",
        "2",
        "--keep",
        "1",
        "--test-size",
        "4",
        "--canary-candidates",
        "16",
        "--canaries",
        "1",
        "--max-tokens",
        "8",
    ];
    let m = run_loop(&args, &d);
    let shared = lines(&d.join("shared.jsonl"));
    assert_eq!(
        shared.iter().filter(|l| l["mode"] == "relabel").count(),
        2,
        "one public question per teacher"
    );
    assert_eq!(
        shared.iter().filter(|l| l["mode"] == "instruction").count(),
        1
    );
    // settings, 2 + 2 teacher steps, instruction, 2 voted picks, 8 modes, 2 votes
    assert_eq!(lines(&d.join("state.jsonl")).len(), 1 + 4 + 1 + 2 + 8 + 2);
    assert_eq!(m["loop"], "social");
    assert_eq!(m["teachers"], 2);
    assert_eq!(m["test"], 4);
    let modes = m["modes"].as_object().unwrap();
    assert_eq!(modes.len(), 10, "{modes:?}");
    for (name, v) in modes {
        let a = v["accuracy"]["all"].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&a), "{name}: {a}");
        if let Some(ranks) = v["exposure"]["ranks"].as_array() {
            assert_eq!(ranks.len(), 1, "{name}");
            assert!((1..=16).contains(&ranks[0].as_u64().unwrap()), "{name}");
        }
    }
    assert_eq!(m["steps"]["teachers"]["items"], 2 * 2 + 3);
    assert_eq!(m["steps"]["student"]["items"], 10);
    // Cut back to its first 6 steps (as if killed) and resumed: the same files.
    let (shared, state) = (read(&d.join("shared.jsonl")), read(&d.join("state.jsonl")));
    let cut: Vec<&str> = state.lines().take(7).collect();
    std::fs::write(d.join("state.jsonl"), cut.join("\n") + "\n").unwrap();
    std::fs::remove_file(d.join("manifest.json")).unwrap();
    let m2 = run_loop(&[args.as_slice(), &["--resume"]].concat(), &d);
    assert_eq!(read(&d.join("shared.jsonl")), shared);
    assert_eq!(read(&d.join("state.jsonl")), state);
    assert_eq!(m2["resumed_steps"], 6);
    assert_eq!(m2["modes"], m["modes"]);
}

#[test]
fn active_writes_its_run_directory() {
    let d = tmp("active");
    let m = run_loop(
        &[
            "active",
            "--families",
            "mul,cmp",
            "--pool-size",
            "8",
            "--heldout-size",
            "4",
            "--strategies",
            "random,nll,committee",
            "--rounds",
            "1",
            "--batch",
            "2",
            "--shots",
            "1",
            "--committee",
            "1",
            "--max-tokens",
            "6",
        ],
        &d,
    );
    let curves = lines(&d.join("curves.jsonl"));
    assert_eq!(curves.len(), 3 * 2, "rounds 0 and 1 per strategy");
    let queries = lines(&d.join("queries.jsonl"));
    assert_eq!(queries.len(), 3 * 2);
    for q in &queries {
        assert!(q["pool_index"].as_u64().unwrap() < 8);
        assert!(q["teacher_label"].is_string());
    }
    assert_eq!(m["loop"], "active");
    assert_eq!(m["pool"], 8);
    assert_eq!(m["heldout"], 4);
    for s in ["random", "nll", "committee"] {
        let c = m["strategies"][s]["curve"].as_array().unwrap();
        assert_eq!(c.len(), 2, "{s}");
        assert_eq!(c[1]["labels"], 2, "{s}");
    }
    assert_eq!(m["steps"]["rounds"]["items"], 3);
    assert!(d.join("state.json").exists());
}

#[test]
fn bad_arguments_are_named() {
    let d = tmp("bad");
    let out = d.to_str().unwrap();
    fails_with(
        &["active", "--out", out, "--strategies", "random,psychic"],
        "unknown strategy `psychic`",
    );
    fails_with(
        &["teach", "--out", out, "--tasks", "/nonexistent/tasks.jsonl"],
        "/nonexistent/tasks.jsonl",
    );
    fails_with(
        &[
            "social",
            "--out",
            out,
            "--tasks",
            "/nonexistent/tasks.jsonl",
        ],
        "/nonexistent/tasks.jsonl",
    );
    fails_with(
        &["teach", "--out", out, "--rationales", "0"],
        "--rationales",
    );
    fails_with(&["teach", "--out", out, "--repeats", "0"], "--repeats");
    fails_with(&["social", "--out", out, "--teachers", "0"], "--teachers");
    fails_with(&["social", "--out", out, "--canaries", "0"], "--canaries");
    fails_with(&["active", "--out", out, "--batch", "0"], "--batch");
    fails_with(&["active", "--out", out, "--rounds", "0"], "--rounds");
    fails_with(
        &["teach", "--out", out, "--style", "poetic"],
        "unknown style `poetic`",
    );
    fails_with(
        &["active", "--out", out, "--context", "sideways"],
        "unknown context format `sideways`",
    );
    fails_with(&["teach", "--out", out, "--families", "nope"], "nope");
    fails_with(
        &["social", "--out", out, "--teachers", "many"],
        "--teachers",
    );
    fails_with(&["teach"], "--out");
}

/// `--student-url` reaches a student behind `moe serve`: the same curves as the student in
/// process, and `gate` refused by name.
#[test]
fn active_with_the_student_behind_a_server() {
    let h = moe::server::start(
        vec![(
            "student".into(),
            moe::engine::Engine::load(&moe::engine::ModelSource::Embedded).unwrap(),
        )],
        moe::server::ServerConfig {
            port: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let url = format!("{}/v1", h.url());
    let args = |out: &Path| -> Vec<String> {
        [
            "active",
            "--teacher",
            "",
            "--student",
            "",
            "--families",
            "mul,cmp",
            "--pool-size",
            "8",
            "--heldout-size",
            "4",
            "--strategies",
            "random,nll,margin",
            "--rounds",
            "1",
            "--batch",
            "2",
            "--max-tokens",
            "6",
            "--out",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let (d1, d2) = (tmp("active-remote"), tmp("active-here"));
    let mut remote = args(&d1);
    remote.extend(["--student-url".into(), url.clone()]);
    for a in [remote, args(&d2)] {
        let mut all = vec!["loop".to_string()];
        all.extend(a);
        let r = Command::new(env!("CARGO_BIN_EXE_moe"))
            .args(&all)
            .output()
            .unwrap();
        assert!(
            r.status.success(),
            "{all:?}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
    }
    for f in ["curves.jsonl", "queries.jsonl"] {
        assert_eq!(read(&d1.join(f)), read(&d2.join(f)), "{f}");
    }
    let m: Value = serde_json::from_str(&read(&d1.join("manifest.json"))).unwrap();
    assert!(
        m["student"].as_str().unwrap().contains(&url),
        "{}",
        m["student"]
    );
    assert_eq!(m["student_prefill"]["saved_tokens"], 0);
    let d3 = tmp("active-remote-gate");
    fails_with(
        &[
            "active",
            "--teacher",
            "",
            "--student",
            "",
            "--student-url",
            &url,
            "--strategies",
            "random,gate",
            "--out",
            d3.to_str().unwrap(),
        ],
        "`gate`",
    );
    h.shutdown();
}

/// `--device` reaches the loops: where CUDA is missing, a loop with local models on `cuda`
/// exits 1 naming the reason (no panic, nothing loaded onto the CPU instead); on a GPU machine
/// the distillation with its evaluation runs there (scripts/gpu_check_loops.sh compares the
/// loops' results on both devices).
#[test]
fn loops_take_the_device() {
    let d = tmp("cuda");
    std::fs::create_dir_all(&d).unwrap();
    let data = d.join("data.jsonl");
    std::fs::write(
        &data,
        "{\"task\": \"add\", \"question\": \"What is 2 + 3?\", \"answer\": \"5\"}\n",
    )
    .unwrap();
    let out = d.join("run");
    let (data, out) = (data.to_str().unwrap(), out.to_str().unwrap());
    let reason = match moe::CudaBackend::new(0) {
        Ok(_) => {
            let args = [
                "--device",
                "cuda",
                "loop",
                "distill",
                "--teacher",
                "teacher",
                "--student",
                "student",
                "--eval",
                "--data",
                data,
                "--out",
                out,
            ];
            let r = moe(&args);
            let err = String::from_utf8_lossy(&r.stderr);
            assert!(r.status.success(), "moe {args:?}: {err}");
            assert!(Path::new(out).join("divergence-summary.json").exists());
            return;
        }
        Err(e) => e.to_string(),
    };
    for (device, args) in [
        (
            "cuda",
            vec![
                "distill",
                "--teacher",
                "teacher",
                "--student",
                "student",
                "--eval",
                "--data",
                data,
                "--out",
                out,
            ],
        ),
        (
            "cuda:0",
            vec![
                "teach",
                "--families",
                "mul",
                "--pool-size",
                "4",
                "--out",
                out,
            ],
        ),
        (
            "cuda",
            vec![
                "active",
                "--pool-size",
                "4",
                "--heldout-size",
                "2",
                "--out",
                out,
            ],
        ),
    ] {
        let mut all = vec!["--device", device, "loop"];
        all.extend_from_slice(&args);
        let r = moe(&all);
        let err = String::from_utf8_lossy(&r.stderr);
        assert_eq!(r.status.code(), Some(1), "moe {all:?}: {err}");
        let ordinal = if device == "cuda" { "cuda:0" } else { device };
        let needle = format!("--device {ordinal}: {reason}");
        assert!(
            err.contains(&needle),
            "moe {all:?}: {err:?} lacks {needle:?}"
        );
        assert!(!err.contains("panicked"), "{err}");
    }
}
