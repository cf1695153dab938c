#!/usr/bin/env python3
"""GGUF fixtures of the Qwen3-MoE and OLMoE reference checkpoints, with llama.cpp's goldens.

For each HF folder in tests/fixtures (qwen3_moe-tiny-f32, olmoe-tiny-f32) this writes what
llama.cpp's `convert_hf_to_gguf.py` writes for it (its tensor names through gguf-py's
`TensorNameMap`, experts stacked into 3-D `*_exps`, the hyperparameters its `Qwen3MoeModel` /
`OlmoeModel` set, the GPT-2 BPE vocabulary padded with `[PAD{i}]` to `vocab_size`, merges and
special ids through gguf-py's `SpecialVocab`), then a Q8_0 copy by `llama-quantize`, and runs
llama.cpp on both files (`dump_logits`, ../shared's reference dumper; CPU, one thread):

  <name>.<TYPE>.gguf                 the model (TYPE: F32, Q8_0)
  <name>.<TYPE>.llama.safetensors    llama.cpp's ids, prompt logits and 8 greedy steps for the
                                     prompts below, and its ids for TOKENIZER_STRINGS

The converter itself needs PyTorch for its tensor handling; this writes the same file from
numpy. Run once; the outputs are committed:

  LLAMA_BIN=.../llama.cpp/build/bin DUMP_LOGITS=.../dump_logits \
      python tests/python/make_family_gguf.py
(needs numpy, safetensors and gguf, llama.cpp's GGUF writer, from PyPI)
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import load_file, save_file

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"
OUT = FIX / "gguf-families"

PROMPTS = {
    "p0": "Which expert reads “café”, 日本語 and 🦀?",
    "p1": "Ünïcödé naïve façade 🙂 3.14",
}
TOKENIZER_STRINGS = [
    "Hello world",
    "The quick brown fox jumps over the lazy dog.",
    "  leading spaces and trailing  ",
    "line one\nline two\r\n\tindented",
    "I'm sure they'll say it's 42, won't they?",
    "numbers 1234567 and 3.14159",
    "emoji 🦀🙂 and CJK 日本語",
    "Ünïcödé naïve façade",
    "",
    "<|im_start|>user not special here<|im_end|>",
]

ARCH = {
    "qwen3_moe-tiny-f32": gguf.MODEL_ARCH.QWEN3MOE,
    "olmoe-tiny-f32": gguf.MODEL_ARCH.OLMOE,
}
PRE = {"qwen3_moe-tiny-f32": "qwen2", "olmoe-tiny-f32": "olmo"}


def write_f32(name, dst):
    src = FIX / name
    cfg = json.loads((src / "config.json").read_text())
    arch = ARCH[name]
    t = load_file(src / "model.safetensors")
    n_layer = cfg["num_hidden_layers"]
    n_exp = cfg["num_experts"]
    tmap = gguf.get_tensor_name_map(arch, n_layer)
    w = gguf.GGUFWriter(str(dst), gguf.MODEL_ARCH_NAMES[arch])
    w.add_name(name)
    w.add_block_count(n_layer)
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(cfg["num_attention_heads"])
    w.add_head_count_kv(cfg["num_key_value_heads"])
    w.add_rope_freq_base(cfg["rope_theta"])
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_expert_count(n_exp)
    w.add_expert_used_count(cfg["num_experts_per_tok"])
    if "head_dim" in cfg:
        w.add_key_length(cfg["head_dim"])
        w.add_value_length(cfg["head_dim"])
    if arch == gguf.MODEL_ARCH.QWEN3MOE:
        w.add_expert_feed_forward_length(cfg["moe_intermediate_size"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    # The GPT-2 BPE vocabulary as the converter's `get_vocab_base` builds it.
    tok = json.loads((src / "tokenizer.json").read_text())
    vocab = dict(tok["model"]["vocab"])
    added = {a["content"]: a for a in tok["added_tokens"]}
    for a in added.values():
        vocab[a["content"]] = a["id"]
    by_id = {i: p for p, i in vocab.items()}
    tokens, types = [], []
    for i in range(cfg["vocab_size"]):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        elif by_id[i] in added:
            tokens.append(by_id[i])
            types.append(
                gguf.TokenType.CONTROL if added[by_id[i]]["special"] else gguf.TokenType.USER_DEFINED
            )
        else:
            tokens.append(by_id[i])
            types.append(gguf.TokenType.NORMAL)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(PRE[name])
    w.add_token_list(tokens)
    w.add_token_types(types)
    special = gguf.SpecialVocab(src, load_merges=True, n_vocab=len(tokens))
    special.add_to_gguf(w)
    tc = json.loads((src / "tokenizer_config.json").read_text())
    w.add_add_bos_token(bool(tc.get("add_bos_token", False)))
    if tc.get("chat_template"):
        w.add_chat_template(tc["chat_template"])

    def put(hf_name, arr):
        new = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise SystemExit(f"{name}: no GGUF name for {hf_name}")
        w.add_tensor(new, np.ascontiguousarray(arr, dtype=np.float32))

    done = set()
    for key in sorted(t):
        if ".mlp.experts." in key:
            continue
        put(key, t[key])
        done.add(key)
    for i in range(n_layer):
        for proj in ("gate_proj", "up_proj", "down_proj"):
            names = [f"model.layers.{i}.mlp.experts.{e}.{proj}.weight" for e in range(n_exp)]
            put(f"model.layers.{i}.mlp.experts.{proj}.weight", np.stack([t[n] for n in names]))
            done.update(names)
    assert done == set(t), set(t) - done
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def run(*args):
    subprocess.run([str(a) for a in args], check=True, stdout=subprocess.DEVNULL)


def goldens(model, dst):
    dump = os.environ["DUMP_LOGITS"]
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for p, text in PROMPTS.items():
            pf = Path(tmp) / f"{p}.txt"
            pf.write_bytes(text.encode())
            prefix = Path(tmp) / p
            run(dump, "--model", model, "--prompt-file", pf, "--out", prefix, "--n-gen", 8)
            for key, file in [
                ("input_ids", "input_ids"),
                ("logits", "logits"),
                ("generated_ids", "gen_ids"),
                ("gen_logits", "gen_logits"),
            ]:
                a = np.load(f"{prefix}.{file}.npy")
                out[f"{key}_{p}"] = a.astype(np.int64) if a.dtype.kind == "i" else a
        hexes = Path(tmp) / "strings.hex"
        hexes.write_text("".join(s.encode().hex() + "\n" for s in TOKENIZER_STRINGS))
        run(dump, "--model", model, "--tokenize-hex", hexes, "--out", Path(tmp) / "tok")
        lines = (Path(tmp) / "tok.tokens.txt").read_text().split("\n")
        for i, line in enumerate(lines[: len(TOKENIZER_STRINGS)]):
            ids = line.split("\t")[0].split()
            out[f"tokenize_{i}"] = np.array([int(x) for x in ids], dtype=np.int64).reshape(-1)
    save_file(
        {k: np.ascontiguousarray(v) for k, v in out.items()},
        str(dst),
        metadata={"strings": json.dumps(TOKENIZER_STRINGS), "prompts": json.dumps(PROMPTS)},
    )


def main():
    OUT.mkdir(exist_ok=True)
    quantize = Path(os.environ["LLAMA_BIN"]) / "llama-quantize"
    for name in ARCH:
        f32 = OUT / f"{name}.F32.gguf"
        write_f32(name, f32)
        q8 = OUT / f"{name}.Q8_0.gguf"
        run(quantize, f32, q8, "Q8_0", 1)
        for ty, path in [("F32", f32), ("Q8_0", q8)]:
            goldens(path, OUT / f"{name}.{ty}.llama.safetensors")
        print(name, "done", file=sys.stderr)


if __name__ == "__main__":
    main()
