//! `moe serve` over real HTTP (reqwest): both endpoints, streaming, logprobs, seeds, metrics and
//! statistics; every kind of bad request answered 4xx with an OpenAI-style error while the server
//! keeps serving; a client that disconnects mid-stream.

use moe::engine::{Engine, ModelSource};
use moe::server::{start, ServerConfig, ServerHandle};
use moe_tests::fixture;
use serde_json::{json, Value};
use std::io::{BufRead, BufReader, Read, Write};
use std::sync::OnceLock;

fn server() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    static HANDLE: OnceLock<ServerHandle> = OnceLock::new();
    URL.get_or_init(|| {
        let student = Engine::load(&ModelSource::Embedded).unwrap();
        let tiny = Engine::load(&ModelSource::Dir(fixture("mixtral-tiny-f32"))).unwrap();
        let h = start(
            vec![
                ("moe-student-tiny".into(), student),
                ("mixtral-tiny-f32".into(), tiny),
            ],
            ServerConfig {
                port: 0,
                max_batch: 8,
                ..Default::default()
            },
        )
        .unwrap();
        let url = h.url();
        let _ = HANDLE.set(h);
        url
    })
}

fn post(path: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::blocking::Client::new()
        .post(format!("{}{path}", server()))
        .json(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap())
}

fn chat(q: &str, extra: Value) -> Value {
    let mut body =
        json!({"model": "moe-student-tiny", "messages": [{"role": "user", "content": q}]});
    for (k, v) in extra.as_object().unwrap() {
        body[k] = v.clone();
    }
    body
}

