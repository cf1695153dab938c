"""The Python bindings against the transformers goldens, and their behaviour with seeds, bad input
and threads."""

import json
import os
import struct
import threading

import numpy as np
import pytest

import moe

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
FIXTURES = os.path.join(ROOT, "tests", "fixtures")


def read_golden(name):
    """Reads golden.safetensors with numpy alone: {key: array}."""
    raw = open(os.path.join(FIXTURES, name, "golden.safetensors"), "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    out = {}
    for key, t in header.items():
        if key == "__metadata__":
            continue
        b, e = t["data_offsets"]
        data = raw[8 + n + b : 8 + n + e]
        if t["dtype"] == "F32":
            a = np.frombuffer(data, dtype="<f4")
        elif t["dtype"] == "BF16":
            a = (np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16).view(np.float32)
        elif t["dtype"] == "I64":
            a = np.frombuffer(data, dtype="<i8")
        else:
            continue
        out[key] = a.reshape(t["shape"])
    return out


@pytest.fixture(scope="module")
def student():
    return moe.Model()


@pytest.mark.parametrize("name", ["mixtral-tiny-f32", "mixtral-small-f32"])
def test_logits_equal_the_goldens(name):
    model = moe.Model(os.path.join(FIXTURES, name))
    g = read_golden(name)
    ids = g["p0.input_ids"][0].tolist()
    got = model.logits(ids)
    assert got.dtype == np.float32 and got.shape == (len(ids), model.vocab_size)
    want = g["p0.logits"][0]
    # Every element within 2e-5 absolute + 1e-5 relative (the engine's f32 tolerance).
    diff = np.abs(got - want)
    assert np.all(diff <= 2e-5 + 1e-5 * np.abs(want)), f"worst {diff.max()} at {np.unravel_index(diff.argmax(), diff.shape)}"
    try:
        import torch
        from transformers import AutoModelForCausalLM
    except ImportError:
        return
    hf = AutoModelForCausalLM.from_pretrained(os.path.join(FIXTURES, name), dtype=torch.float32)
    with torch.no_grad():
        ref = hf(torch.tensor([ids])).logits[0].numpy()
    assert np.all(np.abs(got - ref) <= 2e-5 + 1e-5 * np.abs(ref))


def test_bf16_logits_match_the_f32_reference():
    model = moe.Model(os.path.join(FIXTURES, "mixtral-tiny-bf16"))
    g = read_golden("mixtral-tiny-bf16")
    ids = g["p0.input_ids"][0].tolist()
    want = g["p0.ref_f32.logits"][0]
    assert np.all(np.abs(model.logits(ids) - want) <= 2e-5 + 1e-5 * np.abs(want))


def test_bf16_activations_carry_bf16_rounding_within_its_bounds():
    path = os.path.join(FIXTURES, "mixtral-tiny-bf16")
    rounded = moe.Model(path, bf16_activations=True)
    g = read_golden("mixtral-tiny-bf16")
    ids = g["p0.input_ids"][0].tolist()
    got = rounded.logits(ids)
    assert not np.array_equal(got, moe.Model(path).logits(ids))
    for key in ["p0.logits", "p0.ref_f32.logits"]:
        want = g[key][0]
        assert np.all(np.abs(got - want) <= 0.1 + 2e-2 * np.abs(want)), key


def test_prompt_logprobs_arrays(student):
    text = "[INST] What is 24 plus 17? [/INST]"
    p = student.prompt_logprobs(text, top_k=4)
    ids = student.tokenizer.encode(text)
    assert p.prompt_ids.tolist() == ids
    assert p.token_ids.shape == (len(ids), 4) and p.logprobs.shape == (len(ids), 4)
    assert np.isnan(p.prompt_logprobs[0])
    logits = student.logits(ids).astype(np.float64)
    lse = np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1)) + logits.max(-1)
    want = logits[np.arange(len(ids) - 1), ids[1:]] - lse[:-1]
    assert np.allclose(p.prompt_logprobs[1:], want, atol=1e-4)
    assert np.all(np.diff(p.logprobs, axis=1) <= 0)


def test_chat_generation_and_seeds(student):
    out = student.chat([{"role": "user", "content": "What is 24 plus 17?"}], temperature=0)
    assert out[0].text == "41" and out[0].finish_reason == "stop"
    conv = [{"role": "user", "content": "What is 95 - 94?"}]
    a = student.chat(conv, temperature=1.0, seed=3, max_tokens=8, ignore_eos=True)
    b = student.chat(conv, temperature=1.0, seed=3, max_tokens=8, ignore_eos=True)
    assert a[0].token_ids == b[0].token_ids
    many = student.chat([conv, [{"role": "user", "content": "Sort 4, 1, 3."}]], temperature=0, logprobs=True, top_logprobs=30)
    assert len(many) == 2 and len(many[0].top_logprobs[0]) == 30
    assert len(student.generate("[INST] hi [/INST]", n=3, seed=1, max_tokens=4)) == 3


