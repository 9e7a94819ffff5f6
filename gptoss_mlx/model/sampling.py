"""Sampling: the settings with their valid ranges (one home for them) and the logit filters.

Temperature 0 is greedy. The filters follow the usual definitions: top-k keeps the k largest
logits, min-p drops tokens whose probability is below `min_p` times the top token's, top-p keeps
the smallest set of most likely tokens whose mass reaches `top_p` (the top token always stays).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import mlx.core as mx


SEED_MAX = 2**64 - 1
# name -> (lowest, highest, what the user is told); bounds are inclusive unless noted in `check`.
RANGES: dict[str, tuple[float, float, str]] = {
    "temperature": (0.0, 100.0, "between 0 (greedy) and 100"),
    "top_p": (0.0, 1.0, "in (0, 1]"),
    "top_k": (0, 1_000_000, "between 0 (off) and 1000000"),
    "min_p": (0.0, 1.0, "in [0, 1)"),
    "seed": (0, SEED_MAX, "between 0 and 2^64-1"),
}


SAMPLER_KEYS = tuple(RANGES)  # the sampler's settings, in the order users see them


def check(name: str, value: float | int) -> str | None:
    """None when `value` is valid for sampler setting `name`, else what it must be."""
    low, high, must = RANGES[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return must
    if isinstance(value, float) and not math.isfinite(value):
        return must
    if name in ("top_k", "seed") and not float(value).is_integer():
        return must
    if not low <= value <= high:
        return must
    if (name == "top_p" and value == 0) or (name == "min_p" and value == 1):
        return must
    return None


@dataclass
class SamplerSettings:
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    min_p: float = 0.0
    seed: int | None = None

    def __post_init__(self) -> None:
        for name in SAMPLER_KEYS:
            value = getattr(self, name)
            if value is None and name == "seed":
                continue
            problem = check(name, value)
            if problem:
                raise ValueError(f"{name} must be {problem}, not {value!r}")


def apply_top_k(logits: mx.array, k: int) -> mx.array:
    import mlx.core as mx

    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = mx.sort(logits, axis=-1)[..., -k][..., None]
    return mx.where(logits < kth, -mx.inf, logits)


def apply_min_p(logits: mx.array, min_p: float) -> mx.array:
    import mlx.core as mx

    if min_p <= 0:
        return logits
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    cutoff = mx.max(logprobs, axis=-1, keepdims=True) + math.log(min_p)
    return mx.where(logprobs < cutoff, -mx.inf, logits)


def apply_top_p(logits: mx.array, top_p: float) -> mx.array:
    import mlx.core as mx

    if top_p >= 1:
        return logits
    logprobs = logits - mx.logsumexp(logits, axis=-1, keepdims=True)
    order = mx.argsort(-logprobs, axis=-1)
    sorted_p = mx.exp(mx.take_along_axis(logprobs, order, axis=-1))
    # Keep a token if the mass before it is below top_p (the top token is always kept).
    keep_sorted = (mx.cumsum(sorted_p, axis=-1) - sorted_p) < top_p
    keep = mx.put_along_axis(mx.zeros_like(keep_sorted), order, keep_sorted, axis=-1)
    return mx.where(keep, logits, -mx.inf)


def filter_logits(logits: mx.array, s: SamplerSettings) -> mx.array:
    """Temperature-scaled float32 logits with top-k, then min-p, then top-p applied."""
    import mlx.core as mx

    logits = logits.astype(mx.float32) * (1.0 / s.temperature)
    logits = apply_top_k(logits, s.top_k)
    logits = apply_min_p(logits, s.min_p)
    return apply_top_p(logits, s.top_p)


def make_sampler(s: SamplerSettings) -> Callable[[mx.array], mx.array]:
    """logits [1, V] -> token [1]. Temperature 0 is greedy."""
    import mlx.core as mx

    if s.temperature == 0:
        return lambda logits: mx.argmax(logits, axis=-1)
    return lambda logits: mx.random.categorical(filter_logits(logits, s), axis=-1)
