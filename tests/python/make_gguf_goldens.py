#!/usr/bin/env python3
"""Converts llama.cpp's GGUF goldens (`<name>.<TYPE>.golden.npz`, made by make_gguf_fixtures.py in
the reference set described in tests/fixtures/gguf-mixtral-a/README.md) into safetensors files the
Rust tests read: `tests/fixtures/gguf-mixtral-a/<TYPE>.golden.safetensors`.

Keys kept (p = p0, p1): input_ids_p, logits_p, gen_logits_p, generated_ids_p, router_probs_p,
ref_f64_logits_p, ref_f64_generated_ids_p, kl_yardstick_p (float64 -> float32). Ids become int64.

Also the transformers float32 golden of the original HF model on the same ids
(`hf-f32.golden.safetensors`: input_ids_p, logits_p, generated_ids_p, gen_logits_p), the model
every GGUF type approximates.

Usage: make_gguf_goldens.py SRC_DIR DST_DIR  (numpy only)
"""
import json
import struct
import sys
from pathlib import Path

import numpy as np

KEYS = ["input_ids", "logits", "gen_logits", "generated_ids", "router_probs",
        "ref_f64_logits", "ref_f64_generated_ids", "kl_yardstick"]
TYPES = ["F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q4_K_M", "Q5_K_M", "Q6_K", "Q3_K_M",
         "Q2_K", "IQ4_NL", "IQ4_XS"]


def write_safetensors(path, tensors):
    header, blobs, at = {}, [], 0
    for name in sorted(tensors):
        a = np.ascontiguousarray(tensors[name])
        dt = {np.dtype("float32"): "F32", np.dtype("int64"): "I64"}[a.dtype]
        b = a.tobytes()
        header[name] = {"dtype": dt, "shape": list(a.shape), "data_offsets": [at, at + len(b)]}
        blobs.append(b)
        at += len(b)
    h = json.dumps(header, separators=(",", ":")).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)


def main(src, dst):
    for t in TYPES:
        g = np.load(Path(src) / f"gguf-mixtral-a.{t}.golden.npz")
        out = {}
        for p in ["p0", "p1"]:
            for k in KEYS:
                a = np.asarray(g[f"{k}_{p}"])
                if a.dtype.kind in "iu":
                    a = a.astype(np.int64)
                else:
                    a = a.astype(np.float32)
                out[f"{k}_{p}"] = a.reshape(a.shape or (1,))
        write_safetensors(Path(dst) / f"{t}.golden.safetensors", out)
    g = np.load(Path(src) / "gguf-mixtral-a.hf-f32.golden.npz")
    out = {}
    for p in ["p0", "p1"]:
        for k in ["input_ids", "logits", "generated_ids", "gen_logits"]:
            a = np.asarray(g[f"{k}_{p}"])
            out[f"{k}_{p}"] = a.astype(np.int64) if a.dtype.kind in "iu" else a.astype(np.float32)
    write_safetensors(Path(dst) / "hf-f32.golden.safetensors", out)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
