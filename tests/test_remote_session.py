"""`gptoss chat --server URL`: RemoteSession drives a real `gptoss serve` app over HTTP."""

from __future__ import annotations

from pathlib import Path

from gptoss_mlx import harmony
from gptoss_mlx.server import ServerEngine, create_app
from gptoss_mlx.session.chat import SessionSettings
from gptoss_mlx.session.remote import RemoteSession

from .scripted_model import ScriptedModel
from .server_harness import serve

REPLY = (
    "<|channel|>analysis<|message|>think hard<|end|><|start|>assistant<|channel|>final"
    "<|message|>Hello there<|return|>"
)


def test_remote_session_turns(tiny_checkpoint: Path) -> None:
    enc = harmony.encoding_for_model(tiny_checkpoint)
    model = ScriptedModel([enc.encode(REPLY, allowed_special="all")] * 2)
    engine = ServerEngine(model, enc, model_id="m", defaults=SessionSettings(context=2048))
    with serve(create_app(engine)) as url:
        session = RemoteSession(url, model="m", settings=SessionSettings(context=2048))
        first = session.turn("hi")
        assert (first.final, first.reasoning, first.finish_reason) == (
            "Hello there",
            "think hard",
            "stop",
        )
        second = session.turn("again")
        assert second.final == "Hello there"
        # the second request resent the conversation and reused the server's cache
        assert session.last_stats.prompt_tokens > session.last_stats.prefilled_tokens > 0
        assert [m.channel for m in session.messages if m.role == "assistant"] == [
            "analysis",
            "final",
        ] * 2
        assert session.undo() and len(session.messages) == 3


def test_chat_command_with_server(tiny_checkpoint: Path, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    enc = harmony.encoding_for_model(tiny_checkpoint)
    model = ScriptedModel([enc.encode(REPLY, allowed_special="all")])
    engine = ServerEngine(model, enc, model_id="m", defaults=SessionSettings(context=2048))
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
           "GPTOSS_HOME": str(tmp_path), "XDG_STATE_HOME": str(tmp_path),
           "GPTOSS_CONFIG": str(tmp_path / "none.toml")}  # fmt: skip
    with serve(create_app(engine)) as url:
        cmd = [sys.executable, "-m", "gptoss_mlx", "chat", "--server", url, "--reasoning", "show"]
        res = subprocess.run(cmd, input="hi\n", capture_output=True, text=True, env=env, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "think hard" in res.stdout and "Hello there" in res.stdout
    assert model.replies_started == 1
