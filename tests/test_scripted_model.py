"""The ScriptedModel test double drives a real ChatSession: replies in order, exact prefills."""

from __future__ import annotations

from pathlib import Path

from gptoss_mlx import harmony
from gptoss_mlx.model.sampling import SamplerSettings
from gptoss_mlx.session.chat import ChatSession, SessionSettings

from .scripted_model import ScriptedModel


def test_scripted_replies_and_prefill_counts(tiny_checkpoint: Path) -> None:
    enc = harmony.encoding_for_model(tiny_checkpoint)
    r1 = enc.encode(
        "<|channel|>analysis<|message|>think<|end|><|start|>assistant<|channel|>final"
        "<|message|>Hello there<|return|>",
        allowed_special="all",
    )
    r2 = enc.encode("<|channel|>final<|message|>Second<|return|>", allowed_special="all")
    model = ScriptedModel([r1, r2])
    session = ChatSession(model, None, enc, SessionSettings(sampler=SamplerSettings()))
    first = session.turn("hi")
    assert (first.final, first.reasoning, first.finish_reason) == ("Hello there", "think", "stop")
    prompt1 = len(model.calls[0])
    assert all(len(c) == 1 for c in model.calls[1:])
    n_calls = len(model.calls)
    second = session.turn("again")
    assert second.final == "Second"
    # Turn 2 prefills only what is new after the restored snapshot (turn 1's analysis dropped).
    prompt2 = session.prompt_tokens()
    assert len(model.calls[n_calls]) < len(prompt2) - prompt1 + len(r1)
    assert model.replies_started == 2
