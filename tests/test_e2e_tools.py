"""End to end with the tiny harmony model: it calls python for arithmetic and answers with the
result, in the tool loop, in `gptoss run --python` and in a scripted `gptoss chat --python`."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from gptoss_mlx import harmony
from gptoss_mlx.session.open import open_session
from gptoss_mlx.session.tool_loop import ToolLoop, ToolTable
from gptoss_mlx.session.tool_setup import declare
from gptoss_mlx.settings import resolve
from gptoss_mlx.tools.base import Tool, ToolResult
from scripts.train_tiny_harmony import python_description

from .conftest import isolated_env, run_gptoss


class Calculator(Tool):
    """Stands in for the sandboxed python tool: evaluates the one expression the model prints."""

    name = "python"

    def __init__(self) -> None:
        self.codes: list[str] = []

    def instruction(self) -> str:
        return python_description("/srv/e2e/gptoss/scratch/20261202-101010-c0de", 60.0)

    def call(self, function, arguments, *, cancel=None) -> ToolResult:
        self.codes.append(arguments)
        inner = arguments.strip().removeprefix("print(").removesuffix(")")
        return ToolResult(f"{eval(inner, {'__builtins__': {}})}\n")  # noqa: S307 (test input)


def test_the_model_calls_python_and_answers_with_the_result(harmony_model: Path):
    session = open_session(resolve({"temperature": 0}), harmony_model)
    tool = Calculator()
    table = ToolTable([tool])
    declare(session, table)
    loop = ToolLoop(session, table)
    result = loop.turn("what is 6*7")
    assert tool.codes == ["print(6*7)"]
    assert result.final == "6*7 = 42." and result.finish_reason == "stop"
    call, output = session.messages[2], session.messages[3]
    assert (call.recipient, call.channel, call.content_type) == ("python", "analysis", "code")
    assert (output.name, output.channel, output.content) == ("python", "analysis", "42\n")
    # The second reply prefilled only <|call|>, the result and <|start|>assistant.
    result_tokens = session.encoding.render(harmony.to_harmony(output))
    assert loop.stats[1].prefilled_tokens == 1 + len(result_tokens) + 2
    assert [r.output for r in loop.records] == ["42\n"]


def has_python_tool() -> bool:
    try:
        from gptoss_mlx.tools.python import PythonTool  # noqa: F401
    except ImportError:
        return False
    return True


needs_python = pytest.mark.skipif(not has_python_tool(), reason="gptoss_mlx.tools.python missing")


def gptoss(*args: str, stdin: bytes = b"", tmp: Path) -> subprocess.CompletedProcess:
    return run_gptoss(*args, env=isolated_env(tmp), stdin=stdin, text=False)


@pytest.mark.slow  # two runs of the CLI with the model: about 40 s
@needs_python
def test_run_python_answers_42_through_the_sandbox(harmony_model: Path, tmp_path: Path):
    r = gptoss(
        "run", "-m", str(harmony_model), "-t", "0", "--python", "--json", "what is 6*7",
        tmp=tmp_path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr.decode()
    out = json.loads(r.stdout)
    assert out["final"] == "6*7 = 42."
    [call] = out["tool_calls"]
    assert call["recipient"] == "python" and call["arguments"] == "print(6*7)"
    assert call["output"].strip() == "42" and call["error"] is False
    assert out["usage"]["replies"] == 2
    r = gptoss(
        "run", "-m", str(harmony_model), "-t", "0", "--python", "--show-reasoning", "what is 6*7",
        tmp=tmp_path,
    )  # fmt: skip
    assert r.stdout.decode() == "6*7 = 42.\n"
    err = r.stderr.decode()
    assert "[tool call] python: print(6*7)" in err and "[tool result] python · " in err


@pytest.mark.slow  # about 20 s
@needs_python
def test_scripted_chat_with_python(harmony_model: Path, tmp_path: Path):
    r = gptoss(
        "chat", "-m", str(harmony_model), "-t", "0", "--python",
        stdin=b"what is 6*7\n/tools\n", tmp=tmp_path,
    )  # fmt: skip
    out = r.stdout.decode()
    assert r.returncode == 0, r.stderr.decode()
    assert "6*7 = 42." in out
    assert "[python · " in out and "1 line of output]" in out
    saved = list((tmp_path / "state").rglob("*.json"))
    record = json.loads(saved[0].read_text())
    roles = [(m["role"], m.get("name")) for m in record["messages"]]
    assert ("tool", "python") in roles
