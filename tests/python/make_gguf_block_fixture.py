#!/usr/bin/env python3
"""Makes tests/fixtures/gguf-blocks/blocks.json and tests/fixtures/gguf-mixtral-a/expected.json.

Provenance: the raw blocks come from llama.cpp's own GGUF files in
/work/shared/reference/gguf/gguf-mixtral-a/ (made by make_gguf_fixtures.py there: convert_hf_to_gguf.py
+ llama-quantize); the expected values come from that folder's gguf_ref.py dequantizers (numpy,
checked there bit for bit against gguf-py and ggml's dequantize_row_*). Only numpy is needed: gguf_ref
imports gguf-py at module level, so a stub module stands in for it, and the GGUF container is parsed
here with a few lines of struct.

blocks.json: per ggml type, the first blocks (512 values) of the first tensor of that type found in the
files, as hex, with the expected float32 values as u32 bit patterns (exact comparison).
expected.json: for every tensor of the Q8_0 and Q4_K_M files, the FNV-1a 64 hash of the little-endian
f32 bit patterns of the whole dequantized tensor, its float64 sum, and its first 64 values (bits).

Run: python3 tests/python/make_gguf_block_fixture.py [REF_DIR]   (needs numpy)
"""
import json
import os
import struct
import sys
import types

import numpy as np

REF = sys.argv[1] if len(sys.argv) > 1 else "/work/shared/reference/gguf"
sys.modules["gguf"] = types.ModuleType("gguf")  # gguf_ref only needs it for its model reader
sys.path.insert(0, REF)
import gguf_ref  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DIR = os.path.join(REF, "gguf-mixtral-a")
NAMES = {v[0]: k for k, v in gguf_ref.TYPE_INFO.items()}


def read_gguf(path):
    b = open(path, "rb").read()
    pos = 0

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from("<" + fmt, b, pos)
        pos += struct.calcsize("<" + fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take("Q")
        s = b[pos:pos + n].decode()
        pos += n
        return s

    scalar = {0: "B", 1: "b", 2: "H", 3: "h", 4: "I", 5: "i", 6: "f", 7: "?", 10: "Q", 11: "q", 12: "d"}

    def value(t):
        if t in scalar:
            return take(scalar[t])
        if t == 8:
            return string()
        assert t == 9
        et, n = take("I"), take("Q")
        return [value(et) for _ in range(n)]

    assert b[:4] == b"GGUF"
    pos = 4
    take("I")
    nt, nkv = take("Q"), take("Q")
    kv = {}
    for _ in range(nkv):
        k = string()
        kv[k] = value(take("I"))
    tensors = []
    for _ in range(nt):
        name = string()
        nd = take("I")
        ne = [take("Q") for _ in range(nd)]
        tensors.append((name, ne, take("I"), take("Q")))
    align = kv.get("general.alignment", 32)
    start = (pos + align - 1) // align * align
    out = []
    for name, ne, t, off in tensors:
        tname = NAMES[t]
        _, qk, size = gguf_ref.TYPE_INFO[tname]
        nbytes = int(np.prod(ne)) // qk * size
        out.append((name, ne, tname, np.frombuffer(b, np.uint8, nbytes, start + off)))
    return out


def bits(x):
    return [int(v) for v in np.ascontiguousarray(x, dtype=np.float32).reshape(-1).view(np.uint32)]


def fnv1a(x):
    h = 0xCBF29CE484222325
    for byte in np.ascontiguousarray(x, dtype="<f4").tobytes():
        h = ((h ^ byte) * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def fnv1a_fast(x):
    # same as fnv1a, vectorised over nothing (numpy has no scan); fine for the ~1M values here
    return fnv1a(x)


FILES = ["F16", "Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q2_K", "Q3_K_M", "Q4_K_M", "Q5_K_M", "Q6_K", "IQ4_NL", "IQ4_XS"]
blocks = {"provenance": __doc__.strip().splitlines()[2:9], "types": {}}
for f in FILES:
    fn = f"gguf-mixtral-a.{f}.gguf"
    for name, ne, tname, raw in read_gguf(os.path.join(DIR, fn)):
        if tname == "F32" or tname in blocks["types"]:
            continue
        _, qk, size = gguf_ref.TYPE_INFO[tname]
        n = 512
        part = raw[: n // qk * size].copy()
        vals = gguf_ref.dequantize(part, tname, [n])
        blocks["types"][tname] = {"file": fn, "tensor": name, "values": n, "hex": part.tobytes().hex(), "expected_bits": bits(vals)}
with open(os.path.join(ROOT, "tests/fixtures/gguf-blocks/blocks.json"), "w") as fh:
    json.dump(blocks, fh, separators=(",", ":"))
print("types:", sorted(blocks["types"]))

expected = {"provenance": "tests/python/make_gguf_block_fixture.py: gguf_ref.py dequantizers on the shipped files", "files": {}}
for f in ["Q8_0", "Q4_K_M"]:
    fn = f"gguf-mixtral-a.{f}.gguf"
    per = {}
    for name, ne, tname, raw in read_gguf(os.path.join(DIR, fn)):
        vals = gguf_ref.dequantize(raw.copy(), tname, ne).reshape(-1)
        per[name] = {"type": tname, "ne": ne, "fnv1a64": f"{fnv1a(vals):016x}", "sum": float(vals.astype(np.float64).sum()), "first_bits": bits(vals[:64])}
    expected["files"][fn] = per
with open(os.path.join(ROOT, "tests/fixtures/gguf-mixtral-a/expected.json"), "w") as fh:
    json.dump(expected, fh, indent=0)
print("done")
