"""The tool loop driven by the ScriptedModel: header variants, errors, the cap, Ctrl-C, exact
prefills, save and resume."""

from __future__ import annotations

import _thread
import json
import threading
from pathlib import Path

import pytest

from gptoss_mlx import harmony
from gptoss_mlx.model.sampling import SamplerSettings
from gptoss_mlx.session import store as chatstore
from gptoss_mlx.session.chat import ChatSession, SessionSettings
from gptoss_mlx.session.tool_loop import INTERRUPTED_TEXT, ToolLoop, ToolStarted, ToolTable
from gptoss_mlx.tools.base import Tool, ToolResult

from .scripted_model import ScriptedModel

WEATHER = harmony.ToolSpec(
    "get_weather",
    "Weather at a place.",
    {
        "type": "object",
        "properties": {"location": {"type": "string"}},
        "required": ["location"],
    },
)


class Recorder(Tool):
    """A tool that answers `<name>(<function>): <arguments>` and remembers its calls."""

    def __init__(self, name: str, specs: list[harmony.ToolSpec] | None = None) -> None:
        self.name = name
        self._specs = specs
        self.calls: list[tuple[str, str]] = []

    def specs(self) -> list[harmony.ToolSpec]:
        return list(self._specs or [])

    def call(self, function, arguments, *, cancel=None) -> ToolResult:
        self.calls.append((function, arguments))
        return ToolResult(f"{self.name}({function}): {arguments}", summary="ok")


class Broken(Tool):
    name = "python"

    def call(self, function, arguments, *, cancel=None) -> ToolResult:
        raise RuntimeError("worker died")


class Blocking(Tool):
    """Waits for the cancel event, after interrupting the main thread like Ctrl-C."""

    name = "python"

    def __init__(self) -> None:
        self.cancelled = threading.Event()

    def call(self, function, arguments, *, cancel=None) -> ToolResult:
        assert cancel is not None
        _thread.interrupt_main()
        if cancel.wait(10):
            self.cancelled.set()
        return ToolResult("stopped", error=True)


class Guarded(Recorder):
    needs_approval = True


@pytest.fixture(scope="module")
def enc(tiny_checkpoint: Path):
    return harmony.encoding_for_model(tiny_checkpoint)


def toks(enc, text: str) -> list[int]:
    return enc.encode(text, allowed_special="all")


def make(enc, replies: list[str], tools=(), functions=(), **kw):
    model = ScriptedModel([toks(enc, r) for r in replies])
    settings = SessionSettings(sampler=SamplerSettings(temperature=0), tools=list(functions))
    session = ChatSession(model, None, enc, settings)
    table = ToolTable(tools, user_functions=functions)
    session.settings.tools = table.function_specs()
    return model, session, ToolLoop(session, table, **kw)


def prefills(model: ScriptedModel) -> list[list[int]]:
    return [c for c in model.calls if len(c) > 1]


FINAL = "<|channel|>final<|message|>The answer is 42.<|return|>"
ARGS = '{"location": "Paris"}'

