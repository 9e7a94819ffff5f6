"""`gptoss chat --server URL`: RemoteSession drives a real `gptoss serve` app over HTTP."""

from __future__ import annotations

from pathlib import Path

from gptoss_mlx import harmony
from gptoss_mlx.remote_session import RemoteSession
from gptoss_mlx.server import ServerEngine, create_app
from gptoss_mlx.session import SessionSettings

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
