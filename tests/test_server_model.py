"""`gptoss serve` as a real command on the trained tiny harmony model, with the openai SDK: a
function call the model makes (and one `tool_choice` forces), the tool result round trip with
prefix reuse, streamed text equal to non-streamed, Responses function calls, the non-loopback
refusal and shutdown on SIGTERM."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest

REPO = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # starts `gptoss serve` on the trained tiny model: ~1-2 min here
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Gets the current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "description": "The city name."}},
            "required": ["city"],
        },
    },
}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "GPTOSS_CONFIG": "/nonexistent/config.toml"}


@pytest.fixture(scope="module")
def served(harmony_model: Path) -> Iterator[tuple[subprocess.Popen, str]]:
    cmd = [sys.executable, "-m", "gptoss_mlx", "serve", "-m", str(harmony_model), "--port", "0",
           "--temperature", "0", "--context", "2048"]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True, env=_env(), cwd=REPO)
    url, seen = None, []
    deadline = time.monotonic() + 120
    while url is None and time.monotonic() < deadline:
        line = proc.stderr.readline()
        if not line and proc.poll() is not None:
            break
        seen.append(line)
        if m := re.search(r" at (http://\S+)/v1 ", line):
            url = m.group(1)
    assert url, "".join(seen)
    for _ in range(200):  # the banner comes just before uvicorn accepts connections
        if "Application startup complete" in proc.stderr.readline():
            break
    yield proc, url
    if proc.poll() is None:
        proc.kill()
        proc.wait()


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)


def test_tool_call_round_trip(served) -> None:
    _, url = served
    c = _client(url)
    ask = [{"role": "user", "content": "What's the weather in Paris?"}]
    out = c.chat.completions.create(model=c.models.list().data[0].id, messages=ask, tools=[WEATHER])
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls"
    call = choice.message.tool_calls[0]
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city":"Paris"}')
    assert choice.message.reasoning == "Weather request. Calling get_weather."
    follow = ask + [
        {"role": "assistant", "content": None, "reasoning": choice.message.reasoning,
         "tool_calls": [call.model_dump()]},
        {"role": "tool", "tool_call_id": call.id, "content": '{"temperature": 21, "sky": "sunny"}'},
    ]  # fmt: skip
    done = c.chat.completions.create(
        model=c.models.list().data[0].id, messages=follow, tools=[WEATHER]
    )
    assert done.choices[0].message.content == "It is 21 °C and sunny in Paris."
    assert done.choices[0].message.reasoning == "Tool says 21 degrees, sunny."
    # everything up to the end of the reasoning came from the first request's cache
    cached = done.usage.prompt_tokens_details.cached_tokens
    assert out.usage.prompt_tokens < cached < done.usage.prompt_tokens


def test_tool_choice_makes_the_model_call(served) -> None:
    _, url = served
    c = _client(url)
    ask = [{"role": "user", "content": "What is 2+2?"}]  # answered directly when left alone
    out = c.chat.completions.create(
        model=c.models.list().data[0].id, messages=ask, tools=[WEATHER],
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
    )  # fmt: skip
    choice = out.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert choice.message.reasoning == "The user asks a simple sum. 2+2=4."  # its own, kept
    calls = [(t.function.name, t.function.arguments) for t in choice.message.tool_calls]
    assert calls == [("get_weather", '{"city":"Paris"}')]  # the arguments are the model's
    assert out.usage.completion_tokens_details.reasoning_tokens > 0


def test_stream_equals_non_stream(served) -> None:
    _, url = served
    c = _client(url)
    ask = [{"role": "user", "content": "What is 2+2?"}]
    full = (
        c.chat.completions.create(model=c.models.list().data[0].id, messages=ask).choices[0].message
    )
    assert (full.content, full.reasoning) == ("2 + 2 = 4.", "The user asks a simple sum. 2+2=4.")
    chunks = list(
        c.chat.completions.create(model=c.models.list().data[0].id, messages=ask, stream=True)
    )
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    assert "".join(d.content or "" for d in deltas) == full.content
    assert "".join(getattr(d, "reasoning", None) or "" for d in deltas) == full.reasoning
    second = c.chat.completions.create(
        model=c.models.list().data[0].id,
        messages=ask + [{"role": "assistant", "content": full.content},
                        {"role": "user", "content": "Now say it in words."}],
    )  # fmt: skip
    assert second.choices[0].message.content == "Two plus two is four."


def test_responses_function_call(served) -> None:
    _, url = served
    tool = {"type": "function", **WEATHER["function"]}
    c = _client(url)
    out = c.responses.create(
        model=c.models.list().data[0].id, input="What's the weather in Paris?", tools=[tool]
    )
    kinds = [o.type for o in out.output]
    assert kinds == ["reasoning", "function_call"]
    call = out.output[1]
    assert (call.name, call.arguments) == ("get_weather", '{"city":"Paris"}')
    done = c.responses.create(
        model=c.models.list().data[0].id,
        previous_response_id=out.id,
        input=[{"type": "function_call_output", "call_id": call.call_id,
                "output": '{"temperature": 21, "sky": "sunny"}'}],
        tools=[tool],
    )  # fmt: skip
    assert done.output_text == "It is 21 °C and sunny in Paris."
    assert done.usage.input_tokens_details.cached_tokens > out.usage.input_tokens


def test_sigterm_shuts_down_cleanly(served) -> None:
    proc, _ = served
    proc.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then re-raises the signal so the exit status tells it
    assert proc.wait(30) in (0, -signal.SIGTERM)
    assert "Application shutdown complete" in proc.stderr.read()


def test_non_loopback_needs_a_key() -> None:
    cmd = [sys.executable, "-m", "gptoss_mlx", "serve", "--host", "0.0.0.0", "--port", "0"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=60)
    assert res.returncode != 0
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and "--api-key" in lines[0] and "--insecure-no-auth" in lines[0]
