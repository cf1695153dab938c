#!/usr/bin/env python3
"""Writes a Mixtral safetensors checkpoint (the bench checkpoint) as a GGUF file in llama.cpp's
layout, for side-by-side runs with llama.cpp on the same weights.

The layout is what llama.cpp's `convert_hf_to_gguf.py` writes for `MixtralForCausalLM`
(architecture `llama`): q/k rows permuted from HF's rotate-half order to interleaved pairs, the
experts stacked into 3-D `ffn_{gate,up,down}_exps`, norms and the router in f32, everything else
in the chosen float type. The tokenizer goes in as a SentencePiece (`llama`) vocabulary. Quantised
files come from this one's F32 output by `llama-quantize`.

    python benches/python/checkpoint_to_gguf.py CHECKPOINT_DIR OUT.gguf f32|bf16|f16

Needs `numpy` and `gguf` (llama.cpp's own GGUF writer, on PyPI).
"""
import json
import struct
import sys
from pathlib import Path

import gguf
import numpy as np


def read_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        base = 8 + n
        data = np.memmap(path, dtype=np.uint8, mode="r")
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        raw = data[base + a : base + b]
        dt = info["dtype"]
        if dt == "F32":
            arr = raw.view(np.float32)
        elif dt == "F16":
            arr = raw.view(np.float16).astype(np.float32)
        elif dt == "BF16":
            arr = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            raise SystemExit(f"{name}: dtype {dt} not supported")
        out[name] = arr.reshape(info["shape"])
    return out


def permute(w, n_head, n_head_kv):
    if n_head_kv is not None and n_head != n_head_kv:
        n_head = n_head_kv
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def main():
    src, dst, kind = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    qtype, ftype = {
        "f32": (gguf.GGMLQuantizationType.F32, gguf.LlamaFileType.ALL_F32),
        "f16": (gguf.GGMLQuantizationType.F16, gguf.LlamaFileType.MOSTLY_F16),
        "bf16": (gguf.GGMLQuantizationType.BF16, gguf.LlamaFileType.MOSTLY_BF16),
    }[kind]
    cfg = json.loads((src / "config.json").read_text())
    files = sorted(src.glob("*.safetensors"))
    t = {}
    for f in files:
        t.update(read_safetensors(f))
    n_layer, n_head, n_kv = (
        cfg["num_hidden_layers"],
        cfg["num_attention_heads"],
        cfg["num_key_value_heads"],
    )
    hidden = cfg["hidden_size"]
    head_dim = cfg.get("head_dim") or hidden // n_head
    n_exp = cfg["num_local_experts"]

    w = gguf.GGUFWriter(dst, "llama")
    w.add_name(src.name)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(hidden)
    w.add_block_count(n_layer)
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_rope_dimension_count(head_dim)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_expert_count(n_exp)
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(ftype)

    tok = json.loads((src / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    for a in tok.get("added_tokens", []):
        vocab[a["content"]] = a["id"]
    tokens = [""] * cfg["vocab_size"]
    for piece, i in vocab.items():
        if i < len(tokens):
            tokens[i] = piece
    special = {a["content"] for a in tok.get("added_tokens", []) if a.get("special")}
    types, scores = [], []
    for i, piece in enumerate(tokens):
        if piece == "<unk>":
            types.append(gguf.TokenType.UNKNOWN)
        elif piece in special:
            types.append(gguf.TokenType.CONTROL)
        elif piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
            types.append(gguf.TokenType.BYTE)
        else:
            types.append(gguf.TokenType.NORMAL)
        scores.append(-float(i))
    w.add_tokenizer_model("llama")
    w.add_tokenizer_pre("default")
    w.add_token_list(tokens)
    w.add_token_scores(scores)
    w.add_token_types(types)
    w.add_bos_token_id(cfg.get("bos_token_id", 1))
    w.add_eos_token_id(cfg.get("eos_token_id", 2))
    w.add_add_bos_token(True)
    w.add_add_eos_token(False)

    def add(name, arr, force_f32=False):
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if force_f32 or arr.ndim == 1 or qtype == gguf.GGMLQuantizationType.F32:
            w.add_tensor(name, arr)
        else:
            w.add_tensor(name, gguf.quants.quantize(arr, qtype), raw_dtype=qtype)

    add("token_embd.weight", t["model.embed_tokens.weight"])
    for i in range(n_layer):
        p = f"model.layers.{i}"
        add(f"blk.{i}.attn_norm.weight", t[f"{p}.input_layernorm.weight"])
        add(f"blk.{i}.attn_q.weight", permute(t[f"{p}.self_attn.q_proj.weight"], n_head, n_head))
        add(f"blk.{i}.attn_k.weight", permute(t[f"{p}.self_attn.k_proj.weight"], n_head, n_kv))
        add(f"blk.{i}.attn_v.weight", t[f"{p}.self_attn.v_proj.weight"])
        add(f"blk.{i}.attn_output.weight", t[f"{p}.self_attn.o_proj.weight"])
        add(f"blk.{i}.ffn_norm.weight", t[f"{p}.post_attention_layernorm.weight"])
        add(f"blk.{i}.ffn_gate_inp.weight", t[f"{p}.block_sparse_moe.gate.weight"], True)
        for hf, gg in (("w1", "gate"), ("w2", "down"), ("w3", "up")):
            stack = np.stack(
                [t[f"{p}.block_sparse_moe.experts.{e}.{hf}.weight"] for e in range(n_exp)]
            )
            add(f"blk.{i}.ffn_{gg}_exps.weight", stack)
    add("output_norm.weight", t["model.norm.weight"])
    add("output.weight", t["lm_head.weight"])

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
