"""`gptoss serve` under load and over the Responses API: three concurrent streams, a client that
disconnects, the queue limit, responses streaming and not, previous_response_id (ScriptedModel)."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from gptoss_mlx import harmony
from gptoss_mlx.server import ServerEngine, create_app
from gptoss_mlx.session.chat import SessionSettings
from gptoss_mlx.tools.base import Tool, ToolResult

from .scripted_model import ScriptedModel
from .server_harness import serve

ANSWER = (
    "<|channel|>analysis<|message|>think hard<|end|><|start|>assistant<|channel|>final"
    "<|message|>Hello there<|return|>"
)
CALL = '<|channel|>commentary to=functions.run <|constrain|>json<|message|>{"cmd":"ls"}<|call|>'
LONG = "<|channel|>final<|message|>" + "la " * 600 + "<|return|>"


class SlowModel(ScriptedModel):
    """A ScriptedModel that takes `delay` seconds per forward pass (a long reply in flight)."""

    delay = 0.01

    def __call__(self, tokens, cache=None, last_only=False):
        time.sleep(self.delay)
        return super().__call__(tokens, cache, last_only)


@pytest.fixture(scope="module")
def enc(tiny_checkpoint: Path):
    return harmony.encoding_for_model(tiny_checkpoint)


def start(enc, replies: list[str], model_type=ScriptedModel, **options):
    model = model_type([enc.encode(r, allowed_special="all") for r in replies])
    engine = ServerEngine(
        model, enc, model_id="gpt-oss-20b", defaults=SessionSettings(context=4096)
    )
    return model, engine, serve(create_app(engine, **options))


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)


def test_three_concurrent_streams(enc) -> None:
    model, _, running = start(enc, [ANSWER] * 3)
    results: dict[int, str] = {}

    def run(i: int) -> None:
        stream = client(url).chat.completions.create(
            model="gpt-oss-20b", messages=[{"role": "user", "content": f"c{i}"}], stream=True
        )
        results[i] = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)

    with running as url:
        threads = [threading.Thread(target=run, args=(i,)) for i in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
    assert results == {0: "Hello there", 1: "Hello there", 2: "Hello there"}
    assert model.replies_started == 3


def test_disconnect_cancels_generation(enc) -> None:
    numbers = "<|channel|>final<|message|>" + " ".join(map(str, range(600))) + "<|return|>"
    model, engine, running = start(enc, [numbers, ANSWER], model_type=SlowModel)
    with running as url, httpx.Client(timeout=30) as http:
        body = {"model": "gpt-oss-20b", "stream": True,
                "messages": [{"role": "user", "content": "count"}]}  # fmt: skip
        with http.stream("POST", url + "/v1/chat/completions", json=body) as response:
            lines = response.iter_lines()
            got = [next(lines) for _ in range(20)]
            assert any('"content":"' in line for line in got[1:])
        # the connection is closed: the generation stops soon after, far from the reply's end
        steps, deadline = -1, time.monotonic() + 10
        while steps != len(model.calls) and time.monotonic() < deadline:
            steps = len(model.calls)
            time.sleep(0.4)
        assert len(model.calls) == steps < 600  # the whole reply would take about 1200 steps
        out = client(url).chat.completions.create(
            model="gpt-oss-20b", messages=[{"role": "user", "content": "next"}]
        )
        assert out.choices[0].message.content == "Hello there"


def test_queue_limit_503(enc) -> None:
    model, engine, running = start(enc, [LONG, LONG], model_type=SlowModel, max_queue=1)
    with running as url, httpx.Client(timeout=30) as http:
        body = {"model": "gpt-oss-20b", "stream": True}
        with http.stream("POST", url + "/v1/chat/completions",
                         json={**body, "messages": [{"role": "user", "content": "a"}]}) as first:  # fmt: skip
            first_lines = first.iter_lines()  # held: a dropped iterator closes the connection
            while '"content":"la' not in next(first_lines).replace(" ", ""):
                pass  # until the first is generating (its opening chunk comes before it starts)
            second = http.stream("POST", url + "/v1/chat/completions",
                                 json={**body, "messages": [{"role": "user", "content": "b"}]})  # fmt: skip
            with second as second:
                assert second.status_code == 200  # waiting behind the first
                third = http.post(
                    url + "/v1/chat/completions",
                    json={"model": "gpt-oss-20b", "messages": [{"role": "user", "content": "c"}]},
                )
                assert third.status_code == 503, third.text
                assert "--max-queue" in third.json()["error"]["message"]


def test_responses_stream_and_previous_response_id(enc) -> None:
    model, engine, running = start(enc, [ANSWER, ANSWER, CALL])
    with running as url:
        c = client(url)
        first = c.responses.create(model="gpt-oss-20b", input="hi", instructions="Be brief.")
        assert first.status == "completed" and first.output_text == "Hello there"
        reasoning, message = first.output
        assert reasoning.type == "reasoning" and reasoning.content[0].text == "think hard"
        assert reasoning.encrypted_content == "think hard"
        assert message.content[0].type == "output_text"
        events = list(
            c.responses.create(
                model="gpt-oss-20b",
                input="again",
                instructions="Be brief.",  # instructions are not carried over (as at OpenAI)
                previous_response_id=first.id,
                stream=True,
            )
        )
        assert [e.sequence_number for e in events] == list(range(len(events)))
        assert events[0].type == "response.created" and events[-1].type == "response.completed"
        text = "".join(e.delta for e in events if e.type == "response.output_text.delta")
        done = events[-1].response
        assert text == done.output_text == "Hello there"
        # the follow-up continued the stored conversation from its cache
        assert done.usage.input_tokens_details.cached_tokens == first.usage.input_tokens
        tools = [{"type": "function", "name": "run", "parameters": {"type": "object"}},
                 {"type": "local_shell"}, {"type": "custom", "name": "apply_patch"}]  # fmt: skip
        call = c.responses.create(
            model="gpt-oss-20b",
            input=[{"type": "message", "role": "user", "content": [{"type": "input_text", "text": "ls"}]}],
            tools=tools,
        )  # fmt: skip
        item = call.output[0]
        assert (item.type, item.name, item.arguments) == ("function_call", "run", '{"cmd":"ls"}')
        with pytest.raises(openai.NotFoundError):
            c.responses.create(model="gpt-oss-20b", input="x", previous_response_id="resp_nope")


def test_responses_input_items_render_harmony(enc) -> None:
    model, engine, running = start(enc, [ANSWER])
    items = [
        {"type": "message", "role": "developer", "content": "Dev rules."},
        {"type": "message", "role": "user", "content": "ls"},
        {"type": "reasoning", "summary": [], "encrypted_content": "use the tool"},
        {"type": "function_call", "call_id": "c1", "name": "run", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "c1", "output": "a.txt"},
    ]
    with running as url:
        out = client(url).responses.create(
            model="gpt-oss-20b", input=items, instructions="Top.", reasoning={"effort": "low"},
            tools=[{"type": "function", "name": "run", "parameters": {"type": "object"}}],
        )  # fmt: skip
    expect = harmony.render_prompt(
        [
            harmony.Message("user", "ls"),
            harmony.Message("assistant", "use the tool", channel="analysis"),
            harmony.Message("assistant", "{}", channel="commentary", recipient="functions.run",
                            content_type="<|constrain|>json"),
            harmony.tool_result("functions.run", "a.txt"),
        ],
        harmony.PromptOptions(effort="low", date=engine.defaults.date,
                              instructions="Top.\n\nDev rules.",
                              tools=[harmony.ToolSpec("run", "", {"type": "object"})]),
        enc,
    )  # fmt: skip
    assert out.usage.input_tokens == len(expect)
    assert model.calls[0] + model.calls[1] == expect  # the history, then <|start|>assistant


def test_failed_generation_ends_with_response_failed(enc) -> None:
    model, engine, running = start(enc, [])  # no reply scripted: the model raises
    with running as url:
        events = list(client(url).responses.create(model="gpt-oss-20b", input="x", stream=True))
        assert events[-1].type == "response.failed"
        assert "generation failed" in events[-1].response.error.message
        assert httpx.get(url + "/health").status_code == 200


def test_custom_tool_and_ollama_probes(enc) -> None:
    patch = "<|channel|>commentary to=functions.apply_patch <|constrain|>json<|message|>"
    patch += '{"input":"*** Begin Patch"}<|call|>'
    model, engine, running = start(enc, [patch, ANSWER])
    tools = [{"type": "custom", "name": "apply_patch", "description": "Edit files."}]
    with running as url:
        c = client(url)
        events = list(
            c.responses.create(model="gpt-oss-20b", input="fix", tools=tools, stream=True)
        )
        done = events[-1].response
        call = done.output[0]
        assert (call.type, call.name, call.input) == (
            "custom_tool_call",
            "apply_patch",
            "*** Begin Patch",
        )
        assert "response.custom_tool_call_input.done" in [e.type for e in events]
        back = c.responses.create(
            model="gpt-oss-20b", previous_response_id=done.id, tools=tools,
            input=[{"type": "custom_tool_call_output", "call_id": call.call_id, "output": "ok"}],
        )  # fmt: skip
        assert back.output_text == "Hello there"
        assert back.usage.input_tokens_details.cached_tokens == done.usage.input_tokens
        assert httpx.get(url + "/api/tags").json()["models"][0]["name"] == "gpt-oss-20b"
        pulled = httpx.post(url + "/api/pull", json={"model": "gpt-oss-20b", "stream": True})
        assert pulled.text.strip().splitlines()[-1] == '{"status":"success"}'
        assert httpx.post(url + "/api/pull", json={"model": "llama3"}).status_code == 404


class SumTool(Tool):
    """A built-in `python` stand-in: answers the sum the code prints (the seam, not the tool)."""

    name = "python"

    def call(self, function: str, arguments: str, *, cancel=None) -> ToolResult:
        return ToolResult(text="42\n")


def test_builtin_tool_runs_inside_the_response(enc) -> None:
    call = "<|channel|>analysis<|message|>Compute it.<|end|><|start|>assistant<|channel|>analysis"
    call += " to=python code<|message|>print(6*7)<|call|>"
    answer = "<|channel|>final<|message|>It is 42.<|return|>"
    model = ScriptedModel([enc.encode(r, allowed_special="all") for r in (call, answer)])
    engine = ServerEngine(
        model, enc, model_id="gpt-oss-20b", defaults=SessionSettings(context=4096)
    )
    with serve(create_app(engine, builtin_tools={"python": SumTool()})) as url:
        events = list(
            client(url).responses.create(
                model="gpt-oss-20b", input="6*7?", tools=[{"type": "code_interpreter"}], stream=True
            )
        )
    done = events[-1].response
    assert [o.type for o in done.output] == ["reasoning", "code_interpreter_call", "message"]
    ci = done.output[1]
    assert (ci.code, ci.outputs[0].logs) == ("print(6*7)", "42\n")
    assert done.output_text == "It is 42."
    assert "response.code_interpreter_call.completed" in [e.type for e in events]
    # the python tool was declared, and its output went back to the model as author `python`
    first_prompt = enc.decode(model.calls[0])
    assert "## python" in first_prompt
    assert "<|start|>python to=assistant<|channel|>analysis<|message|>42\n<|end|>" in enc.decode(
        [t for c in model.calls for t in c]
    )


def test_non_streaming_client_that_gives_up_cancels(enc) -> None:
    numbers = "<|channel|>final<|message|>" + " ".join(map(str, range(600))) + "<|return|>"
    model, engine, running = start(enc, [numbers, ANSWER], model_type=SlowModel)
    with running as url:
        body = {"model": "gpt-oss-20b", "messages": [{"role": "user", "content": "count"}]}
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(url + "/v1/chat/completions", json=body, timeout=1.0)
        steps, deadline = -1, time.monotonic() + 10
        while steps != len(model.calls) and time.monotonic() < deadline:
            steps = len(model.calls)
            time.sleep(0.5)
        assert len(model.calls) == steps < 600  # the whole reply would take about 1200 steps
