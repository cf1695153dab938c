//! Writes a bench checkpoint with random normal weights (std 0.02, norms 1), in bf16 (default) or
//! f32, as a HuggingFace directory with the Mistral tokenizer (vocab 32000).
//!
//! `--family mixtral` (default): Mixtral architecture, hidden 1024, ffn 3584, 8 layers, 16 heads /
//! 4 KV heads, 8 experts top-2. `--mixtral-layers N` writes N layers of the Mixtral-8x7B shape
//! instead (hidden 4096, ffn 14336, 32 heads / 8 KV heads), for GPU benchmarks.
//!
//! `--family qwen3_moe`: Qwen3-MoE architecture scaled to a CPU, hidden 1024, 8 layers, 16 heads /
//! 4 KV heads of head_dim 64 with per-head q/k norms, 64 experts of width 512, top-8, top-k
//! renormalised. `--qwen3-layers N` writes N layers of the Qwen3-30B-A3B shape instead (hidden
//! 2048, 32 heads / 4 KV heads of head_dim 128, 128 experts of width 768, top-8), for GPU
//! benchmarks.
//!
//! `--tokenizer DIR` names where tokenizer.json comes from.
//!
//! `cargo run --release -p moe-benches --bin make_bench_checkpoint -- OUT_DIR [bf16|f32]
//!  [--family mixtral|qwen3_moe] [--mixtral-layers N | --qwen3-layers N] [--tokenizer DIR]`

use anyhow::{bail, Context, Result};
use half::bf16;
use rayon::prelude::*;
use safetensors::{Dtype, View};
use std::borrow::Cow;
use std::path::PathBuf;

const VOCAB: usize = 32000;

#[derive(Clone, Copy, PartialEq)]
enum Family {
    Mixtral,
    Qwen3Moe,
}

/// The shape of a bench checkpoint.
struct Shape {
    family: Family,
    hidden: usize,
    layers: usize,
    heads: usize,
    kv_heads: usize,
    head_dim: usize,
    experts: usize,
    top_k: usize,
    /// Width of one expert.
    ffn: usize,
}

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
        bail!(
            "usage: make_bench_checkpoint OUT_DIR [bf16|f32] [--family mixtral|qwen3_moe] \
             [--mixtral-layers N | --qwen3-layers N] [--tokenizer DIR]"
        );
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
    let family = match flag("--family").as_deref() {
        None if flag("--qwen3-layers").is_some() => Family::Qwen3Moe,
        None | Some("mixtral") => Family::Mixtral,
        Some("qwen3_moe") => Family::Qwen3Moe,
        Some(f) => bail!("--family {f}: use mixtral or qwen3_moe"),
    };
    let layers_flag = |name: &str| -> Result<Option<usize>> {
        flag(name)
            .map(|n| n.parse::<usize>().with_context(|| name.to_string()))
            .transpose()
    };
    let mixtral_layers = layers_flag("--mixtral-layers")?;
    let qwen3_layers = layers_flag("--qwen3-layers")?;
    let shape = match family {
        Family::Mixtral => {
            if qwen3_layers.is_some() {
                bail!("--qwen3-layers writes a qwen3_moe checkpoint, not --family mixtral");
            }
            let (hidden, ffn, layers, heads, kv_heads) = match mixtral_layers {
                Some(n) => (4096, 14336, n, 32, 8),
                None => (1024, 3584, 8, 16, 4),
            };
            Shape {
                family,
                hidden,
                layers,
                heads,
                kv_heads,
                head_dim: hidden / heads,
                experts: 8,
                top_k: 2,
                ffn,
            }
        }
        Family::Qwen3Moe => {
            if mixtral_layers.is_some() {
                bail!("--mixtral-layers writes a mixtral checkpoint, not --family qwen3_moe");
            }
            let (hidden, layers, heads, kv_heads, head_dim, experts, ffn) = match qwen3_layers {
                Some(n) => (2048, n, 32, 4, 128, 128, 768),
                None => (1024, 8, 16, 4, 64, 64, 512),
            };
            Shape {
                family,
                hidden,
                layers,
                heads,
                kv_heads,
                head_dim,
                experts,
                top_k: 8,
                ffn,
            }
        }
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
    let Shape {
        family,
        hidden: HIDDEN,
        layers: LAYERS,
        heads: HEADS,
        kv_heads: KV_HEADS,
        head_dim: hd,
        experts: EXPERTS,
        top_k: TOP_K,
        ffn: FFN,
    } = shape;
    let qwen = family == Family::Qwen3Moe;
    // Where the MoE block and its experts' projections live (w1 = gate, w3 = up, w2 = down).
    let (moe_prefix, [w1, w3, w2]) = if qwen {
        ("mlp", ["gate_proj", "up_proj", "down_proj"])
    } else {
        ("block_sparse_moe", ["w1", "w3", "w2"])
    };
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
        if qwen {
            for n in ["q_norm", "k_norm"] {
                tensors.push((format!("{p}.self_attn.{n}.weight"), tensor(vec![hd], None)));
            }
        }
        tensors.push((
            format!("{p}.{moe_prefix}.gate.weight"),
            tensor(vec![EXPERTS, HIDDEN], Some(0.02)),
        ));
        for e in 0..EXPERTS {
            let m = format!("{p}.{moe_prefix}.experts.{e}");
            tensors.push((
                format!("{m}.{w1}.weight"),
                tensor(vec![FFN, HIDDEN], Some(0.02)),
            ));
            tensors.push((
                format!("{m}.{w3}.weight"),
                tensor(vec![FFN, HIDDEN], Some(0.02)),
            ));
            tensors.push((
                format!("{m}.{w2}.weight"),
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
    let config = if qwen {
        serde_json::json!({
            "architectures": ["Qwen3MoeForCausalLM"], "model_type": "qwen3_moe",
            "vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": 3 * HIDDEN,
            "moe_intermediate_size": FFN, "num_hidden_layers": LAYERS,
            "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS, "head_dim": hd,
            "num_experts": EXPERTS, "num_experts_per_tok": TOP_K, "norm_topk_prob": true,
            "decoder_sparse_step": 1, "mlp_only_layers": [], "attention_bias": false,
            "rope_theta": 1e6, "rms_norm_eps": 1e-6, "max_position_embeddings": 4096,
            "use_sliding_window": false, "sliding_window": null, "tie_word_embeddings": false,
            "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": torch_dtype
        })
    } else {
        serde_json::json!({
            "architectures": ["MixtralForCausalLM"], "model_type": "mixtral",
            "vocab_size": VOCAB, "hidden_size": HIDDEN, "intermediate_size": FFN,
            "num_hidden_layers": LAYERS, "num_attention_heads": HEADS, "num_key_value_heads": KV_HEADS,
            "num_local_experts": EXPERTS, "num_experts_per_tok": TOP_K, "rope_theta": 1e6, "rms_norm_eps": 1e-5,
            "max_position_embeddings": 4096, "sliding_window": null, "tie_word_embeddings": false,
            "hidden_act": "silu", "bos_token_id": 1, "eos_token_id": 2, "torch_dtype": torch_dtype
        })
    };
    std::fs::write(
        out.join("config.json"),
        serde_json::to_string_pretty(&config)?,
    )?;
    for f in ["tokenizer.json", "tokenizer_config.json"] {
        std::fs::copy(tokenizer_dir.join(f), out.join(f))
            .with_context(|| format!("copying {f}"))?;
    }
    let name = if qwen { "qwen3_moe" } else { "mixtral" };
    eprintln!("wrote {} ({name}, {dtype})", out.display());
    Ok(())
}
