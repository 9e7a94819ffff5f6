"""`gptoss tools` and the tool settings, as a user runs them (real processes, no model)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from gptoss_mlx.errors import UserError
from gptoss_mlx.settings import resolve

from .conftest import isolated_env, run_gptoss

WEATHER = {
    "name": "get_weather",
    "description": "Current weather for a city.\nMore text.",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}


def gptoss(*args: str, tmp: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return run_gptoss(*args, env=isolated_env(tmp, **(env or {})), timeout=120)


def test_tools_list_and_call_with_a_tools_file(tmp_path: Path):
    spec = tmp_path / "tools.json"
    spec.write_text(json.dumps([WEATHER]))
    r = gptoss("tools", "list", "--tools", str(spec), tmp=tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("python\t")
    assert "functions.get_weather\tCurrent weather for a city." in lines
    r = gptoss(
        "tools", "call", "get_weather", '{"city": "Paris"}', "--tools", str(spec), tmp=tmp_path
    )
    assert r.returncode == 1 and "no executor" in r.stderr and r.stderr.count("\n") == 1
    r = gptoss("tools", "call", "nope", "{}", "--tools", str(spec), tmp=tmp_path)
    assert (
        r.returncode == 1 and "no tool 'nope'" in r.stderr and "functions.get_weather" in r.stderr
    )


def test_tool_settings_flag_env_config_and_checks(tmp_path: Path, monkeypatch):
    config = tmp_path / "config.toml"
    config.write_text("python = true\npython_timeout = 30\nmax_tool_calls = 5\n")
    monkeypatch.setenv("GPTOSS_MAX_TOOL_CALLS", "7")
    s = resolve({"python_network": True}, config_path=config)
    assert (s.python, s.python_timeout, s.python_network, s.max_tool_calls) == (True, 30.0, True, 7)
    assert s.sources["max_tool_calls"] == "env" and s.sources["python_timeout"] == "config"
    assert resolve({"max_tool_calls": 3}, config_path=config).max_tool_calls == 3
    for bad in ({"python_timeout": 0}, {"max_tool_calls": 0}):
        with pytest.raises(UserError):
            resolve(bad, config_path=config)


def test_run_refuses_bad_tool_options_in_one_line(tmp_path: Path):
    r = gptoss("run", "--max-tool-calls", "0", "hi", tmp=tmp_path)
    assert r.returncode == 1 and "max-tool-calls must be between 1 and 1000" in r.stderr
    r = gptoss("chat", "--python-timeout", "-1", tmp=tmp_path)
    assert r.returncode == 1 and "python-timeout must be" in r.stderr


def test_run_json_lists_calls_and_sums_usage_over_replies():
    from gptoss_mlx import harmony
    from gptoss_mlx.cli.tools import tool_note, with_tool_records
    from gptoss_mlx.model.generate import GenerationStats
    from gptoss_mlx.session.tool_loop import CallRecord, ToolFinished
    from gptoss_mlx.tools.base import ToolResult

    call = harmony.ToolCall("python", "print(6*7)", "analysis", "code")

    class Loop:
        records = [CallRecord(call, "python", "42\n", False, 0.123456)]
        stats = [
            GenerationStats(
                prompt_tokens=100, generated_tokens=10, reasoning_tokens=7, wall_seconds=1.0
            ),
            GenerationStats(
                prompt_tokens=120, generated_tokens=5, reasoning_tokens=2, wall_seconds=0.5
            ),
        ]

    data = with_tool_records({"usage": {}, "timings": {"total_s": 0.5}}, Loop())
    assert data["tool_calls"] == [
        {
            "recipient": "python", "arguments": "print(6*7)", "channel": "analysis",
            "content_type": "code", "author": "python", "output": "42\n", "error": False,
            "seconds": 0.1235,
        }
    ]  # fmt: skip
    assert data["usage"] == {
        "prompt_tokens": 220, "completion_tokens": 15, "total_tokens": 235,
        "completion_tokens_details": {"reasoning_tokens": 9}, "replies": 2,
    }  # fmt: skip
    assert data["timings"]["total_s"] == 1.5
    assert tool_note(call) == "[tool call] python: print(6*7)"
    done = ToolFinished(call, "python", ToolResult("42\n"), 0.4)
    assert tool_note(done) == "[tool result] python · 0.4 s: 42"
    assert tool_note(harmony.FinalDelta("x")) is None


def test_bad_tool_setup_is_refused_before_the_model_loads(tmp_path: Path):
    r = gptoss(
        "run", "-m", "/nonexistent/model", "--mcp", str(tmp_path / "none.json"), "hi", tmp=tmp_path
    )
    assert r.returncode == 1 and "no such MCP config file" in r.stderr
    # No bwrap on PATH: python is refused with the fix, unless --python-unsafe.
    env = {"PATH": str(tmp_path)}
    r = gptoss("chat", "-m", "/nonexistent/model", "--python", tmp=tmp_path, env=env)
    assert r.returncode == 1 and "--python-unsafe" in r.stderr and r.stderr.count("\n") == 1
