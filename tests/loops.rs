//! The loop runtime: the teacher/student client in process and over HTTP against `moe serve`,
//! distillation rows against the golden logits, divergences, vocabulary checks.

use moe::engine::{Engine, ModelSource};
use moe::generate::{GenerateRequest, Prompt};
use moe::loops::client::{HttpClient, LocalClient, ModelClient};
use moe::loops::distill::{self, Record};
use moe::sampling::SamplingParams;
use moe::server::{start, ServerConfig};
use moe_tests::python::{python, python_has};
use moe_tests::{assert_close, fixture, repo_path, Golden, Tol};
use std::sync::Arc;

fn log_sum_exp(l: &[f32]) -> f64 {
    let m = l.iter().cloned().fold(f32::MIN, f32::max) as f64;
    m + l.iter().map(|&x| (x as f64 - m).exp()).sum::<f64>().ln()
}

fn local(source: ModelSource) -> LocalClient {
    LocalClient {
        engine: Arc::new(Engine::load(&source).unwrap()),
    }
}

/// Every top-k value of a distillation row equals log_softmax of transformers' logits.
#[test]
fn distill_rows_match_the_golden_logits() {
    let teacher = local(ModelSource::Dir(fixture("mixtral-tiny-f32")));
    let g = Golden::load("mixtral-tiny-f32");
    let ids: Vec<u32> = g.get("p0.input_ids").i.iter().map(|&x| x as u32).collect();
    let logits = g.get("p0.logits").f;
    let v = 32000;
    let k = 50;
    let row = distill::distill_row(&teacher, &ids, k).unwrap();
    assert_eq!(row.input_ids, ids);
    for t in 0..ids.len() {
        let l = &logits[t * v..(t + 1) * v];
        let lse = log_sum_exp(l);
        let want: Vec<f32> = row.token_ids[t]
            .iter()
            .map(|&id| (l[id as usize] as f64 - lse) as f32)
            .collect();
        assert_close(
            &format!("position {t} top-{k}"),
            &row.top_values[t],
            &want,
            Tol {
                abs: 1e-4,
                rel: 0.0,
            },
        );
        let mut sorted: Vec<f32> = l.to_vec();
        sorted.sort_by(|a, b| b.total_cmp(a));
        let kth = (sorted[k - 1] as f64 - lse) as f32;
        assert!(
            (row.top_values[t][k - 1] - kth).abs() < 1e-4,
            "position {t}: the k-th value is not the k-th largest"
        );
        if t > 0 {
            let p = &logits[(t - 1) * v..t * v];
            let want = p[ids[t] as usize] as f64 - log_sum_exp(p);
            assert!((row.token_logprobs[t].unwrap() as f64 - want).abs() < 1e-4);
        }
    }
}

#[test]
fn a_model_against_itself_diverges_by_zero_and_vocabularies_are_checked() {
    let student = Engine::load(&ModelSource::Embedded).unwrap();
    let twin = Engine::load(&ModelSource::Embedded).unwrap();
    let rec = Record {
        text: None,
        messages: None,
        question: Some("What is 2 plus 2?".into()),
        answer: Some("4".into()),
        task: Some("add".into()),
    };
    let data = vec![distill::tokenise(&student, &rec).unwrap()];
    let d = distill::evaluate(&student, &twin, &data, 0.5).unwrap();
    assert_eq!(
        d[0].positions, 3,
        "the answer ` 4</s>` is predicted at 3 positions"
    );
    let m = d[0].mean;
    assert!(
        m.forward_kl.abs() < 1e-9
            && m.reverse_kl.abs() < 1e-9
            && m.jsd.abs() < 1e-9
            && m.tvd.abs() < 1e-9
            && m.top1_agree == 1.0
    );
    let small = Engine::load(&ModelSource::Dir(fixture("mixtral-small-f32"))).unwrap();
    let e = distill::evaluate(&small, &student, &data, 0.5)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("512") && e.contains("32000") && e.contains("same tokenizer"),
        "{e}"
    );
}

