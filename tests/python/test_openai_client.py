"""The official `openai` client against a running `moe serve` (the embedded student model)."""

import os
import subprocess

import openai
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
MOE = os.environ.get("MOE_BIN", os.path.join(ROOT, "target", "release", "moe"))


@pytest.fixture(scope="module")
def client():
    proc = subprocess.Popen([MOE, "serve", "--port", "0"], stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.startswith("listening on "), line
    url = line.split()[2]
    yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    proc.terminate()
    proc.wait(timeout=10)


def ask(q):
    return [{"role": "user", "content": q}]


def test_models(client):
    assert [m.id for m in client.models.list().data] == ["moe-student-tiny"]


def test_chat_answers(client):
    r = client.chat.completions.create(model="moe-student-tiny", messages=ask("What is 24 plus 17?"), temperature=0)
    assert r.choices[0].message.content == "41"
    assert r.choices[0].finish_reason == "stop"
    assert r.usage.completion_tokens == 4


def test_chat_logprobs_beyond_twenty(client):
    r = client.chat.completions.create(
        model="moe-student-tiny", messages=ask("What is 24 plus 17?"), temperature=0, logprobs=True, top_logprobs=25
    )
    content = r.choices[0].logprobs.content
    assert len(content) == 4
    assert all(len(t.top_logprobs) == 25 for t in content)
    assert content[1].top_logprobs[0].logprob >= content[1].top_logprobs[-1].logprob


def test_chat_stream_equals_plain(client):
    q = ask("Sort the numbers 82, 4, 51, 25 in ascending order.")
    plain = client.chat.completions.create(model="moe-student-tiny", messages=q, temperature=0).choices[0].message.content
    chunks = list(
        client.chat.completions.create(
            model="moe-student-tiny", messages=q, temperature=0, stream=True, stream_options={"include_usage": True}
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == plain
    assert chunks[-1].usage.completion_tokens > 0


def test_completions_logprobs_and_echo(client):
    r = client.completions.create(
        model="moe-student-tiny", prompt="[INST] What is 2 times 3? [/INST]", max_tokens=4, temperature=0, logprobs=3, echo=True
    )
    lp = r.choices[0].logprobs
    assert lp.token_logprobs[0] is None
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs)
    assert r.choices[0].text.startswith("[INST] What is 2 times 3? [/INST]")


def test_completions_stream(client):
    chunks = list(client.completions.create(model="moe-student-tiny", prompt="[INST] What is 5 plus 5? [/INST]", max_tokens=6, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices).strip() == "10"


def test_seed_reproducible(client):
    kw = dict(model="moe-student-tiny", messages=ask("What is 95 - 94?"), temperature=1.0, seed=7, max_tokens=10)
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    assert a == b


def test_bad_requests_raise(client):
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="moe-student-tiny", messages=ask("x"), temperature=-1)
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model="moe-student-tiny", messages=ask("x"), max_tokens=100000)
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=ask("x"))
    r = client.chat.completions.create(model="moe-student-tiny", messages=ask("What is 24 plus 17?"), temperature=0)
    assert r.choices[0].message.content == "41"


def test_preset_name_is_served(client):
    # The README's examples say model="student"; the embedded default is that model.
    r = client.chat.completions.create(model="student", messages=ask("What is 24 plus 17?"), temperature=0)
    assert r.choices[0].message.content == "41"
    assert r.model == "moe-student-tiny"


def test_stream_first_chunk_is_role_and_no_empty_delta_follows(client):
    chunks = list(client.chat.completions.create(model="student", messages=ask("What is 24 plus 17?"), temperature=0, stream=True, stop=["4z"]))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    for c in chunks[1:-1]:
        assert c.choices[0].delta.content, c
