"""`gptoss serve` with the real openai SDK against a real uvicorn server on 127.0.0.1, driven by
ScriptedModel so token counts are exact: models, chat completions, reasoning fields, the CoT rule,
prefix reuse, tool calls with bad arguments, stop strings and errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from gptoss_mlx import harmony
from gptoss_mlx.server import ServerEngine, create_app
from gptoss_mlx.session.chat import SessionSettings

from .scripted_model import ScriptedModel
from .server_harness import serve

THOUGHT_ANSWER = (
    "<|channel|>analysis<|message|>think hard<|end|><|start|>assistant<|channel|>final"
    "<|message|>Hello there<|return|>"
)
BAD_CALL = "<|channel|>commentary to=functions.run <|constrain|>json<|message|>ls -R<|call|>"


@pytest.fixture(scope="module")
def enc(tiny_checkpoint: Path):
    return harmony.encoding_for_model(tiny_checkpoint)


class Server:
    def __init__(self, enc, replies: list[str], **app_options) -> None:
        self.enc = enc
        self.model = ScriptedModel([enc.encode(r, allowed_special="all") for r in replies])
        self.engine = ServerEngine(
            self.model,
            enc,
            model_id="gpt-oss-tiny",
            aliases=["gpt-oss-20b", "gpt-oss:20b", "openai/gpt-oss-20b"],
            defaults=SessionSettings(context=2048),
        )
        self.app = create_app(self.engine, **app_options)

    def prompt(self, messages: list[harmony.Message], **options) -> list[int]:
        opts = harmony.PromptOptions(date=self.engine.defaults.date, **options)
        return harmony.render_prompt(messages, opts, self.enc)


@pytest.fixture
def server(enc, request) -> Iterator[tuple[Server, openai.OpenAI]]:
    """A server over ScriptedModel; parametrize indirectly with (replies, create_app options)."""
    replies, options = getattr(request, "param", ([THOUGHT_ANSWER] * 4, {}))
    srv = Server(enc, replies, **options)
    with serve(srv.app) as url:
        srv.url = url
        yield srv, openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)


def user(text: str) -> dict:
    return {"role": "user", "content": text}


def test_models_and_aliases(server) -> None:
    srv, client = server
    assert [m.id for m in client.models.list().data] == ["gpt-oss-tiny"]
    assert client.models.retrieve("gpt-oss:20b").id == "gpt-oss:20b"
    for alias in ("gpt-oss-20b", "gpt-oss:20b", "openai/gpt-oss-20b", "gpt-oss-tiny"):
        out = client.chat.completions.create(model=alias, messages=[user(f"hi {alias}")])
        assert out.choices[0].message.content == "Hello there"
    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model="llama3", messages=[user("hi")])
    assert "gpt-oss-tiny" in err.value.message and "openai/gpt-oss-20b" in err.value.message
    assert httpx.get(srv.url + "/health").json()["status"] == "ok"


def test_stream_equals_non_stream_with_reasoning_fields(server) -> None:
    srv, client = server
    full = client.chat.completions.create(model="gpt-oss-20b", messages=[user("one")])
    msg = full.choices[0].message
    assert (msg.content, msg.reasoning, msg.reasoning_content) == (
        "Hello there",
        "think hard",
        "think hard",
    )
    assert full.choices[0].finish_reason == "stop"
    chunks = list(
        client.chat.completions.create(
            model="gpt-oss-20b",
            messages=[user("two")],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert "".join(d.content or "" for d in deltas) == msg.content
    assert "".join(getattr(d, "reasoning", None) or "" for d in deltas) == msg.reasoning
    assert "".join(getattr(d, "reasoning_content", None) or "" for d in deltas) == msg.reasoning
    assert chunks[-2].choices[0].finish_reason == "stop"
    assert chunks[-1].usage.completion_tokens == full.usage.completion_tokens
    # reasoning: {exclude: true} hides it
    hidden = client.chat.completions.create(
        model="gpt-oss-20b", messages=[user("three")], extra_body={"reasoning": {"exclude": True}}
    )
    assert getattr(hidden.choices[0].message, "reasoning", None) is None


def test_cot_rule_by_exact_prompt_tokens(server) -> None:
    srv, client = server
    finished = [
        user("q1"),
        {"role": "assistant", "content": "A1", "reasoning": "secret thoughts"},
        user("q2"),
    ]
    out = client.chat.completions.create(model="gpt-oss-20b", messages=finished)
    expect = srv.prompt([harmony.Message("user", "q1"), harmony.Message("assistant", "A1", channel="final"), harmony.Message("user", "q2")])  # fmt: skip
    assert out.usage.prompt_tokens == len(expect)  # the finished turn's reasoning is dropped
    tools = [{"type": "function", "function": {"name": "run", "parameters": {"type": "object"}}}]
    in_progress = [
        user("q3"),
        {"role": "assistant", "content": None, "reasoning_content": "need the tool",
         "tool_calls": [{"id": "c1", "type": "function",
                         "function": {"name": "run", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "ok"},
    ]  # fmt: skip
    out = client.chat.completions.create(model="gpt-oss-20b", messages=in_progress, tools=tools)
    expect = srv.prompt(
        [
            harmony.Message("user", "q3"),
            harmony.Message("assistant", "need the tool", channel="analysis"),
            harmony.Message("assistant", "{}", channel="commentary", recipient="functions.run",
                            content_type="<|constrain|>json"),
            harmony.tool_result("functions.run", "ok"),
        ],
        tools=[harmony.ToolSpec("run", "", {"type": "object"})],
    )  # fmt: skip
    assert out.usage.prompt_tokens == len(expect)  # kept while the tool call is in progress


def test_follow_up_prefills_only_new_tokens(server) -> None:
    srv, client = server
    first = client.chat.completions.create(model="gpt-oss-20b", messages=[user("first")])
    p1 = first.usage.prompt_tokens
    assert first.usage.prompt_tokens_details.cached_tokens == 0
    msg = first.choices[0].message
    calls_before = len(srv.model.calls)
    follow = client.chat.completions.create(
        model="gpt-oss-20b",
        messages=[user("first"), {"role": "assistant", "content": msg.content,
                                  "reasoning": msg.reasoning}, user("second")],
    )  # fmt: skip
    p2 = follow.usage.prompt_tokens
    assert follow.usage.prompt_tokens_details.cached_tokens == p1
    # the prefill ran only the new tokens: the history, then the closing <|start|>assistant
    history, opener = srv.model.calls[calls_before : calls_before + 2]
    assert (len(history), opener) == (p2 - p1 - 2, [harmony.START, harmony.ASSISTANT])


@pytest.mark.parametrize("server", [([BAD_CALL, BAD_CALL], {})], indirect=True)
def test_malformed_tool_arguments_pass_through(server) -> None:
    srv, client = server
    tools = [{"type": "function", "function": {"name": "run", "parameters": {"type": "object"}}}]
    out = client.chat.completions.create(model="gpt-oss-20b", messages=[user("ls")], tools=tools)
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert (call.function.name, call.function.arguments, call.type) == ("run", "ls -R", "function")
    chunks = list(
        client.chat.completions.create(
            model="gpt-oss-20b", messages=[user("ls again")], tools=tools, stream=True
        )
    )
    calls = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert [(c.index, c.function.name, c.function.arguments) for c in calls] == [
        (0, "run", "ls -R")
    ]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_stop_strings(server) -> None:
    srv, client = server
    out = client.chat.completions.create(model="gpt-oss-20b", messages=[user("s")], stop=["the"])
    assert (out.choices[0].message.content, out.choices[0].finish_reason) == ("Hello ", "stop")
    chunks = list(
        client.chat.completions.create(
            model="gpt-oss-20b", messages=[user("s2")], stop="lo t", stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Hel"


def test_effort_spellings(server) -> None:
    srv, client = server
    for n, (extra, expect) in enumerate(
        (
            ({"reasoning_effort": "minimal"}, "low"),
            ({"reasoning": {"effort": "high"}}, "high"),
            ({"chat_template_kwargs": {"reasoning_effort": "low"}}, "low"),
        )
    ):
        out = client.chat.completions.create(
            model="gpt-oss-20b", messages=[user(f"e{n}")], extra_body=extra
        )
        prompt = srv.prompt([harmony.Message("user", f"e{n}")], effort=expect)
        assert out.usage.prompt_tokens == len(prompt), extra
    with pytest.raises(openai.BadRequestError, match="reasoning_effort"):
        client.chat.completions.create(
            model="gpt-oss-20b", messages=[user("e")], extra_body={"reasoning_effort": "huge"}
        )


def _error(response: httpx.Response, status: int) -> dict:
    assert response.status_code == status, response.text
    err = response.json()["error"]
    assert set(err) >= {"message", "type", "param", "code"} and err["message"]
    return err


@pytest.mark.parametrize("server", [([], {"api_key": "sekrit", "max_body": 4000})], indirect=True)
def test_errors_are_openai_shaped(server) -> None:
    srv, _ = server
    url = srv.url + "/v1/chat/completions"
    auth = {"Authorization": "Bearer sekrit"}
    _error(httpx.post(url, json={"messages": [user("x")]}), 401)
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=srv.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert httpx.get(srv.url + "/health").status_code == 200  # health needs no key
    ok = openai.OpenAI(base_url=srv.url + "/v1", api_key="sekrit", max_retries=0)
    assert ok.models.list().data[0].id == "gpt-oss-tiny"
    bad_json = httpx.post(url, content=b"{not json", headers={**auth, "Content-Type": "application/json"})  # fmt: skip
    assert "JSON" in _error(bad_json, 400)["message"]
    assert (
        "messages" in _error(httpx.post(url, json={"messages": "hi"}, headers=auth), 400)["message"]
    )
    neg = httpx.post(url, json={"messages": [user("x")], "max_tokens": -1}, headers=auth)
    assert "max_tokens" in _error(neg, 400)["message"]
    big = httpx.post(url, json={"messages": [user("x" * 5000)]}, headers=auth)
    _error(big, 413)
    _error(httpx.post(url, json={"model": "nope", "messages": [user("x")]}, headers=auth), 404)
    _error(httpx.get(srv.url + "/v1/nothing", headers=auth), 404)
    tool_without_call = {"messages": [{"role": "tool", "tool_call_id": "zz", "content": "x"}]}
    _error(httpx.post(url, json=tool_without_call, headers=auth), 400)
    long = httpx.post(url, json={"messages": [user("x")], "max_tokens": 2000}, headers=auth)
    assert _error(long, 400)["code"] == "context_length_exceeded"
    assert httpx.get(srv.url + "/health").json()["status"] == "ok"  # still up


def test_bad_json_body_details(server) -> None:
    srv, _ = server
    r = httpx.post(srv.url + "/v1/responses", json={"input": [{"type": "message", "role": "user"}]})
    err = _error(r, 400)
    assert "input[0]" in err["message"] and "content" in err["message"]
    assert json.loads(r.text)["error"]["type"] == "invalid_request_error"


def test_dropped_reply_still_reuses_the_history(server) -> None:
    srv, client = server
    cut = client.chat.completions.create(
        model="gpt-oss-20b", messages=[user("long task")], max_tokens=3
    )
    assert cut.choices[0].finish_reason == "length"
    # the client drops the cut-off reply (only reasoning came back) and sends its next message
    follow = client.chat.completions.create(
        model="gpt-oss-20b", messages=[user("long task"), user("go on")]
    )
    assert follow.usage.prompt_tokens_details.cached_tokens == cut.usage.prompt_tokens - 2
