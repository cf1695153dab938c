//! Collaborative loops II: checkable tasks and their scoring, acquisition functions, exposure,
//! shared-prefix generation, and the active, teach and social loops end to end on the embedded
//! model (mechanics, determinism, resume, a teacher behind `moe serve`).

use moe::engine::{Engine, ModelSource};
use moe::loops::active::{self, least_confidence, margin, prediction_entropy, top_b, vote_entropy};
use moe::loops::client::{HttpClient, LocalClient};
use moe::loops::learner::{self, PrefillStats, Student};
use moe::loops::social::{self, exposure, ngram_overlap, rank_of};
use moe::loops::tasks::{self, extract_answer, extract_label, is_correct, normalize, Task};
use moe::loops::teach::{self, Style};
use moe::sampling::SamplingParams;
use moe::server::{start, ServerConfig};
use moe_tests::repo_path;
use std::path::{Path, PathBuf};
use std::sync::Arc;

fn close(a: f64, b: f64) {
    assert!((a - b).abs() < 1e-9, "{a} vs {b}");
}

fn embedded() -> Arc<Engine> {
    Arc::new(Engine::load(&ModelSource::Embedded).unwrap())
}

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("moe-loops2-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

#[test]
fn acquisition_functions_match_hand_computed_values() {
    let p = [0.5, 0.3, 0.2];
    close(least_confidence(&p), 0.5);
    close(margin(&p), 0.2);
    // 0.5 ln 2 + 0.3 ln(1/0.3) + 0.2 ln 5
    close(
        prediction_entropy(&p),
        0.5 * 2f64.ln() + 0.3 * (1.0 / 0.3f64).ln() + 0.2 * 5f64.ln(),
    );
    close(prediction_entropy(&[1.0, 0.0]), 0.0);
    close(margin(&[0.9]), 0.9);
    let votes: Vec<String> = ["a", "a", "b", "c"].iter().map(|s| s.to_string()).collect();
    // shares 1/2, 1/4, 1/4: ln 2 / 2 + 2 · ln 4 / 4 = 1.5 ln 2
    close(vote_entropy(&votes), 1.5 * 2f64.ln());
    close(vote_entropy(&vec!["x".to_string(); 3]), 0.0);
    assert_eq!(top_b(&[0.1, 0.9, 0.5, 0.9], &[0, 7, 0, 3], 3), [3, 1, 2]);
}

#[test]
fn exposure_and_overlap_match_hand_computed_values() {
    close(exposure(1, 1024), 10.0);
    close(exposure(4, 1024), 8.0);
    close(exposure(1024, 1024), 0.0);
    close(exposure(500, 1000), 1.0);
    assert_eq!(
        rank_of(-1.0, &[-2.0, -0.5, -1.0, 0.0]),
        3,
        "ties do not count"
    );
    assert_eq!(rank_of(5.0, &[1.0, 2.0]), 1);
    // Shared trigrams: the cat sat / cat sat on / sat on the / on the mat; only one is private.
    close(
        ngram_overlap("The cat sat on the mat.", "a cat sat on a mat"),
        0.25,
    );
    close(ngram_overlap("too short", "too short"), 0.0);
    assert_eq!(
        social::parse_candidate(" What is 2 + 3? [/INST] 5</s>junk"),
        Some(("What is 2 + 3?".into(), "5".into()))
    );
    assert_eq!(social::parse_candidate(" 17 [INST] x"), None);
}

#[test]
fn answers_are_extracted_normalised_and_scored() {
    assert_eq!(extract_answer(" 56</s>[INST] more"), "56");
    assert_eq!(extract_answer("Step 1: 3 + 4 = 7.\nAnswer: 7\n"), "7");
    assert_eq!(extract_answer("[[Final Answer]]:\n$42$"), "$42$");
    assert_eq!(extract_answer("so #### 12 and Final answer: 13"), "13");
    assert_eq!(extract_answer("\n\n  c u k  \nrest"), "c u k");
    assert_eq!(normalize("$42$"), "42");
    assert_eq!(normalize(" 1,234. "), "1234");
    assert_eq!(normalize("-7.0"), "-7");
    assert_eq!(normalize("4, 25,  51"), "4, 25, 51");
    assert_eq!(normalize("\"Positive\"."), "positive");
    assert_eq!(normalize("12,34"), "12,34", "not a thousands grouping");
    let add = Task::new("add", "What is 2 + 2?".into(), "4".into());
    assert!(is_correct(&add, " 4</s>"));
    assert!(is_correct(&add, "2 + 2 = 4.\nAnswer: 4.0"));
    assert!(!is_correct(&add, "44"));
    let labels: Vec<String> = vec!["positive".into(), "negative".into()];
    let mut s = Task::new("sentiment", "Review: ...".into(), "positive".into());
    s.labels = Some(labels.clone());
    assert_eq!(
        extract_label("Positive.", &labels).as_deref(),
        Some("positive")
    );
    assert_eq!(
        extract_label("I think the review is positive overall", &labels).as_deref(),
        Some("positive")
    );
    assert_eq!(
        extract_label("positive or negative", &labels),
        None,
        "ambiguous"
    );
    assert!(is_correct(&s, "The review is positive."));
    assert!(!is_correct(&s, "negative"));
    // MAJ, MAX, SUM over (answer, LbT score).
    let pairs: Vec<(String, usize)> = [("5", 0), ("6", 3), ("5", 1), ("7", 3)]
        .iter()
        .map(|(a, s)| (a.to_string(), *s))
        .collect();
    assert_eq!(
        teach::select(&pairs),
        ("5".into(), "6".into(), "6".into()),
        "MAJ: 5 twice; MAX: 6 first with 3; SUM: 6 and 7 tie at 3, 6 seen first"
    );
}

#[test]
fn generators_are_deterministic_and_their_answers_check() {
    let a = tasks::generate("models", 64, 7).unwrap();
    assert_eq!(a, tasks::generate("models", 64, 7).unwrap());
    assert_ne!(a, tasks::generate("models", 64, 8).unwrap());
    let all = tasks::generate(
        "arith,insert,sentiment,parity,subject,add,sub,mul,cmp,sort,rev,count,seq",
        130,
        1,
    )
    .unwrap();
    for t in &all {
        assert!(is_correct(t, &t.answer), "{t:?}");
        if let Some(l) = &t.labels {
            assert!(l.contains(&t.answer), "{t:?}");
        }
        let nums: Vec<i64> = t
            .question
            .split(|c: char| !c.is_ascii_digit())
            .filter_map(|s| s.parse().ok())
            .collect();
        match t.topic() {
            "add" => assert_eq!(nums[0] + nums[1], t.answer.parse::<i64>().unwrap()),
            "mul" => assert_eq!(nums[0] * nums[1], t.answer.parse::<i64>().unwrap()),
            "insert" => {
                let cleaned: String = t
                    .question
                    .rsplit(' ')
                    .next()
                    .unwrap()
                    .chars()
                    .filter(|c| c.is_alphabetic())
                    .collect();
                assert_eq!(cleaned, t.answer);
            }
            _ => {}
        }
    }
    assert!(tasks::generate("nope", 3, 1).is_err());
    let t = tasks::read_tasks(&repo_path("data/tasks/eval.jsonl")).unwrap();
    assert_eq!(t.len(), 400);
    assert_eq!(t[0].topic(), "add", "`task` reads as the topic");
    let d = tmp("tasks");
    std::fs::create_dir_all(&d).unwrap();
    tasks::write_tasks(&d.join("t.jsonl"), &all).unwrap();
    assert_eq!(tasks::read_tasks(&d.join("t.jsonl")).unwrap(), all);
}

/// Sharing the prefix's KV cache changes how much is prefilled, not what is generated.
#[test]
fn shared_prefix_generation_matches_whole_prompts() {
    let e = embedded();
    let shots = vec![("What is 3 times 4?".to_string(), "12".to_string())];
    let qs = ["What is 7 times 8?", "Multiply 6 by 9.", "What is 12 * 3?"];
    let ids: Vec<Vec<u32>> = qs
        .iter()
        .map(|q| {
            e.tokenizer
                .encode_chat(&learner::messages(&shots, None, q), true)
                .unwrap()
        })
        .collect();
    let params: Vec<SamplingParams> = (0..3)
        .map(|i| SamplingParams {
            temperature: if i == 0 { 0.0 } else { 0.9 },
            seed: Some(i),
            max_tokens: 8,
            ..Default::default()
        })
        .collect();
    let (mut a, mut b) = (PrefillStats::default(), PrefillStats::default());
    let shared =
        learner::generate_shared(&Student::local(&e), &ids, &params, true, &mut a).unwrap();
    let whole =
        learner::generate_shared(&Student::local(&e), &ids, &params, false, &mut b).unwrap();
    for (x, y) in shared.iter().zip(&whole) {
        assert_eq!(x.text, y.text);
        assert!((x.nll - y.nll).abs() < 1e-3, "{} vs {}", x.nll, y.nll);
    }
    assert_eq!(a.prompt_tokens, b.prompt_tokens);
    assert_eq!(b.prefilled_tokens, b.prompt_tokens);
    let lcp = learner::shared_prefix_len(&ids);
    assert!(lcp > 5);
    assert_eq!(a.prefilled_tokens, a.prompt_tokens - 2 * lcp);
    let inline = learner::messages_in(learner::ContextFormat::Inline, &shots, None, "Q?");
    assert_eq!(inline.len(), 1);
    assert_eq!(inline[0].content, "What is 3 times 4? 12\nQ?");
    assert_eq!(
        learner::messages_in(learner::ContextFormat::Turns, &shots, None, "Q?").len(),
        3
    );
    // The engine's own generation agrees on the greedy request.
    let c = e
        .generate(&[moe::GenerateRequest::new(
            moe::Prompt::Tokens(ids[0].clone()),
            params[0].clone(),
        )])
        .unwrap();
    assert_eq!(c[0].text, shared[0].text);
    // Label probabilities are a distribution; the gate entropy is within [0, ln 4].
    let labels: Vec<String> = vec!["56".into(), "65".into()];
    let p = learner::label_probs(
        &Student::local(&e),
        &learner::messages(&[], None, qs[0]),
        &labels,
    )
    .unwrap();
    close(p.iter().sum::<f64>(), 1.0);
    let g = learner::gate_entropy(&Student::local(&e), &ids[0], 1).unwrap();
    assert!(g > 0.0 && g <= 4f64.ln() + 1e-9, "{g}");
}

fn active_cfg(out: PathBuf) -> active::ActiveConfig {
    active::ActiveConfig {
        out,
        pool: tasks::generate("mul,count,cmp", 18, 1).unwrap(),
        heldout: tasks::generate("mul,count,cmp", 12, 2).unwrap(),
        strategies: active::STRATEGIES.iter().map(|s| s.to_string()).collect(),
        rounds: 2,
        batch: 2,
        shots: 2,
        committee: 2,
        max_tokens: 8,
        seed: 3,
        resume: false,
        stop_after_strategies: None,
        context: Default::default(),
    }
}

#[test]
fn active_loop_runs_and_is_deterministic() {
    let e = embedded();
    let teacher = LocalClient { engine: e.clone() };
    let d1 = tmp("active1");
    let d2 = tmp("active2");
    let m = active::run(&teacher, &Student::local(&e), &[], &active_cfg(d1.clone())).unwrap();
    active::run(&teacher, &Student::local(&e), &[], &active_cfg(d2.clone())).unwrap();
    for f in ["curves.jsonl", "queries.jsonl"] {
        assert_eq!(read(&d1.join(f)), read(&d2.join(f)), "{f}");
    }
    assert_eq!(read(&d1.join("curves.jsonl")).lines().count(), 7 * 3);
    assert_eq!(read(&d1.join("queries.jsonl")).lines().count(), 7 * 2 * 2);
    for s in active::STRATEGIES {
        assert_eq!(m["strategies"][s]["curve"].as_array().unwrap().len(), 3);
        assert_eq!(m["strategies"][s]["curve"][2]["labels"], 4);
    }
    assert!(d1.join("manifest.json").exists());
    // A run stopped after two strategies and resumed gives the uninterrupted result.
    let d3 = tmp("active3");
    active::run(
        &teacher,
        &Student::local(&e),
        &[],
        &active::ActiveConfig {
            stop_after_strategies: Some(2),
            ..active_cfg(d3.clone())
        },
    )
    .unwrap();
    assert_eq!(read(&d3.join("curves.jsonl")).lines().count(), 2 * 3);
    let m3 = active::run(
        &teacher,
        &Student::local(&e),
        &[],
        &active::ActiveConfig {
            resume: true,
            ..active_cfg(d3.clone())
        },
    )
    .unwrap();
    for f in ["curves.jsonl", "queries.jsonl"] {
        assert_eq!(read(&d1.join(f)), read(&d3.join(f)), "{f}");
    }
    assert_eq!(m["strategies"], m3["strategies"]);
    // Each step's rate counts what this invocation ran: 7 × 2 rounds, then the 5 × 2 resumed.
    assert_eq!(m["steps"]["rounds"]["items"], 14);
    assert_eq!(m3["steps"]["rounds"]["items"], 10);
    assert!(m["steps"]["rounds"]["tokens"].as_u64().unwrap() > 0);
    // Different strategies ask for different items.
    let q = read(&d1.join("queries.jsonl"));
    let asked = |s: &str| -> Vec<u64> {
        q.lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .filter(|v| v["strategy"] == s)
            .map(|v| v["pool_index"].as_u64().unwrap())
            .collect()
    };
    assert_ne!(asked("random"), asked("nll"));
}

/// The annotator and the teacher behind `moe serve` give what they give in process.
#[test]
fn loops_with_the_teacher_behind_moe_serve() {
    let e = embedded();
    let h = start(
        vec![(
            "teacher".into(),
            Engine::load(&ModelSource::Embedded).unwrap(),
        )],
        ServerConfig {
            port: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let remote = HttpClient::new(&format!("{}/v1", h.url()), "teacher").unwrap();
    let here = LocalClient { engine: e.clone() };
    let mk = |out| active::ActiveConfig {
        strategies: vec!["nll".into(), "gate".into()],
        ..active_cfg(out)
    };
    let (d1, d2) = (tmp("active-http"), tmp("active-local"));
    active::run(&remote, &Student::local(&e), &[], &mk(d1.clone())).unwrap();
    active::run(&here, &Student::local(&e), &[], &mk(d2.clone())).unwrap();
    assert_eq!(
        read(&d1.join("queries.jsonl")),
        read(&d2.join("queries.jsonl"))
    );
    assert_eq!(
        read(&d1.join("curves.jsonl")),
        read(&d2.join("curves.jsonl"))
    );
    // Seeded teacher samples over HTTP are the ones sampled in process.
    let (d3, d4) = (tmp("teach-http"), tmp("teach-local"));
    let cfg = |out| teach::TeachConfig {
        teach_problems: 2,
        rounds: 0,
        ..teach_cfg(out)
    };
    teach::run(&remote, &Student::local(&e), &cfg(d3.clone())).unwrap();
    teach::run(&here, &Student::local(&e), &cfg(d4.clone())).unwrap();
    assert_eq!(
        read(&d3.join("rationales.jsonl")),
        read(&d4.join("rationales.jsonl"))
    );
    // Social learning's teachers over HTTP: token-id prompts, logprobs, chat.
    let (d5, d6) = (tmp("social-http"), tmp("social-local"));
    let m5 = social::run(&remote, &Student::local(&e), &social_cfg(d5.clone())).unwrap();
    let m6 = social::run(&here, &Student::local(&e), &social_cfg(d6.clone())).unwrap();
    assert_eq!(
        read(&d5.join("shared.jsonl")),
        read(&d6.join("shared.jsonl"))
    );
    assert_eq!(m5["modes"], m6["modes"]);
    h.shutdown();
}

fn teach_cfg(out: PathBuf) -> teach::TeachConfig {
    teach::TeachConfig {
        out,
        pool: tasks::generate("mul,rev", 30, 4).unwrap(),
        heldout: tasks::generate("mul,rev", 8, 5).unwrap(),
        teach_problems: 3,
        rationales: 3,
        exam_problems: 2,
        repeats: 2,
        teacher_temperature: 0.7,
        teacher_top_k: 20,
        exam_temperature: 0.7,
        max_tokens: 8,
        style: Style::Plain,
        share_prefix: true,
        rounds: 1,
        seed: 9,
        resume: false,
        context: Default::default(),
        prefill: None,
    }
}

#[test]
fn teach_loop_runs_is_deterministic_and_resumes() {
    let e = embedded();
    let teacher = LocalClient { engine: e.clone() };
    let (d1, d2, d3) = (tmp("teach1"), tmp("teach2"), tmp("teach3"));
    let m = teach::run(&teacher, &Student::local(&e), &teach_cfg(d1.clone())).unwrap();
    teach::run(&teacher, &Student::local(&e), &teach_cfg(d2.clone())).unwrap();
    for f in ["problems.jsonl", "rationales.jsonl", "rounds.jsonl"] {
        assert_eq!(read(&d1.join(f)), read(&d2.join(f)), "{f}");
    }
    assert_eq!(read(&d1.join("problems.jsonl")).lines().count(), 3);
    assert_eq!(read(&d1.join("rationales.jsonl")).lines().count(), 9);
    assert_eq!(read(&d1.join("rounds.jsonl")).lines().count(), 2);
    for rule in ["maj", "max", "sum"] {
        let a = m["selection_accuracy"][rule].as_f64().unwrap();
        assert!((0.0..=1.0).contains(&a));
    }
    assert_eq!(m["steps"]["problems"]["items"], 3);
    assert_eq!(m["steps"]["adaptive"]["items"], 2);
    assert!(m["steps"]["problems"]["seconds"].as_f64().unwrap() > 0.0);
    let pc = &m["prefix_cache"]["student"];
    assert!(pc["saved_tokens"].as_u64().unwrap() > 0, "{pc}");
    // Without the cache: the same answers, every prompt token prefilled.
    let d4 = tmp("teach4");
    let m4 = teach::run(
        &teacher,
        &Student::local(&e),
        &teach::TeachConfig {
            share_prefix: false,
            ..teach_cfg(d4.clone())
        },
    )
    .unwrap();
    assert_eq!(
        read(&d1.join("problems.jsonl")),
        read(&d4.join("problems.jsonl"))
    );
    assert_eq!(m4["prefix_cache"]["student"]["saved_tokens"], 0);
    let d5 = tmp("teach5");
    let m5 = teach::run(
        &teacher,
        &Student::local(&e),
        &teach::TeachConfig {
            context: learner::ContextFormat::Inline,
            teach_problems: 1,
            prefill: Some("The answer is".into()),
            ..teach_cfg(d5.clone())
        },
    )
    .unwrap();
    assert_eq!(m5["context"], "inline");
    assert_eq!(m5["prefill"], "The answer is");
    // A run killed in its second problem (one problem done, part of the next's rationales and a
    // torn line written, a stale rounds file) resumed writes the files of an uninterrupted run.
    std::fs::create_dir_all(&d3).unwrap();
    let first = read(&d1.join("problems.jsonl"))
        .lines()
        .next()
        .unwrap()
        .to_string();
    std::fs::write(d3.join("problems.jsonl"), first + "\n").unwrap();
    let rationales = read(&d1.join("rationales.jsonl"));
    let partial: Vec<&str> = rationales.lines().take(4).collect();
    assert!(partial[3].contains("\"index\":1"), "{}", partial[3]);
    std::fs::write(
        d3.join("rationales.jsonl"),
        partial.join("\n") + "\n" + &partial[3][..30],
    )
    .unwrap();
    std::fs::write(d3.join("rounds.jsonl"), "{\"round\": 0}\n").unwrap();
    teach::run(
        &teacher,
        &Student::local(&e),
        &teach::TeachConfig {
            resume: true,
            ..teach_cfg(d3.clone())
        },
    )
    .unwrap();
    for f in ["problems.jsonl", "rationales.jsonl", "rounds.jsonl"] {
        assert_eq!(read(&d1.join(f)), read(&d3.join(f)), "{f}");
    }
}

fn social_cfg(out: PathBuf) -> social::SocialConfig {
    social::SocialConfig {
        out,
        data: tasks::generate("mul", 14, 6).unwrap(),
        fresh: tasks::generate("mul", 6, 7).unwrap(),
        test: tasks::generate("mul", 10, 8).unwrap(),
        teachers: 3,
        private_per_teacher: 4,
        shared: 2,
        n_gen: 3,
        samples: 3,
        keep: 2,
        temperature: 0.7,
        canary_candidates: 64,
        canaries: 2,
        max_tokens: 16,
        seed: 11,
        context: Default::default(),
        resume: false,
        stop_after_steps: None,
    }
}

#[test]
fn social_loop_runs_and_is_deterministic() {
    let e = embedded();
    let teacher = LocalClient { engine: e.clone() };
    let (d1, d2) = (tmp("social1"), tmp("social2"));
    let m1 = social::run(&teacher, &Student::local(&e), &social_cfg(d1.clone())).unwrap();
    let m2 = social::run(&teacher, &Student::local(&e), &social_cfg(d2.clone())).unwrap();
    assert_eq!(
        read(&d1.join("shared.jsonl")),
        read(&d2.join("shared.jsonl"))
    );
    assert_eq!(m1["modes"], m2["modes"]);
    assert_eq!(m1["steps"]["teachers"]["items"], 2 * 3 + 3);
    assert_eq!(m1["steps"]["student"]["items"], 8 + 2);
    for mode in [
        "none",
        "private",
        "synthetic",
        "relabel",
        "instruction",
        "canary_in_context",
    ] {
        let x = &m1["modes"][mode];
        let ranks = x["exposure"]["ranks"].as_array().unwrap();
        assert_eq!(ranks.len(), 2);
        for r in ranks {
            assert!((1..=64).contains(&r.as_u64().unwrap()), "{mode}: {x}");
        }
        assert!(x["accuracy"]["all"].as_f64().is_some());
    }
    assert!(m1["modes"]["vote_relabel"]["accuracy"]["all"]
        .as_f64()
        .is_some());
    assert_eq!(m1["modes"]["relabel"]["shared_examples"], 2);
    assert_eq!(m1["modes"]["relabel_voted"]["shared_examples"], 2);
    assert_eq!(m1["modes"]["private"]["shared_examples"], 2);
    assert!(social::run(
        &teacher,
        &Student::local(&e),
        &social::SocialConfig {
            data: vec![],
            ..social_cfg(tmp("social3"))
        }
    )
    .is_err()); // Stopped after each of several steps (teachers' sharing, the voted picks, a mode, a vote)
                // and resumed, a run writes the files of an uninterrupted one.
    let steps = |d: &Path| read(&d.join("state.jsonl")).lines().count() - 1;
    let total = steps(&d1);
    assert_eq!(
        total,
        2 * 3 + 3 + 8 + 2,
        "teachers, instruction, voted picks, modes, votes"
    );
    let d4 = tmp("social4");
    let mut slices = 0;
    loop {
        let v = social::run(
            &teacher,
            &Student::local(&e),
            &social::SocialConfig {
                resume: true,
                stop_after_steps: Some(4),
                ..social_cfg(d4.clone())
            },
        )
        .unwrap();
        slices += 1;
        if v["complete"] == false {
            assert_eq!(steps(&d4), (4 * slices).min(total));
            assert!(!d4.join("manifest.json").exists());
            continue;
        }
        break;
    }
    assert_eq!(slices, total.div_ceil(4) + usize::from(total % 4 == 0));
    for f in ["shared.jsonl", "state.jsonl"] {
        assert_eq!(read(&d1.join(f)), read(&d4.join(f)), "{f}");
    }
    // Both manifests read back the same way (parsing may move a float's last digit).
    let manifest = |d: &Path| -> serde_json::Value {
        serde_json::from_str(&read(&d.join("manifest.json"))).unwrap()
    };
    let (m1, m4) = (manifest(&d1), manifest(&d4));
    assert_eq!(m4["modes"], m1["modes"]);
    assert_eq!(m4["resumed_steps"], 4 * (slices - 1));
    assert_eq!(m4["instruction"], m1["instruction"]);
    assert_eq!(m4["synthetic_candidates"], m1["synthetic_candidates"]);
    // A torn last line (a killed run) is redone; other settings are refused.
    let state = read(&d4.join("state.jsonl"));
    let cut = state.trim_end().rfind('\n').unwrap() + 20;
    std::fs::write(d4.join("state.jsonl"), &state[..cut]).unwrap();
    social::run(
        &teacher,
        &Student::local(&e),
        &social::SocialConfig {
            resume: true,
            ..social_cfg(d4.clone())
        },
    )
    .unwrap();
    assert_eq!(
        read(&d1.join("shared.jsonl")),
        read(&d4.join("shared.jsonl"))
    );
    assert_eq!(read(&d1.join("state.jsonl")), read(&d4.join("state.jsonl")));
    let err = social::run(
        &teacher,
        &Student::local(&e),
        &social::SocialConfig {
            resume: true,
            seed: 12,
            ..social_cfg(d4.clone())
        },
    )
    .unwrap_err();
    assert!(err.to_string().contains("other settings"), "{err}");
}

/// Relative error `|a − b| / max(|a|, |b|)` (0 when both are 0).
fn rel_err(a: f32, b: f32) -> f32 {
    let m = a.abs().max(b.abs());
    if m == 0.0 {
        0.0
    } else {
        (a - b).abs() / m
    }
}

/// Continuation scores over HTTP are the in-process ones token by token, including continuations
/// whose first token merges with the prompt's last, and prompts holding special tokens.
#[test]
fn http_scores_match_in_process_token_by_token() {
    use moe::loops::client::ModelClient;
    let e = embedded();
    let h = start(
        vec![(
            "student".into(),
            Engine::load(&ModelSource::Embedded).unwrap(),
        )],
        ServerConfig {
            port: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let url = format!("{}/v1", h.url());
    let remote = HttpClient::new(&url, "student").unwrap();
    let here = LocalClient { engine: e.clone() };
    let cases: Vec<(&str, Vec<&str>)> = vec![
        // `blu` + `e`, `wor` + `ld`: the boundary token changes when the two are tokenised whole.
        (
            "I like the colour of the blu",
            vec!["e sky", "ish sea", " whale", "ebird"],
        ),
        ("Hello wor", vec!["ld", "m", "ds of wisdom", " peace"]),
        // A chat prompt: `</s>` is a special token, left out of the decoded text the server's
        // text offsets index.
        (
            "[INST] What is 7 times 8? [/INST] 56</s>[INST] What is 6 times 9? [/INST]",
            vec![" 54</s>", " 45</s>", "54", " fifty-four</s>"],
        ),
    ];
    let mut worst = 0f32;
    for (prompt, conts) in &cases {
        let conts: Vec<String> = conts.iter().map(|c| c.to_string()).collect();
        let a = remote.score_tokens(prompt, &conts).unwrap();
        let b = here.score_tokens(prompt, &conts).unwrap();
        assert_eq!(a.len(), conts.len());
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.token_ids, y.token_ids, "{prompt:?}");
            assert_eq!(x.logprobs.len(), y.logprobs.len());
            for (i, (&p, &q)) in x.logprobs.iter().zip(&y.logprobs).enumerate() {
                let r = rel_err(p, q);
                worst = worst.max(r);
                assert!(
                    r <= 1e-5,
                    "{prompt:?} token {i}: HTTP {p} vs in process {q}"
                );
            }
            assert!(
                (x.total - y.total).abs() <= 1e-5 * y.total.abs().max(1.0),
                "{} vs {}",
                x.total,
                y.total
            );
        }
        let totals = remote.score(prompt, &conts).unwrap();
        for (t, y) in totals.iter().zip(&b) {
            assert!((t - y.total).abs() <= 1e-5 * y.total.abs().max(1.0));
        }
    }
    println!("largest relative error of a token logprob: {worst:e}");
    // Why text offsets cannot split prompt and continuation: the offset of the first token
    // after a `</s>` is not its byte position in the prompt text.
    let (prompt, _) = &cases[2];
    let v: serde_json::Value = reqwest::blocking::Client::new()
        .post(format!("{url}/completions"))
        .json(
            &serde_json::json!({"model": "student", "prompt": prompt, "max_tokens": 0,
                                  "echo": true, "logprobs": 0}),
        )
        .send()
        .unwrap()
        .json()
        .unwrap();
    let offsets: Vec<u64> = v["choices"][0]["logprobs"]["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    let ids = e.tokenizer.encode(prompt, true).unwrap();
    let after_eos = ids.iter().position(|&t| t == 2).unwrap() + 1;
    let byte = prompt.find("</s>").unwrap() + "</s>".len();
    assert_ne!(offsets[after_eos] as usize, byte, "{offsets:?}");
    h.shutdown();
}

/// Every loop with the student behind `moe serve` gives what it gives with the student in
/// process (greedy and seeded sampling, scores by token ids); what an endpoint cannot give is a
/// typed error.
#[test]
fn loops_with_the_student_behind_moe_serve() {
    let e = embedded();
    let h = start(
        vec![(
            "student".into(),
            Engine::load(&ModelSource::Embedded).unwrap(),
        )],
        ServerConfig {
            port: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let client = HttpClient::new(&format!("{}/v1", h.url()), "student").unwrap();
    let remote = Student::remote(&e, &client);
    let local = Student::local(&e);
    let teacher = LocalClient { engine: e.clone() };

    // Active learning: every strategy but `gate` asks for the same items and gets the same curve.
    let mk = |out| active::ActiveConfig {
        strategies: [
            "random",
            "least_confidence",
            "margin",
            "entropy",
            "nll",
            "committee",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect(),
        ..active_cfg(out)
    };
    let (d1, d2) = (tmp("student-http-active"), tmp("student-local-active"));
    let m1 = active::run(&teacher, &remote, &[], &mk(d1.clone())).unwrap();
    let m2 = active::run(&teacher, &local, &[], &mk(d2.clone())).unwrap();
    assert_eq!(m1["strategies"], m2["strategies"]);
    assert_eq!(
        read(&d1.join("curves.jsonl")),
        read(&d2.join("curves.jsonl"))
    );
    let lines = |d: &Path| -> Vec<serde_json::Value> {
        read(&d.join("queries.jsonl"))
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let (q1, q2) = (lines(&d1), lines(&d2));
    assert_eq!(q1.len(), 6 * 2 * 2);
    assert_eq!(q1.len(), q2.len());
    for (a, b) in q1.iter().zip(&q2) {
        // The entropy of the whole distribution is summed in another order over HTTP (the
        // alternatives come sorted), so it may differ in its last bits.
        let (x, y) = (
            a["uncertainty"].as_f64().unwrap(),
            b["uncertainty"].as_f64().unwrap(),
        );
        assert!((x - y).abs() <= 1e-9 * x.abs().max(y.abs()), "{a} vs {b}");
        let strip = |v: &serde_json::Value| {
            let mut v = v.clone();
            v["uncertainty"] = serde_json::Value::Null;
            v
        };
        assert_eq!(strip(a), strip(b));
    }
    assert_eq!(
        m1["student_prefill"]["saved_tokens"], 0,
        "nothing shared over HTTP"
    );
    assert!(m2["student_prefill"]["saved_tokens"].as_u64().unwrap() > 0);
    assert!(m1["student"]
        .as_str()
        .unwrap()
        .contains("student at http://"));
    // The gate entropy needs router logits: refused before any work, naming the strategy.
    let d = tmp("student-http-gate");
    let err = active::run(
        &teacher,
        &remote,
        &[],
        &active::ActiveConfig {
            strategies: vec!["random".into(), "gate".into()],
            ..active_cfg(d.clone())
        },
    )
    .unwrap_err();
    assert!(
        matches!(err, moe::Error::FeatureUnavailable { .. }) && err.to_string().contains("`gate`"),
        "{err}"
    );
    assert!(!d.join("curves.jsonl").exists(), "nothing ran");

    // Learning by teaching: the same exams, seeded samples and selections.
    let (d3, d4) = (tmp("student-http-teach"), tmp("student-local-teach"));
    let m3 = teach::run(&teacher, &remote, &teach_cfg(d3.clone())).unwrap();
    let m4 = teach::run(&teacher, &local, &teach_cfg(d4.clone())).unwrap();
    for f in ["problems.jsonl", "rationales.jsonl", "rounds.jsonl"] {
        assert_eq!(read(&d3.join(f)), read(&d4.join(f)), "{f}");
    }
    assert_eq!(m3["selection_accuracy"], m4["selection_accuracy"]);
    assert_eq!(m3["prefix_cache"]["student"]["saved_tokens"], 0);

    // Social learning: the same answers, and the same canary ranks from scores by token ids.
    let (d5, d6) = (tmp("student-http-social"), tmp("student-local-social"));
    let m5 = social::run(&teacher, &remote, &social_cfg(d5.clone())).unwrap();
    let m6 = social::run(&teacher, &local, &social_cfg(d6.clone())).unwrap();
    assert_eq!(
        read(&d5.join("shared.jsonl")),
        read(&d6.join("shared.jsonl"))
    );
    assert_eq!(m5["modes"], m6["modes"]);
    h.shutdown();
}
