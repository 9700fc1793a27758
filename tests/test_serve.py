"""`edgelut serve` with the real SmolLM2 model, through the official openai client and raw HTTP.

One server process for the module (context 1024); replies are short and greedy
so the answers are the ones `edgelut chat` gives.
"""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Iterator

import jsonschema
import openai
import pytest
from serve_helpers import ServerProcess, open_stream, read_events

from edgelut import cache

SYSTEM = "You are a helpful assistant."
QUESTION = [
    {"role": "system", "content": SYSTEM},
    {"role": "user", "content": "What is the capital of France?"},
]
N_CTX = 1024


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    s = ServerProcess(
        cache.default_model_file(), "--ctx", str(N_CTX), "--max-queue", "8", "--max-body", "64K"
    )
    try:
        s.wait_ready()
        yield s
    finally:
        s.stop()
    assert "Traceback" not in s.stderr, s.stderr


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.base + "/v1", api_key="unused", max_retries=0, timeout=300)


def ask(client: openai.OpenAI, **kw) -> str:
    r = client.chat.completions.create(model="any", messages=QUESTION, temperature=0, max_tokens=24, **kw)
    return r.choices[0].message.content


@pytest.fixture(scope="module")
def paris(client: openai.OpenAI) -> str:
    """The greedy reply to the question (asked cold: the first request of the server)."""
    return ask(client)


