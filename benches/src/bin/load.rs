//! Load benchmark of `moe serve`: N concurrent streaming clients for a fixed time against the
//! embedded student (served in-process, or any `--url`). Reports requests/s, output tokens/s,
//! time-to-first-token and inter-token latency percentiles, and checks that every request got
//! exactly the tokens it asked for (`ignore_eos`, so the count is known).
//!
//! `cargo run --release -p moe-benches --bin load -- [--clients 64] [--seconds 20] [--max-tokens 32] [--url URL]`

use anyhow::{bail, Context, Result};
use moe::engine::{Engine, ModelSource};
use moe::server::{start, ServerConfig};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::time::{Duration, Instant};

const QUESTIONS: [&str; 6] = [
    "What is 24 plus 17?",
    "What is 95 - 94?",
    "Sort the numbers 82, 4, 51, 25 in ascending order.",
    "What is 7 times 8?",
    "Which is larger, 31 or 13?",
    "What comes next: 2, 4, 6, 8?",
];

#[derive(Default)]
struct ClientResult {
    done: usize,
    failed: Vec<String>,
    tokens: usize,
    ttft: Vec<f64>,
    itl: Vec<f64>,
}

fn percentile(v: &mut [f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    v[((v.len() - 1) as f64 * p).round() as usize]
}

fn one_request(
    client: &reqwest::blocking::Client,
    url: &str,
    q: &str,
    seed: u64,
    max_tokens: usize,
    r: &mut ClientResult,
) -> Result<()> {
    let body = json!({
        "messages": [{"role": "user", "content": q}], "stream": true, "stream_options": {"include_usage": true},
        "max_tokens": max_tokens, "ignore_eos": true, "temperature": 0.7, "seed": seed,
    });
    let t0 = Instant::now();
    let resp = client
        .post(format!("{url}/v1/chat/completions"))
        .json(&body)
        .send()?;
    if !resp.status().is_success() {
        bail!("status {}", resp.status());
    }
    let mut last = None;
    let mut token_chunks = 0;
    let mut usage = None;
    let mut finish = None;
    let mut done = false;
    for line in BufReader::new(resp).lines() {
        let line = line?;
        let Some(data) = line.strip_prefix("data: ") else {
            continue;
        };
        if data == "[DONE]" {
            done = true;
            break;
        }
        let v: Value = serde_json::from_str(data)?;
        if let Some(u) = v.get("usage").filter(|u| !u.is_null()) {
            usage = u["completion_tokens"].as_u64();
        }
        let Some(choice) = v["choices"].get(0) else {
            continue;
        };
        if choice["delta"].get("role").is_some() {
            continue;
        }
        let now = Instant::now();
        match last {
            None => r.ttft.push(now.duration_since(t0).as_secs_f64()),
            Some(t) => r.itl.push(now.duration_since(t).as_secs_f64()),
        }
        last = Some(now);
        token_chunks += 1;
        if let Some(f) = choice["finish_reason"].as_str() {
            finish = Some(f.to_string());
        }
    }
    if !done
        || token_chunks != max_tokens
        || usage != Some(max_tokens as u64)
        || finish.as_deref() != Some("length")
    {
        bail!("incomplete: {token_chunks} token chunks, usage {usage:?}, finish {finish:?}, [DONE] {done}");
    }
    r.tokens += token_chunks;
    r.done += 1;
    Ok(())
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
    let clients: usize = arg("--clients", "64").parse().context("--clients")?;
    let seconds: f64 = arg("--seconds", "20").parse().context("--seconds")?;
    let max_tokens: usize = arg("--max-tokens", "32").parse().context("--max-tokens")?;
    let external = arg("--url", "");
    let _server;
    let url = if external.is_empty() {
        let engine = Engine::load(&ModelSource::Embedded)?;
        let h = start(
            vec![(engine.info.name.clone(), engine)],
            ServerConfig {
                port: 0,
                max_batch: clients.max(1),
                ..Default::default()
            },
        )?;
        let u = h.url();
        _server = Some(h);
        u
    } else {
        _server = None;
        external
    };
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let t0 = Instant::now();
    let handles: Vec<_> = (0..clients)
        .map(|c| {
            let url = url.clone();
            std::thread::spawn(move || {
                let client = reqwest::blocking::Client::builder()
                    .timeout(Duration::from_secs(600))
                    .build()
                    .expect("client");
                let mut r = ClientResult::default();
                let mut i = 0u64;
                while Instant::now() < deadline {
                    let q = QUESTIONS[(c + i as usize) % QUESTIONS.len()];
                    if let Err(e) =
                        one_request(&client, &url, q, c as u64 * 1000 + i, max_tokens, &mut r)
                    {
                        r.failed.push(e.to_string());
                    }
                    i += 1;
                }
                r
            })
        })
        .collect();
    let mut all = ClientResult::default();
    for h in handles {
        let r = h.join().expect("client thread");
        all.done += r.done;
        all.tokens += r.tokens;
        all.failed.extend(r.failed);
        all.ttft.extend(r.ttft);
        all.itl.extend(r.itl);
    }
    let wall = t0.elapsed().as_secs_f64();
    let report = json!({
        "clients": clients, "seconds": wall, "max_tokens": max_tokens,
        "requests_completed": all.done, "requests_failed_or_incomplete": all.failed.len(),
        "requests_per_s": all.done as f64 / wall, "output_tokens_per_s": all.tokens as f64 / wall,
        "ttft_p50_ms": percentile(&mut all.ttft, 0.5) * 1e3, "ttft_p99_ms": percentile(&mut all.ttft, 0.99) * 1e3,
        "itl_p50_ms": percentile(&mut all.itl, 0.5) * 1e3, "itl_p99_ms": percentile(&mut all.itl, 0.99) * 1e3,
        "first_failures": all.failed.iter().take(3).collect::<Vec<_>>(),
    });
    println!("{}", serde_json::to_string_pretty(&report)?);
    if !all.failed.is_empty() {
        bail!(
            "{} requests failed or came back incomplete",
            all.failed.len()
        );
    }
    Ok(())
}
