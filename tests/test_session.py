"""The chat session: prompt caching across turns, snapshots, context limits, interruption."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from gptoss_mlx import harmony
from gptoss_mlx.errors import ContextFullError
from gptoss_mlx.session.open import open_session
from gptoss_mlx.settings import resolve

from .reference import rel_max_err


@pytest.fixture
def session(tiny_checkpoint):
    s = open_session(resolve({"temperature": 0, "max_tokens": 12}), tiny_checkpoint)
    s.settings.date = "2026-11-30"
    return s


def fresh_last_logits(session, prompt: list[int]) -> np.ndarray:
    return np.array(session.model(mx.array([prompt]), last_only=True)[0, -1])


def test_each_turn_prefills_only_what_is_new(session):
    r1 = session.turn("Hello there")
    p1 = session.prompt_tokens(session.messages[:1])
    assert r1.stats.prompt_tokens == r1.stats.prefilled_tokens == len(p1)

    r2 = session.turn("And again")
    p2 = session.prompt_tokens(session.messages[: len(session.messages) - len(r2.messages)])
    assert p2[: len(p1)] == p1  # the previous prompt is a prefix of this one
    # Everything up to turn 1's `<|start|>assistant` came from the cache: the previous reply (its
    # analysis dropped) and the new user message are all that ran.
    assert r2.stats.prompt_tokens == len(p2)
    assert r2.stats.prefilled_tokens == len(p2) - len(p1)

    r3 = session.turn("Third")
    p3 = session.prompt_tokens(session.messages[: len(session.messages) - len(r3.messages)])
    assert r3.stats.prefilled_tokens == len(p3) - len(p2)


def test_logits_after_snapshot_restore_equal_fresh_prefill(session):
    session.turn("Hello there")
    session.turn("And again")
    prompt = session.prompt_tokens(session.messages[:-1])  # the prompt of turn 2
    snap = max(session._snapshots, key=lambda s: s.offset)
    assert snap.offset == len(prompt)
    assert rel_max_err(np.array(snap.logits[0]), fresh_last_logits(session, prompt)) <= 1e-4


def test_retry_prefills_nothing_and_undo_reuses_the_cache(session):
    session.turn("Hello there")
    first = [m.content for m in session.messages]
    r = session.collect(session.retry())
    assert r.stats.prefilled_tokens == 0
    assert [m.content for m in session.messages] == first  # greedy: same reply again
    session.turn("Second question")
    assert session.undo()
    assert len(session.messages) == len(first)
    r = session.turn("Another second question")
    prompt = session.prompt_tokens(session.messages[: len(session.messages) - len(r.messages)])
    p1 = session.prompt_tokens(session.messages[:1])
    assert r.stats.prefilled_tokens == len(prompt) - len(p1)


def test_context_full_is_refused_before_any_work_and_keeps_the_chat(tiny_checkpoint):
    s = open_session(resolve({"temperature": 0, "max_tokens": 8, "context": 120}), tiny_checkpoint)
    s.turn("Hi")
    kept = [m.to_dict() for m in s.messages]
    with pytest.raises(ContextFullError, match="context full: .* shorten the input"):
        s.send("a long message " * 40)
    assert [m.to_dict() for m in s.messages] == kept


def test_reply_stops_at_the_context_limit(tiny_checkpoint):
    s = open_session(resolve({"temperature": 0, "context": 90}), tiny_checkpoint)
    r = s.turn("Hi")
    assert r.finish_reason == "context_full"
    assert r.stats.prompt_tokens + r.stats.generated_tokens <= 91


def test_interrupt_keeps_what_was_written_and_the_cache_stays_consistent(session):
    # A random model writes no header, so the parser holds its text for 48 tokens before
    # streaming it as the answer: let it write more than that, then interrupt.
    session.settings.max_tokens = 100
    seen = []

    def on_event(ev):
        seen.append(ev)
        if len(seen) == 3:
            raise KeyboardInterrupt

    r = session.turn("Hello there", on_event=on_event)
    assert r.finish_reason == "interrupted"
    assistant = [m for m in session.messages if m.role == "assistant"]
    assert assistant and all(m.interrupted for m in assistant)
    assert "".join(m.content for m in assistant).startswith(
        "".join(getattr(e, "text", "") for e in seen)
    )
    # The next turn works and its logits are those of a fresh prefill of its prompt.
    session.turn("Go on")
    prompt = session.prompt_tokens(session.messages[:-1])
    snap = max(session._snapshots, key=lambda s: s.offset)
    assert snap.offset == len(prompt)
    assert rel_max_err(np.array(snap.logits[0]), fresh_last_logits(session, prompt)) <= 1e-4
    assert all(c.offset == len(session.cached_tokens) for c in session.cache)


def test_effort_change_rerenders_the_system_message(session):
    session.turn("Hello")
    session.settings.effort = "high"
    text = session.tokenizer.decode(session.prompt_tokens())
    assert "Reasoning: high" in text
    r = session.turn("Again")
    assert r.stats.prefilled_tokens == r.stats.prompt_tokens  # the system message changed


def test_session_round_trips_through_dict(session, tiny_checkpoint):
    session.turn("Hello")
    data = session.to_dict()
    other = open_session(resolve({"temperature": 0}), tiny_checkpoint)
    other.load_dict(data)
    assert other.prompt_tokens() == session.prompt_tokens()
    assert [m.to_dict() for m in other.messages] == [m.to_dict() for m in session.messages]
    assert isinstance(other.messages[0], harmony.Message)
