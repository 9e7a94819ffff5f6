"""`gptoss chat` in a real terminal (tmux): what a person sees, keys they press, Ctrl-C, resume."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from . import fixtures_harmony

harmony_model = fixtures_harmony.harmony_model  # the tiny model that speaks harmony

pytestmark = pytest.mark.skipif(
    shutil.which("tmux") is None, reason="tmux is not installed (apt-get install tmux)"
)

WIDTH, HEIGHT = 100, 30


class Terminal:
    """One tmux server (its own socket) running one command in a fixed-size window."""

    def __init__(self, command: list[str], env: dict[str, str]) -> None:
        self.socket = f"gptoss-test-{uuid.uuid4().hex[:8]}"
        self.env = env
        # Keep the pane after the command exits, so its last words can be read; the shell must
        # survive the Ctrl-C meant for the command (a no-op trap, not an ignore: Python would
        # inherit an ignored SIGINT).
        script = f'trap : INT; {shlex.join(command)}; echo "[exit $?]"; sleep 600'
        self.tmux(
            "new-session", "-d", "-x", str(WIDTH), "-y", str(HEIGHT), "-s", "t", "sh", "-c", script
        )

    def tmux(self, *args: str) -> str:
        r = subprocess.run(
            ["tmux", "-L", self.socket, "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            env=self.env,
            timeout=30,
        )
        assert r.returncode == 0, r.stderr
        return r.stdout

    def keys(self, *keys: str) -> None:
        self.tmux("send-keys", "-t", "t", *keys)

    def type(self, text: str) -> None:
        self.tmux("send-keys", "-t", "t", "-l", text)

    def screen(self) -> str:
        return self.tmux("capture-pane", "-p", "-t", "t")

    def lines(self) -> list[str]:
        return [line.rstrip() for line in self.screen().splitlines()]

    def wait_for(self, predicate, timeout: float = 60.0) -> str:
        deadline = time.monotonic() + timeout
        while True:
            screen = self.screen()
            if predicate(screen):
                return screen
            if time.monotonic() > deadline:
                pytest.fail(f"timed out; the terminal shows:\n{screen}")
            time.sleep(0.1)

    def wait_for_text(self, text: str, timeout: float = 60.0) -> str:
        return self.wait_for(lambda s: text in s, timeout)

    def close(self) -> None:
        subprocess.run(
            ["tmux", "-L", self.socket, "kill-server"], capture_output=True, env=self.env
        )


@pytest.fixture
def env(tmp_path) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("GPTOSS_") and k != "NO_COLOR"}
    return {
        **clean,
        "GPTOSS_CONFIG": str(tmp_path / "no-config.toml"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "LANG": "C.UTF-8",
        "LC_ALL": "C.UTF-8",
        "TERM": "xterm-256color",
    }


@pytest.fixture
def terminals():
    opened: list[Terminal] = []

    def start(args: list[str], env: dict[str, str]) -> Terminal:
        term = Terminal([sys.executable, "-m", "gptoss_mlx", *args], env)
        opened.append(term)
        return term

    yield start
    for term in opened:
        term.close()


def footer_line(screen: str) -> str | None:
    return next((line for line in screen.splitlines() if " tokens · context " in line), None)


def last_line(screen: str) -> str:
    return next((line for line in reversed(screen.splitlines()) if line.strip()), "")


def test_a_turn_as_a_person_sees_it_then_resume(terminals, env, harmony_model, tmp_path):
    examples = json.loads((Path(harmony_model) / "harmony_examples.json").read_text())["examples"]
    sum_example = next(e for e in examples if e["name"] == "sum")
    question, answer = sum_example["messages"][0]["content"], sum_example["final"]

    t = terminals(["chat", "-m", str(harmony_model), "-t", "0", "-n", "64", "-c", "4096"], env)
    t.wait_for_text(">>> ")
    assert "/help for commands" in t.screen()

    t.type(question)
    t.keys("Enter")
    screen = t.wait_for(lambda s: footer_line(s) is not None and last_line(s).startswith(">>>"))
    lines = [line.rstrip() for line in screen.splitlines() if line.strip()]
    at = lines.index(f">>> {question}")
    thought, shown, footer, prompt = lines[at + 1 : at + 5]
    assert re.fullmatch(r"▸ thought for \d+\.\d s, \d+ tokens", thought)
    assert shown == answer
    assert re.fullmatch(
        r"\d+\.\d\d s to first token · \d+\.\d tok/s · \d+ tokens · context \d+/4,096 \(\d+%\)",
        footer,
    )
    assert prompt.startswith(">>>")
    record = _only_chat(tmp_path)
    assert record["messages"][-1] == {"role": "assistant", "content": answer, "channel": "final"}

    # Tab completes a command; the command answers on one line.
    t.type("/effort hi")
    t.keys("Tab")
    t.wait_for_text(">>> /effort high")
    t.keys("Enter")
    t.wait_for_text("reasoning effort: high")

    t.keys("C-d")
    screen = t.wait_for_text("[exit 0]")
    chat_id = record["id"]
    assert f"chat saved: resume with gptoss chat --resume {chat_id}" in screen
    assert _only_chat(tmp_path)["settings"]["effort"] == "high"

    # Resume the latest chat: the model and settings come from the saved chat (a flag given
    # again wins), and the last exchange is shown.
    r = terminals(["chat", "--resume", "--effort", "low"], env)
    r.wait_for(lambda s: last_line(s).startswith(">>>"))
    screen = r.screen()
    assert f"· {harmony_model.name} · effort low ·" in screen
    assert f"resumed chat {chat_id} (1 turn)" in screen
    assert f">>> {question}" in screen
    r.type("/model")
    r.keys("Enter")
    r.wait_for_text("temperature 0.0")
    r.type("/bye")
    r.keys("Enter")
    r.wait_for_text("[exit 0]")
    assert _only_chat(tmp_path)["settings"]["effort"] == "low"


def test_ctrl_c_stops_a_reply_and_keeps_it(terminals, env, tiny_checkpoint, tmp_path):
    # Random weights never stop on their own: the reply runs until Ctrl-C.
    t = terminals(["chat", "-m", str(tiny_checkpoint), "-t", "0", "-n", "3000", "-c", "4096"], env)
    t.wait_for_text(">>> ")
    t.type("Tell me a long story.")
    t.keys("Enter")
    # Wait until the answer is streaming (text below the prompt line).
    streaming = t.wait_for(lambda s: len([x for x in s.splitlines() if x.strip()]) >= 4, timeout=60)
    t.wait_for(lambda s: s != streaming)  # more of the reply arrived: it is mid-stream
    t.keys("C-c")
    screen = t.wait_for(lambda s: any(x.startswith("interrupted · ") for x in s.splitlines()))
    t.wait_for(lambda s: last_line(s).startswith(">>>"))
    assert "Traceback" not in screen

    record = _only_chat(tmp_path)
    assert [m["role"] for m in record["messages"]][0] == "user"
    reply = record["messages"][-1]
    assert reply["role"] == "assistant" and reply["interrupted"] is True and reply["content"]

    # Ctrl-C on the prompt clears the line; the REPL stays.
    t.type("half a thought")
    t.keys("C-c")
    t.type("/exit")
    t.keys("Enter")
    screen = t.wait_for_text("[exit 0]")
    assert "half a thought" not in _only_chat(tmp_path)["messages"][0]["content"]


def _only_chat(tmp_path: Path) -> dict:
    chats = list((tmp_path / "state" / "gptoss" / "chats").glob("*.json"))
    assert len(chats) == 1, chats
    return json.loads(chats[0].read_text())
