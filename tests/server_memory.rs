//! Peak memory of one large prompt-logprobs request, alone in its process (so the process's
//! peak resident size is this request's): `echo`, `max_tokens: 0` and every alternative over a
//! 256-token prompt. The server computes the logits a chunk of positions at a time, keeps only
//! the entries and writes the JSON straight into the body, so the peak grows by about the
//! response's size, not by the gigabytes a JSON tree of 8 M entries takes.

use moe::engine::{Engine, ModelSource};
use moe::server::{start, ServerConfig};
use serde_json::json;
use std::io::Read;

/// `VmRSS` and `VmHWM` of this process, bytes.
fn rss_and_peak() -> (u64, u64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0)
            * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

#[test]
fn a_prompt_with_every_logprob_grows_the_peak_by_about_its_response() {
    if !std::path::Path::new("/proc/self/status").exists() {
        eprintln!("skipped: no /proc/self/status");
        return;
    }
    let engine = Engine::load(&ModelSource::Embedded).unwrap();
    let h = start(
        vec![("moe-student-tiny".to_string(), engine)],
        ServerConfig {
            port: 0,
            ..Default::default()
        },
    )
    .unwrap();
    let prompt: Vec<u32> = std::iter::once(1)
        .chain((1..256u32).map(|i| 100 + (i * 37) % 5000))
        .collect();
    let send = |prompt: &[u32]| {
        let mut r = reqwest::blocking::Client::new()
            .post(format!("{}/v1/completions", h.url()))
            .json(
                &json!({"model": "moe-student-tiny", "prompt": prompt, "max_tokens": 0,
                          "echo": true, "logprobs": 32000}),
            )
            .send()
            .unwrap();
        let status = r.status().as_u16();
        // Read and drop the body a megabyte at a time: the client holds none of it.
        let mut buf = vec![0u8; 1 << 20];
        let mut bytes = 0u64;
        loop {
            let n = r.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            bytes += n as u64;
        }
        (status, bytes)
    };
    // Warm up (threads, buffers, the tokenizer's caches) with a short prompt.
    assert_eq!(send(&prompt[..4]).0, 200);
    // Restart the peak from the current size where the kernel allows it; otherwise the peak
    // is measured from the resident size now, which only overstates the growth.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let (before, _) = rss_and_peak();
    let (status, bytes) = send(&prompt);
    let (after, peak) = rss_and_peak();
    assert_eq!(status, 200);
    let estimate = 256 * 32001 * moe::server::types::COMPLETION_ENTRY_BYTES as u64;
    assert!(
        bytes <= estimate,
        "the response is {bytes} bytes, above its estimate of {estimate}"
    );
    let grew = peak.saturating_sub(before);
    let bound = 2 * bytes + (64 << 20);
    eprintln!(
        "response {bytes} bytes (estimate {estimate}); resident {before} → peak {peak} \
         (+{grew}), {after} after; bound +{bound}"
    );
    assert!(
        grew <= bound,
        "the peak grew by {grew} bytes for a {bytes}-byte response (bound {bound})"
    );
    h.shutdown();
}