fn assert_error(status: u16, body: &Value, want_status: u16, param: Option<&str>) {
    assert_eq!(status, want_status, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
    assert_eq!(body["error"]["type"].as_str().is_some(), true);
    if let Some(p) = param {
        assert_eq!(body["error"]["param"], p, "{body}");
    }
}

#[test]
fn chat_answers_with_logprobs_and_usage() {
    let (s, v) = post(
        "/v1/chat/completions",
        &chat(
            "What is 24 plus 17?",
            json!({"temperature": 0, "logprobs": true, "top_logprobs": 30}),
        ),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "41");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap();
    assert_eq!(content.len(), 4);
    assert_eq!(content[1]["top_logprobs"].as_array().unwrap().len(), 30);
    assert_eq!(v["usage"]["completion_tokens"], 4);
    assert_eq!(
        v["usage"]["total_tokens"],
        v["usage"]["prompt_tokens"].as_u64().unwrap() + 4
    );
}

#[test]
fn seeded_sampling_is_reproducible_and_n_gives_choices() {
    let body = chat(
        "What is 95 - 94?",
        json!({"temperature": 1.0, "seed": 42, "max_tokens": 8, "n": 3}),
    );
    let (_, a) = post("/v1/chat/completions", &body);
    let (_, b) = post("/v1/chat/completions", &body);
    assert_eq!(a["choices"].as_array().unwrap().len(), 3);
    for i in 0..3 {
        assert_eq!(a["choices"][i]["message"], b["choices"][i]["message"]);
        assert_eq!(a["choices"][i]["index"], i);
    }
}

#[test]
fn completions_with_echo_and_prompt_logprobs() {
    let (s, v) = post(
        "/v1/completions",
        &json!({"model": "mixtral-tiny-f32", "prompt": "Hello world", "max_tokens": 3, "temperature": 0, "logprobs": 2, "echo": true}),
    );
    assert_eq!(s, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    let toks = lp["tokens"].as_array().unwrap();
    assert_eq!(toks.len(), 3 + 3);
    assert!(lp["token_logprobs"][0].is_null());
    assert!(lp["token_logprobs"][1].as_f64().unwrap() < 0.0);
    assert!(v["choices"][0]["text"]
        .as_str()
        .unwrap()
        .starts_with("Hello world"));
    assert_eq!(v["choices"][0]["finish_reason"], "length");
}

fn sse_lines(body: &Value) -> Vec<String> {
    let r = reqwest::blocking::Client::new()
        .post(format!("{}/v1/chat/completions", server()))
        .json(body)
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    BufReader::new(r)
        .lines()
        .map(|l| l.unwrap())
        .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
        .collect()
}

#[test]
fn streaming_matches_the_plain_answer() {
    let q = "Sort the numbers 82, 4, 51, 25 in ascending order.";
    let (_, plain) = post("/v1/chat/completions", &chat(q, json!({"temperature": 0})));
    let lines = sse_lines(&chat(
        q,
        json!({"temperature": 0, "stream": true, "stream_options": {"include_usage": true}}),
    ));
    assert_eq!(lines.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = lines[..lines.len() - 1]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let text: String = chunks
        .iter()
        .filter_map(|c| {
            c["choices"]
                .get(0)
                .and_then(|ch| ch["delta"]["content"].as_str())
                .map(str::to_string)
        })
        .collect();
    assert_eq!(
        text,
        plain["choices"][0]["message"]["content"].as_str().unwrap()
    );
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(
        usage["completion_tokens"],
        plain["usage"]["completion_tokens"]
    );
    assert!(chunks.iter().any(|c| c["choices"]
        .get(0)
        .is_some_and(|ch| ch["finish_reason"] == "stop")));
}

#[test]
fn models_health_metrics_and_expert_stats() {
    let get = |p: &str| reqwest::blocking::get(format!("{}{p}", server())).unwrap();
    let m: Value = get("/v1/models").json().unwrap();
    let ids: Vec<&str> = m["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["moe-student-tiny", "mixtral-tiny-f32"]);
    assert_eq!(get("/health").status().as_u16(), 200);
    post(
        "/v1/chat/completions",
        &chat("What is 1 plus 1?", json!({"temperature": 0})),
    );
    let text = get("/metrics").text().unwrap();
    for name in [
        "moe_requests_total{",
        "moe_time_to_first_token_seconds_bucket",
        "moe_inter_token_latency_seconds_count",
        "moe_expert_tokens_total{model=\"moe-student-tiny\",layer=\"1\",expert=\"3\"}",
        "moe_kv_cache_usage_ratio",
        "moe_queue_depth",
        "moe_generation_tokens_total",
    ] {
        assert!(text.contains(name), "metrics lack {name}");
    }
    let s: Value = get("/v1/stats/experts").json().unwrap();
    let layers = s["models"]["moe-student-tiny"]["layers"]
        .as_array()
        .unwrap();
    assert!(layers[0]["tokens"].as_u64().unwrap() > 0);
}

#[test]
fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let raw = |body: Vec<u8>| {
        let r = reqwest::blocking::Client::new()
            .post(format!("{}/v1/chat/completions", server()))
            .header("content-type", "application/json")
            .body(body)
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    let (s, v) = raw(b"{not json".to_vec());
    assert_error(s, &v, 400, None);
    let (s, v) = raw(vec![b' '; 10 << 20]);
    assert_error(s, &v, 413, None);
    let (s, v) = post(
        "/v1/chat/completions",
        &json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
    );
    assert_error(s, &v, 404, Some("model"));
    let (s, v) = post(
        "/v1/chat/completions",
        &json!({"model": "moe-student-tiny"}),
    );
    assert_error(s, &v, 400, Some("messages"));
    for (extra, param) in [
        (json!({"max_tokens": 0}), "max_tokens"),
        (json!({"max_tokens": -3}), "max_tokens"),
        (json!({"max_tokens": 100000}), "max_tokens"),
        (json!({"temperature": -0.5}), "temperature"),
        (json!({"top_p": 0}), "top_p"),
        (json!({"top_p": 1.5}), "top_p"),
        (json!({"n": 1000}), "n"),
        (json!({"top_logprobs": 3}), "top_logprobs"),
        (json!({"presence_penalty": 5}), "presence_penalty"),
    ] {
        let (s, v) = post("/v1/chat/completions", &chat("hi", extra.clone()));
        assert_error(s, &v, 400, Some(param));
    }
    let long = "word ".repeat(2000);
    let (s, v) = post("/v1/chat/completions", &chat(&long, json!({})));
    assert_error(s, &v, 400, None);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("context"),
        "{v}"
    );
    let (s, v) = post(
        "/v1/completions",
        &json!({"model": "moe-student-tiny", "prompt": [1, 99999]}),
    );
    assert_error(s, &v, 400, Some("prompt"));
    // Still serving.
    let (s, v) = post(
        "/v1/chat/completions",
        &chat("What is 24 plus 17?", json!({"temperature": 0})),
    );
    assert_eq!(s, 200);
    assert_eq!(v["choices"][0]["message"]["content"], "41");
}

#[test]
fn a_client_that_disconnects_mid_stream_frees_its_slot() {
    let addr = server().trim_start_matches("http://").to_string();
    let generated = || -> u64 {
        let text = reqwest::blocking::get(format!("{}/metrics", server()))
            .unwrap()
            .text()
            .unwrap();
        let line = text
            .lines()
            .find(|l| l.starts_with("moe_generation_tokens_total{model=\"moe-student-tiny\"}"))
            .unwrap()
            .to_string();
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let before = generated();
    let body = chat(
        "What is 5 plus 5?",
        json!({"stream": true, "max_tokens": 400, "ignore_eos": true, "temperature": 1.0}),
    )
    .to_string();
    let mut sock = std::net::TcpStream::connect(&addr).unwrap();
    write!(sock, "POST /v1/chat/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut buf = [0u8; 512];
    let n = sock.read(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("200 OK"));
    drop(sock);
    // The batch empties without waiting for the 400 tokens.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    loop {
        let text = reqwest::blocking::get(format!("{}/metrics", server()))
            .unwrap()
            .text()
            .unwrap();
        let running = text
            .lines()
            .find(|l| l.starts_with("moe_running_batch_size{model=\"moe-student-tiny\"}"))
            .unwrap()
            .to_string();
        if running.ends_with(" 0") {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "slot not freed: {running}"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // The abandoned sequence never finished: its 400 tokens were not all generated.
    assert!(
        generated() - before < 400,
        "the abandoned sequence ran to the end"
    );
    let (s, _) = post(
        "/v1/chat/completions",
        &chat("What is 2 plus 2?", json!({"temperature": 0})),
    );
    assert_eq!(s, 200);
}

#[test]
fn return_experts_lists_each_processed_token_per_layer() {
    let (s, v) = post(
        "/v1/chat/completions",
        &chat(
            "What is 24 plus 17?",
            json!({"temperature": 0, "return_experts": true}),
        ),
    );
    assert_eq!(s, 200, "{v}");
    let experts = v["choices"][0]["experts"].as_array().unwrap();
    let processed = v["usage"]["prompt_tokens"].as_u64().unwrap()
        + v["usage"]["completion_tokens"].as_u64().unwrap()
        - 1;
    assert_eq!(experts.len() as u64, processed);
    for token in experts {
        let layers = token.as_array().unwrap();
        assert_eq!(layers.len(), 2);
        for l in layers {
            let pair: Vec<u64> = serde_json::from_value(l.clone()).unwrap();
            assert_eq!(pair.len(), 2);
            assert!(pair[0] != pair[1] && pair.iter().all(|&e| e < 4));
        }
    }
    let (_, plain) = post(
        "/v1/chat/completions",
        &chat("What is 24 plus 17?", json!({"temperature": 0})),
    );
    assert!(plain["choices"][0].get("experts").is_none());
}

/// A second server with the MoE family fixtures (tests/fixtures/FAMILIES.md): the Qwen folders
/// carry a ChatML template, OLMoE's none.
fn family_server() -> &'static str {
    static URL: OnceLock<String> = OnceLock::new();
    static HANDLE: OnceLock<ServerHandle> = OnceLock::new();
    URL.get_or_init(|| {
        let models = ["qwen3_moe-tiny-f32", "qwen2_moe-tiny-f32", "olmoe-tiny-f32"]
            .into_iter()
            .map(|n| {
                (
                    n.to_string(),
                    Engine::load(&ModelSource::Dir(fixture(n))).unwrap(),
                )
            })
            .collect();
        let h = start(
            models,
            ServerConfig {
                port: 0,
                max_batch: 4,
                ..Default::default()
            },
        )
        .unwrap();
        let url = h.url();
        let _ = HANDLE.set(h);
        url
    })
}

fn family_post(path: &str, body: &Value) -> (u16, Value) {
    let r = reqwest::blocking::Client::new()
        .post(format!("{}{path}", family_server()))
        .json(body)
        .send()
        .unwrap();
    let status = r.status().as_u16();
    (status, r.json().unwrap())
}

fn family_meta(model: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(fixture(model).join("meta.json")).unwrap())
        .unwrap()
}

#[test]
fn families_chat_chatml_and_a_missing_template_is_a_clear_4xx() {
    // qwen3_moe: the chat endpoint renders ChatML, `<|im_start|>user\nHi<|im_end|>\n
    // <|im_start|>assistant\n` (14 ids), and answers as the same ids sent as a prompt do.
    let chatml = [
        601, 331, 257, 198, 39, 72, 602, 198, 601, 460, 387, 571, 83, 198,
    ];
    let hi = json!({"model": "qwen3_moe-tiny-f32", "messages": [{"role": "user", "content": "Hi"}], "temperature": 0, "max_tokens": 8});
    let (s, v) = family_post("/v1/chat/completions", &hi);
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model"], "qwen3_moe-tiny-f32");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(v["choices"][0]["finish_reason"], "length", "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], chatml.len());
    assert_eq!(v["usage"]["completion_tokens"], 8);
    let (s, c) = family_post(
        "/v1/completions",
        &json!({"model": "qwen3_moe-tiny-f32", "prompt": chatml, "temperature": 0, "max_tokens": 8}),
    );
    assert_eq!(s, 200, "{c}");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        c["choices"][0]["text"]
    );
    // Left to run, a greedy answer ends with a finish_reason either way.
    let (s, v) = family_post(
        "/v1/chat/completions",
        &json!({"model": "qwen3_moe-tiny-f32", "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello world"}], "temperature": 0}),
    );
    assert_eq!(s, 200, "{v}");
    let finish = v["choices"][0]["finish_reason"].as_str().unwrap();
    assert!(finish == "stop" || finish == "length", "{v}");

    // olmoe has no chat template: a 400 naming it; the model and the server keep serving.
    let (s, v) = family_post(
        "/v1/chat/completions",
        &json!({"model": "olmoe-tiny-f32", "messages": [{"role": "user", "content": "Hi"}]}),
    );
    assert_error(s, &v, 400, None);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("chat template") || msg.contains("chat_template"),
        "{v}"
    );
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    let (s, v) = family_post(
        "/v1/completions",
        &json!({"model": "olmoe-tiny-f32", "prompt": "Hello world", "temperature": 0, "max_tokens": 4}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["usage"]["prompt_tokens"], 2);
    let (s, v) = family_post("/v1/chat/completions", &hi);
    assert_eq!(s, 200, "{v}");
}