def test_sampling_defaults_to_greedy(student):
    # As the CLI and SamplingParams::default(): no temperature means greedy, so seeds change nothing.
    conv = [{"role": "user", "content": "Name three colours."}]
    greedy = student.chat(conv, temperature=0, max_tokens=8, ignore_eos=True)[0].token_ids
    for seed in range(4):
        assert student.chat(conv, seed=seed, max_tokens=8, ignore_eos=True)[0].token_ids == greedy
        assert student.generate("[INST] Count to five. [/INST]", seed=seed, max_tokens=8)[0].token_ids == \
            student.generate("[INST] Count to five. [/INST]", temperature=0, max_tokens=8)[0].token_ids


def test_presets_resolve_at_run_time(tmp_path, monkeypatch):
    # Nothing about the checkout is compiled into the wheel: $MOE_MODELS_TOML, else models.toml in
    # the current directory or above it, paths relative to that file.
    toml = tmp_path / "models.toml"
    toml.write_text('[tiny]\npath = "%s"\n' % os.path.relpath(os.path.join(FIXTURES, "mixtral-tiny-f32"), tmp_path))
    inner = tmp_path / "a" / "b"
    inner.mkdir(parents=True)
    monkeypatch.delenv("MOE_MODELS_TOML", raising=False)
    monkeypatch.chdir(inner)
    assert moe.Model("tiny").name == "tiny"
    elsewhere = tmp_path.parent / ("no-presets-%d" % os.getpid())
    elsewhere.mkdir(exist_ok=True)
    monkeypatch.chdir(elsewhere)
    with pytest.raises(ValueError, match="no model at tiny: not a preset name.*no models.toml"):
        moe.Model("tiny")
    monkeypatch.setenv("MOE_MODELS_TOML", str(toml))
    assert moe.Model("tiny").vocab_size == moe.Model(os.path.join(FIXTURES, "mixtral-tiny-f32")).vocab_size
    monkeypatch.setenv("MOE_MODELS_TOML", str(tmp_path / "missing.toml"))
    with pytest.raises(ValueError, match="MOE_MODELS_TOML names no such file"):
        moe.Model("tiny")


def test_device_argument(student):
    assert student.device == "cpu"
    with pytest.raises(ValueError, match="unknown device `tpu`"):
        moe.Model(device="tpu")
    try:
        gpu = moe.Model(device="cuda")
    except RuntimeError as e:
        # Without a usable GPU the error says which device and why, and nothing is loaded.
        assert "cannot use cuda:0: " in str(e), str(e)
        assert not os.environ.get("MOE_REQUIRE_GPU"), str(e)
        return
    assert gpu.device == "cuda:0"
    conv = [{"role": "user", "content": "What is 24 plus 17?"}]
    assert gpu.chat(conv)[0].token_ids == student.chat(conv)[0].token_ids


def test_score_prefers_the_right_answer(student):
    s = student.score("[INST] What is 24 plus 17? [/INST]", [" 41", " 12"])
    assert s[0] > s[1]


def test_stats_and_reset(student):
    student.reset_stats()
    student.logits(student.tokenizer.encode("Mixtral routes tokens"))
    s = student.stats()
    assert s["layers"][0]["tokens"] == len(student.tokenizer.encode("Mixtral routes tokens"))
    assert len(s["layers"][0]["expert_tokens"]) == 4 and "aux_loss" in s
    student.reset_stats()
    assert student.stats()["layers"][0]["tokens"] == 0


def test_tokenizer(student):
    t = student.tokenizer
    assert t.encode("Hello world") == [1, 22557, 1526]
    assert t.decode([1, 22557, 1526]) == "Hello world"
    assert t.apply_chat_template([{"role": "user", "content": "a"}]) == "<s>[INST] a [/INST]"