/// The teacher behind `moe serve` answers like the teacher in process.
#[test]
fn http_client_agrees_with_the_local_client() {
    let teacher_dir = repo_path("models/moe-teacher-tiny");
    let h = start(
        vec![(
            "teacher".into(),
            Engine::load(&ModelSource::Dir(teacher_dir.clone())).unwrap(),
        )],
        ServerConfig {
            port: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let remote = HttpClient::new(&format!("{}/v1", h.url()), "teacher").unwrap();
    let here = local(ModelSource::Dir(teacher_dir));
    assert_eq!(remote.capabilities().context_length, Some(512));

    let ids = here
        .engine
        .tokenizer
        .encode("[INST] What is 7 times 8? [/INST] 56", true)
        .unwrap();
    let a = here
        .prompt_logprobs(&Prompt::Tokens(ids.clone()), 5)
        .unwrap();
    let b = remote
        .prompt_logprobs(&Prompt::Tokens(ids.clone()), 5)
        .unwrap();
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.token_id, y.token_id);
        assert_eq!(x.logprob.is_some(), y.logprob.is_some());
        if let (Some(p), Some(q)) = (x.logprob, y.logprob) {
            assert!((p - q).abs() < 1e-5);
        }
        if x.position + 1 < a.len() {
            let ids_x: Vec<u32> = x.top_logprobs.iter().map(|t| t.token_id).collect();
            let ids_y: Vec<u32> = y.top_logprobs.iter().map(|t| t.token_id).collect();
            assert_eq!(ids_x, ids_y, "position {}", x.position);
        }
    }
    let q = vec![moe::ChatMessage::user("What is 24 plus 17?")];
    let params = SamplingParams {
        temperature: 0.8,
        seed: Some(5),
        max_tokens: 6,
        top_logprobs: 3,
        ..Default::default()
    };
    let ra = here
        .generate(&[GenerateRequest::new(
            Prompt::Chat(q.clone()),
            params.clone(),
        )])
        .unwrap();
    let rb = remote
        .generate(&[GenerateRequest::new(Prompt::Chat(q), params)])
        .unwrap();
    assert_eq!(ra[0].text, rb[0].text);
    assert_eq!(ra[0].token_ids, rb[0].token_ids);
    let sa = here
        .score(
            "[INST] What is 24 plus 17? [/INST]",
            &[" 41".into(), " 14".into()],
        )
        .unwrap();
    let sb = remote
        .score(
            "[INST] What is 24 plus 17? [/INST]",
            &[" 41".into(), " 14".into()],
        )
        .unwrap();
    for (x, y) in sa.iter().zip(&sb) {
        assert!((x - y).abs() < 1e-4, "{sa:?} vs {sb:?}");
    }
    assert!(sa[0] > sa[1]);
    let unknown = HttpClient::new(&format!("{}/v1", h.url()), "nope").unwrap();
    let e = unknown
        .prompt_logprobs(&Prompt::Tokens(ids), 2)
        .unwrap_err()
        .to_string();
    assert!(e.contains("404") && e.contains("nope"), "{e}");
    h.shutdown();
}

fn distill_data(engine: &Engine) -> Vec<distill::Tokenised> {
    let texts = [
        "The quick brown fox jumps over the lazy dog.",
        "What is 7 times 8?",
        "a",
        "Seventeen plus twenty-five is forty-two, and that is the answer.",
        "Hello world",
    ];
    texts
        .iter()
        .map(|t| {
            let rec = Record {
                text: Some(t.to_string()),
                messages: None,
                question: None,
                answer: None,
                task: None,
            };
            distill::tokenise(engine, &rec).unwrap()
        })
        .collect()
}