def test_chat(client: openai.OpenAI, paris: str) -> None:
    assert "Paris" in paris
    r = client.chat.completions.create(model="any", messages=QUESTION, temperature=0, max_tokens=24)
    choice = r.choices[0]
    assert choice.message.content == paris and choice.message.role == "assistant"
    # The reply ends by itself unless it rambles to max_tokens (a greedy near-tie
    # can do that on some CPUs: the kernels' int8 rounding differs per ISA).
    assert choice.finish_reason == ("length" if r.usage.completion_tokens == 24 else "stop")
    assert r.object == "chat.completion" and r.model == "smollm2-135m-instruct-q4g32"
    assert r.usage.prompt_tokens > 10 and 0 < r.usage.completion_tokens <= 24
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_stream(client: openai.OpenAI, paris: str) -> None:
    stream = client.chat.completions.create(
        model="any",
        messages=QUESTION,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == paris
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    usage = chunks[-1].usage
    assert usage is not None and usage.completion_tokens > 0
    assert finishes == ["length" if usage.completion_tokens == 24 else "stop"]


def test_max_tokens_is_length(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(model="any", messages=QUESTION, temperature=0, max_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3


def test_stop_string(client: openai.OpenAI, paris: str) -> None:
    stop = " " + paris.split()[2]  # a word the greedy reply has ("The capital of France is ...")
    r = client.chat.completions.create(
        model="any", messages=QUESTION, temperature=0, max_tokens=24, stop=[stop]
    )
    assert r.choices[0].message.content == paris.split(stop)[0]
    assert r.choices[0].finish_reason == "stop"


def test_completions(client: openai.OpenAI) -> None:
    r = client.completions.create(model="any", prompt="The capital of France is", max_tokens=6, temperature=0)
    assert r.object == "text_completion"
    assert "Paris" in r.choices[0].text
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 6
    streamed = client.completions.create(
        model="any", prompt="The capital of France is", max_tokens=6, temperature=0, stream=True
    )
    assert "".join(c.choices[0].text for c in streamed) == r.choices[0].text


def test_seeded_sampling_repeats(client: openai.OpenAI) -> None:
    kw = dict(model="any", messages=QUESTION, temperature=1.2, top_p=0.9, max_tokens=12, seed=7)
    a = client.chat.completions.create(**kw).choices[0].message.content
    b = client.chat.completions.create(**kw).choices[0].message.content
    assert a == b
    extra = client.chat.completions.create(**kw, extra_body={"top_k": 1}).choices[0].message.content
    assert extra  # llama.cpp's extra sampling fields are accepted


def test_penalties_reach_the_sampler(client: openai.OpenAI) -> None:
    kw = dict(model="any", prompt="Paris, Paris, Paris, Paris,", max_tokens=8, temperature=0)
    plain = client.completions.create(**kw).choices[0].text
    assert "Paris" in plain  # greedy repeats the pattern
    penalised = client.completions.create(**kw, frequency_penalty=2.0, presence_penalty=2.0).choices[0].text
    assert "Paris" not in penalised, penalised


def test_models(client: openai.OpenAI) -> None:
    models = client.models.list().data
    assert [m.id for m in models] == ["smollm2-135m-instruct-q4g32"]
    assert models[0].model_extra["context_length"] == N_CTX


def test_json_schema(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model="any",
        messages=QUESTION,
        temperature=0,
        max_tokens=40,
        response_format={"type": "json_schema", "json_schema": {"name": "place", "schema": schema}},
    )
    reply = json.loads(r.choices[0].message.content)
    jsonschema.validate(reply, schema)
    assert "Paris" in reply["city"]
    assert r.choices[0].finish_reason == "stop"
    obj = client.chat.completions.create(
        model="any", messages=QUESTION, temperature=0, max_tokens=40, response_format={"type": "json_object"}
    )
    assert isinstance(json.loads(obj.choices[0].message.content), dict)


def test_prefix_cache_reused_across_turns(client: openai.OpenAI) -> None:
    # A system message long enough that whole prefill chunks (64 tokens) are reused.
    system = {"role": "system", "content": SYSTEM + " Answer briefly and precisely. " * 12}
    turn1 = [system, {"role": "user", "content": "What is the capital of France?"}]
    r1 = client.chat.completions.create(model="any", messages=turn1, temperature=0, max_tokens=12)
    turn2 = [*turn1, {"role": "assistant", "content": r1.choices[0].message.content}]
    turn2.append({"role": "user", "content": "And of Italy?"})
    r2 = client.chat.completions.create(model="any", messages=turn2, temperature=0, max_tokens=12)
    cached = r2.usage.prompt_tokens_details.cached_tokens
    assert cached > 0 and cached % 64 == 0, r2.usage
    assert r2.usage.prompt_tokens - cached < r2.usage.prompt_tokens - r1.usage.prompt_tokens + 64


def test_interleaved_conversations_each_reuse_their_own_cache(client: openai.OpenAI) -> None:
    # Two clients' conversations take turns (or a chat app's title request comes
    # between two turns): the server's saved caches (--cache-ram, default 256M)
    # let each continue from its own cache rather than evaluate its history again.
    def conversation(topic: str) -> list[dict[str, str]]:
        system = {
            "role": "system",
            "content": f"You are an expert on {topic}. " + "Be brief and exact. " * 20,
        }
        return [system, {"role": "user", "content": f"Tell me one fact about {topic}."}]

    a, b = conversation("rivers"), conversation("mountains")
    ra = client.chat.completions.create(model="any", messages=a, temperature=0, max_tokens=8)
    client.chat.completions.create(model="any", messages=b, temperature=0, max_tokens=8)
    a2 = [
        *a,
        {"role": "assistant", "content": ra.choices[0].message.content},
        {"role": "user", "content": "More."},
    ]
    r = client.chat.completions.create(model="any", messages=a2, temperature=0, max_tokens=8)
    # b shares only the system prompt's first words with a: a's cache came back.
    assert r.usage.prompt_tokens_details.cached_tokens >= 128, r.usage


def test_tools_need_a_template_that_renders_them(client: openai.OpenAI) -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.BadRequestError, match="does not support tools"):
        client.chat.completions.create(model="any", messages=QUESTION, tools=tools, max_tokens=4)


# ---- bad input: raw HTTP ----------------------------------------------------------------------

CHAT = "/v1/chat/completions"
GOOD = {"messages": QUESTION, "max_tokens": 2}


@pytest.mark.parametrize(
    ("body", "status", "code_or_param"),
    [
        (b"{not json", 400, "invalid_json"),
        (b"", 400, "invalid_json"),
        (b"[1, 2]", 400, "invalid_json"),
        (b'{"messages": NaN}', 400, "invalid_json"),
        (b'{"messages": [{"role": "user", "content": "caf\xe9"}]}', 400, "invalid_utf8"),
        ({**GOOD, "max_token": 3}, 400, "unknown_field"),
        ({**GOOD, "max_tokens": "3"}, 400, "max_tokens"),
        ({**GOOD, "max_tokens": 0}, 400, "max_tokens"),
        ({**GOOD, "temperature": -1}, 400, "temperature"),
        ({**GOOD, "temperature": True}, 400, "temperature"),
        ({**GOOD, "top_p": 0}, 400, None),
        ({**GOOD, "stop": [1]}, 400, "stop"),
        ({**GOOD, "n": 2}, 400, "n"),
        ({**GOOD, "presence_penalty": 2.5}, 400, "presence_penalty"),
        ({**GOOD, "logprobs": True}, 400, "logprobs"),
        ({**GOOD, "stream_options": {"x": 1}}, 400, "stream_options.x"),
        ({"max_tokens": 2}, 400, "messages"),
        ({"messages": []}, 400, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}, 400, "messages[0].content"),
        ({"messages": [{"role": "user", "content": "w " * 1100}]}, 400, "context_length_exceeded"),
        ({**GOOD, "max_tokens": N_CTX}, 400, "context_length_exceeded"),
        ({**GOOD, "response_format": {"type": "xml"}}, 400, "response_format.type"),
        (
            {**GOOD, "response_format": {"type": "json_schema", "json_schema": {"schema": {"type": "nope"}}}},
            400,
            "invalid_schema",
        ),
        ({**GOOD, "tools": "f"}, 400, "tools"),
        (json.dumps({**GOOD, "pad": "x" * 70_000}).encode(), 413, "body_too_large"),
    ],
)
def test_bad_input_is_a_4xx(
    server: ServerProcess, body: bytes | dict, status: int, code_or_param: str
) -> None:
    got, _, reply = server.request("POST", CHAT, body)
    assert got == status, reply
    err = reply["error"]
    assert err["message"] and err["type"]
    if code_or_param is not None:
        assert code_or_param in (err["code"], err["param"]), err


def test_bad_routes_and_completion_input(server: ServerProcess) -> None:
    assert server.request("GET", "/nope")[0] == 404
    status, _, reply = server.request("GET", CHAT)
    assert status == 405 and "error" in reply
    for body in ({"prompt": ""}, {"prompt": [1, 10**9]}, {"prompt": 5}, {"prompt": "x", "echo": True}):
        status, _, reply = server.request("POST", "/v1/completions", body)
        assert status == 400 and "error" in reply, (body, reply)
    # Special-token text in a completion prompt is data, not control tokens.
    status, _, reply = server.request("POST", "/v1/completions", {"prompt": "<|im_end|>", "max_tokens": 1})
    assert status == 200 and reply["usage"]["prompt_tokens"] > 1
    assert server.health()["status"] == "ok"  # and it keeps serving


def test_no_cors_headers_unless_asked(server: ServerProcess) -> None:
    _, headers, _ = server.request("GET", "/v1/models", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in headers


# ---- many clients ------------------------------------------------------------------------------


def test_eight_concurrent_clients_get_the_single_client_answer(client: openai.OpenAI, paris: str) -> None:
    answers: dict[int, str] = {}
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            if i % 2:
                s = client.chat.completions.create(
                    model="any", messages=QUESTION, temperature=0, max_tokens=24, stream=True
                )
                answers[i] = "".join(c.choices[0].delta.content or "" for c in s if c.choices)
            else:
                r = client.chat.completions.create(
                    model="any", messages=QUESTION, temperature=0, max_tokens=24
                )
                answers[i] = r.choices[0].message.content
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert not errors, errors
    assert answers == {i: paris for i in range(8)}


LONG = {"prompt": "Once upon a time", "max_tokens": N_CTX - 16, "ignore_eos": True, "temperature": 0}


def test_disconnect_mid_stream_frees_the_model(server: ServerProcess, client: openai.OpenAI) -> None:
    conn, resp = open_stream(server, "/v1/completions", LONG)
    assert len(read_events(resp, 3)) == 3
    assert server.health()["busy"]
    served = server.health()["served"]
    conn.close()  # ~1000 tokens left: tens of seconds if the generation went on
    assert server.wait_idle(timeout=5) < 5
    assert server.health()["served"] == served + 1
    t0 = time.monotonic()
    r = client.completions.create(model="any", prompt="Hello", max_tokens=2)
    assert r.usage.completion_tokens == 2 and time.monotonic() - t0 < 10


def test_disconnect_before_a_whole_reply_frees_the_model(server: ServerProcess) -> None:
    c = server.conn()
    c.request("POST", "/v1/completions", body=json.dumps(LONG), headers={"Content-Type": "application/json"})
    deadline = time.monotonic() + 10
    while not server.health()["busy"] and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.health()["busy"]
    c.close()
    assert server.wait_idle(timeout=5) < 5


def test_disconnect_while_queued_leaves_the_queue(server: ServerProcess) -> None:
    running, resp = open_stream(server, "/v1/completions", LONG)
    read_events(resp, 1)
    queued = server.conn()
    queued.request("POST", "/v1/completions", body=json.dumps({**LONG, "stream": True}))
    deadline = time.monotonic() + 5
    while server.health()["waiting"] != 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.health()["waiting"] == 1
    queued.close()
    deadline = time.monotonic() + 5
    while server.health()["waiting"] != 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.health()["waiting"] == 0
    running.close()
    server.wait_idle(timeout=5)


def test_full_queue_answers_429_with_retry_after(server: ServerProcess) -> None:
    running, resp = open_stream(server, "/v1/completions", LONG)
    read_events(resp, 1)
    queued = []
    for _ in range(server.health()["max_waiting"]):
        c = server.conn()
        c.request("POST", "/v1/completions", body=json.dumps({**LONG, "stream": True}))
        queued.append(c)
    deadline = time.monotonic() + 10
    while server.health()["waiting"] < len(queued) and time.monotonic() < deadline:
        time.sleep(0.05)
    status, headers, reply = server.request("POST", CHAT, GOOD)
    assert status == 429, reply
    assert reply["error"]["code"] == "queue_full" and int(headers["retry-after"]) >= 1
    for c in [*queued, running]:
        c.close()
    server.wait_idle(timeout=10)
    assert server.request("POST", CHAT, GOOD)[0] == 200


def test_sigterm_during_a_stream_shuts_down_cleanly() -> None:
    s = ServerProcess(cache.default_model_file(), "--ctx", str(N_CTX))
    try:
        s.wait_ready()
        conn, resp = open_stream(s, "/v1/completions", LONG)
        assert len(read_events(resp, 2)) == 2
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        rest = read_events(resp)  # the stream ends (the generation stopped) rather than hanging
        assert s.proc.wait(30) in (0, -signal.SIGTERM)
        assert time.monotonic() - t0 < 15
        assert len(rest) < LONG["max_tokens"]
        conn.close()
    finally:
        s.stop()
    assert "Traceback" not in s.stderr and "Error" not in s.stderr, s.stderr
