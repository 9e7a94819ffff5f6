"""The Metal path's maths on the CPU: plain MLX in bfloat16 (what Metal runs) against mlx-lm in
bfloat16 on the same weights (YaRN aligned) and, loosely, transformers in float32. Both tiny
presets: head_dim 32 and head_dim 64 (the size MLX's fused Metal attention kernels take)."""

from __future__ import annotations

import mlx.core as mx
import numpy as np
import pytest

from gptoss_mlx.model.cache import restore, snapshot
from gptoss_mlx.model.loader import load_model

from .reference import rel_max_err, torch_logits, torch_reference

rng = np.random.default_rng(11)
TOKENS = [int(t) for t in rng.integers(0, 199_990, size=29)]  # > 3 sliding windows of 8


@pytest.fixture(scope="module", params=["tiny", "tiny64"])
def checkpoint(request, tiny_checkpoint, tmp_path_factory):
    if request.param == "tiny":
        return tiny_checkpoint
    from scripts.make_checkpoint import make_checkpoint

    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "tiny64", preset="tiny64", seed=1)


@pytest.fixture(scope="module")
def ours(checkpoint):
    model = load_model(checkpoint, dtype="bfloat16")
    assert model.fast_path() == (False, model.fast_path()[1])  # bf16: plain MLX, as on Metal
    assert model.layers[0].self_attn.head_dim == model.config.head_dim
    return model


def logits(model, tokens: list[int], cache: list | None = None) -> np.ndarray:
    return np.array(model(mx.array([tokens]), cache)[0].astype(mx.float32))


def test_bf16_activations_all_the_way(ours):
    assert ours.dtype == mx.bfloat16
    h = ours.hidden(mx.array([TOKENS[:5]]))
    assert h.dtype == mx.bfloat16


def test_bf16_matches_mlx_lm_in_bf16_on_the_same_weights(checkpoint, ours):
    from mlx_lm.utils import load_model as mlx_lm_load_model

    theirs, _ = mlx_lm_load_model(checkpoint)
    assert theirs.model.embed_tokens.weight.dtype == mx.bfloat16
    aligned = load_model(checkpoint, dtype="bfloat16")
    cfg = aligned.config
    cfg.rope_scaling = cfg.rope_scaling | {"truncate": True}  # mlx-lm always truncates
    for layer in aligned.layers:
        layer.self_attn.rope = type(layer.self_attn.rope)(cfg)
    ref = np.array(theirs(mx.array([TOKENS]))[0].astype(mx.float32))
    got = logits(aligned, TOKENS)
    assert rel_max_err(got, ref) <= 1e-2
    assert (got.argmax(-1) == ref.argmax(-1)).mean() == 1.0


def test_bf16_loosely_matches_transformers_in_float32(checkpoint, ours):
    """bf16 rounding moves random-weight logits by up to ~5-12 % of their range (measured: mlx-lm
    in bf16 too), so the bar is mlx-lm's own bf16 error, and the top token."""
    from mlx_lm.utils import load_model as mlx_lm_load_model

    ref = torch_logits(torch_reference(checkpoint), TOKENS)
    got = logits(ours, TOKENS)
    theirs = np.array(mlx_lm_load_model(checkpoint)[0](mx.array([TOKENS]))[0].astype(mx.float32))
    assert rel_max_err(got, ref) <= min(0.15, max(0.02, 1.5 * rel_max_err(theirs, ref)))
    assert (got.argmax(-1) == ref.argmax(-1)).mean() >= 0.9


def test_bf16_caches_equal_the_full_forward(ours):
    full = logits(ours, TOKENS)
    cache = ours.make_cache()
    parts = [logits(ours, TOKENS[:5], cache), logits(ours, TOKENS[5:17], cache)]
    parts += [logits(ours, [t], cache) for t in TOKENS[17:]]
    assert rel_max_err(np.concatenate(parts), full) <= 1e-2
    cache = ours.make_cache()
    ours(mx.array([TOKENS[:11]]), cache)
    state = snapshot(cache)
    ours(mx.array([TOKENS[11:20]]), cache)
    restore(cache, state)
    got = logits(ours, TOKENS[20:], cache)
    fresh = logits(ours, TOKENS[:11] + TOKENS[20:])[11:]
    assert rel_max_err(got, fresh) <= 1e-2
