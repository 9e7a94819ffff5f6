"""The sampler's filters, checked with exact probabilities, and the settings' ranges."""

from __future__ import annotations

import math

import mlx.core as mx
import numpy as np
import pytest

from gptoss_mlx.model.sampling import (
    SamplerSettings,
    apply_min_p,
    apply_top_k,
    apply_top_p,
    check,
    filter_logits,
    make_sampler,
)

PROBS = np.array([0.5, 0.25, 0.125, 0.0625, 0.0625])
LOGITS = mx.array(np.log(PROBS)[None, :].astype(np.float32))


def probs(logits: mx.array) -> np.ndarray:
    return np.array(mx.softmax(logits, axis=-1))[0]


def test_top_k_keeps_the_k_largest_renormalised() -> None:
    np.testing.assert_allclose(probs(apply_top_k(LOGITS, 2)), [2 / 3, 1 / 3, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(probs(apply_top_k(LOGITS, 0)), PROBS, atol=1e-6)


def test_min_p_drops_tokens_below_a_fraction_of_the_top_one() -> None:
    # 0.25 of the top (0.5) is 0.125: that token stays, the 0.0625s go.
    np.testing.assert_allclose(
        probs(apply_min_p(LOGITS, 0.25)),
        [0.5 / 0.875, 0.25 / 0.875, 0.125 / 0.875, 0, 0],
        atol=1e-6,
    )


def test_top_p_keeps_the_smallest_set_reaching_the_mass() -> None:
    # Mass before each token: 0, 0.5, 0.75, 0.875, 0.9375; top_p 0.75 keeps the first two.
    np.testing.assert_allclose(probs(apply_top_p(LOGITS, 0.75)), [2 / 3, 1 / 3, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(probs(apply_top_p(LOGITS, 0.7)), [2 / 3, 1 / 3, 0, 0, 0], atol=1e-6)
    np.testing.assert_allclose(probs(apply_top_p(LOGITS, 0.01)), [1, 0, 0, 0, 0], atol=1e-6)


def test_temperature_scales_before_filtering() -> None:
    s = SamplerSettings(temperature=0.5, top_k=3)
    expected = PROBS[:3] ** 2 / (PROBS[:3] ** 2).sum()
    np.testing.assert_allclose(probs(filter_logits(LOGITS, s)), [*expected, 0, 0], atol=1e-6)


def test_sampling_follows_the_filtered_distribution() -> None:
    mx.random.seed(0)
    sample = make_sampler(SamplerSettings(top_k=2))
    draws = np.array([int(sample(LOGITS).item()) for _ in range(3000)])
    assert set(draws) <= {0, 1}
    assert abs((draws == 0).mean() - 2 / 3) < 0.04
    assert int(make_sampler(SamplerSettings(temperature=0))(LOGITS).item()) == 0


@pytest.mark.parametrize(
    "name, value",
    [
        ("temperature", math.nan),
        ("temperature", math.inf),
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", -1),
        ("top_k", 2.5),
        ("min_p", 1.0),
        ("seed", -1),
        ("seed", 2**64),
        ("seed", True),
    ],
)
def test_out_of_range_values_are_refused(name: str, value: float) -> None:
    assert check(name, value) is not None
    with pytest.raises(ValueError, match=name):
        SamplerSettings(**{name: value})


def test_edges_that_are_valid() -> None:
    for name, value in [("temperature", 0), ("top_p", 1.0), ("min_p", 0.0), ("seed", 2**64 - 1)]:
        assert check(name, value) is None, name
