"""The python tool through the real sandbox: state, echo, tracebacks, timeouts, cancel, caps."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from openai_harmony import ToolNamespaceConfig

from gptoss_mlx.tools.python import NO_OUTPUT, PythonTool, scratch_dir


@pytest.fixture
def tool(tmp_path: Path) -> Iterator[PythonTool]:
    with PythonTool(tmp_path / "scratch", timeout=1.0, grace=0.5) as t:
        assert t.mode == "bubblewrap"
        yield t


def run(tool: PythonTool, code: str) -> str:
    return tool.call("", code).text


def test_state_persists_across_calls(tool: PythonTool) -> None:
    assert run(tool, "x = 20\ndef double(v):\n    return 2 * v") == NO_OUTPUT
    result = tool.call("", "x += 1\nprint(double(x))")
    assert result.text == "42\n"
    assert not result.error and not result.state_lost
    assert result.details["code"] == "x += 1\nprint(double(x))"
    assert result.details["output"] == "42\n" and result.details["seconds"] >= 0


def test_last_expression_is_echoed_like_jupyter(tool: PythonTool) -> None:
    assert run(tool, "a = 6\na * 7") == "42\n"
    assert run(tool, "'text'") == "'text'\n"
    assert run(tool, "print('once')") == "once\n"  # print() returns None: not echoed
    assert run(tool, "if True:\n    a") == NO_OUTPUT  # only a top-level last expression


def test_stdout_and_stderr_come_back_as_one_text(tool: PythonTool) -> None:
    code = "import sys, subprocess\nprint('out')\nprint('err', file=sys.stderr)\n"
    code += "subprocess.run(['echo', 'child'])"
    assert run(tool, code).startswith("out\nerr\nchild\nCompletedProcess(")


def test_traceback_without_worker_frames(tool: PythonTool) -> None:
    result = tool.call("", "def f():\n    return 1 / 0\n\nf()")
    assert result.error and result.summary == "ZeroDivisionError"
    assert result.text.startswith('Traceback (most recent call last):\n  File "<cell')
    assert "in f\n    return 1 / 0" in result.text
    assert result.text.rstrip().endswith("ZeroDivisionError: division by zero")
    assert "python_worker" not in result.text
    syntax = run(tool, "x = (")
    assert "SyntaxError" in syntax and "python_worker" not in syntax


def test_empty_output_gives_harmonys_warning(tool: PythonTool) -> None:
    assert run(tool, "y = 1") == (
        "[WARN] No output available. Use print() to output anything to stdout to receive the output"
    )


def test_timeout_interrupts_and_keeps_state(tool: PythonTool) -> None:
    run(tool, "kept = 'yes'")
    started = time.monotonic()
    result = tool.call("", "n = 0\nwhile True:\n    n += 1")
    assert 1.0 <= time.monotonic() - started < 6.0
    assert "KeyboardInterrupt" in result.text and "timed out after 1 s" in result.text
    assert result.error and not result.state_lost
    assert run(tool, "kept, n > 0") == "('yes', True)\n"


def test_hang_ignoring_sigint_is_killed_and_state_lost(tool: PythonTool) -> None:
    run(tool, "kept = 1")
    code = "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True:\n    pass"
    started = time.monotonic()
    result = tool.call("", code)
    assert 1.5 <= time.monotonic() - started < 8.0
    assert result.state_lost and result.error
    assert result.text == (
        "[ERROR] Execution timed out after 1 s; the Python session was restarted and its state lost."
    )
    after = tool.call("", "kept")
    assert "NameError" in after.text and not after.state_lost


def test_cancel_event_interrupts_a_sleep(tool: PythonTool) -> None:
    tool.timeout = 30.0
    run(tool, "kept = 'still here'")
    cancel = threading.Event()
    threading.Timer(0.3, cancel.set).start()
    started = time.monotonic()
    result = tool.call("", "import time\ntime.sleep(25)", cancel=cancel)
    assert time.monotonic() - started < 8.0
    assert "KeyboardInterrupt" in result.text and "Interrupted by the user" in result.text
    assert not result.state_lost
    assert run(tool, "kept") == "'still here'\n"
    assert "before the code ran" in tool.call("", "1", cancel=cancel).text


def test_huge_print_is_capped_keeping_head_and_tail(tool: PythonTool) -> None:
    tool.output_limit = 2000
    text = run(tool, "print('HEAD' + 'x' * 10_000_000 + 'TAIL')")
    assert text.startswith("HEAD") and text.endswith("TAIL\n")
    assert "output truncated: it was 10000009 bytes" in text
    assert len(text) < 2000 + 200
    assert run(tool, "print('small')") == "small\n"


def test_worker_exit_restarts_with_state_lost(tool: PythonTool) -> None:
    run(tool, "kept = 1")
    result = tool.call("", "import os\nos._exit(3)")
    assert result.state_lost and "exited with code 3" in result.text
    assert "NameError" in run(tool, "kept")
    assert run(tool, "1 + 1") == "2\n"


def test_json_wrapped_code_is_accepted(tool: PythonTool) -> None:
    assert run(tool, '{"code": "print(6 * 7)"}') == "42\n"
    assert run(tool, '{"a": 1}') == "{'a': 1}\n"  # a dict literal stays Python


def test_instruction_is_harmonys_text_with_the_truth(tmp_path: Path) -> None:
    original = ToolNamespaceConfig.python().description
    with PythonTool(tmp_path / "w", timeout=2.5) as offline:
        text = offline.instruction()
    assert text.split("\n\n")[0] == original.split("\n\n")[0]
    assert "time out after 2.5 seconds" in text and "120.0" not in text
    assert f"The drive at '{(tmp_path / 'w').resolve()}' can be used" in text
    assert "/mnt/data" not in text and "UNKNOWN" not in text
    assert text.endswith("Internet access for this session is disabled.")
    with PythonTool(tmp_path / "w", network=True) as online:
        assert online.instruction().endswith("Internet access for this session is enabled.")
        assert "after 120.0 seconds" in online.instruction()


def test_scratch_dir_is_under_the_data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GPTOSS_HOME", str(tmp_path / "data"))
    path = scratch_dir("chat-1")
    assert path == tmp_path / "data" / "python" / "chat-1" and path.is_dir()
    for bad in ("", "..", "../x", "a/b"):
        with pytest.raises(ValueError):
            scratch_dir(bad)
