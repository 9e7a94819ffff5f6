"""The pipelined decode loop (step n+1 queued before token n is read) against the loop it replaced:
the same tokens, `fed`, caches, random state and next-turn logits for every way a reply ends."""

from __future__ import annotations

import time

import mlx.core as mx
import numpy as np
import pytest

from gptoss_mlx.model import generate as gen
from gptoss_mlx.model.cache import cache_offset
from gptoss_mlx.model.generate import GenerationStats
from gptoss_mlx.model.sampling import SamplerSettings, make_sampler

PROMPT = [200006, 17360, 200008, 12194, 1424, 200007, 200006, 173781]
CONTINUATION = [200005, 17196, 200008]


def old_generate(model, new_tokens, cache, sampler, *, max_tokens, stop_tokens, context_limit,
                 fed, stats):  # fmt: skip
    """The decode loop before pipelining (reads token n, then builds step n+1), as reference."""
    t0 = time.perf_counter()

    def step(token):
        return sampler(model(token.reshape(1, 1), cache, last_only=True)[:, -1, :])

    try:
        logits = gen.prefill(model, new_tokens, cache)
        fed.extend(new_tokens)
        y = sampler(logits)
        mx.async_eval(y)
        n = 0
        while True:
            token = int(y.item())
            n += 1
            stats.generated_tokens = n
            if token in stop_tokens:
                stats.finish_reason = stop_tokens[token]
                yield token
                break
            if cache_offset(cache) + 1 > context_limit:
                stats.finish_reason = "context_full"
                yield token
                break
            if n >= max_tokens:
                stats.finish_reason = "length"
                yield token
                break
            next_y = step(y)
            fed.append(token)
            mx.async_eval(next_y)
            yield token
            y = next_y
    except KeyboardInterrupt:
        stats.finish_reason = "interrupted"
        raise
    except GeneratorExit:
        stats.finish_reason = stats.finish_reason or "interrupted"
        raise
    finally:
        stats.wall_seconds = time.perf_counter() - t0


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    from gptoss_mlx import load_model

    m, _ = load_model(tiny_checkpoint, dtype="float32")
    return m


def run(model, loop, *, take=None, interrupt_read=None, monkeypatch=None, **kw):
    """Run one reply with `loop` from a fixed random seed; return everything it leaves behind."""
    mx.random.seed(7)
    cache, fed, stats = model.make_cache(), [], GenerationStats()
    args = dict(max_tokens=12, stop_tokens={}, context_limit=1000) | kw
    sampler = make_sampler(SamplerSettings(temperature=1.0))
    if interrupt_read is not None:
        reads = []

        def read(y):
            reads.append(1)
            if len(reads) == interrupt_read:
                raise KeyboardInterrupt
            return int(y.item())

        monkeypatch.setattr(gen, "read_token", read)
    it = loop(model, PROMPT, cache, sampler, fed=fed, stats=stats, **args)
    tokens = []
    try:
        for t in it:
            tokens.append(t)
            if take is not None and len(tokens) == take:
                it.close()
                break
    except KeyboardInterrupt:
        pass
    logits = model(mx.array([CONTINUATION]), cache, last_only=True)
    arrays = [np.array(a[..., : c.cached_len, :]) for c in cache for a in c.state_arrays()]
    return {
        "tokens": tokens,
        "fed": list(fed),
        "reason": stats.finish_reason,
        "generated": stats.generated_tokens,
        "offsets": [c.offset - len(CONTINUATION) for c in cache],
        "arrays": arrays,
        "logits": np.array(logits),
        "random": mx.random.randint(0, 1 << 30, (4,)).tolist(),
    }


def assert_same(new, old):
    for key in ("tokens", "fed", "reason", "generated", "offsets", "random"):
        assert new[key] == old[key], key
    assert len(new["arrays"]) == len(old["arrays"])
    for a, b in zip(new["arrays"], old["arrays"], strict=True):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(new["logits"], old["logits"], rtol=0, atol=1e-6)
    assert new["offsets"] == [len(new["fed"])] * len(new["offsets"])


@pytest.fixture(scope="module")
def free_run(model):
    return run(model, old_generate)["tokens"]


def first_new(tokens, after):
    """An index >= after whose token does not occur earlier (so it can serve as a stop token)."""
    return next(i for i in range(after, len(tokens)) if tokens[i] not in tokens[:i])


