//! The loop runtime: the teacher/student client in process and over HTTP against `moe serve`,
//! distillation rows against the golden logits, divergences, vocabulary checks.

use moe::engine::{Engine, ModelSource};
use moe::generate::{GenerateRequest, Prompt};
use moe::loops::client::{HttpClient, LocalClient, ModelClient};
use moe::loops::distill::{self, Record};
use moe::sampling::SamplingParams;
use moe::server::{start, ServerConfig};
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