fn distill_cfg(tag: &str) -> distill::DistillConfig {
    let out = std::env::temp_dir().join(format!("moe-distill-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&out);
    distill::DistillConfig {
        out,
        top_k: 7,
        format: distill::ShardFormat::Both,
        shard_rows: 2,
        resume: false,
        stop_after_shards: None,
    }
}

/// Shards of N rows as parquet and JSONL; a run interrupted after one shard and resumed writes
/// byte-identical shards; a resume with other options is refused; every parquet value, read
/// back by pyarrow, equals the JSONL value of the same run.
#[test]
fn distill_shards_resume_and_read_back_with_pyarrow() {
    let teacher = local(ModelSource::Dir(repo_path("models/moe-teacher-tiny")));
    let data = distill_data(&teacher.engine);
    let full = distill_cfg("full");
    let s = distill::run(&teacher, &data, &full).unwrap();
    let names = [
        "distill-00000.parquet",
        "distill-00000.jsonl",
        "distill-00001.parquet",
        "distill-00001.jsonl",
        "distill-00002.parquet",
        "distill-00002.jsonl",
    ];
    assert_eq!(s["shards"], serde_json::json!(names));
    assert_eq!(s["rows_done"], 5);
    let rows: Vec<distill::DistillRow> = (0..3)
        .flat_map(|i| {
            std::fs::read_to_string(full.out.join(format!("distill-{i:05}.jsonl")))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(rows.len(), 5);
    for (r, d) in rows.iter().zip(&data) {
        assert_eq!(r.input_ids, d.ids);
        assert_eq!(r.token_ids.len(), d.ids.len());
        assert!(r.token_ids.iter().all(|t| t.len() == 7));
    }
    assert!(s["step"]["tokens"].as_u64().unwrap() > 0);

    let mut cut = distill_cfg("cut");
    cut.stop_after_shards = Some(1);
    let p = distill::run(&teacher, &data, &cut).unwrap();
    assert_eq!(
        (p["paused"].as_bool(), p["rows_done"].as_u64()),
        (Some(true), Some(2))
    );
    assert!(!cut.out.join("distill-00001.parquet").exists());
    let mut other = cut.clone();
    other.resume = true;
    other.top_k = 5;
    let e = distill::run(&teacher, &data, &other)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("cannot resume") && e.contains("--top-k 7"),
        "{e}"
    );
    cut.stop_after_shards = None;
    cut.resume = true;
    let r = distill::run(&teacher, &data, &cut).unwrap();
    assert_eq!(r["resumed_from_row"], 2);
    assert_eq!(r["shards"], s["shards"]);
    for n in names {
        assert_eq!(
            std::fs::read(full.out.join(n)).unwrap(),
            std::fs::read(cut.out.join(n)).unwrap(),
            "{n} differs after resuming"
        );
    }

    if !python_has("pyarrow") {
        return;
    }
    // pyarrow reads every shard; its values are compared exactly (0 tolerance: the same f32
    // stored in two formats) with the JSONL rows.
    let script = r#"
import json, sys, pyarrow.parquet as pq
out = []
for path in sys.argv[1:]:
    t = pq.read_table(path)
    out.append({"schema": [f"{f.name}: {f.type}" for f in t.schema], "rows": t.to_pylist()})
print(json.dumps(out))
"#;
    let paths: Vec<String> = (0..3)
        .map(|i| {
            full.out
                .join(format!("distill-{i:05}.parquet"))
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    let o = std::process::Command::new(python())
        .arg("-c")
        .arg(script)
        .args(&paths)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let shards: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
    let mut read_rows = vec![];
    for sh in &shards {
        let schema: Vec<&str> = sh["schema"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        assert_eq!(
            schema,
            [
                "input_ids: list<element: int64 not null>",
                "token_ids: list<element: list<element: int64 not null> not null>",
                "top_values: list<element: list<element: float not null> not null>",
            ]
        );
        read_rows.extend(sh["rows"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(read_rows.len(), rows.len());
    let mut checked = 0;
    for (got, want) in read_rows.iter().zip(&rows) {
        let ids: Vec<u32> = serde_json::from_value(got["input_ids"].clone()).unwrap();
        assert_eq!(ids, want.input_ids);
        let tok: Vec<Vec<u32>> = serde_json::from_value(got["token_ids"].clone()).unwrap();
        assert_eq!(tok, want.token_ids);
        let val: Vec<Vec<f64>> = serde_json::from_value(got["top_values"].clone()).unwrap();
        assert_eq!(val.len(), want.top_values.len());
        for (a, b) in val.iter().zip(&want.top_values) {
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(b) {
                assert_eq!(*x as f32, *y, "pyarrow read {x}, JSONL holds {y}");
                checked += 1;
            }
        }
    }
    assert_eq!(
        checked,
        rows.iter().map(|r| r.input_ids.len() * 7).sum::<usize>()
    );
}

/// The loops' local models on a CUDA device (skipped where there is none): the teacher as a
/// `LocalClient<CudaBackend>`, the divergence evaluation with both models there and with the
/// student on the CPU beside a teacher on the GPU, and a student's generation with a shared
/// prefix, against the same on the CPU. The tiny checkpoints are bf16, which CUDA's tensor-core
/// kernels round activations to, so values agree within bf16 rounding, not bit for bit.
#[test]
fn loops_run_on_cuda_like_on_the_cpu() {
    use moe::loops::learner::{self, PrefillStats, Student};
    use moe::tokenizer::ChatMessage;
    let (teacher_dir, student_dir) = (
        ModelSource::Dir(repo_path("models/moe-teacher-tiny")),
        ModelSource::Dir(repo_path("models/moe-student-tiny")),
    );
    let Some(b) = moe_tests::cuda_or_skip() else {
        return;
    };
    let gpu_teacher = Engine::load_with(&teacher_dir, b, Default::default()).unwrap();
    let gpu_student = Engine::load_with(
        &student_dir,
        moe::CudaBackend::new(0).unwrap(),
        Default::default(),
    )
    .unwrap();
    let cpu_teacher = Engine::load(&teacher_dir).unwrap();
    let cpu_student = Engine::load(&student_dir).unwrap();
    let close = |a: f64, b: f64, what: &str| {
        assert!(
            (a - b).abs() <= 0.05 + 0.05 * a.abs().max(b.abs()),
            "{what}: cuda {a} vs cpu {b}"
        );
    };

    let data: Vec<distill::Tokenised> = [("What is 12 plus 30?", "42"), ("Sort: c a b", "a b c")]
        .iter()
        .map(|(q, a)| {
            let r = Record {
                text: None,
                messages: None,
                question: Some(q.to_string()),
                answer: Some(a.to_string()),
                task: None,
            };
            distill::tokenise(&gpu_teacher, &r).unwrap()
        })
        .collect();
    let on_gpu = distill::evaluate(&gpu_teacher, &gpu_student, &data, 0.5).unwrap();
    let mixed = distill::evaluate(&gpu_teacher, &cpu_student, &data, 0.5).unwrap();
    let on_cpu = distill::evaluate(&cpu_teacher, &cpu_student, &data, 0.5).unwrap();
    for ((g, m), c) in on_gpu.iter().zip(&mixed).zip(&on_cpu) {
        assert_eq!((g.positions, m.positions), (c.positions, c.positions));
        for d in [g, m] {
            close(d.mean.forward_kl, c.mean.forward_kl, "forward KL");
            close(d.mean.jsd, c.mean.jsd, "JSD");
            close(d.mean.tvd, c.mean.tvd, "TVD");
        }
    }

    let gpu_client = LocalClient {
        engine: Arc::new(gpu_teacher),
    };
    let cpu_client = LocalClient {
        engine: Arc::new(cpu_teacher),
    };
    let (g, c) = (
        distill::distill_row(&gpu_client, &data[0].ids, 4).unwrap(),
        distill::distill_row(&cpu_client, &data[0].ids, 4).unwrap(),
    );
    assert_eq!(g.input_ids, c.input_ids);
    for (a, b) in g.token_logprobs.iter().zip(&c.token_logprobs).skip(1) {
        close(a.unwrap() as f64, b.unwrap() as f64, "token logprob");
    }

    let prompts: Vec<Vec<ChatMessage>> = ["What is 2 plus 3?", "What is 7 plus 1?"]
        .iter()
        .map(|q| learner::messages(&[("What is 1 plus 1?".into(), "2".into())], None, q))
        .collect();
    let (mut sg, mut sc) = (PrefillStats::default(), PrefillStats::default());
    let ag = learner::greedy(&Student::local(&gpu_student), &prompts, 8, true, &mut sg).unwrap();
    let ac = learner::greedy(&Student::local(&cpu_student), &prompts, 8, true, &mut sc).unwrap();
    assert!(sg.prefilled_tokens < sg.prompt_tokens, "{sg:?}");
    assert_eq!(sg.prefilled_tokens, sc.prefilled_tokens);
    for (a, b) in ag.iter().zip(&ac) {
        assert!(a.tokens > 0);
        close(a.nll, b.nll, "answer nll");
    }
    let ids = gpu_student
        .tokenizer
        .encode_chat(&prompts[0], true)
        .unwrap();
    close(
        learner::gate_entropy(&Student::local(&gpu_student), &ids, 1).unwrap(),
        learner::gate_entropy(&Student::local(&cpu_student), &ids, 1).unwrap(),
        "gate entropy",
    );
}