/// Greedy completions from meta.json's p0 prompt ids give transformers' text, plain and
/// streamed, through padded-vocabulary ids (qwen2_moe generates id 615, which has no token).
#[test]
fn families_completions_reproduce_the_golden_text() {
    for model in ["qwen2_moe-tiny-f32", "qwen3_moe-tiny-f32", "olmoe-tiny-f32"] {
        let m = family_meta(model);
        let prompt = &m["cases"]["p0"]["input_ids"][0];
        let want = m["cases"]["p0"]["generated_text"][0].as_str().unwrap();
        let body = json!({"model": model, "prompt": prompt, "temperature": 0, "max_tokens": 16, "logprobs": 2});
        let (s, v) = family_post("/v1/completions", &body);
        assert_eq!(s, 200, "{model}: {v}");
        assert_eq!(v["choices"][0]["text"], want, "{model}");
        assert_eq!(v["choices"][0]["finish_reason"], "length", "{model}");
        let lp = &v["choices"][0]["logprobs"];
        assert_eq!(lp["tokens"].as_array().unwrap().len(), 16, "{model}");
        assert_eq!(lp["top_logprobs"].as_array().unwrap().len(), 16, "{model}");
        let mut stream = body.clone();
        stream["stream"] = true.into();
        stream.as_object_mut().unwrap().remove("logprobs");
        let r = reqwest::blocking::Client::new()
            .post(format!("{}/v1/completions", family_server()))
            .json(&stream)
            .send()
            .unwrap();
        assert_eq!(r.status().as_u16(), 200);
        let text: String = BufReader::new(r)
            .lines()
            .map(|l| l.unwrap())
            .filter_map(|l| l.strip_prefix("data: ").map(str::to_string))
            .filter(|l| l != "[DONE]")
            .filter_map(|l| {
                let c: Value = serde_json::from_str(&l).unwrap();
                c["choices"]
                    .get(0)
                    .and_then(|ch| ch["text"].as_str())
                    .map(str::to_string)
            })
            .collect();
        assert_eq!(text, want, "{model}: streamed");
    }
    // Byte-level BPE pieces are shown as their text (`Ġworld` is " world", `Ċ` a newline), so
    // an echoed prompt's tokens concatenate to its text.
    for model in ["qwen3_moe-tiny-f32", "olmoe-tiny-f32"] {
        let prompt = "Hello world\n  two  spaces\tand tabs";
        let (s, v) = family_post(
            "/v1/completions",
            &json!({"model": model, "prompt": prompt, "max_tokens": 0, "echo": true, "logprobs": 1}),
        );
        assert_eq!(s, 200, "{model}: {v}");
        let tokens: Vec<String> =
            serde_json::from_value(v["choices"][0]["logprobs"]["tokens"].clone()).unwrap();
        assert_eq!(tokens[..2], ["Hello", " world"], "{model}");
        assert_eq!(tokens.concat(), prompt, "{model}: {tokens:?}");
    }
}

/// A request that would start more sequences than one request may, or one sequence that the whole
/// KV budget cannot hold, gets a 400 naming the limit; the server goes on serving.
#[test]
fn requests_past_the_sequence_cap_or_the_kv_budget_are_refused() {
    let (s, v) = post(
        "/v1/completions",
        &json!({"model": "moe-student-tiny", "prompt": vec!["hi"; 33], "n": 2, "max_tokens": 1}),
    );
    assert_eq!(s, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("66 sequences") && msg.contains("at most 64"),
        "{msg}"
    );
    assert_eq!(v["error"]["param"], "n");

    // A budget of one KV block of the student: a 200-token sequence cannot fit; 8 tokens can.
    let engine = Engine::load(&ModelSource::Embedded).unwrap();
    let block = moe::scheduler::kv_bytes_per_token(&engine) * moe::scheduler::KV_BLOCK;
    let h = start(
        vec![("moe-student-tiny".to_string(), engine)],
        ServerConfig {
            port: 0,
            kv_memory: block,
            ..Default::default()
        },
    )
    .unwrap();
    let send = |max_tokens: usize| {
        let r = reqwest::blocking::Client::new()
            .post(format!("{}/v1/completions", h.url()))
            .json(&json!({"model": "moe-student-tiny", "prompt": "hi", "max_tokens": max_tokens}))
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    let (s, v) = send(200);
    assert_eq!(s, 400, "{v}");
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("KV budget") && msg.contains(&format!("{block} bytes")),
        "{msg}"
    );
    let (s, v) = send(4);
    assert_eq!(s, 200, "{v}");
}