VARIANTS = [
    # (reply, tool that runs, function it gets, author of the result)
    ("<|channel|>analysis to=python code<|message|>print(6*7)<|call|>", "python", "", "python"),
    (" to=python<|channel|>analysis code<|message|>print(6*7)<|call|>", "python", "", "python"),
    (
        f"<|channel|>commentary to=functions.get_weather <|constrain|>json<|message|>{ARGS}<|call|>",
        "functions", "get_weather", "functions.get_weather",
    ),
    (
        f" to=functions.get_weather<|channel|>commentary <|constrain|>json<|message|>{ARGS}<|call|>",
        "functions", "get_weather", "functions.get_weather",
    ),
    (
        f"<|channel|>analysis to=functions.get_weather <|constrain|>json<|message|>{ARGS}<|call|>",
        "functions", "get_weather", "functions.get_weather",
    ),
    (
        f"<|channel|>commentary to=functions.get_weather<|message|>{ARGS}<|call|>",
        "functions", "get_weather", "functions.get_weather",
    ),
    ("<|channel|>analysis to=functions.python code<|message|>print(6*7)<|call|>", "python", "", "python"),
    (
        '<|channel|>analysis to=browser.search code<|message|>{"query": "x"}<|call|>',
        "browser", "search", "browser.search",
    ),
    (
        '<|channel|>analysis to=functions.browser.search <|constrain|>json<|message|>{"query": "x"}<|call|>',
        "browser", "search", "browser.search",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("reply", "tool", "function", "author"), VARIANTS)
def test_header_variants_dispatch_and_prefill_only_the_result(enc, reply, tool, function, author):
    tools = [Recorder("python"), Recorder("browser"), Recorder("functions", [WEATHER])]
    by_name = {t.name: t for t in tools}
    thought = "<|channel|>analysis<|message|>Let me check.<|end|><|start|>assistant"
    model, session, loop = make(enc, [thought + reply, FINAL], tools)
    result = loop.turn("What is 6*7?")
    assert result.final == "The answer is 42." and result.finish_reason == "stop"
    ran = by_name[tool]
    assert len(ran.calls) == 1 and ran.calls[0][0] == function
    assert sum(len(t.calls) for t in tools) == 1
    call, tool_msg = session.messages[2], session.messages[3]
    assert call.recipient and call.tokens and call.tokens[-1] == harmony.CALL
    assert call.tokens == [harmony.START, harmony.ASSISTANT, *toks(enc, reply)]
    assert (tool_msg.role, tool_msg.name, tool_msg.recipient) == ("tool", author, "assistant")
    assert tool_msg.channel == call.channel
    assert tool_msg.content == f"{tool}({function}): {ran.calls[0][1]}"
    # The second prompt shares everything the cache holds; only <|call|> (never fed, it is a
    # stop token), the result message and <|start|>assistant are prefilled.
    result_tokens = enc.render(harmony.to_harmony(tool_msg))
    assert prefills(model)[1] == [harmony.CALL, *result_tokens, harmony.START, harmony.ASSISTANT]
    assert [r.author for r in loop.records] == [author]


def test_call_as_first_message_keeps_the_prompts_start(enc):
    reply = "<|channel|>analysis to=python code<|message|>print(1)<|call|>"
    model, session, loop = make(enc, [reply, FINAL], [Recorder("python")])
    loop.turn("hi")
    assert session.messages[1].tokens == [harmony.START, harmony.ASSISTANT, *toks(enc, reply)]
    result_tokens = enc.render(harmony.to_harmony(session.messages[2]))
    assert prefills(model)[1] == [harmony.CALL, *result_tokens, harmony.START, harmony.ASSISTANT]


def call_to(name: str, args: str) -> str:
    return f"<|channel|>commentary to=functions.{name} <|constrain|>json<|message|>{args}<|call|>"


@pytest.mark.parametrize(
    ("reply", "expect"),
    [
        (call_to("get_weather", "{location: Paris"), "not valid JSON"),
        (call_to("get_weather", '{"location": 5}'), "'location' must be string"),
        (call_to("get_weather", "{}"), "missing required argument(s): location"),
        (call_to("get_weather", "[1]"), "must be a JSON object"),
        (call_to("nope", "{}"), "Unknown tool: functions.nope"),
        ("<|channel|>analysis to=shell code<|message|>ls<|call|>", "Unknown tool: shell"),
    ],
)
def test_bad_calls_come_back_as_tool_errors(enc, reply, expect):
    fn = Recorder("functions", [WEATHER])
    model, session, loop = make(enc, [reply, FINAL], [fn, Recorder("python")])
    result = loop.turn("weather?")
    assert result.final == "The answer is 42."
    assert fn.calls == []
    error = json.loads(session.messages[2].content)["error"]
    assert expect in error
    assert loop.records[0].error


def test_a_tool_that_raises_is_an_error_text(enc):
    reply = "<|channel|>analysis to=python code<|message|>1/0<|call|>"
    _, session, loop = make(enc, [reply, FINAL], [Broken()])
    result = loop.turn("go")
    assert result.final == "The answer is 42."
    assert "worker died" in session.messages[2].content and loop.records[0].error


def test_the_cap_warns_once_then_stops_the_turn(enc):
    reply = "<|channel|>analysis to=python code<|message|>print(1)<|call|>"
    py = Recorder("python")
    _, session, loop = make(enc, [reply] * 4, [py], max_calls=2)
    result = loop.turn("loop forever")
    assert len(py.calls) == 2
    assert "limit of 2 tool calls" in session.messages[6].content
    assert result.finish_reason == "tool_limit"
    assert [r.output is None for r in loop.records] == [False, False, False, True]


def test_ctrl_c_in_a_tool_cancels_it_and_keeps_the_turn(enc):
    reply = "<|channel|>analysis to=python code<|message|>while True: pass<|call|>"
    tool = Blocking()
    _, session, loop = make(enc, [reply, FINAL], [tool])
    result = loop.turn("spin")
    assert tool.cancelled.is_set()
    assert result.finish_reason == "interrupted"
    assert [m.role for m in session.messages] == ["user", "assistant", "tool"]
    assert session.messages[2].content == INTERRUPTED_TEXT
    assert loop.session.turn("again").final == "The answer is 42."  # the chat goes on


def test_user_function_without_executor_stops_or_asks(enc):
    reply = call_to("get_weather", ARGS)
    _, session, loop = make(enc, [reply], functions=[WEATHER])
    result = loop.turn("weather?")
    assert result.finish_reason == "tool_call"
    assert loop.records[-1].output is None and loop.records[-1].call.arguments == ARGS
    asked = []
    _, session, loop = make(
        enc, [reply, FINAL], functions=[WEATHER], ask_result=lambda c: asked.append(c) or "sunny"
    )
    assert loop.turn("weather?").final == "The answer is 42."
    assert asked[0].recipient == "functions.get_weather"
    assert session.messages[2].content == "sunny"


def test_approval_no_always_and_refused_without_anyone_to_ask(enc):
    reply = call_to("get_weather", ARGS)
    asked = []

    def approve(tool, function, arguments):
        asked.append(function)
        return "always" if len(asked) > 1 else "no"

    fn = Guarded("functions", [WEATHER])
    _, session, loop = make(enc, [reply, reply, reply, FINAL], [fn], approve=approve)
    loop.turn("weather?")
    assert asked == ["get_weather", "get_weather"] and len(fn.calls) == 2
    assert "declined" in session.messages[2].content
    fn = Guarded("functions", [WEATHER])
    _, session, loop = make(enc, [reply, FINAL], [fn])
    loop.turn("weather?")
    assert fn.calls == [] and "--yes" in session.messages[2].content
    fn = Guarded("functions", [WEATHER])
    _, session, loop = make(enc, [reply, FINAL], [fn], approve_all=True)
    loop.turn("weather?")
    assert len(fn.calls) == 1


def test_events_and_analysis_dropped_after_the_turn(enc):
    py_call = "<|channel|>analysis to=python code<|message|>print(6*7)<|call|>"
    fn_call = call_to("get_weather", ARGS)
    tools = [Recorder("python"), Recorder("functions", [WEATHER])]
    second = "<|channel|>final<|message|>Bye.<|return|>"
    model, session, loop = make(enc, [py_call, fn_call, FINAL, second], tools)
    seen = []
    loop.session.collect(loop.send("go"), seen.append)
    started = [e.author for e in seen if isinstance(e, ToolStarted)]
    assert started == ["python", "functions.get_weather"]
    loop.turn("next")
    text = enc.decode(session.prompt_tokens())
    assert "print(6*7)" not in text and "python(" not in text  # analysis of a finished turn
    assert "to=functions.get_weather" in text and "functions(get_weather)" in text


def test_save_and_resume_with_tool_messages(enc, tmp_path):
    reply = "<|channel|>analysis to=python code<|message|>print(6*7)<|call|>"
    _, session, loop = make(enc, [reply, FINAL], [Recorder("python")])
    loop.turn("6*7?")
    saver = chatstore.Autosaver(tmp_path)
    path = saver.save(session)
    record = chatstore.read(path)
    other = ChatSession(ScriptedModel([]), None, enc, SessionSettings())
    chatstore.apply_record(other, record)
    assert [m.to_dict() for m in other.messages] == [m.to_dict() for m in session.messages]
    assert other.messages[1].tokens == session.messages[1].tokens
    assert other.prompt_tokens() == session.prompt_tokens()


def test_verbatim_rendering_matches_harmony(enc):
    messages = [
        harmony.Message.user("hi"),
        harmony.Message("assistant", "think", channel="analysis"),
        harmony.Message(
            "assistant", ARGS, channel="commentary", recipient="functions.get_weather",
            content_type="<|constrain|>json",
        ),
        harmony.tool_result("functions.get_weather", "sunny"),
    ]  # fmt: skip
    options = harmony.PromptOptions(date="2025-06-28", tools=[WEATHER], python_tool=True)
    plain = harmony.render_prompt(messages, options, enc)
    messages[2].tokens = enc.render(harmony.to_harmony(messages[2]))
    assert harmony.render_prompt(messages, options, enc) == plain
    messages[2].tokens = [harmony.START, *toks(enc, call_to("get_weather", ARGS))]
    text = enc.decode(harmony.render_prompt(messages, options, enc))
    assert "<|channel|>commentary to=functions.get_weather <|constrain|>json" in text


def test_python_description_replaces_harmonys_text(enc):
    default = harmony.PromptOptions(date="2025-06-28", python_tool=True)
    same = harmony.PromptOptions(
        date="2025-06-28",
        python_tool=True,
        python_description=__import__("openai_harmony").ToolNamespaceConfig.python().description,
    )
    assert harmony.render_prompt([], default, enc) == harmony.render_prompt([], same, enc)
    own = harmony.PromptOptions(
        date="2025-06-28", python_tool=True, python_description="Runs python for 5.0 seconds."
    )
    text = enc.decode(harmony.render_prompt([], own, enc))
    assert "## python\n\nRuns python for 5.0 seconds." in text and "/mnt/data" not in text
    again = harmony.PromptOptions.from_dict(json.loads(json.dumps(own.to_dict())))
    assert again.python_description == own.python_description


def test_ctrl_c_while_the_answer_streams_after_a_call_keeps_it(enc):
    reply = "<|channel|>analysis to=python code<|message|>print(6*7)<|call|>"
    _, session, loop = make(enc, [reply, FINAL], [Recorder("python")])
    seen = []

    def on_event(ev):
        if isinstance(ev, harmony.FinalDelta):
            seen.append(ev.text)
            if len(seen) == 2:
                raise KeyboardInterrupt

    result = session.collect(loop.send("6*7?"), on_event)
    assert result.finish_reason == "interrupted"
    last = session.messages[-1]
    assert (last.role, last.channel, last.interrupted) == ("assistant", "final", True)
    assert last.content.startswith("".join(seen))
    assert [m.role for m in session.messages] == ["user", "assistant", "tool", "assistant"]