@pytest.mark.parametrize("reason", ["stop", "tool_call"])
def test_a_stop_token_ends_the_reply_as_before(model, free_run, reason):
    i = first_new(free_run, 3)
    kw = {"stop_tokens": {free_run[i]: reason}}
    new, old = run(model, gen.generate, **kw), run(model, old_generate, **kw)
    assert new["reason"] == reason and new["tokens"] == free_run[: i + 1]
    assert_same(new, old)


def test_the_length_limit_ends_the_reply_as_before(model):
    new, old = run(model, gen.generate, max_tokens=5), run(model, old_generate, max_tokens=5)
    assert new["reason"] == "length" and len(new["tokens"]) == 5
    assert_same(new, old)


@pytest.mark.parametrize("room", [1, 4])
def test_a_full_context_ends_the_reply_as_before(model, room):
    kw = {"context_limit": len(PROMPT) + room}
    new, old = run(model, gen.generate, **kw), run(model, old_generate, **kw)
    # `room` tokens fit in the cache; one more is sampled and yielded, never fed
    assert new["reason"] == "context_full" and len(new["tokens"]) == room + 1
    assert_same(new, old)


def test_closing_the_stream_keeps_what_was_yielded(model):
    new, old = run(model, gen.generate, take=4), run(model, old_generate, take=4)
    assert new["reason"] == "interrupted"
    assert_same(new, old)


def test_an_interrupt_while_waiting_takes_the_queued_step_back(model, monkeypatch):
    new = run(model, gen.generate, interrupt_read=4, monkeypatch=monkeypatch)
    old = run(model, old_generate, take=3)  # the old loop waited with 3 tokens fed
    assert new["reason"] == "interrupted" and len(new["tokens"]) == 3
    old["reason"] = "interrupted"
    assert_same(new, old)


def test_step_n_plus_1_is_queued_before_token_n_is_read(model, monkeypatch):
    events: list[str] = []

    class Recording:
        def __init__(self, inner):
            self.inner = inner

        def __call__(self, tokens, cache=None, last_only=False):
            events.append(f"step{len(events)}" if tokens.size == 1 else "prefill")
            return self.inner(tokens, cache, last_only)

    def read(y):
        events.append("read")
        return int(y.item())

    monkeypatch.setattr(gen, "read_token", read)
    cache = model.make_cache()
    out = list(gen.generate(Recording(model), PROMPT, cache, make_sampler(SamplerSettings(0)),
                            max_tokens=3, stop_tokens={}, context_limit=1000))  # fmt: skip
    assert len(out) == 3
    kinds = [e if e in ("prefill", "read") else "step" for e in events]
    # token 1 is read after step 2 is queued, token 2 after step 3; token 3 (the length limit) has
    # nothing to queue.
    assert kinds == ["prefill", "step", "read", "step", "read", "read"]
    assert cache_offset(cache) == len(PROMPT) + 2


def test_session_bookkeeping_stays_exact_across_a_tool_call(tiny_checkpoint):
    from gptoss_mlx import harmony
    from gptoss_mlx.session.chat import ChatSession, SessionSettings

    from .scripted_model import ScriptedModel

    enc = harmony.encoding_for_model(tiny_checkpoint)
    call = enc.encode(
        "<|channel|>analysis<|message|>look<|end|><|start|>assistant<|channel|>commentary "
        'to=functions.get<|constrain|>json<|message|>{"x": 1}<|call|>',
        allowed_special="all",
    )
    final = enc.encode("<|channel|>final<|message|>done<|return|>", allowed_special="all")
    model = ScriptedModel([call, final])
    session = ChatSession(model, None, enc, SessionSettings(sampler=SamplerSettings(0)))
    first = session.turn("hi")
    assert first.finish_reason == "tool_call"
    # The speculative step fed after <|call|> was taken back: the cache holds exactly what the
    # session thinks it holds, and every snapshot matches the cache at its offset.
    assert session.cache[0].tokens == session.cached_tokens
    assert session.cached_tokens[-1] != harmony.CALL
    for s in session._snapshots:
        assert list(s.states[0].tokens) == session.cached_tokens[: s.offset]
    second = session.collect(session.add_tool_result("functions.get", "42"))
    assert second.final == "done" and second.finish_reason == "stop"
    assert session.cache[0].tokens == session.cached_tokens
