//! Embedding the engine: load a model, generate for a batch with per-request sampling, score a
//! prompt, read the load-balance statistics.
//!
//! `cargo run --release -p moe-engine --example embed [-- MODEL_DIR_OR_PRESET]`

use moe::{ChatMessage, Engine, GenerateRequest, ModelSource, Prompt, SamplingParams};

fn main() -> anyhow::Result<()> {
    let arg = std::env::args().nth(1);
    let engine = Engine::load(&ModelSource::parse(arg.as_deref()))?;
    println!("loaded {} in {:?}", engine.info.name, engine.info.load_time);

    let ask = |q: &str| {
        Prompt::Chat(vec![ChatMessage {
            role: "user".into(),
            content: q.into(),
        }])
    };
    let requests = vec![
        GenerateRequest::new(ask("What is 24 plus 17?"), SamplingParams::greedy()),
        GenerateRequest::new(
            ask("Sort 9, 2, 7 in ascending order."),
            SamplingParams {
                temperature: 0.7,
                seed: Some(42),
                top_logprobs: 3,
                ..Default::default()
            },
        ),
    ];
    for c in engine.generate(&requests)? {
        println!("{:?} ({})", c.text, c.finish_reason.as_str());
        for lp in c.logprobs.iter().flatten() {
            println!(
                "  token {:>6} logprob {:.3}  top {:?}",
                lp.token_id, lp.logprob, lp.top_logprobs
            );
        }
    }

    let scored = engine.prompt_logprobs(&Prompt::Text("The answer is 41".into()), 2)?;
    let total: f32 = scored.iter().filter_map(|t| t.logprob).sum();
    println!("log-likelihood of the prompt: {total:.3}");

    let stats = engine.stats();
    println!(
        "aux loss {:.4}; layer 0 expert tokens {:?}",
        stats.aux_loss, stats.layers[0].expert_tokens
    );
    engine.reset_stats();
    Ok(())
}
