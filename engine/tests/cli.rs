//! The `moe` binary: JSON shapes documented in the README, and errors as a message and exit 1.

use std::process::{Command, Output};

fn moe(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_moe"))
        .args(args)
        .output()
        .expect("run moe")
}

fn json(args: &[&str]) -> serde_json::Value {
    let out = moe(args);
    assert!(
        out.status.success(),
        "moe {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

fn fails_with(args: &[&str], needle: &str) {
    let out = moe(args);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(1),
        "moe {args:?} should exit 1; stderr: {err}"
    );
    assert!(
        err.contains(needle),
        "moe {args:?}: stderr {err:?} should mention {needle:?}"
    );
    assert!(!err.contains("panicked"), "{err}");
}

fn fixture(name: &str) -> String {
    format!("{}/../tests/fixtures/{name}", env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn generate_json_on_the_embedded_model() {
    let v = json(&[
        "generate",
        "--chat",
        "--prompt",
        "What is 24 plus 17?",
        "--json",
    ]);
    assert_eq!(v["text"], "41");
    assert_eq!(v["finish_reason"], "stop");
    assert_eq!(v["token_ids"].as_array().unwrap().last().unwrap(), 2);
    assert_eq!(v["prompt_ids"][0], 1);
    let v = json(&[
        "generate",
        "--chat",
        "--prompt",
        "What is 24 plus 17?",
        "--max-tokens",
        "3",
        "--top-logprobs",
        "25",
        "--json",
    ]);
    assert_eq!(v["token_ids"].as_array().unwrap().len(), 3);
    assert_eq!(v["finish_reason"], "length");
    let lps = v["logprobs"].as_array().unwrap();
    assert_eq!(lps.len(), 3);
    assert_eq!(lps[0]["top_logprobs"].as_array().unwrap().len(), 25);
    assert_eq!(lps[0]["token_id"], lps[0]["top_logprobs"][0]["token_id"]);
}

#[test]
fn logprobs_json_shape() {
    let v = json(&[
        "logprobs",
        "--model",
        &fixture("mixtral-tiny-f32"),
        "--prompt",
        "Hello world",
        "--top-k",
        "4",
        "--json",
    ]);
    let toks = v["tokens"].as_array().unwrap();
    assert_eq!(toks.len(), 3);
    assert!(toks[0]["logprob"].is_null());
    assert_eq!(toks[1]["token_id"], 22557);
    assert!(toks[1]["logprob"].as_f64().unwrap() < 0.0);
    for (i, t) in toks.iter().enumerate() {
        assert_eq!(t["position"], i);
        let top = t["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 4);
        assert!(top[0]["logprob"].as_f64() >= top[3]["logprob"].as_f64());
    }
}

#[test]
fn stats_json_shape_and_table() {
    let v = json(&[
        "stats",
        "--prompt",
        "Mixtral routes tokens to experts.",
        "--json",
    ]);
    let layers = v["layers"].as_array().unwrap();
    assert_eq!(layers.len(), 2);
    let counts: Vec<u64> = serde_json::from_value(layers[0]["expert_tokens"].clone()).unwrap();
    assert_eq!(counts.len(), 4);
    assert_eq!(
        counts.iter().sum::<u64>(),
        2 * layers[0]["tokens"].as_u64().unwrap()
    );
    assert!(v["aux_loss"].as_f64().unwrap() >= 1.0);
    let out = moe(&["stats", "--prompt", "Hi"]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("aux_loss"));
}

#[test]
fn stats_chat_routes_the_templated_prompt() {
    let tokens = |args: &[&str]| json(args)["layers"][0]["tokens"].as_u64().unwrap();
    let plain = tokens(&["stats", "--prompt", "What is 24 plus 17?", "--json"]);
    let chat = tokens(&[
        "stats",
        "--chat",
        "--prompt",
        "What is 24 plus 17?",
        "--json",
    ]);
    // The same prompt the chat generation sees: `--chat --json` of generate lists its ids.
    let ids = json(&[
        "generate",
        "--chat",
        "--prompt",
        "What is 24 plus 17?",
        "--max-tokens",
        "1",
        "--json",
    ])["prompt_ids"]
        .as_array()
        .unwrap()
        .len() as u64;
    assert_eq!(chat, ids);
    assert!(chat > plain, "chat {chat} vs plain {plain}");
    fails_with(&["stats", "--chat", "--token-ids", "1,2"], "--chat needs");
}

#[test]
fn an_empty_prompt_is_an_error() {
    for cmd in ["generate", "logprobs", "stats"] {
        fails_with(&[cmd, "--prompt", ""], "empty prompt");
    }
    fails_with(&["generate", "--chat", "--prompt", ""], "empty prompt");
}

#[test]
fn a_missing_model_is_named_plainly() {
    let out = moe(&["generate", "--model", "/nonexistent", "--prompt", "x"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no model at /nonexistent: not a preset name and no such directory or file"),
        "{err}"
    );
    assert!(!err.contains("Preset("), "Rust debug formatting in {err:?}");
    // A file that is neither a .gguf nor a directory says so.
    let file = fixture("mixtral-tiny-f32/config.json");
    fails_with(
        &["generate", "--model", &file, "--prompt", "x"],
        "a file, but not a .gguf one",
    );
}

#[test]
fn bad_input_exits_1_with_a_named_problem() {
    fails_with(
        &["generate", "--prompt", "x", "--temperature", "-1"],
        "temperature",
    );
    fails_with(&["generate", "--prompt", "x", "--top-p", "0"], "top_p");
    fails_with(&["generate", "--prompt", "x", "--top-p", "1.5"], "top_p");
    fails_with(
        &["generate", "--prompt", "x", "--model", "no-such-model"],
        "no-such-model",
    );
    let long: Vec<String> = (0..600).map(|_| "5".to_string()).collect();
    fails_with(
        &["generate", "--token-ids", &long.join(",")],
        "exceeds the model's context of 512",
    );
    fails_with(
        &["generate", "--token-ids", "1,99999"],
        "outside the vocabulary",
    );
    fails_with(&["generate"], "--prompt");
    fails_with(
        &["generate", "--prompt", "x", "--threads", "0"],
        "--threads",
    );
    fails_with(
        &[
            "generate",
            "--chat",
            "--model",
            &fixture("mixtral-tiny-f32"),
            "--prompt",
            "x",
        ],
        "no chat_template",
    );
}

#[test]
fn broken_checkpoint_exits_1_naming_the_file() {
    let dir = std::env::temp_dir().join(format!("moe-cli-broken-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for f in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(format!("{}/{f}", fixture("mixtral-tiny-f32")), dir.join(f)).unwrap();
    }
    let bytes =
        std::fs::read(format!("{}/model.safetensors", fixture("mixtral-tiny-f32"))).unwrap();
    std::fs::write(dir.join("model.safetensors"), &bytes[..bytes.len() - 1000]).unwrap();
    fails_with(
        &[
            "generate",
            "--model",
            dir.to_str().unwrap(),
            "--prompt",
            "x",
        ],
        "model.safetensors",
    );
}

#[test]
fn loop_distill_writes_rows_divergences_and_a_manifest() {
    let dir = std::env::temp_dir().join(format!("moe-cli-distill-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("data.jsonl");
    std::fs::write(
        &data,
        "{\"task\": \"add\", \"question\": \"What is 2 plus 3?\", \"answer\": \"5\"}\n{\"text\": \"Hello world\"}\n",
    )
    .unwrap();
    let teacher = format!("{}/../models/moe-teacher-tiny", env!("CARGO_MANIFEST_DIR"));
    let out = dir.join("run");
    let o = moe(&[
        "loop",
        "distill",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--teacher",
        &teacher,
        "--top-k",
        "7",
        "--format",
        "both",
        "--eval",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.join("distill-00000.parquet").is_file());
    let rows: Vec<serde_json::Value> = std::fs::read_to_string(out.join("distill-00000.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 2);
    let n = rows[1]["input_ids"].as_array().unwrap().len();
    assert_eq!(n, 3);
    assert_eq!(rows[1]["top_values"].as_array().unwrap().len(), n);
    assert_eq!(rows[1]["token_ids"][0].as_array().unwrap().len(), 7);
    let summary: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(out.join("divergence-summary.json")).unwrap(),
    )
    .unwrap();
    assert!(summary["overall"]["forward_kl"].as_f64().unwrap() >= 0.0);
    let manifest: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("manifest.json")).unwrap()).unwrap();
    assert_eq!(manifest["records"], 2);
    let bad = moe(&[
        "loop",
        "distill",
        "--data",
        data.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
        "--teacher",
        &teacher,
        "--eval",
        "--student",
        &fixture("mixtral-small-f32"),
    ]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("same tokenizer")
            || String::from_utf8_lossy(&bad.stderr).contains("vocabulary")
    );
}

/// Device choice: a name that is no device is refused; where CUDA is missing, `--device cuda`
/// exits 1 naming the reason (on a GPU machine the same command generates).
#[test]
fn device_errors_name_the_problem() {
    fails_with(
        &["--device", "tpu", "generate", "--prompt", "hi"],
        "unknown device `tpu`",
    );
    match moe::CudaBackend::new(0) {
        Ok(_) => {
            let out = moe(&[
                "--device",
                "cuda",
                "generate",
                "--prompt",
                "hi",
                "--max-tokens",
                "2",
            ]);
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Err(reason) => {
            println!("no CUDA here ({reason}); checking the refusal");
            for cmd in [
                vec!["--device", "cuda", "generate", "--prompt", "hi"],
                vec!["--device", "cuda:1", "stats", "--prompt", "hi"],
                vec!["--device", "cuda", "serve"],
                vec!["--device", "cuda", "bench", "moe-layer", "--tokens", "1"],
            ] {
                fails_with(&cmd, "device");
            }
        }
    }
}

/// `--bf16-activations` changes the numbers of a bf16 checkpoint (activations rounded in its
/// products) and not those of an f32 one, and the bench reports whether it was in effect.
#[test]
fn bf16_activations_apply_to_bf16_weights_only() {
    let logprobs = |model: &str, flag: bool| -> Vec<f64> {
        let m = fixture(model);
        let mut args = vec![
            "logprobs",
            "--model",
            &m,
            "--prompt",
            "Hello world",
            "--top-k",
            "3",
            "--json",
        ];
        if flag {
            args.insert(0, "--bf16-activations");
        }
        json(&args)["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|t| t["top_logprobs"].as_array().unwrap().clone())
            .map(|e| e["logprob"].as_f64().unwrap())
            .collect()
    };
    assert_ne!(
        logprobs("mixtral-tiny-bf16", false),
        logprobs("mixtral-tiny-bf16", true)
    );
    assert_eq!(
        logprobs("mixtral-tiny-f32", false),
        logprobs("mixtral-tiny-f32", true)
    );
    for (model, on) in [("mixtral-tiny-bf16", true), ("mixtral-tiny-f32", false)] {
        let m = fixture(model);
        let v = json(&[
            "--bf16-activations",
            "bench",
            "--model",
            &m,
            "--prefill",
            "4",
            "--decode",
            "2",
            "--batch",
            "1",
            "--repeats",
            "1",
            "--json",
        ]);
        assert_eq!(v["bf16_activations"], on, "{model}");
    }
}

// ---- MoE families (tests/fixtures/FAMILIES.md): every command on each family's fixture ----

fn meta(name: &str) -> serde_json::Value {
    serde_json::from_str(&std::fs::read_to_string(format!("{}/meta.json", fixture(name))).unwrap())
        .unwrap()
}

fn ids(v: &serde_json::Value) -> Vec<u64> {
    serde_json::from_value(v.clone()).unwrap()
}

fn id_list(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(",")
}

/// Greedy generation from the p0 prompt ids gives transformers' 16 ids (padded-vocabulary ids
/// included: qwen2_moe picks id 615, past its 603-token tokenizer) and meta.json's text, which
/// skips those ids.
#[test]
fn families_generate_the_golden_ids() {
    for name in ["qwen2_moe-tiny-f32", "qwen3_moe-tiny-f32", "olmoe-tiny-f32"] {
        let m = meta(name);
        let prompt = ids(&m["cases"]["p0"]["input_ids"][0]);
        let dir = fixture(name);
        let v = json(&[
            "generate",
            "--model",
            &dir,
            "--token-ids",
            &id_list(&prompt),
            "--max-tokens",
            "16",
            "--json",
        ]);
        assert_eq!(ids(&v["prompt_ids"]), prompt, "{name}");
        assert_eq!(
            ids(&v["token_ids"]),
            ids(&m["cases"]["p0"]["generated_ids"][0]),
            "{name}"
        );
        assert_eq!(v["text"], m["cases"]["p0"]["generated_text"][0], "{name}");
        assert_eq!(v["finish_reason"], "length", "{name}");
    }
    // bf16 weights computed in f32 reproduce transformers' f32 run on the widened weights
    // (`ref_f32`; the closest two logprobs of a step are 2.9e-3 apart); the bf16 goldens
    // themselves need transformers' bf16 rounding.
    let name = "qwen3_moe-tiny-bf16";
    let m = meta(name);
    let v = json(&[
        "generate",
        "--model",
        name,
        "--token-ids",
        &id_list(&ids(&m["cases"]["p0"]["input_ids"][0])),
        "--max-tokens",
        "16",
        "--json",
    ]);
    assert_eq!(v["model"], name);
    assert_eq!(v["token_ids"].as_array().unwrap().len(), 16);
    assert_eq!(
        ids(&v["token_ids"]),
        ids(&m["cases"]["p0"]["ref_f32"]["generated_ids"][0])
    );
}

#[test]
fn families_logprobs_json_shape() {
    for (name, vocab) in [
        ("qwen2_moe-tiny-f32", 640),
        ("qwen3_moe-tiny-f32", 640),
        ("qwen3_moe-tiny-bf16", 640),
        ("olmoe-tiny-f32", 512),
    ] {
        let m = meta(name);
        let prompt = ids(&m["cases"]["p0"]["input_ids"][0]);
        let v = json(&[
            "logprobs",
            "--model",
            name,
            "--token-ids",
            &id_list(&prompt),
            "--top-k",
            "5",
            "--json",
        ]);
        let toks = v["tokens"].as_array().unwrap();
        assert_eq!(toks.len(), prompt.len(), "{name}");
        assert!(toks[0]["logprob"].is_null(), "{name}");
        // Position i holds the logprob of token i and the top next tokens after it.
        for (i, t) in toks.iter().enumerate() {
            assert_eq!(t["position"], i);
            assert_eq!(t["token_id"], prompt[i]);
            let top = t["top_logprobs"].as_array().unwrap();
            assert_eq!(top.len(), 5, "{name}");
            let lps: Vec<f64> = top.iter().map(|e| e["logprob"].as_f64().unwrap()).collect();
            assert!(lps.windows(2).all(|w| w[0] >= w[1]), "{name}: {lps:?}");
            assert!(lps[0] < 0.0 && lps[0].is_finite());
            assert!(top.iter().all(|e| e["token_id"].as_u64().unwrap() < vocab));
            if i > 0 {
                let best = toks[i - 1]["top_logprobs"][0]["logprob"].as_f64().unwrap();
                assert!(t["logprob"].as_f64().unwrap() <= best + 1e-6, "{name}");
            }
        }
        // The most likely next token after the prompt is the first greedy id (f32 folders).
        if !name.ends_with("bf16") {
            assert_eq!(
                toks.last().unwrap()["top_logprobs"][0]["token_id"],
                m["cases"]["p0"]["generated_ids"][0][0],
                "{name}"
            );
        }
    }
}

/// Statistics cover the MoE layers only (qwen2_moe's layer 1 is dense), named by decoder layer,
/// with transformers' expert counts.
#[test]
fn families_stats_list_moe_layers_with_golden_counts() {
    for (name, layers) in [
        ("qwen2_moe-tiny-f32", vec![0u64, 2]),
        ("qwen3_moe-tiny-f32", vec![0, 1]),
        ("olmoe-tiny-f32", vec![0, 1]),
    ] {
        let m = meta(name);
        assert_eq!(ids(&m["moe_layers"]), layers);
        let prompt = ids(&m["cases"]["p0"]["input_ids"][0]);
        let v = json(&[
            "stats",
            "--model",
            name,
            "--token-ids",
            &id_list(&prompt),
            "--json",
        ]);
        let got = v["layers"].as_array().unwrap();
        let got_layers: Vec<u64> = got.iter().map(|l| l["layer"].as_u64().unwrap()).collect();
        assert_eq!(got_layers, layers, "{name}");
        let top_k = m["spec"]["num_experts_per_tok"].as_u64().unwrap();
        assert_eq!(v["top_k"], top_k);
        for (i, l) in got.iter().enumerate() {
            let counts = ids(&l["expert_tokens"]);
            assert_eq!(
                counts,
                ids(&m["cases"]["p0"]["expert_counts"][i]),
                "{name} layer {}",
                layers[i]
            );
            assert_eq!(l["tokens"], prompt.len() as u64);
            assert_eq!(counts.iter().sum::<u64>(), top_k * prompt.len() as u64);
        }
    }
}

/// `--chat` renders the Qwen folders' ChatML template; OLMoE's folder has none.
#[test]
fn chat_renders_chatml_for_qwen3_moe() {
    let v = json(&[
        "generate",
        "--chat",
        "--prompt",
        "Hi",
        "--model",
        "qwen3_moe-tiny-f32",
        "--max-tokens",
        "4",
        "--json",
    ]);
    // `<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n`; meta.json's p0 prompt ends
    // with the same generation prompt.
    let want = [
        601u64, 331, 257, 198, 39, 72, 602, 198, 601, 460, 387, 571, 83, 198,
    ];
    let p0 = ids(&meta("qwen3_moe-tiny-f32")["cases"]["p0"]["input_ids"][0]);
    assert_eq!(p0[p0.len() - 6..], want[8..]);
    assert_eq!(ids(&v["prompt_ids"]), want);
    assert_eq!(v["token_ids"].as_array().unwrap().len(), 4);
    fails_with(
        &[
            "generate",
            "--chat",
            "--model",
            "olmoe-tiny-f32",
            "--prompt",
            "x",
        ],
        "no chat_template",
    );
}

// ---- A checkpoint truncated while `moe serve` runs on it ----

/// A copy of the small fixture in a fresh directory named `name`.
fn small_copy(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("moe-cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for f in [
        "config.json",
        "generation_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
        "model.safetensors",
    ] {
        std::fs::copy(format!("{}/{f}", fixture("mixtral-small-f32")), dir.join(f)).unwrap();
    }
    dir
}

/// Starts `moe serve` on `dir` (with `extra` flags), truncates its checkpoint to nothing once the
/// server listens, asks for a completion, and returns the response text (empty when the
/// connection closed without one) with the server's exit status and stderr.
fn serve_then_truncate(
    dir: &std::path::Path,
    extra: &[&str],
) -> (String, std::process::ExitStatus, String) {
    use std::io::{BufRead, Read, Write};
    let mut child = Command::new(env!("CARGO_BIN_EXE_moe"))
        .args(["serve", "--port", "0", "--model", dir.to_str().unwrap()])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let addr = line
        .strip_prefix("listening on http://")
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    std::fs::OpenOptions::new()
        .write(true)
        .open(dir.join("model.safetensors"))
        .unwrap()
        .set_len(0)
        .unwrap();
    let body = serde_json::json!({
        "model": dir.file_name().unwrap().to_str().unwrap(),
        "prompt": "Hello world",
        "max_tokens": 8,
        "temperature": 0,
    })
    .to_string();
    let mut s = std::net::TcpStream::connect(&addr).unwrap();
    write!(
        s,
        "POST /v1/completions HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut response = String::new();
    let _ = s.read_to_string(&mut response);
    // A server that survived is stopped here (the test then fails on its status); one that died
    // has its exit status already set, which the kill does not change.
    let _ = child.kill();
    let status = child.wait().unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (response, status, err)
}

/// Mapped, the truncated checkpoint raises SIGBUS at the first read of a lost page: the process
/// ends with status 135 and a message naming the file, not silently.
#[test]
fn serve_names_a_mapped_checkpoint_truncated_under_it() {
    let dir = small_copy("sigbus");
    let (response, status, err) = serve_then_truncate(&dir, &[]);
    assert_eq!(
        status.code(),
        Some(135),
        "status {status:?}; response {response:?}; stderr {err}"
    );
    let shard = dir.join("model.safetensors");
    assert!(
        err.contains("bus error (SIGBUS)")
            && err.contains(&format!("memory-mapped checkpoint {}", shard.display()))
            && err.contains("--no-mmap"),
        "{err}"
    );
}

/// With `--no-mmap` the same truncation changes nothing: the completion is the one the intact
/// checkpoint gives.
#[test]
fn serve_with_no_mmap_survives_its_checkpoint_being_truncated() {
    let want = json(&[
        "generate",
        "--model",
        &fixture("mixtral-small-f32"),
        "--prompt",
        "Hello world",
        "--max-tokens",
        "8",
        "--json",
    ]);
    let dir = small_copy("no-mmap");
    let (response, _, err) = serve_then_truncate(&dir, &["--no-mmap"]);
    let (head, body) = response
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no response: {response:?}; stderr {err}"));
    assert!(head.starts_with("HTTP/1.1 200"), "{response}");
    let v: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(v["choices"][0]["text"], want["text"], "{v} vs {want}");
}

#[test]
fn presets_are_found_at_run_time_from_the_current_directory_up() {
    let root = std::env::temp_dir().join(format!("moe-cli-presets-{}", std::process::id()));
    let inner = root.join("a").join("b");
    std::fs::create_dir_all(&inner).unwrap();
    std::fs::write(
        root.join("models.toml"),
        format!("[tiny]\npath = {:?}\n", fixture("mixtral-tiny-f32")),
    )
    .unwrap();
    let run = |dir: &std::path::Path, toml: Option<&std::path::Path>| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_moe"));
        c.args(["stats", "--model", "tiny", "--prompt", "Hello", "--json"])
            .current_dir(dir)
            .env_remove("MOE_MODELS_TOML");
        if let Some(t) = toml {
            c.env("MOE_MODELS_TOML", t);
        }
        c.output().expect("run moe")
    };
    // Two levels below the file, as anywhere inside a checkout.
    let out = run(&inner, None);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Outside it, nothing fixed at build time is found, and the error says where it looked.
    let outside = root.with_extension("empty");
    std::fs::create_dir_all(&outside).unwrap();
    let out = run(&outside, None);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no model at tiny: not a preset name and no such directory or file (no models.toml in $MOE_MODELS_TOML, the current directory or any directory above it)"),
        "{err}"
    );
    // $MOE_MODELS_TOML is used from anywhere, and must name a file.
    assert!(run(&outside, Some(&root.join("models.toml")))
        .status
        .success());
    let out = run(&outside, Some(&root.join("missing.toml")));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("names no such file"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::remove_dir_all(&root).unwrap();
    std::fs::remove_dir_all(&outside).unwrap();
}
