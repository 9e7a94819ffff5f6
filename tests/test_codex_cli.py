"""Codex CLI (the real native binary, `codex exec`) against the server, as its users configure it:
a `model_providers` entry with `wire_api = "responses"`.

Codex is installed once with npm into <repo>/.cache/codex (a pinned version; the test is skipped
where npm or the registry is unavailable). The server runs over ScriptedModel, so the harmony each
request turns into and the replies are exact: Codex's first request makes the model call Codex's
own `exec_command` tool, Codex runs it and sends its output back, and the final answer is what
`codex exec` prints.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from gptoss_mlx import harmony
from gptoss_mlx.server import ServerEngine, create_app
from gptoss_mlx.session.chat import SessionSettings

from .conftest import REPO
from .scripted_model import ScriptedModel
from .server_harness import serve

CODEX_VERSION = "0.171.0"
CODEX_DIR = REPO / ".cache" / "codex"
CALL = (
    "<|channel|>analysis<|message|>List it.<|end|><|start|>assistant<|channel|>commentary "
    'to=functions.exec_command <|constrain|>json<|message|>{"cmd": "echo marker-$((6*7))"}<|call|>'
)
FINAL = (
    "<|channel|>analysis<|message|>It printed marker-42.<|end|><|start|>assistant"
    "<|channel|>final<|message|>The command printed marker-42.<|return|>"
)


@pytest.fixture(scope="module")
def codex() -> Path:
    binary = CODEX_DIR / "node_modules" / ".bin" / "codex"
    npm = shutil.which("npm")
    CODEX_DIR.mkdir(parents=True, exist_ok=True)
    with open(CODEX_DIR / "install.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not binary.exists() and npm:
            subprocess.run(
                [npm, "install", "--prefix", str(CODEX_DIR), "--no-audit", "--no-fund",
                 f"@openai/codex@{CODEX_VERSION}"],
                capture_output=True, timeout=600, check=False,
            )  # fmt: skip
    if not binary.exists():
        pytest.skip(f"Codex CLI {CODEX_VERSION} is not installed and npm could not install it")
    return binary


@pytest.fixture(scope="module")
def enc(tiny_checkpoint: Path):
    return harmony.encoding_for_model(tiny_checkpoint)


def test_codex_exec_calls_its_tool_and_prints_the_answer(codex: Path, enc, tmp_path: Path) -> None:
    model = ScriptedModel([enc.encode(r, allowed_special="all") for r in (CALL, FINAL)])
    engine = ServerEngine(model, enc, model_id="gpt-oss-20b", defaults=SessionSettings())
    home, work = tmp_path / "codex-home", tmp_path / "work"
    home.mkdir()
    work.mkdir()
    with serve(create_app(engine)) as url:
        provider = f'{{name="gptoss-mlx", base_url="{url}/v1", wire_api="responses"}}'
        done = subprocess.run(
            [str(codex), "exec", "--skip-git-repo-check", "-s", "danger-full-access",
             "-c", 'model="gpt-oss-20b"', "-c", 'model_provider="gptoss"',
             "-c", f"model_providers.gptoss={provider}",
             "What does echo marker-$((6*7)) print?"],
            capture_output=True, text=True, timeout=300, cwd=work, stdin=subprocess.DEVNULL,
            env={**os.environ, "CODEX_HOME": str(home), "NO_COLOR": "1"},
        )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "The command printed marker-42."
    fed = enc.decode([t for c in model.calls for t in c])
    # Codex ran the call and sent its output back: the tool's message reached the model.
    start = fed.index("<|start|>functions.exec_command to=assistant<|channel|>commentary")
    result = fed[start : fed.index("<|end|>", start)]
    assert "marker-42" in result, result
    # The follow-up resent the whole conversation (store=false) but only the new tokens ran:
    # the call's output and the next reply's start, not Codex's thousands of prompt tokens.
    follow_up = next(
        i for i, c in enumerate(model.calls) if "exec_command to=assistant" in enc.decode(c)
    )
    first_request = sum(len(c) for c in model.calls[:follow_up] if len(c) > 1)
    assert first_request > 3000 and len(model.calls[follow_up]) < 200