/// Counts scheduler steps and, per finished sequence, the step it finished in.
#[derive(Default)]
struct StepCounter {
    steps: std::sync::atomic::AtomicUsize,
    finished: std::sync::Mutex<Vec<(usize, usize)>>,
}

impl moe::scheduler::SchedulerObserver for StepCounter {
    fn first_token(&self, _: f64) {}
    fn next_token(&self, _: f64) {}
    fn finished(&self, _prompt: usize, generated: usize) {
        // `stepped` follows a step's `finished` calls: this is step `steps + 1`.
        let step = self.steps.load(std::sync::atomic::Ordering::SeqCst) + 1;
        self.finished.lock().unwrap().push((generated, step));
    }
    fn stepped(&self) {
        self.steps.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A fan-out request fills the queue (16 sequences × 32 tokens, batch of 4: first come, first
/// served would hold anything after it for about 128 steps); a one-token request sent once it is
/// running finishes within a few steps, long before the fan-out's first wave ends.
#[test]
fn a_small_request_is_not_queued_behind_a_fan_out_request() {
    use moe::generate::{GenerateRequest, Prompt};
    use moe::scheduler::{run, SchedulerConfig, SchedulerGauges, SeqEvent, Submission};
    use std::sync::atomic::Ordering::SeqCst;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    let engine = Arc::new(Engine::load(&ModelSource::Embedded).unwrap());
    let counter = Arc::new(StepCounter::default());
    let (tx, rx) = std::sync::mpsc::channel();
    let (e, c) = (engine.clone(), counter.clone());
    let cfg = SchedulerConfig {
        max_batch: 4,
        kv_bytes: 1 << 30,
        panic_if: None,
    };
    let thread =
        std::thread::spawn(move || run(e, cfg, rx, Arc::new(SchedulerGauges::default()), c));
    let request = |max_tokens: usize| {
        let params = moe::SamplingParams {
            temperature: 0.0,
            max_tokens,
            ignore_eos: true,
            ..Default::default()
        };
        GenerateRequest::new(Prompt::Text("What is 2 plus 2?".into()), params)
    };
    let (big_tx, big_rx) = tokio::sync::mpsc::unbounded_channel();
    for choice in 0..16 {
        tx.send(Submission {
            request_id: 1,
            choice,
            request: request(32),
            events: big_tx.clone(),
            submitted: Instant::now(),
        })
        .unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while counter.steps.load(SeqCst) < 2 {
        assert!(Instant::now() < deadline, "the fan-out request never ran");
        std::thread::sleep(Duration::from_millis(2));
    }
    let sent_at = counter.steps.load(SeqCst);
    let (small_tx, mut small_rx) = tokio::sync::mpsc::unbounded_channel();
    tx.send(Submission {
        request_id: 2,
        choice: 0,
        request: request(1),
        events: small_tx,
        submitted: Instant::now(),
    })
    .unwrap();
    loop {
        match small_rx.try_recv() {
            Ok(SeqEvent::Done { .. }) => break,
            Ok(SeqEvent::Error { message, .. }) => panic!("{message}"),
            Ok(SeqEvent::Token { .. }) => {}
            Err(_) => {
                assert!(
                    Instant::now() < deadline,
                    "the small request never finished"
                );
                std::thread::sleep(Duration::from_millis(2));
            }
        }
    }
    let finished = counter.finished.lock().unwrap().clone();
    let small_step = finished.iter().find(|f| f.0 == 1).unwrap().1;
    let big_done = finished.iter().filter(|f| f.0 == 32).count();
    assert!(
        small_step <= sent_at + 3,
        "sent during step {}, finished in step {small_step}",
        sent_at + 1
    );
    assert_eq!(
        big_done, 0,
        "the fan-out's first wave ended first: {finished:?}"
    );
    // The fan-out request still gets all its answers.
    drop(tx);
    let mut big_rx = big_rx;
    drop(big_tx);
    let mut done = 0;
    while let Some(ev) = big_rx.blocking_recv() {
        if let SeqEvent::Done { completion, .. } = ev {
            assert_eq!(completion.token_ids.len(), 32);
            done += 1;
        }
    }
    assert_eq!(done, 16);
    thread.join().unwrap();
}

/// `--max-sequences-per-request` sets the cap; past it, a 400 names the count and the limit.
#[test]
fn the_sequence_cap_is_configurable() {
    let h = start(
        vec![(
            "moe-student-tiny".to_string(),
            Engine::load(&ModelSource::Embedded).unwrap(),
        )],
        ServerConfig {
            port: 0,
            max_sequences_per_request: 2,
            ..Default::default()
        },
    )
    .unwrap();
    let send = |body: Value, path: &str| {
        let r = reqwest::blocking::Client::new()
            .post(format!("{}{path}", h.url()))
            .json(&body)
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    let (s, v) = send(
        json!({"prompt": ["a", "b"], "n": 2, "max_tokens": 1}),
        "/v1/completions",
    );
    assert_error(s, &v, 400, Some("n"));
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("4 sequences") && msg.contains("at most 2"),
        "{msg}"
    );
    let (s, v) = send(
        json!({"messages": [{"role": "user", "content": "hi"}], "n": 3, "max_tokens": 1}),
        "/v1/chat/completions",
    );
    assert_error(s, &v, 400, Some("n"));
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("3 sequences"));
    let (s, v) = send(
        json!({"prompt": ["a", "b"], "max_tokens": 1}),
        "/v1/completions",
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"].as_array().unwrap().len(), 2);
    h.shutdown();
}

/// A server with these timeouts, in seconds: (header, body, idle).
fn timed_server(header: u64, body: u64, idle: u64) -> ServerHandle {
    let secs = std::time::Duration::from_secs;
    start(
        vec![(
            "moe-student-tiny".to_string(),
            Engine::load(&ModelSource::Embedded).unwrap(),
        )],
        ServerConfig {
            port: 0,
            header_timeout: secs(header),
            body_timeout: secs(body),
            idle_timeout: secs(idle),
            ..Default::default()
        },
    )
    .unwrap()
}

/// Sends `bytes` on a new connection and reads until the server closes it, waiting at most 30 s
/// (every timeout that should close it here is 1 s; the others are 60 s).
fn read_until_closed(addr: std::net::SocketAddr, bytes: &[u8]) -> String {
    let mut sock = std::net::TcpStream::connect(addr).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    sock.write_all(bytes).unwrap();
    let mut got = vec![];
    let mut buf = [0u8; 4096];
    loop {
        match sock.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => panic!(
                "the connection stayed open ({e}); read so far: {:?}",
                String::from_utf8_lossy(&got)
            ),
        }
    }
    String::from_utf8_lossy(&got).into_owned()
}

#[test]
fn a_half_sent_header_is_cut_off_after_the_header_timeout() {
    let h = timed_server(1, 60, 60);
    let got = read_until_closed(h.addr, b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n");
    assert_eq!(got, "", "a half-sent header got an answer");
    // Others are still served.
    let r = reqwest::blocking::get(format!("{}/health", h.url())).unwrap();
    assert_eq!(r.status().as_u16(), 200);
    h.shutdown();
}

#[test]
fn an_idle_keep_alive_connection_is_closed_after_the_idle_timeout() {
    let h = timed_server(60, 60, 1);
    // One complete request on a keep-alive connection, answered; then silence.
    let got = read_until_closed(h.addr, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(got.starts_with("HTTP/1.1 200"), "{got}");
    assert!(got.ends_with(r#""status":"ok"}"#), "{got}");
    assert!(!got.contains("connection: close"), "{got}");
    h.shutdown();
}

#[test]
fn a_body_that_stops_arriving_gets_a_408_and_the_connection_closes() {
    let h = timed_server(60, 1, 60);
    let got = read_until_closed(
        h.addr,
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"prompt\"",
    );
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    let body: Value = serde_json::from_str(&got[got.find("\r\n\r\n").unwrap() + 4..]).unwrap();
    assert_error(408, &body, 408, None);
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("--body-timeout"),
        "{body}"
    );
    h.shutdown();
}

/// `moe serve` started as a process, with its address; stderr is piped.
fn spawn_moe(args: &[&str]) -> (std::process::Child, String) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(moe_tests::moe_bin())
        .args(["serve", "--port", "0"])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = match rx.recv_timeout(std::time::Duration::from_secs(60)) {
        Ok(l) => l,
        Err(_) => {
            let _ = child.kill();
            panic!("moe serve did not start");
        }
    };
    let addr = line
        .strip_prefix("listening on http://")
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    (child, addr)
}

fn signal(child: &std::process::Child, sig: &str) {
    let ok = std::process::Command::new("kill")
        .args([sig, &child.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok, "kill {sig} failed");
}

/// Waits at most `secs` for the process to end; kills it and fails past that.
fn wait_exit(child: &mut std::process::Child, secs: u64, what: &str) -> std::process::ExitStatus {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    loop {
        if let Some(s) = child.try_wait().unwrap() {
            return s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: still running after {secs} s");
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// SIGTERM: a stream in flight runs to its end, a half-sent request (its header timeout 60 s)
/// is cut off when the 3 s shutdown timeout ends, and the process exits 0.
#[test]
fn sigterm_drains_in_flight_requests_then_ends_within_the_shutdown_timeout() {
    let (mut child, addr) = spawn_moe(&["--shutdown-timeout", "3", "--header-timeout", "60"]);
    let mut half = std::net::TcpStream::connect(&addr).unwrap();
    half.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let body = json!({"prompt": "[INST] What is 5 plus 5? [/INST]", "max_tokens": 64,
                      "ignore_eos": true, "stream": true})
    .to_string();
    let mut stream = std::net::TcpStream::connect(&addr).unwrap();
    stream
        .set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(stream, "POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    reader.read_line(&mut line).unwrap();
    assert!(line.starts_with("HTTP/1.1 200"), "{line}");
    signal(&child, "-TERM");
    let mut rest = String::new();
    let _ = reader.read_to_string(&mut rest);
    assert!(rest.contains("data: [DONE]"), "the stream was cut: {rest}");
    let status = wait_exit(&mut child, 30, "after SIGTERM");
    assert!(status.success(), "{status}");
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(err.contains("1 connection(s) still open"), "{err}");
    drop(half);
}

/// A second signal exits at once, without waiting out a 60 s shutdown timeout.
#[test]
fn a_second_signal_exits_at_once() {
    let (mut child, addr) = spawn_moe(&["--shutdown-timeout", "60", "--header-timeout", "60"]);
    let mut half = std::net::TcpStream::connect(&addr).unwrap();
    half.write_all(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let mut err = BufReader::new(child.stderr.take().unwrap());
    signal(&child, "-TERM");
    // The first signal is being handled once the drain is announced.
    let mut line = String::new();
    err.read_line(&mut line).unwrap();
    assert!(line.starts_with("shutting down"), "{line}");
    signal(&child, "-TERM");
    let status = wait_exit(&mut child, 30, "after a second SIGTERM");
    assert_eq!(status.code(), Some(1), "{status}");
    drop(half);
}

/// `max_connections`: past the limit a connection waits (in the kernel's backlog) until one
/// closes; a limit past the open-file limit is refused at start.
#[test]
fn connections_past_the_limit_wait_for_a_free_slot() {
    let h = start(
        vec![(
            "moe-student-tiny".to_string(),
            Engine::load(&ModelSource::Embedded).unwrap(),
        )],
        ServerConfig {
            port: 0,
            max_connections: Some(1),
            ..Default::default()
        },
    )
    .unwrap();
    let first = std::net::TcpStream::connect(h.addr).unwrap();
    // The idle first connection holds the one slot: a second is not served while it is open.
    let r = reqwest::blocking::Client::new()
        .get(format!("{}/health", h.url()))
        .timeout(std::time::Duration::from_millis(500))
        .send();
    assert!(r.is_err(), "a second connection was served: {r:?}");
    drop(first);
    let r = reqwest::blocking::Client::new()
        .get(format!("{}/health", h.url()))
        .timeout(std::time::Duration::from_secs(30))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    h.shutdown();

    let refused = start(
        vec![(
            "moe-student-tiny".to_string(),
            Engine::load(&ModelSource::Embedded).unwrap(),
        )],
        ServerConfig {
            port: 0,
            max_connections: Some(usize::MAX / 2),
            ..Default::default()
        },
    );
    let msg = refused
        .err()
        .expect("a limit past RLIMIT_NOFILE")
        .to_string();
    assert!(msg.contains("RLIMIT_NOFILE"), "{msg}");
}

/// The embedded model answers to its preset name (`student`, as the README's examples use); a
/// model loaded from a directory answers to that path as given; `/v1/models` lists the primary
/// ids only.
#[test]
fn served_models_answer_to_their_preset_names_and_paths() {
    let q = |model: &str| {
        post(
            "/v1/chat/completions",
            &json!({"model": model, "messages": [{"role": "user", "content": "What is 24 plus 17?"}], "temperature": 0}),
        )
    };
    let (s, v) = q("student");
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["choices"][0]["message"]["content"], "41");
    assert_eq!(v["model"], "moe-student-tiny");
    let path = fixture("mixtral-tiny-f32").display().to_string();
    let (s, v) = post(
        "/v1/completions",
        &json!({"model": path, "prompt": "Hello", "max_tokens": 2}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["model"], "mixtral-tiny-f32");
    let (s, v) = q("teacher");
    assert_error(s, &v, 404, Some("model"));
}

#[test]
fn tokenize_detokenize_and_tokenizer_info_as_vllm_serves_them() {
    let (s, v) = post("/tokenize", &json!({"prompt": "What is 24 plus 17?"}));
    assert_eq!(s, 200, "{v}");
    let tokens: Vec<u32> = serde_json::from_value(v["tokens"].clone()).unwrap();
    let engine = Engine::load(&ModelSource::Embedded).unwrap();
    assert_eq!(
        tokens,
        engine
            .tokenizer
            .encode("What is 24 plus 17?", true)
            .unwrap()
    );
    assert_eq!(v["count"], tokens.len());
    assert_eq!(v["max_model_len"], engine.info.context_length);
    let (_, plain) = post(
        "/tokenize",
        &json!({"prompt": "What is 24 plus 17?", "add_special_tokens": false}),
    );
    assert_eq!(plain["count"], tokens.len() - 1, "{plain}");
    let (s, v) = post("/detokenize", &json!({"tokens": plain["tokens"]}));
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["prompt"], "What is 24 plus 17?");
    // Chat messages through the template: the ids the chat endpoint prefills.
    let msgs = json!([{"role": "user", "content": "What is 24 plus 17?"}]);
    let (s, v) = post("/tokenize", &json!({"model": "student", "messages": msgs}));
    assert_eq!(s, 200, "{v}");
    let (_, c) = post(
        "/v1/chat/completions",
        &json!({"messages": msgs, "max_tokens": 1}),
    );
    assert_eq!(v["count"], c["usage"]["prompt_tokens"]);
    // Bad input: a 400 naming the problem.
    let (s, v) = post("/detokenize", &json!({"tokens": [1, 99999]}));
    assert_error(s, &v, 400, Some("tokens"));
    assert!(
        v["error"]["message"].as_str().unwrap().contains("99999"),
        "{v}"
    );
    let (s, v) = post("/detokenize", &json!({"tokens": [-1]}));
    assert_error(s, &v, 400, Some("tokens"));
    let (s, v) = post("/tokenize", &json!({}));
    assert_error(s, &v, 400, Some("prompt"));
    let info: Value = reqwest::blocking::get(format!("{}/tokenizer_info", server()))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(info["eos_token"], "</s>", "{info}");
    assert!(info["chat_template"]
        .as_str()
        .is_some_and(|t| !t.is_empty()));
    assert_eq!(info["max_model_len"], engine.info.context_length);
}

#[test]
fn unknown_routes_get_a_json_404_naming_the_path() {
    let r = reqwest::blocking::get(format!("{}/v1/nope", server())).unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let v: Value = r.json().unwrap();
    assert_error(404, &v, 404, None);
    assert!(
        v["error"]["message"].as_str().unwrap().contains("/v1/nope"),
        "{v}"
    );
    let r = reqwest::blocking::Client::new()
        .delete(format!("{}/v1/completions", server()))
        .send()
        .unwrap();
    let s = r.status().as_u16();
    let v: Value = r.json().unwrap();
    assert_error(s, &v, 405, None);
}

/// A held-back token (here `4`, a prefix of the stop string `4z`) sends no empty chunk: the
/// first chunk is the role with empty content, every later one carries text, and only the last
/// (with the finish reason) may have an empty delta.
#[test]
fn streaming_sends_no_empty_delta_before_the_end() {
    let lines = sse_lines(&chat(
        "What is 24 plus 17?",
        json!({"temperature": 0, "stream": true, "stop": ["4z"]}),
    ));
    assert_eq!(lines.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = lines[..lines.len() - 1]
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "41");
    for c in &chunks[1..] {
        let ch = &c["choices"][0];
        let content = ch["delta"]["content"].as_str().unwrap_or("");
        assert!(
            !content.is_empty() || !ch["finish_reason"].is_null(),
            "an empty chunk before the end: {c}"
        );
    }
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "stop"
    );
}

/// The prompt the injected fault (`panic_if`) fires on.
const POISON: [u32; 5] = [1, 5, 6, 7, 8];

fn poisoned() -> moe::scheduler::PanicIf {
    moe::scheduler::PanicIf(std::sync::Arc::new(|ids: &[u32]| ids.starts_with(&POISON)))
}

/// A panic in a step with three fresh sequences: the two innocent ones start again, take their
/// first step alone and finish with the same tokens as a clean run; the poisoned one alone gets
/// an internal error.
#[test]
fn a_panicking_step_fails_only_the_sequence_that_panics_again() {
    use moe::generate::{GenerateRequest, Prompt};
    use moe::scheduler::{run, SchedulerConfig, SchedulerGauges, SeqEvent, Submission};
    use std::sync::Arc;

    let engine = Arc::new(Engine::load(&ModelSource::Embedded).unwrap());
    let params = moe::SamplingParams {
        temperature: 0.0,
        max_tokens: 12,
        ignore_eos: true,
        ..Default::default()
    };
    let prompts = [
        Prompt::Text("What is 24 plus 17?".into()),
        Prompt::Tokens(POISON.to_vec()),
        Prompt::Text("What is 2 times 3?".into()),
    ];
    let clean: Vec<Vec<u32>> = [&prompts[0], &prompts[2]]
        .iter()
        .map(|p| {
            engine
                .generate(&[GenerateRequest::new((*p).clone(), params.clone())])
                .unwrap()[0]
                .token_ids
                .clone()
        })
        .collect();
    let (tx, rx) = std::sync::mpsc::channel();
    let mut receivers = vec![];
    // All three are queued before the scheduler starts: they share its first step.
    for (i, p) in prompts.iter().enumerate() {
        let (etx, erx) = tokio::sync::mpsc::unbounded_channel();
        tx.send(Submission {
            request_id: i as u64,
            choice: 0,
            request: GenerateRequest::new(p.clone(), params.clone()),
            events: etx,
            submitted: std::time::Instant::now(),
        })
        .unwrap();
        receivers.push(erx);
    }
    drop(tx);
    let cfg = SchedulerConfig {
        max_batch: 8,
        kv_bytes: 1 << 30,
        panic_if: Some(poisoned()),
    };
    let e = engine.clone();
    let thread = std::thread::spawn(move || {
        run(
            e,
            cfg,
            rx,
            Arc::new(SchedulerGauges::default()),
            Arc::new(StepCounter::default()),
        )
    });
    let mut outcomes = vec![];
    for mut erx in receivers {
        let mut outcome = None;
        while let Some(ev) = erx.blocking_recv() {
            match ev {
                SeqEvent::Done { completion, .. } => outcome = Some(Ok(completion.token_ids)),
                SeqEvent::Error {
                    message, internal, ..
                } => outcome = Some(Err((message, internal))),
                SeqEvent::Token { .. } => {}
            }
        }
        outcomes.push(outcome.expect("an outcome"));
    }
    thread.join().unwrap();
    assert_eq!(outcomes[0], Ok(clean[0].clone()));
    assert_eq!(outcomes[2], Ok(clean[1].clone()));
    match &outcomes[1] {
        Err((message, true)) => assert!(message.contains("injected fault"), "{message}"),
        other => panic!("the poisoned sequence: {other:?}"),
    }
}

/// Over HTTP a panic is a 500 with an OpenAI body of type `internal_error` (plain and streamed),
/// and the server goes on serving.
#[test]
fn a_panic_in_a_step_is_a_500_internal_error() {
    let h = start(
        vec![(
            "moe-student-tiny".to_string(),
            Engine::load(&ModelSource::Embedded).unwrap(),
        )],
        ServerConfig {
            port: 0,
            panic_if: Some(poisoned()),
            ..Default::default()
        },
    )
    .unwrap();
    let client = reqwest::blocking::Client::new();
    let r = client
        .post(format!("{}/v1/completions", h.url()))
        .json(&json!({"prompt": POISON, "max_tokens": 4}))
        .send()
        .unwrap();
    let s = r.status().as_u16();
    let v: Value = r.json().unwrap();
    assert_error(s, &v, 500, None);
    assert_eq!(v["error"]["type"], "internal_error", "{v}");
    let r = client
        .post(format!("{}/v1/completions", h.url()))
        .json(&json!({"prompt": POISON, "max_tokens": 4, "stream": true}))
        .send()
        .unwrap();
    let text = r.text().unwrap();
    assert!(text.contains(r#""type":"internal_error""#), "{text}");
    let r = client
        .post(format!("{}/v1/chat/completions", h.url()))
        .json(&chat("What is 24 plus 17?", json!({"temperature": 0})))
        .send()
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let v: Value = r.json().unwrap();
    assert_eq!(v["choices"][0]["message"]["content"], "41");
    h.shutdown();
}

/// `count` prompt token ids for the student (a start token, then varied ids).
fn long_prompt(count: usize) -> Vec<u32> {
    std::iter::once(1)
        .chain((1..count as u32).map(|i| 100 + (i * 37) % 5000))
        .collect()
}

/// The student's logprobs at every position of `ids` from one forward over the whole prompt.
fn unchunked_logprobs(ids: &[u32]) -> Vec<Vec<f64>> {
    static ENGINE: OnceLock<Engine<moe::CpuBackend>> = OnceLock::new();
    let engine = ENGINE.get_or_init(|| Engine::load(&ModelSource::Embedded).unwrap());
    let vocab = engine.config().vocab_size;
    let (logits, _) = moe_tests::forward_traced(&engine.model, &[ids.to_vec()]);
    logits[0]
        .chunks_exact(vocab)
        .map(|row| {
            let max = row.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let z: f64 = row.iter().map(|&x| (x as f64 - max).exp()).sum();
            row.iter().map(|&x| x as f64 - max - z.ln()).collect()
        })
        .collect()
}

/// The probe's request (`echo`, `max_tokens: 0`, `logprobs` = the vocabulary over a 500-token
/// prompt, ≈ 500 MB of JSON) is a 400 naming `--max-response-bytes` rather than an abort; smaller
/// ones run in chunks through the scheduler and give the logprobs of one unchunked forward.
#[test]
fn echoed_prompt_logprobs_are_bounded_by_the_response_budget_and_exact() {
    let big = json!({"model": "moe-student-tiny", "prompt": long_prompt(500), "max_tokens": 0,
                     "echo": true, "logprobs": 32000});
    let (s, v) = post("/v1/completions", &big);
    assert_error(s, &v, 400, Some("logprobs"));
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("--max-response-bytes")
            && msg.contains(&moe::server::DEFAULT_MAX_RESPONSE_BYTES.to_string())
            && msg.contains("500 × 32001 entries"),
        "{msg}"
    );

    // 200 positions (four chunks) with 5 alternatives, ids as labels.
    let ids = long_prompt(200);
    let want = unchunked_logprobs(&ids);
    let (s, v) = post(
        "/v1/completions",
        &json!({"model": "moe-student-tiny", "prompt": ids, "max_tokens": 0, "echo": true,
                "logprobs": 5, "return_tokens_as_token_ids": true}),
    );
    assert_eq!(s, 200, "{v}");
    let lp = &v["choices"][0]["logprobs"];
    assert_eq!(lp["tokens"].as_array().unwrap().len(), 200);
    assert!(lp["token_logprobs"][0].is_null() && lp["top_logprobs"][0].is_null());
    for i in [1usize, 2, 63, 64, 65, 127, 128, 150, 199] {
        let got = lp["token_logprobs"][i].as_f64().unwrap();
        let exact = want[i - 1][ids[i] as usize];
        assert!(
            (got - exact).abs() <= 1e-5,
            "position {i}: {got} vs {exact}"
        );
        let alts = lp["top_logprobs"][i].as_object().unwrap();
        assert_eq!(alts.len(), 5, "position {i}");
        for (k, x) in alts {
            let id: usize = k.strip_prefix("token_id:").unwrap().parse().unwrap();
            let exact = want[i - 1][id];
            assert!(
                (x.as_f64().unwrap() - exact).abs() <= 1e-5,
                "position {i} id {id}"
            );
        }
    }

    // Every alternative over a short prompt: the whole distribution at each position.
    let ids = long_prompt(6);
    let want = unchunked_logprobs(&ids);
    let (s, v) = post(
        "/v1/completions",
        &json!({"model": "moe-student-tiny", "prompt": ids, "max_tokens": 0, "echo": true,
                "logprobs": 32000, "return_tokens_as_token_ids": true}),
    );
    assert_eq!(s, 200, "{v}");
    for i in 1..6 {
        let alts = v["choices"][0]["logprobs"]["top_logprobs"][i]
            .as_object()
            .unwrap();
        assert_eq!(alts.len(), 32000);
        for id in [0usize, 1, 13, ids[i] as usize, 31999] {
            let got = alts[&format!("token_id:{id}")].as_f64().unwrap();
            assert!(
                (got - want[i - 1][id]).abs() <= 1e-5,
                "position {i} id {id}"
            );
        }
    }
}

/// `--max-logprobs`, a low `--max-response-bytes` and the KV budget apply to prompt scoring.
#[test]
fn logprob_limits_and_the_kv_budget_apply_to_prompt_scoring() {
    let engine = Engine::load(&ModelSource::Embedded).unwrap();
    let block = moe::scheduler::kv_bytes_per_token(&engine) * moe::scheduler::KV_BLOCK;
    let h = start(
        vec![("moe-student-tiny".to_string(), engine)],
        ServerConfig {
            port: 0,
            kv_memory: 2 * block,
            max_logprobs: Some(5),
            max_response_bytes: 10_000,
            ..Default::default()
        },
    )
    .unwrap();
    let send = |path: &str, body: Value| {
        let r = reqwest::blocking::Client::new()
            .post(format!("{}{path}", h.url()))
            .json(&body)
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    let score = |count: usize, logprobs: usize| {
        send(
            "/v1/completions",
            json!({"prompt": long_prompt(count), "max_tokens": 0, "echo": true, "logprobs": logprobs}),
        )
    };
    // Above --max-logprobs, on both endpoints and with generation too.
    for (path, body, param) in [
        (
            "/v1/completions",
            json!({"prompt": long_prompt(4), "max_tokens": 0, "echo": true, "logprobs": 6}),
            "logprobs",
        ),
        (
            "/v1/completions",
            json!({"prompt": "hi", "max_tokens": 2, "logprobs": 6}),
            "logprobs",
        ),
        (
            "/v1/chat/completions",
            chat(
                "hi",
                json!({"logprobs": true, "top_logprobs": 6, "max_tokens": 2}),
            ),
            "top_logprobs",
        ),
    ] {
        let (s, v) = send(path, body);
        assert_error(s, &v, 400, Some(param));
        let msg = v["error"]["message"].as_str().unwrap();
        assert!(
            msg.contains(&format!("{param} 6 is above"))
                && msg.contains("limit of 5 (--max-logprobs)"),
            "{msg}"
        );
    }
    // 30 positions × 6 entries × 32 bytes = 5760: within 10 000 bytes; 60 positions are not.
    let (s, v) = score(30, 5);
    assert_eq!(s, 200, "{v}");
    let (s, v) = score(60, 5);
    assert_error(s, &v, 400, Some("logprobs"));
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(
        msg.contains("about 11520 bytes")
            && msg.contains("limit of 10000 bytes (--max-response-bytes)"),
        "{msg}"
    );
    // Scoring is admitted against the KV budget (two blocks, 32 tokens) like generation.
    let (s, v) = score(40, 0);
    assert_error(s, &v, 400, None);
    let msg = v["error"]["message"].as_str().unwrap();
    assert!(msg.contains("KV budget"), "{msg}");
    let (s, v) = score(32, 0);
    assert_eq!(s, 200, "{v}");
    assert_eq!(
        v["choices"][0]["logprobs"]["tokens"]
            .as_array()
            .unwrap()
            .len(),
        32
    );
    h.shutdown();
}

/// `--served-model-name a b` (vLLM's flag): `a` is the id responses and `/v1/models` report, `b`
/// and the model's own names still address it, and two served models refuse it by name.
#[test]
fn served_model_name_renames_the_one_model() {
    let h = start(
        vec![(
            "moe-student-tiny".to_string(),
            Engine::load(&ModelSource::Embedded).unwrap(),
        )],
        ServerConfig {
            port: 0,
            served_model_names: vec!["my-tutor".into(), "tutor".into()],
            ..Default::default()
        },
    )
    .unwrap();
    let ask = |model: &str| {
        let r = reqwest::blocking::Client::new()
            .post(format!("{}/v1/completions", h.url()))
            .json(&json!({"model": model, "prompt": "hi", "max_tokens": 1}))
            .send()
            .unwrap();
        (r.status().as_u16(), r.json::<Value>().unwrap())
    };
    for name in ["my-tutor", "tutor", "moe-student-tiny", "student"] {
        let (s, v) = ask(name);
        assert_eq!(s, 200, "{name}: {v}");
        assert_eq!(v["model"], "my-tutor", "{name}");
    }
    let (s, v) = ask("teacher");
    assert_error(s, &v, 404, Some("model"));
    let models: Value = reqwest::blocking::get(format!("{}/v1/models", h.url()))
        .unwrap()
        .json()
        .unwrap();
    assert_eq!(models["data"][0]["id"], "my-tutor", "{models}");
    assert_eq!(models["data"].as_array().unwrap().len(), 1);

    let err = start(
        vec![
            (
                "a".to_string(),
                Engine::load(&ModelSource::Embedded).unwrap(),
            ),
            (
                "b".to_string(),
                Engine::load(&ModelSource::Embedded).unwrap(),
            ),
        ],
        ServerConfig {
            port: 0,
            served_model_names: vec!["x".into()],
            ..Default::default()
        },
    )
    .err()
    .expect("two models and one name")
    .to_string();
    assert!(err.contains("--served-model-name"), "{err}");
}
