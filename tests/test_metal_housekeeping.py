"""Memory housekeeping around generation, with the Metal facts faked where the behaviour is
Metal's: the wired limit, MLX's buffer cache, the per-device prefill chunk, compact sliding-window
caches and the shapeless SwiGLU."""

from __future__ import annotations

import gc

import mlx.core as mx
import numpy as np
import pytest

from gptoss_mlx.backend import device
from gptoss_mlx.model import generate as gen
from gptoss_mlx.model.cache import snapshot
from gptoss_mlx.model.sampling import SamplerSettings, make_sampler

from .scripted_model import ASSISTANT, END, START, ScriptedModel

METAL = device.DeviceInfo("gpu", True, "bfloat16", "Metal GPU: faked")
WORKING_SET = 11 * 2**30


@pytest.fixture
def fake_metal(monkeypatch):
    """Metal as device.py sees it, and MLX's wired-limit calls recorded."""
    calls: list[int] = []
    state = {"limit": 0}

    def set_wired_limit(n: int) -> int:
        calls.append(n)
        old, state["limit"] = state["limit"], n
        return old

    monkeypatch.setattr(device, "device_info", lambda: METAL)
    monkeypatch.setattr(
        mx, "device_info", lambda: {"max_recommended_working_set_size": WORKING_SET}
    )
    monkeypatch.setattr(mx, "set_wired_limit", set_wired_limit)
    return calls


def scripted_reply(model, **kw):
    args = dict(max_tokens=10, stop_tokens={END: "stop"}, context_limit=1000) | kw
    return gen.generate(model, [START, ASSISTANT], model.make_cache(), make_sampler(
        SamplerSettings(0)), **args)  # fmt: skip


def test_the_wired_limit_is_set_while_generating_and_restored(fake_metal):
    seen = []
    model = ScriptedModel([[11, 12, 13, END]])
    for _ in scripted_reply(model):
        seen.append(list(fake_metal))
    assert seen[0] == [WORKING_SET]  # set before the first token
    assert fake_metal == [WORKING_SET, 0]  # and the old limit back after


def test_the_wired_limit_is_restored_on_an_interrupt(fake_metal, monkeypatch):
    def interrupted(y):
        raise KeyboardInterrupt

    monkeypatch.setattr(gen, "read_token", interrupted)
    with pytest.raises(KeyboardInterrupt):
        list(scripted_reply(ScriptedModel([[11, 12, END]])))
    assert fake_metal == [WORKING_SET, 0]


def test_no_wired_limit_off_metal(monkeypatch):
    monkeypatch.setattr(mx, "set_wired_limit", lambda n: pytest.fail("called on the CPU"))
    assert list(scripted_reply(ScriptedModel([[11, END]]))) == [11, END]


class ChunkRecorder(ScriptedModel):
    def __init__(self):
        super().__init__([[11, 12, 13, 14, 15, 16, 17, END]])


def test_the_prefill_chunk_follows_the_device(monkeypatch):
    prompt = [1] * 2998 + [START, ASSISTANT]
    model = ChunkRecorder()
    list(gen.generate(model, prompt, model.make_cache(), make_sampler(SamplerSettings(0)),
                      max_tokens=2, stop_tokens={}, context_limit=10_000))  # fmt: skip
    assert [len(c) for c in model.calls[:-1]] == [512] * 5 + [440]
    monkeypatch.setattr(device, "device_info", lambda: METAL)
    model = ChunkRecorder()
    list(gen.generate(model, prompt, model.make_cache(), make_sampler(SamplerSettings(0)),
                      max_tokens=2, stop_tokens={}, context_limit=10_000))  # fmt: skip
    assert [len(c) for c in model.calls[:-1]] == [2048, 952]


def test_the_buffer_cache_is_cleared_after_prefill_chunks_and_during_decode(monkeypatch):
    cleared: list[int] = []
    model = ChunkRecorder()
    monkeypatch.setattr(mx, "clear_cache", lambda: cleared.append(len(model.calls)))
    monkeypatch.setattr(gen, "CLEAR_CACHE_EVERY", 3)
    prompt = [1] * 1198 + [START, ASSISTANT]
    out = list(gen.generate(model, prompt, model.make_cache(), make_sampler(SamplerSettings(0)),
                            max_tokens=20, stop_tokens={END: "stop"}, context_limit=10_000))  # fmt: skip
    assert len(out) == 8
    # after prefill chunks 1 and 2 (not the last: its logits are still to be sampled), after the
    # first token, then every 3 tokens
    assert cleared == [1, 2, 4, 6, 9]