def test_bad_input_raises(student):
    with pytest.raises(ValueError, match="temperature"):
        student.generate("x", temperature=-1.0)
    with pytest.raises(ValueError, match="top_p"):
        student.generate("x", top_p=0.0)
    with pytest.raises(ValueError, match="context"):
        student.logits([5] * 600)
    with pytest.raises(ValueError):
        student.generate([])
    with pytest.raises(ValueError, match="vocabulary"):
        student.logits([1, 10**6])
    with pytest.raises(ValueError, match="alternate"):
        student.chat([{"role": "assistant", "content": "x"}])
    with pytest.raises(ValueError, match="no model at /no/such/model: not a preset name"):
        moe.Model("/no/such/model")
    with pytest.raises(RuntimeError):
        broken = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"moe-broken-{os.getpid()}")
        os.makedirs(broken, exist_ok=True)
        for f in ["config.json", "tokenizer.json", "tokenizer_config.json"]:
            open(os.path.join(broken, f), "wb").write(open(os.path.join(FIXTURES, "mixtral-tiny-f32", f), "rb").read())
        data = open(os.path.join(FIXTURES, "mixtral-tiny-f32", "model.safetensors"), "rb").read()
        open(os.path.join(broken, "model.safetensors"), "wb").write(data[: len(data) // 2])
        moe.Model(broken)


def test_threaded_callers_get_their_own_answers(student):
    questions = ["What is 24 plus 17?", "What is 95 - 94?", "What is the sum of 24 and 1?", "What is 2 times 3?"]
    want = {q: student.chat([{"role": "user", "content": q}], temperature=0)[0].text for q in questions}
    got = {}

    def work(q):
        got[q] = student.chat([{"role": "user", "content": q}], temperature=0)[0].text

    threads = [threading.Thread(target=work, args=(q,)) for q in questions * 2]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert got == want


# ---- MoE families (tests/fixtures/FAMILIES.md) ----


def read_meta(name):
    with open(os.path.join(FIXTURES, name, "meta.json")) as f:
        return json.load(f)


@pytest.mark.parametrize("name", ["qwen2_moe-tiny-f32", "qwen3_moe-tiny-f32", "olmoe-tiny-f32"])
def test_families_generate_the_golden_ids(name):
    model = moe.Model(os.path.join(FIXTURES, name))
    meta = read_meta(name)
    p0 = meta["cases"]["p0"]
    ids = p0["input_ids"][0]
    assert model.vocab_size == meta["vocab_size"] and model.tokenizer.vocab_size == meta["tokenizer_size"]
    # Greedy from the prompt ids: transformers' 16 ids (qwen2_moe's include the padded-vocabulary
    # id 615, which has no token; the text skips it).
    out = model.generate(ids, max_tokens=16, temperature=0)
    assert out[0].prompt_ids == ids
    assert out[0].token_ids == p0["generated_ids"][0]
    assert out[0].text == p0["generated_text"][0]
    assert out[0].finish_reason == "length"
    # Statistics: the MoE layers only (qwen2_moe's layer 1 is dense), with the golden counts.
    model.reset_stats()
    model.logits(ids)
    s = model.stats()
    assert [l["layer"] for l in s["layers"]] == meta["moe_layers"]
    assert [l["expert_tokens"] for l in s["layers"]] == p0["expert_counts"]
    g = read_golden(name)
    assert [l["expert_tokens"] for l in s["layers"]] == g["p0.expert_counts"].tolist()


def test_qwen3_moe_chat_renders_chatml():
    model = moe.Model(os.path.join(FIXTURES, "qwen3_moe-tiny-f32"))
    hi = [{"role": "user", "content": "Hi"}]
    chatml = [601, 331, 257, 198, 39, 72, 602, 198, 601, 460, 387, 571, 83, 198]
    t = model.tokenizer
    assert t.apply_chat_template(hi) == "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
    assert t.encode_chat(hi) == chatml
    assert t.eos_id == 602 and t.bos_id is None
    out = model.chat(hi, temperature=0, max_tokens=8)
    assert out[0].prompt_ids == chatml
    assert len(out[0].token_ids) == 8 and out[0].finish_reason == "length"
    assert model.generate(chatml, temperature=0, max_tokens=8)[0].token_ids == out[0].token_ids
    # meta.json's p0 prompt is the ChatML rendering of one user message.
    p0 = read_meta("qwen3_moe-tiny-f32")["cases"]["p0"]
    text = p0["texts"][0]
    head, tail = "<|im_start|>user\n", "<|im_end|>\n<|im_start|>assistant\n"
    assert text.startswith(head) and text.endswith(tail)
    question = text[len(head) : -len(tail)]
    out = model.chat([{"role": "user", "content": question}], temperature=0, max_tokens=16)
    assert out[0].prompt_ids == p0["input_ids"][0]
    assert out[0].token_ids == p0["generated_ids"][0]


def test_olmoe_chat_without_a_template_raises():
    model = moe.Model(os.path.join(FIXTURES, "olmoe-tiny-f32"))
    with pytest.raises(ValueError, match="chat template"):
        model.chat([{"role": "user", "content": "Hi"}])
    assert model.tokenizer.encode("Hello world") == [369, 447]
