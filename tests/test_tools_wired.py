"""The loop and the CLI with the real tools: python in its sandbox, MCP servers over stdio."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gptoss_mlx import harmony
from gptoss_mlx.model.sampling import SamplerSettings
from gptoss_mlx.session.chat import ChatSession, SessionSettings
from gptoss_mlx.session.tool_loop import ToolLoop, ToolTable
from gptoss_mlx.session.tool_setup import declare
from gptoss_mlx.tools.mcp import McpTools
from gptoss_mlx.tools.mcp_config import parse_mcp_config
from gptoss_mlx.tools.python import PythonTool
from gptoss_mlx.tools.sandbox import sandbox_status
from scripts.train_tiny_harmony import python_description

from .conftest import isolated_env, run_gptoss
from .scripted_model import ScriptedModel
from .test_tool_loop import call_to, toks

REPO = Path(__file__).resolve().parents[1]
DEMO = str(REPO / "tests" / "mcp_servers" / "demo_server.py")
FINAL = "<|channel|>final<|message|>Done.<|return|>"


@pytest.fixture(scope="module")
def enc(tiny_checkpoint: Path):
    return harmony.encoding_for_model(tiny_checkpoint)


def mcp_file(tmp: Path, auto: list[str] | None = None) -> Path:
    server = {"command": sys.executable, "args": [DEMO]}
    if auto:
        server["autoApprove"] = auto
    path = tmp / "mcp.json"
    path.write_text(json.dumps({"mcpServers": {"demo": server}}))
    return path


def test_the_trained_python_text_is_the_tools_own(tmp_path: Path):
    tool = PythonTool(tmp_path / "w", timeout=45.0, network=True, unsafe=True)
    try:
        expected = python_description(str((tmp_path / "w").resolve()), 45.0, True)
        assert tool.instruction() == expected
    finally:
        tool.close()


def test_mcp_calls_through_the_loop_with_approval(enc, tmp_path: Path):
    configs = parse_mcp_config(json.loads(mcp_file(tmp_path).read_text()), tmp_path / "m.json")
    add = call_to("demo__add", '{"a": 2, "b": 3}')
    with McpTools(configs) as mcp:
        for approve, expect in (
            (None, "--yes"),
            (lambda *a: "yes", "5"),
            (lambda *a: "no", "declined"),
        ):
            model = ScriptedModel([toks(enc, add), toks(enc, FINAL)])
            session = ChatSession(
                model, None, enc, SessionSettings(sampler=SamplerSettings(temperature=0))
            )
            table = ToolTable([mcp])
            declare(session, table)
            assert "demo__add" in enc.decode(session.prompt_tokens())
            loop = ToolLoop(session, table, approve=approve)
            assert loop.turn("2+3?").final == "Done."
            assert expect in session.messages[2].content
            assert session.messages[2].name == "functions.demo__add"


def test_mcp_auto_approve_needs_no_question(enc, tmp_path: Path):
    configs = parse_mcp_config(
        json.loads(mcp_file(tmp_path, ["add"]).read_text()), tmp_path / "m.json"
    )
    with McpTools(configs) as mcp:
        model = ScriptedModel(
            [toks(enc, call_to("demo__add", '{"a": 2, "b": 3}')), toks(enc, FINAL)]
        )
        session = ChatSession(model, None, enc, SessionSettings())
        table = ToolTable([mcp])
        loop = ToolLoop(session, table)
        loop.turn("2+3?")
        assert session.messages[2].content.strip() == "5"


def gptoss(*args: str, tmp: Path) -> subprocess.CompletedProcess:
    return run_gptoss(*args, env=isolated_env(tmp), timeout=120)


def test_gptoss_tools_with_mcp(tmp_path: Path):
    path = mcp_file(tmp_path)
    r = gptoss("tools", "list", "--mcp", str(path), tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert any(
        line.startswith("functions.demo__add\tAdd two integers.") for line in r.stdout.splitlines()
    )
    r = gptoss("tools", "call", "demo__add", '{"a": 2, "b": 40}', "--mcp", str(path), tmp=tmp_path)
    assert r.returncode == 0 and r.stdout.strip() == "42", r.stderr
    r = gptoss(
        "tools", "call", "functions.demo__add", '{"a": "x"}', "--mcp", str(path), tmp=tmp_path
    )
    assert r.returncode == 1 and "bad arguments" in r.stderr


def test_gptoss_tools_python_shares_one_session(tmp_path: Path):
    if sandbox_status()[0] == "none":
        pytest.skip("no sandbox here")
    r = gptoss("tools", "python", "-c", "x = 6*7", "-c", "print(x)", "-c", "x", tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    assert not list((tmp_path / "data").rglob("tools-*"))  # its scratch dir is gone
    assert r.stdout.split("\n")[:6] == [
        "--- [1]",
        "[WARN] No output available. Use print() to output anything to stdout to receive the output",
        "--- [2]",
        "42",
        "--- [3]",
        "42",
    ]


def test_doctor_names_the_sandbox(tmp_path: Path):
    r = gptoss("doctor", "--json", tmp=tmp_path)
    rows = {row["check"]: row for row in json.loads(r.stdout)}
    mode, line = sandbox_status()
    assert rows["python sandbox"]["detail"] == line
    assert rows["python sandbox"]["status"] == ("warn" if mode == "none" else "ok")


def test_ctrl_c_interrupts_real_python_and_keeps_its_state(enc, tmp_path: Path):
    import _thread
    import threading

    if sandbox_status()[0] == "none":
        pytest.skip("no sandbox here")
    py = "<|channel|>analysis to=python code<|message|>{}<|call|>"
    replies = [
        py.format("x = 41"),
        FINAL,
        py.format("while True: pass"),
        py.format("print(x + 1)"),
        FINAL,
    ]
    model = ScriptedModel([toks(enc, r) for r in replies])
    session = ChatSession(model, None, enc, SessionSettings(sampler=SamplerSettings(temperature=0)))
    tool = PythonTool(tmp_path / "w", timeout=60.0)
    try:
        table = ToolTable([tool])
        declare(session, table)
        loop = ToolLoop(session, table)
        assert loop.turn("set x").final == "Done."
        timer = threading.Timer(1.5, _thread.interrupt_main)
        timer.start()
        result = loop.turn("spin")
        assert result.finish_reason == "interrupted"
        assert loop.records[0].output.startswith("[ERROR] The user interrupted")
        assert loop.turn("x+1?").final == "Done."
        assert loop.records[0].output == "42\n"  # interrupted, not killed: x survived
    finally:
        tool.close()
