"""Tools in `gptoss chat`, scripted: each call as one line (expanded with /reasoning show),
approval, results the user types for --tools functions, /tools."""

from __future__ import annotations

import io
import re
from pathlib import Path

import pytest
from rich.console import Console

from gptoss_mlx import harmony
from gptoss_mlx.model.sampling import SamplerSettings
from gptoss_mlx.session.chat import ChatSession, SessionSettings
from gptoss_mlx.session.tool_loop import ToolFinished, ToolLoop, ToolStarted, ToolTable
from gptoss_mlx.session.tool_setup import declare
from gptoss_mlx.tools.base import ToolResult
from gptoss_mlx.ui.render import Renderer
from gptoss_mlx.ui.repl import Repl

from .scripted_model import ScriptedModel
from .test_tool_loop import WEATHER, Guarded, Recorder, call_to, toks

PY_CALL = "<|channel|>analysis to=python code<|message|>print(6*7)<|call|>"
FINAL = "<|channel|>final<|message|>6*7 = 42.<|return|>"


class Python(Recorder):
    def __init__(self) -> None:
        super().__init__("python")

    def instruction(self) -> str:
        return "Runs Python for 7.0 seconds in /scratch/x."

    def call(self, function, arguments, *, cancel=None) -> ToolResult:
        self.calls.append((function, arguments))
        return ToolResult("42\n")


@pytest.fixture(scope="module")
def enc(tiny_checkpoint: Path):
    return harmony.encoding_for_model(tiny_checkpoint)


def chat(enc, replies, typed: str, tools=(), functions=(), reasoning="collapse", terminal=False):
    model = ScriptedModel([toks(enc, r) for r in replies])
    settings = SessionSettings(sampler=SamplerSettings(temperature=0), context=4096)
    session = ChatSession(model, None, enc, settings)
    table = ToolTable(tools, user_functions=functions)
    declare(session, table)
    out = io.StringIO()
    console = Console(file=out, width=100, height=30, force_terminal=terminal, color_system=None)
    repl = Repl(
        session,
        console=console,
        autosave=False,
        reasoning=reasoning,
        lines=io.StringIO(typed),
        loop=ToolLoop(session, table),
        model_name="scripted",
    )
    repl.run()
    return out.getvalue(), session, repl


def test_a_python_call_is_one_line_under_the_reply(enc):
    py = Python()
    out, session, _ = chat(enc, [PY_CALL, FINAL], "what is 6*7\n", [py])
    assert py.calls == [("", "print(6*7)")]
    assert re.search(r"^\[python · \d+\.\d s · 1 line of output\]$", out, re.M), out
    assert "6*7 = 42." in out and "print(6*7)" not in out
    assert "## python\n\nRuns Python for 7.0 seconds" in enc.decode(session.prompt_tokens())
    assert "tools: python (/tools)" in out


def test_expanded_with_reasoning_shown(enc):
    out, _, _ = chat(enc, [PY_CALL, FINAL], "what is 6*7\n", [Python()], reasoning="show")
    assert "[python · " in out and "  print(6*7)\n  42" in out


def test_terminal_line_and_expanded_code(enc):
    out, _, _ = chat(enc, [PY_CALL, FINAL], "what is 6*7\n", [Python()], terminal=True)
    assert re.search(r"▸ python · \d+\.\d s · 1 line of output", out)
    out, _, _ = chat(
        enc, [PY_CALL, FINAL], "what is 6*7\n", [Python()], terminal=True, reasoning="show"
    )
    assert "▾ python · " in out and "print(6*7)" in out


def test_approval_is_asked_in_chat(enc):
    call = call_to("get_weather", '{"location": "Paris"}')
    fn = Guarded("functions", [WEATHER])
    out, session, _ = chat(enc, [call, FINAL, call, call, FINAL], "w?\nn\nw?\na\n", [fn])
    assert "the model wants to run functions.get_weather" in out
    assert "declined" in session.messages[2].content
    assert len(fn.calls) == 2  # "always" covers the second call of that turn without asking
    assert out.count("allow? [y]es / [n]o / [a]lways") == 2


def test_user_types_the_result_of_a_tools_function(enc):
    call = call_to("get_weather", '{"location": "Paris"}')
    out, session, _ = chat(enc, [call, FINAL], "w?\nsunny, 21 C\n", functions=[WEATHER])
    assert "the model called functions.get_weather" in out
    tool = [m for m in session.messages if m.role == "tool"]
    assert tool[0].content == "sunny, 21 C" and tool[0].name == "functions.get_weather"
    out, session, _ = chat(enc, [call], "w?\n\n", functions=[WEATHER])
    assert "stopped at a tool call" in out
    assert out.split(">>> w?")[1].count("functions.get_weather") == 1  # in the question only


def test_tools_command_shows_and_toggles(enc):
    py = Python()
    typed = "/tools\n/tools python off\n/tools\n/tools python on\n/tools nope on\n"
    out, session, repl = chat(enc, [], typed, [py], functions=[WEATHER])
    assert re.search(r"^  python +on$", out, re.M)
    assert re.search(r"^  python +off$", out, re.M)
    assert "functions.get_weather" in out and "you answer it" in out
    assert "python: off (from the next reply)" in out and "python: on" in out
    assert "no tool 'nope'" in out
    assert session.settings.python_tool and repl.loop.table.tools["python"] is py


def test_tool_events_render_without_a_chat():
    call = harmony.ToolCall("python", "print(1)", "analysis", "code")
    out = io.StringIO()
    console = Console(file=out, width=80, force_terminal=False, color_system=None)
    with Renderer(console).turn() as view:
        view.on_event(call)
        view.on_event(ToolStarted(call, "python"))
        view.on_event(ToolFinished(call, "python", ToolResult("boom", error=True), 0.25))
    assert out.getvalue().strip() == "[python · 0.2 s · error: 1 line of output]"
