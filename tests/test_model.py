"""The model against transformers' GptOssForCausalLM and mlx-lm, and the caches against the full forward."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from gptoss_mlx import load_model
from gptoss_mlx.model.cache import cache_nbytes, restore, snapshot

from .reference import rel_max_err, torch_logits, torch_reference

SHORT = [200006, 1428, 200008, 13225, 11]  # 5 tokens
rng = np.random.default_rng(7)
LONG = [int(t) for t in rng.integers(0, 199_990, size=29)]  # > 3 sliding windows of 8


@pytest.fixture(scope="module")
def ours(tiny_checkpoint):
    return load_model(tiny_checkpoint, dtype="float32")[0]


@pytest.fixture(scope="module")
def reference(tiny_checkpoint):
    return torch_reference(tiny_checkpoint)


def our_logits(model, tokens: list[int]) -> np.ndarray:
    out = model(mx.array([tokens]))
    return np.array(out[0].astype(mx.float32))


@pytest.mark.parametrize("tokens", [SHORT, LONG], ids=["5-tokens", "29-tokens"])
def test_logits_match_transformers(ours, reference, tokens):
    ref = torch_logits(reference, tokens)
    got = our_logits(ours, tokens)
    assert got.shape == ref.shape == (len(tokens), 201088)
    assert rel_max_err(got, ref) <= 2e-3
    assert (got.argmax(-1) == ref.argmax(-1)).mean() == 1.0


def test_routing_is_not_degenerate(ours):
    """The synthetic weights must exercise several experts, or the comparison proves little."""
    x = ours.embed(mx.array([LONG]))
    idx, _ = ours.layers[0].mlp.route(ours.layers[0].post_attention_layernorm(x))
    assert len(set(np.array(idx).flatten().tolist())) >= 6


def test_incremental_decode_equals_full_forward(ours):
    full = our_logits(ours, LONG)
    cache = ours.make_cache()
    steps = [ours(mx.array([LONG[:6]]), cache)]
    for t in LONG[6:]:
        steps.append(ours(mx.array([[t]]), cache))
    inc = np.concatenate([np.array(s[0]) for s in steps], axis=0)
    assert rel_max_err(inc, full) <= 1e-4


def test_chunked_prefill_equals_full_forward(ours):
    full = our_logits(ours, LONG)
    cache = ours.make_cache()
    parts = [ours(mx.array([LONG[a:b]]), cache) for a, b in ((0, 5), (5, 17), (17, 29))]
    inc = np.concatenate([np.array(p[0]) for p in parts], axis=0)
    assert rel_max_err(inc, full) <= 1e-4


def test_last_only_logits(ours):
    full = our_logits(ours, LONG)
    last = np.array(ours(mx.array([LONG]), last_only=True)[0])
    assert last.shape == (1, 201088)
    np.testing.assert_allclose(last[0], full[-1], rtol=1e-5, atol=1e-5)


@pytest.fixture(scope="module")
def three_layers(tmp_path_factory):
    """The last layer a sliding-window one (the tiny model's is full attention)."""
    from scripts.make_checkpoint import make_checkpoint

    path = make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny3", num_layers=3, seed=2)
    model = load_model(path, dtype="float32")[0]
    assert model.config.layer_types[-1] == "sliding_attention"
    return model


@pytest.mark.parametrize("fast", [True, False], ids=["fast-path", "plain-mlx"])
@pytest.mark.parametrize("which", ["ours", "three_layers"])
def test_last_only_chunks_keep_every_key(request, which, fast):
    """A prefill's chunks with last_only (the last layer attends from the last position only,
    inside its window when the chunk overruns it) give the full forward's logits at each chunk
    end, and the caches then hold what a full forward puts there."""
    model = request.getfixturevalue(which)
    full = our_logits(model, LONG)
    model.set_fast_path(fast)
    try:
        cache, ref_cache = model.make_cache(), model.make_cache()
        for a, b in ((0, 5), (5, 17), (17, 29)):  # 12 tokens after 5: past the window of 8
            last = np.array(model(mx.array([LONG[a:b]]), cache, last_only=True)[0])
            model(mx.array([LONG[a:b]]), ref_cache)
            np.testing.assert_allclose(last[0], full[b - 1], rtol=1e-4, atol=1e-4)
        for c, r in zip(cache, ref_cache, strict=True):
            assert c.offset == r.offset == len(LONG)
            for got, want in zip(c.state_arrays(), r.state_arrays(), strict=True):
                np.testing.assert_array_equal(np.array(got), np.array(want))
    finally:
        model.set_fast_path(None)


def test_sliding_cache_memory_is_bounded(ours):
    cfg = ours.config
    cache = ours.make_cache()
    ours(mx.array([LONG]), cache)
    for t in LONG[:10]:
        ours(mx.array([[t]]), cache)
    n = len(LONG) + 10
    for c, kind in zip(cache, cfg.layer_types, strict=True):
        if kind == "full_attention":
            assert c.offset == n
        else:
            assert c.keys.shape[2] == cfg.sliding_window - 1  # all a future query can see
    assert (
        cache_nbytes(cache)
        == cfg.kv_cache_bytes(n, 4)
        - cfg.n_sliding_layers * 2 * cfg.num_key_value_heads * cfg.head_dim * 4
    )


def test_snapshot_restore_equals_fresh_prefill(ours):
    """Restore to a snapshot, feed a different continuation: same logits as a fresh prefill."""
    prefix, a, b = LONG[:11], LONG[11:20], LONG[20:29]
    cache = ours.make_cache()
    ours(mx.array([prefix]), cache)
    state = snapshot(cache)
    ours(mx.array([a]), cache)
    restore(cache, state)
    got = np.array(ours(mx.array([b]), cache)[0])
    fresh = our_logits(ours, prefix + b)[len(prefix) :]
    assert rel_max_err(got, fresh) <= 1e-4


@pytest.fixture(scope="module")
def mlx_lm_model(tiny_checkpoint):
    from mlx_lm.utils import load_model as mlx_lm_load_model

    model, _ = mlx_lm_load_model(tiny_checkpoint)
    model.set_dtype(mx.float32)
    return model


def test_yarn_frequencies_equal_transformers(tiny_checkpoint):
    import json

    import torch  # noqa: F401  (transformers' rope utils need it)
    from transformers import GptOssConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    from gptoss_mlx.model.config import ModelConfig
    from gptoss_mlx.model.gpt_oss import yarn_inv_freq

    for head_dim in (32, 64):  # the tiny preset and the real models
        raw = json.loads((tiny_checkpoint / "config.json").read_text()) | {"head_dim": head_dim}
        raw.pop("quantization_config")
        ref, ref_factor = ROPE_INIT_FUNCTIONS["yarn"](GptOssConfig(**raw), "cpu")
        ours, factor = yarn_inv_freq(ModelConfig.from_dict(raw))
        np.testing.assert_allclose(np.array(ours), ref.numpy(), rtol=1e-6)
        assert factor == pytest.approx(ref_factor)


def test_mlx_lm_ignores_yarn_truncate_false(tiny_checkpoint, mlx_lm_model):
    """gpt-oss configs say `truncate: false`; mlx-lm always rounds the YaRN correction range,
    so its rotary frequencies (and logits) differ slightly from the reference. Ours do not."""
    from gptoss_mlx.model.config import ModelConfig
    from gptoss_mlx.model.gpt_oss import yarn_inv_freq

    cfg = ModelConfig.from_dir(tiny_checkpoint)
    assert cfg.rope_scaling["truncate"] is False
    theirs = 1.0 / np.array(mlx_lm_model.model.layers[0].self_attn.rope._freqs)
    ours = np.array(yarn_inv_freq(cfg)[0])
    cfg.rope_scaling["truncate"] = True
    ours_truncated = np.array(yarn_inv_freq(cfg)[0])
    assert np.abs(theirs - ours).max() > 1e-4
    np.testing.assert_allclose(theirs, ours_truncated, rtol=1e-6)


@pytest.mark.parametrize("tokens", [SHORT, LONG], ids=["5-tokens", "29-tokens"])
def test_logits_match_mlx_lm_on_the_same_weights(tiny_checkpoint, mlx_lm_model, tokens):
    """Same weights, same maths: equal to mlx-lm once its YaRN rounding is applied to ours."""
    from gptoss_mlx.model.loader import load_model as load

    ours = load(tiny_checkpoint, dtype="float32")
    for layer in ours.layers:
        cfg = ours.config
        cfg.rope_scaling = cfg.rope_scaling | {"truncate": True}
        layer.self_attn.rope = type(layer.self_attn.rope)(cfg)
    theirs = np.array(mlx_lm_model(mx.array([tokens]))[0])
    got = our_logits(ours, tokens)
    assert rel_max_err(got, theirs) <= 2e-3
    assert (got.argmax(-1) == theirs.argmax(-1)).mean() == 1.0