def test_the_first_token_is_out_before_the_buffer_cache_is_cleared(monkeypatch):
    """Clearing can wait on the device (1.1 s measured on the CPU after a 20b-width prefill):
    it comes after the first token reaches the caller, as in mlx-lm, not inside the TTFT."""
    events: list[str] = []
    model = ChunkRecorder()
    monkeypatch.setattr(mx, "clear_cache", lambda: events.append("clear"))
    prompt = [1] * 10 + [START, ASSISTANT]
    for _ in gen.generate(model, prompt, model.make_cache(), make_sampler(SamplerSettings(0)),
                          max_tokens=3, stop_tokens={}, context_limit=10_000):  # fmt: skip
        events.append("token")
    assert events == ["token", "clear", "token", "token"]


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    from gptoss_mlx import load_model

    model, _ = load_model(tiny_checkpoint, dtype="float32")
    return model


def tokens(n: int) -> list[int]:
    return [int(t) for t in np.random.default_rng(n).integers(0, 199_990, size=n)]


def test_prefill_chunks_of_2048_and_512_give_the_same_logits(tiny):
    prompt = tokens(2100)
    a = gen.prefill(tiny, prompt, tiny.make_cache(), chunk=512)
    b = gen.prefill(tiny, prompt, tiny.make_cache(), chunk=2048)
    from .reference import rel_max_err

    assert rel_max_err(np.array(a), np.array(b)) <= 1e-4


def test_a_real_prefill_leaves_mlx_buffer_cache_nearly_empty(tiny_checkpoint):
    from gptoss_mlx import load_model

    model, _ = load_model(tiny_checkpoint, dtype="float32")
    model.set_fast_path(False)  # plain MLX, as on Metal: lazy chunks, temporaries freed to MLX
    mx.eval(gen.prefill(model, tokens(3), model.make_cache()))
    mx.clear_cache()
    gen.prefill(model, tokens(700), model.make_cache(), chunk=256)
    # Without clearing, the two earlier chunks' temporaries stay cached (about 20 MB here).
    assert mx.get_cache_memory() < 2**20


def test_a_snapshot_after_a_long_chunk_holds_only_the_window(tiny):
    cache = tiny.make_cache()
    mx.eval(gen.prefill(tiny, tokens(600), cache, chunk=600))
    snap = snapshot(cache)
    mx.eval(gen.prefill(tiny, tokens(5), cache))  # the cache moves on; only `snap` holds the old
    held = sum(s.keys.nbytes + s.values.nbytes for s in snap if s.keys is not None)
    window = [c for c in cache if hasattr(c, "window")][0]
    assert snap[0 if hasattr(cache[0], "window") else 1].keys.shape[2] == window.keep
    gc.collect()
    before = mx.get_active_memory()
    del snap
    gc.collect()
    freed = before - mx.get_active_memory()
    # A view would pin each sliding layer's whole 600-position chunk buffer (about 85x more).
    assert freed <= held


def test_swiglu_is_traced_once_for_every_length(monkeypatch):
    from gptoss_mlx.model import gpt_oss as model_mod

    traces = []
    real = mx.sigmoid
    monkeypatch.setattr(mx, "sigmoid", lambda x: traces.append(x.shape) or real(x))
    for n in (37, 53, 71):  # row counts no other test uses
        g = mx.random.normal((n, 4, 1, 24)) * 6
        u = mx.random.normal((n, 4, 1, 24)) * 6
        got = model_mod._swiglu(g, u, 1.702, 7.0)
        gc_, uc = mx.minimum(g, 7.0), mx.clip(u, -7.0, 7.0)
        want = (uc + 1) * (gc_ * real(1.702 * gc_))
        np.testing.assert_allclose(np.array(got), np.array(want), rtol=1e-6, atol=1e-6)
    assert len(traces) <= 1


def test_short_chunks_inside_the_window_equal_the_full_forward(tiny_checkpoint):
    """Plain MLX (Metal's path): chunks that fit in the sliding window use the causal mask."""
    from gptoss_mlx import load_model

    from .reference import rel_max_err

    model, _ = load_model(tiny_checkpoint, dtype="float32")
    model.set_fast_path(False)
    ids = tokens(30)
    assert model.config.sliding_window == 8
    full = np.array(model(mx.array([ids]))[0])
    cache, parts, start = model.make_cache(), [], 0
    for n in (3, 4, 1, 2, 20):  # 0+3, 3+4 and 7+1 fit in the window of 8; 8+2 does not
        parts.append(np.array(model(mx.array([ids[start : start + n]]), cache)[0]))
        start += n
    assert rel_max_err(np.concatenate(parts), full) <= 1e-4
