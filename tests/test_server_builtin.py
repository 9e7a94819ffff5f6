"""Built-in tools inside /v1/responses, through the real `openai` SDK: python in the real
bubblewrap sandbox (`code_interpreter`), the browser against the local stand-in web
(`web_search`, a citation as a url_citation annotation), the 400 when the server was started
without the tool, and `gptoss serve --python` refusing to start without a sandbox."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import openai
import pytest

from gptoss_mlx import harmony
from gptoss_mlx.cli import serve_tools
from gptoss_mlx.errors import UserError
from gptoss_mlx.server import ServerEngine, create_app
from gptoss_mlx.session.chat import SessionSettings
from gptoss_mlx.tools.python import PythonTool

from . import browser_web
from .scripted_model import ScriptedModel
from .server_harness import serve

THINK = "<|channel|>analysis<|message|>Compute it.<|end|><|start|>assistant"
PY_CALL = THINK + "<|channel|>analysis to=python code<|message|>{code}<|call|>"
FINAL = "<|channel|>final<|message|>{text}<|return|>"


@pytest.fixture(scope="module")
def enc(tiny_checkpoint: Path):
    return harmony.encoding_for_model(tiny_checkpoint)


def engine_for(enc, replies: list[str]) -> tuple[ScriptedModel, ServerEngine]:
    model = ScriptedModel([enc.encode(r, allowed_special="all") for r in replies])
    engine = ServerEngine(
        model, enc, model_id="gpt-oss-20b", defaults=SessionSettings(context=4096)
    )
    return model, engine


def client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="k", max_retries=0)


def everything_sent(enc, model: ScriptedModel) -> str:
    return enc.decode([t for c in model.calls for t in c])


def test_code_interpreter_runs_in_the_real_sandbox(enc, tmp_path: Path) -> None:
    replies = [
        PY_CALL.format(code="x = 6*7\nprint(x)"),
        FINAL.format(text="It is 42."),
        PY_CALL.format(code="print(x + 1)"),  # a later request: the same worker, x is kept
        FINAL.format(text="Then 43."),
    ]
    model, engine = engine_for(enc, replies)
    python = PythonTool(tmp_path, timeout=30)
    assert python.mode == "bubblewrap"
    with serve(create_app(engine, builtin_tools={"python": python})) as url:
        api = client(url)
        tools = [{"type": "code_interpreter", "container": {"type": "auto"}}]
        first = api.responses.create(model="gpt-oss-20b", input="6*7?", tools=tools)
        second = api.responses.create(
            model="gpt-oss-20b", input="and plus one?", tools=tools, previous_response_id=first.id
        )
    assert [o.type for o in first.output] == ["reasoning", "code_interpreter_call", "message"]
    ci = first.output[1]
    assert (ci.code, ci.outputs[0].logs) == ("x = 6*7\nprint(x)", "42\n")
    assert first.output_text == "It is 42."
    sent = everything_sent(enc, model)
    assert "<|start|>python to=assistant<|channel|>analysis<|message|>42\n<|end|>" in sent
    assert str(tmp_path) in enc.decode(model.calls[0])  # the prompt names the real directory
    assert second.output[1].outputs[0].logs == "43\n"
    assert python._worker is None  # closed with the server


def test_code_interpreter_stream_events(enc, tmp_path: Path, caplog) -> None:
    replies = [PY_CALL.format(code="print(6*7)"), FINAL.format(text="42"), FINAL.format(text="ok")]
    model, engine = engine_for(enc, replies)
    tools = [{"type": "code_interpreter"}]
    with serve(create_app(engine, builtin_tools={"python": PythonTool(tmp_path)})) as url:
        api = client(url)
        events = list(
            api.responses.create(model="gpt-oss-20b", input="6*7?", tools=tools, stream=True)
        )
        # a client that keeps the conversation itself replays the output items as input
        replay = [o.model_dump(exclude_none=True) for o in events[-1].response.output]
        again = [{"role": "user", "content": "6*7?"}, *replay, {"role": "user", "content": "ok?"}]
        with caplog.at_level("WARNING", logger="gptoss.server"):
            answer = api.responses.create(model="gpt-oss-20b", input=again, tools=tools)
    assert answer.output_text == "ok"
    assert "ignoring an input item" not in caplog.text
    assert [e.sequence_number for e in events] == list(range(len(events)))
    kinds = [e.type for e in events]
    call = kinds.index("response.code_interpreter_call.in_progress")
    assert kinds[call - 1 : call + 6] == [
        "response.output_item.added",
        "response.code_interpreter_call.in_progress",
        "response.code_interpreter_call_code.delta",
        "response.code_interpreter_call_code.done",
        "response.code_interpreter_call.interpreting",
        "response.code_interpreter_call.completed",
        "response.output_item.done",
    ]
    assert events[call + 1].delta == "print(6*7)" and events[call + 2].code == "print(6*7)"
    assert events[call + 5].item.outputs[0].logs == "42\n"
    assert kinds[:2] == ["response.created", "response.in_progress"]
    assert kinds[-1] == "response.completed"
    assert events[-1].response.output_text == "42"


@pytest.fixture
def web(monkeypatch: pytest.MonkeyPatch):
    with browser_web.serve() as web:
        monkeypatch.setenv("GPTOSS_BROWSER_ALLOW_PRIVATE", "1")
        monkeypatch.setenv("GPTOSS_SEARXNG_URL", web.url("127.0.0.1", "/searxng"))
        for name in ("GPTOSS_SEARCH", "BRAVE_API_KEY", "EXA_API_KEY", "GPTOSS_OFFLINE"):
            monkeypatch.delenv(name, raising=False)
        yield web


def browse(function: str, args: dict) -> str:
    return f"<|channel|>analysis to=browser.{function} code<|message|>{json.dumps(args)}<|call|>"


def test_web_search_with_a_citation(enc, web) -> None:
    notes = web.url("127.0.0.1", "/notes.txt")
    replies = [
        browse("search", {"query": "plain notes"}),
        browse("open", {"id": notes}),
        browse("find", {"pattern": "answer"}),
        FINAL.format(text="The answer is 42【1†L3】."),
    ]
    model, engine = engine_for(enc, replies)
    tools = serve_tools.build(SimpleNamespace(python=False), browser=True)
    with serve(create_app(engine, builtin_tools=tools)) as url:
        stream = client(url).responses.create(
            model="gpt-oss-20b", input="what is the answer?", tools=[{"type": "web_search"}],
            stream=True,
        )  # fmt: skip
        events = list(stream)
    done = events[-1].response
    assert events[-1].type == "response.completed"
    calls = [o for o in done.output if o.type == "web_search_call"]
    assert [c.action.model_dump(exclude_none=True) for c in calls] == [
        {"type": "search", "query": "plain notes"},
        {"type": "open_page", "url": notes},
        {"type": "find", "pattern": "answer", "url": notes},
    ]
    assert any("/searxng/search" in path for _, path, _, _ in web.requests)
    message = done.output[-1].content[0]
    link = f" ([127.0.0.1:{web.port}]({notes}))"
    assert message.text == "The answer is 42" + link + "."
    note = message.annotations[0]
    assert (note.type, note.url, note.title) == ("url_citation", notes, "notes.txt")
    assert message.text[note.start_index : note.end_index] == link
    deltas = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    assert deltas == message.text  # the stream shows the rewritten text too
    assert "response.output_text.annotation.added" in [e.type for e in events]
    assert "response.web_search_call.searching" in [e.type for e in events]
    assert "First line of notes." in everything_sent(enc, model)  # the page went to the model


def test_builtin_not_enabled_is_left_out_with_a_warning(enc, caplog) -> None:
    """Codex CLI sends web_search with every request: a server started without --browser
    answers without it (the model is not told of the tool) and says once in its log how to
    enable it."""
    from gptoss_mlx.server import errors

    errors._warned.clear()
    model, engine = engine_for(enc, [FINAL.format(text="hi")] * 3)
    with serve(create_app(engine)) as url, caplog.at_level("WARNING", logger="gptoss.server"):
        api = client(url)
        for kind in ("code_interpreter", "web_search", "web_search"):
            out = api.responses.create(model="gpt-oss-20b", input="x", tools=[{"type": kind}])
            assert out.output_text == "hi"
    sent = everything_sent(enc, model)
    assert "## python" not in sent and "## browser" not in sent
    warnings = [r.getMessage() for r in caplog.records if "left out" in r.getMessage()]
    assert len(warnings) == 2  # once per tool type
    assert "gptoss serve --python" in warnings[0] and "gptoss serve --browser" in warnings[1]


def test_serve_python_without_a_sandbox_is_refused() -> None:
    settings = SimpleNamespace(
        python=True, python_timeout=5.0, python_network=False, python_unsafe=False
    )
    with pytest.raises(UserError, match="no sandbox available"):
        serve_tools.build(settings, browser=False, bwrap="/nonexistent/bwrap")
    env = {**os.environ, "PATH": "/nonexistent", "PYTHONPATH": str(Path(__file__).parents[1])}
    done = subprocess.run(
        [sys.executable, "-m", "gptoss_mlx", "serve", "--python", "-m", "/nonexistent/model"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "bubblewrap (bwrap) is not installed" in lines[0]


def test_functions_python_counts_as_the_builtin_unless_declared(enc, tmp_path: Path) -> None:
    prefixed = (
        "<|channel|>commentary to=functions.python <|constrain|>json<|message|>print(1+1)<|call|>"
    )
    replies = [prefixed, FINAL.format(text="2"), prefixed]
    model, engine = engine_for(enc, replies)
    with serve(create_app(engine, builtin_tools={"python": PythonTool(tmp_path)})) as url:
        api = client(url)
        ci = [{"type": "code_interpreter"}]
        ran = api.responses.create(model="gpt-oss-20b", input="1+1?", tools=ci)
        own = {"type": "function", "name": "python", "parameters": {"type": "object"}}
        declared = api.responses.create(model="gpt-oss-20b", input="1+1?", tools=[*ci, own])
    assert [o.type for o in ran.output] == ["code_interpreter_call", "message"]
    assert ran.output[0].outputs[0].logs == "2\n"
    assert "<|start|>functions.python to=assistant" in everything_sent(enc, model)
    assert [o.type for o in declared.output] == ["function_call"]
    assert declared.output[0].name == "python"


def test_client_gone_interrupts_a_running_python_call(enc, tmp_path: Path) -> None:
    import httpx

    sleepy = PY_CALL.format(code="import time\ntime.sleep(60)")
    model, engine = engine_for(enc, [sleepy, FINAL.format(text="never"), FINAL.format(text="next")])
    python = PythonTool(tmp_path, timeout=60)
    body = {"model": "gpt-oss-20b", "input": "sleep", "stream": True,
            "tools": [{"type": "code_interpreter"}]}  # fmt: skip
    with serve(create_app(engine, builtin_tools={"python": python})) as url:
        with httpx.stream("POST", url + "/v1/responses", json=body, timeout=30) as r:
            lines = r.iter_lines()
            next(line for line in lines if "response.output_item.done" in line)
            deadline = time.monotonic() + 30
            while python._worker is None and time.monotonic() < deadline:
                time.sleep(0.05)  # wait until the call is running in the sandbox
            assert python._worker is not None
            time.sleep(0.5)
        started = time.monotonic()
        time.sleep(1.0)
        answer = client(url).responses.create(model="gpt-oss-20b", input="next?")
        waited = time.monotonic() - started
    assert answer.output_text in ("never", "next")
    assert waited < 20  # the 60 s call was interrupted when its client went away
    # no result went back to the model for the cancelled call
    assert "<|start|>python to=assistant" not in everything_sent(enc, model)
