//! Writes the bench checkpoint: Mixtral architecture, hidden 1024, ffn 3584, 8 layers, 16 heads /
//! 4 KV heads, 8 experts top-2, vocab 32000, random normal weights (std 0.02, norms 1), in bf16
//! (default) or f32, as a HuggingFace directory with the Mistral tokenizer. `--mixtral-layers N`
//! writes N layers of the Mixtral-8x7B shape instead (hidden 4096, ffn 14336, 32 heads / 8 KV
//! heads), for GPU benchmarks; `--tokenizer DIR` names where tokenizer.json comes from.
//!
//! `cargo run --release -p moe-benches --bin make_bench_checkpoint -- OUT_DIR [bf16|f32]
//!  [--mixtral-layers N] [--tokenizer DIR]`

use anyhow::{bail, Context, Result};
use half::bf16;
use rayon::prelude::*;
use safetensors::{Dtype, View};
use std::borrow::Cow;
use std::path::PathBuf;

const EXPERTS: usize = 8;
const VOCAB: usize = 32000;

struct Tensor {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for &Tensor {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

/// Normal(0, std) by Box–Muller over a per-chunk xorshift stream (deterministic for a seed).
fn normal(n: usize, std: f32, seed: u64) -> Vec<f32> {
    let mut out = vec![0f32; n];
    out.par_chunks_mut(1 << 16)
        .enumerate()
        .for_each(|(c, chunk)| {
            let mut s = (seed ^ (c as u64).wrapping_mul(0xD1B5_4A32_D192_ED03))
                .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                | 1;
            let mut next = || {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                ((s >> 11) as f64 + 0.5) / (1u64 << 53) as f64
            };
            for pair in chunk.chunks_mut(2) {
                let (u1, u2) = (next(), next());
                let r = (-2.0 * u1.ln()).sqrt();
                let t = 2.0 * std::f64::consts::PI * u2;
                pair[0] = (r * t.cos()) as f32 * std;
                if pair.len() > 1 {
                    pair[1] = (r * t.sin()) as f32 * std;
                }
            }
        });
    out
}

#[allow(non_snake_case)]
fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(out) = args.first().map(PathBuf::from) else {
        bail!("usage: make_bench_checkpoint OUT_DIR [bf16|f32]");
    };
    let positional: Vec<&String> = {
        let mut v = vec![];
        let mut i = 0;
        while i < args.len() {
            if args[i].starts_with("--") {
                i += 2;
            } else {
                v.push(&args[i]);
                i += 1;
            }
        }
        v
    };
    let flag = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let dtype = positional.get(1).map(|s| s.as_str()).unwrap_or("bf16");
    let (HIDDEN, FFN, LAYERS, HEADS, KV_HEADS) = match flag("--mixtral-layers") {
        Some(n) => (
            4096,
            14336,
            n.parse::<usize>().context("--mixtral-layers")?,
            32,
            8,
        ),
        None => (1024, 3584, 8, 16, 4),
    };
    let tokenizer_dir = flag("--tokenizer").map(PathBuf::from).unwrap_or_else(|| {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../tests/fixtures/mixtral-tiny-f32")
    });
    let (st_dtype, torch_dtype) = match dtype {
        "bf16" => (Dtype::BF16, "bfloat16"),
        "f32" => (Dtype::F32, "float32"),
        d => bail!("dtype {d}: use bf16 or f32"),
    };
    std::fs::create_dir_all(&out)?;
    let encode = |v: Vec<f32>| -> Vec<u8> {
        match st_dtype {
            Dtype::BF16 => v
                .par_iter()
                .flat_map_iter(|x| bf16::from_f32(*x).to_le_bytes())
                .collect(),
            _ => bytemuck::cast_slice(&v).to_vec(),
        }
    };
    let mut seed = 0u64;
    let mut tensor = |shape: Vec<usize>, std: Option<f32>| {
        seed += 1;
        let n: usize = shape.iter().product();
        let v = match std {
            Some(s) => normal(n, s, seed),
            None => vec![1.0; n],
        };
        Tensor {
            dtype: st_dtype,
            shape,
            bytes: encode(v),
        }
    };
    let hd = HIDDEN / HEADS;
    let mut tensors: Vec<(String, Tensor)> = vec![];
    tensors.push((
        "model.embed_tokens.weight".into(),
        tensor(vec![VOCAB, HIDDEN], Some(0.02)),
    ));
    for l in 0..LAYERS {
        let p = format!("model.layers.{l}");
        tensors.push((
            format!("{p}.input_layernorm.weight"),
            tensor(vec![HIDDEN], None),
        ));
        tensors.push((
            format!("{p}.post_attention_layernorm.weight"),
            tensor(vec![HIDDEN], None),
        ));
        tensors.push((
            format!("{p}.self_attn.q_proj.weight"),
            tensor(vec![HEADS * hd, HIDDEN], Some(0.02)),
        ));
        tensors.push((
            format!("{p}.self_attn.k_proj.weight"),
            tensor(vec![KV_HEADS * hd, HIDDEN], Some(0.02)),
        ));
        tensors.push((
            format!("{p}.self_attn.v_proj.weight"),
            tensor(vec![KV_HEADS * hd, HIDDEN], Some(0.02)),
        ));
        tensors.push((
            format!("{p}.self_attn.o_proj.weight"),
            tensor(vec![HIDDEN, HEADS * hd], Some(0.02)),
        ));
        tensors.push((
            format!("{p}.block_sparse_moe.gate.weight"),
            tensor(vec![EXPERTS, HIDDEN], Some(0.02)),
        ));
        for e in 0..EXPERTS {
            let m = format!("{p}.block_sparse_moe.experts.{e}");
            tensors.push((
                format!("{m}.w1.weight"),
                tensor(vec![FFN, HIDDEN], Some(0.02)),
            ));
            tensors.push((
                format!("{m}.w3.weight"),
                tensor(vec![FFN, HIDDEN], Some(0.02)),
            ));
            tensors.push((
                format!("{m}.w2.weight"),
                tensor(vec![HIDDEN, FFN], Some(0.02)),
            ));
        }
    }
    tensors.push(("model.norm.weight".into(), tensor(vec![HIDDEN], None)));
    tensors.push((
        "lm_head.weight".into(),
        tensor(vec![VOCAB, HIDDEN], Some(0.02)),
    ));
    let views: Vec<(&str, &Tensor)> = tensors.iter().map(|(n, t)| (n.as_str(), t)).collect();
    let path = out.join("model.safetensors");
    safetensors::serialize_to_file(views, None, &path)
        .with_context(|| format!("writing {}", path.display()))?;
    let config = serde_json::json!({
        "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
        "vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": FFN,
        "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
        "num_local_experts": EXPERTS, "num_experts_per_tok": 2, "rope_theta": 1e6, "rms_norm_eps": 1e-5,
        "max_position_embeddings": 4096, "sliding_window": null, "tie_word_embeddings": false,
        "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": torch_dtype
    });
    std::fs::write(
        out.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tokenizer_dir.join(f), out.join(f))
            .with_context(|| format!("copying {f}"))?;
    }
    eprintln!("wrote {} ({dtype})", out.display());
    Ok(())
}
