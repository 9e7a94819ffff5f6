"""gpt-oss on MLX core: the transformer, its experts and its KV caches.

Maths follow transformers' GptOss model (the reference): attention with learned sinks, grouped
query attention, alternating sliding-window / full layers, YaRN RoPE (truncate=False as in the
gpt-oss config), top-k router with softmax over the selected logits, clamped SwiGLU experts run
directly on 4-bit weights with `mx.gather_qmm`, RMSNorm, untied lm_head.

Parameter names follow mlx-lm's gpt_oss layout, so converted checkpoints load in both.

On the CPU backend the matmuls can run on the CPU fast path instead (cpu_path.py: C kernels and
BLAS on the same weights, float32 arithmetic); device.py decides, `Model.set_fast_path` overrides.
"""

from __future__ import annotations

import math
from functools import partial
from typing import TYPE_CHECKING, Any

import mlx.core as mx
import mlx.nn as nn

from .cache import FullKVCache, WindowKVCache
from .config import ModelConfig

if TYPE_CHECKING:
    from ..backend.cpu_path import CpuFastPath


def yarn_inv_freq(cfg: ModelConfig) -> tuple[mx.array, float]:
    """Inverse frequencies and attention factor of YaRN RoPE, as transformers computes them."""
    rope = cfg.rope_scaling or {}
    dim = cfg.head_dim
    base = cfg.rope_theta
    pos = mx.arange(0, dim, 2, dtype=mx.float32) / dim
    inv_extra = 1.0 / (base**pos)
    if rope.get("rope_type", rope.get("type")) != "yarn":
        return inv_extra, 1.0
    factor = float(rope["factor"])
    orig = float(rope.get("original_max_position_embeddings", 4096))
    beta_fast = float(rope.get("beta_fast") or 32)
    beta_slow = float(rope.get("beta_slow") or 1)
    truncate = bool(rope.get("truncate", True))
    attention_factor = rope.get("attention_factor")
    if attention_factor is None:
        attention_factor = 0.1 * math.log(factor) + 1.0 if factor > 1 else 1.0

    def correction_dim(rot: float) -> float:
        return (dim * math.log(orig / (rot * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    ramp = mx.clip((mx.arange(dim // 2, dtype=mx.float32) - low) / (high - low), 0, 1)
    extra_factor = 1 - ramp
    inv_inter = inv_extra / factor
    inv_freq = inv_inter * (1 - extra_factor) + inv_extra * extra_factor
    return inv_freq, float(attention_factor)


class YarnRoPE(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        inv_freq, self.mscale = yarn_inv_freq(cfg)
        self._freqs = 1.0 / inv_freq  # mx.fast.rope takes periods, not inverse frequencies
        self.dims = cfg.head_dim

    def __call__(self, x: mx.array, offset: int) -> mx.array:
        # cos and sin are both scaled by the attention factor in the reference: scale x instead.
        if self.mscale != 1.0:
            x = x * self.mscale
        return mx.fast.rope(
            x, self.dims, traditional=False, base=None, scale=1.0, offset=offset, freqs=self._freqs
        )


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads = cfg.num_attention_heads
        self.n_kv = cfg.num_key_value_heads
        self.head_dim = cfg.head_dim
        h, q, kv = (
            cfg.hidden_size,
            cfg.num_attention_heads * cfg.head_dim,
            cfg.num_key_value_heads * cfg.head_dim,
        )
        self.q_proj = nn.Linear(h, q, bias=True)
        self.k_proj = nn.Linear(h, kv, bias=True)
        self.v_proj = nn.Linear(h, kv, bias=True)
        self.o_proj = nn.Linear(q, h, bias=True)
        self.sinks = mx.zeros((cfg.num_attention_heads,))
        self.scale = cfg.head_dim**-0.5
        self.rope = YarnRoPE(cfg)

    _fast: CpuFastPath | None = None
    window = 0  # sliding window of this layer (0: full attention); set by Model

    def _proj(self, linear: nn.Module, x: mx.array) -> mx.array:
        return self._fast.linear(linear, x) if self._fast is not None else linear(x)

    def __call__(
        self,
        x: mx.array,
        mask: Any,
        cache: FullKVCache | WindowKVCache | None,
        last_only: bool = False,
    ) -> mx.array:
        """[B, L, H] -> [B, L, H]; with `last_only` every position's keys and values go into
        the cache but only the last position attends: [B, 1, H]."""
        B, L, _ = x.shape
        xq = x[:, -1:, :] if last_only and L > 1 else x
        Lq = xq.shape[1]
        q = (
            self._proj(self.q_proj, xq)
            .reshape(B, Lq, self.n_heads, self.head_dim)
            .transpose(0, 2, 1, 3)
        )
        k = self._proj(self.k_proj, x).reshape(B, L, self.n_kv, self.head_dim).transpose(0, 2, 1, 3)
        v = self._proj(self.v_proj, x).reshape(B, L, self.n_kv, self.head_dim).transpose(0, 2, 1, 3)
        offset = cache.offset if cache is not None else 0
        q_start = offset + L - Lq
        q = self.rope(q, q_start)
        k = self.rope(k, offset)
        if cache is not None:
            k, v = cache.update_and_fetch(k, v)
        if self._fast is not None and self.head_dim <= 256:
            out = self._fast.attention(q, k, v, self.sinks, self.scale, q_start, self.window)
            return self._proj(self.o_proj, out)
        if Lq < L:  # the last position sees every key returned, but those outside its window
            S = k.shape[2]
            mask = _window_mask(1, S - 1, self.window) if 0 < self.window < S else None
        out = mx.fast.scaled_dot_product_attention(
            q, k, v, scale=self.scale, mask=mask, sinks=self.sinks.astype(q.dtype)
        )
        return self._proj(self.o_proj, out.transpose(0, 2, 1, 3).reshape(B, Lq, -1))


# Shapeless (as mlx-lm): elementwise, so one trace serves every prefill length; the float
# constants are baked in rather than made into arrays on every call.
@partial(mx.compile, shapeless=True)
def _swiglu(gate: mx.array, up: mx.array, alpha: float, limit: float) -> mx.array:
    gate = mx.minimum(gate, limit)
    up = mx.clip(up, -limit, limit)
    return (up + 1) * (gate * mx.sigmoid(alpha * gate))


class SwitchLinear(nn.Module):
    """Per-expert linear layer on quantized weights (mxfp4 or affine), with a float bias."""

    def __init__(
        self, in_dims: int, out_dims: int, n_experts: int, group_size: int, bits: int, mode: str
    ):
        super().__init__()
        self.group_size, self.bits, self.mode = group_size, bits, mode
        self.weight = mx.zeros((n_experts, out_dims, in_dims * bits // 32), dtype=mx.uint32)
        scale_dtype = mx.uint8 if mode in ("mxfp4", "mxfp8") else mx.float32
        self.scales = mx.zeros((n_experts, out_dims, in_dims // group_size), dtype=scale_dtype)
        if mode == "affine":
            self.biases = mx.zeros((n_experts, out_dims, in_dims // group_size))
        self.bias = mx.zeros((n_experts, out_dims))

    @property
    def input_dims(self) -> int:
        return self.weight.shape[-1] * 32 // self.bits

    def __call__(self, x: mx.array, indices: mx.array, sorted_indices: bool = False) -> mx.array:
        y = mx.gather_qmm(
            x,
            self.weight,
            self.scales,
            self.get("biases"),
            rhs_indices=indices,
            transpose=True,
            group_size=self.group_size,
            bits=self.bits,
            mode=self.mode,
            sorted_indices=sorted_indices,
        )
        return y + mx.expand_dims(self.bias[indices], -2).astype(y.dtype)

    def dequantized(self, expert: int | mx.array) -> mx.array:
        """Dense [out, in] weight of one expert (for the CPU prefill path and tests)."""
        return mx.dequantize(
            self.weight[expert],
            self.scales[expert],
            self.get("biases")[expert] if "biases" in self else None,
            group_size=self.group_size,
            bits=self.bits,
            mode=self.mode,
        )


class Experts(nn.Module):
    def __init__(self, cfg: ModelConfig, group_size: int, bits: int, mode: str):
        super().__init__()
        h, i, e = cfg.hidden_size, cfg.intermediate_size, cfg.num_local_experts
        self.gate_proj = SwitchLinear(h, i, e, group_size, bits, mode)
        self.up_proj = SwitchLinear(h, i, e, group_size, bits, mode)
        self.down_proj = SwitchLinear(i, h, e, group_size, bits, mode)
        self._alpha = cfg.swiglu_alpha
        self._limit = cfg.swiglu_limit

    def __call__(self, x: mx.array, indices: mx.array) -> mx.array:
        """x: [N, H]; indices: [N, k] -> [N, k, H] (one output per selected expert)."""
        x = mx.expand_dims(x, (-2, -3))  # [N, 1, 1, H]
        do_sort = indices.size >= 64
        idx = indices
        if do_sort:
            # Ordering tokens by expert makes gather_qmm read each expert's weights once.
            flat = indices.flatten()
            order = mx.argsort(flat)
            inv = mx.argsort(order)
            x = x.flatten(0, -3)[order // indices.shape[-1]]
            idx = flat[order]
        g = self.gate_proj(x, idx, sorted_indices=do_sort)
        u = self.up_proj(x, idx, sorted_indices=do_sort)
        y = self.down_proj(_swiglu(g, u, self._alpha, self._limit), idx, sorted_indices=do_sort)
        if do_sort:
            y = y[inv].reshape(*indices.shape, 1, -1)
        return y.squeeze(-2)


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig, group_size: int, bits: int, mode: str):
        super().__init__()
        self.k = cfg.num_experts_per_tok
        self.router = nn.Linear(cfg.hidden_size, cfg.num_local_experts, bias=True)
        self.experts = Experts(cfg, group_size, bits, mode)

    def route(self, x: mx.array) -> tuple[mx.array, mx.array]:
        logits = self.router(x)
        idx = mx.argpartition(logits, kth=-self.k, axis=-1)[..., -self.k :]
        top = mx.take_along_axis(logits, idx, axis=-1)
        weights = mx.softmax(top.astype(mx.float32), axis=-1).astype(x.dtype)
        return idx, weights

    _fast: CpuFastPath | None = None

    def __call__(self, x: mx.array) -> mx.array:
        if self._fast is not None:
            return self._fast.moe(self, x)
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        idx, weights = self.route(x)
        y = self.experts(x, idx)
        y = (y * weights[..., None]).sum(axis=-2)
        return y.reshape(shape)


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, group_size: int, bits: int, mode: str):
        super().__init__()
        self.self_attn = Attention(cfg)
        self.mlp = MLP(cfg, group_size, bits, mode)
        self.input_layernorm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)
        self.post_attention_layernorm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)

    def __call__(self, x: mx.array, mask: Any, cache: Any, last_only: bool = False) -> mx.array:
        """With `last_only` attention and MLP run for the last position only (the cache gets
        every position's keys and values): what mlx-lm's lazy graph computes in a prefill."""
        h = self.self_attn(self.input_layernorm(x), mask, cache, last_only)
        if last_only:
            x = x[:, -1:, :]
        x = x + h
        return x + self.mlp(self.post_attention_layernorm(x))


class Backbone(nn.Module):
    def __init__(self, cfg: ModelConfig, group_size: int, bits: int, mode: str):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size)
        self.layers = [Block(cfg, group_size, bits, mode) for _ in range(cfg.num_hidden_layers)]
        self.norm = nn.RMSNorm(cfg.hidden_size, eps=cfg.rms_norm_eps)


def _window_mask(L: int, cached: int, window: int) -> mx.array:
    """Boolean [L, cached + L]: query i (at cached + i) sees key j if 0 <= (cached + i) - j < window."""
    q = mx.arange(cached, cached + L)[:, None]
    k = mx.arange(cached + L)[None, :]
    return (k <= q) & (q - k < window)


class Model(nn.Module):
    def __init__(self, cfg: ModelConfig, experts_quant: dict[str, Any] | None = None):
        super().__init__()
        q = experts_quant or {"group_size": 32, "bits": 4, "mode": "mxfp4"}
        self.config = cfg
        self.model = Backbone(cfg, q["group_size"], q["bits"], q.get("mode", "affine"))
        self.lm_head = nn.Linear(cfg.hidden_size, cfg.vocab_size, bias=False)
        self.dtype = mx.float32
        for layer, kind in zip(self.layers, cfg.layer_types, strict=True):
            layer.self_attn.window = cfg.sliding_window if kind == "sliding_attention" else 0
        self._fast_setting: bool | None = None
        self._fast: CpuFastPath | None = None
        self._fast_reason = ""
        self._fast_decided: mx.Dtype | None = None  # the activation dtype it was decided for

    def set_fast_path(self, enabled: bool | None) -> None:
        """None: as device.py decides for this device and dtype (the default); False: plain MLX
        everywhere (the reference path); True: the CPU fast path (ValueError if unavailable).
        Takes effect at once, also for layers called directly."""
        self._fast_setting = enabled
        self._fast_decided = None
        self._decide_fast_path()

    def fast_path(self) -> tuple[bool, str]:
        """Whether the CPU fast path is used, and why."""
        self._decide_fast_path()
        return self._fast is not None, self._fast_reason

    def _decide_fast_path(self) -> None:
        if self._fast_decided is not None and self._fast_decided == self.dtype:
            return
        from ..backend.device import cpu_fast_path

        fast, reason = (None, "disabled by Model.set_fast_path(False)")
        if self._fast_setting is not False:
            fast, reason = cpu_fast_path(self.dtype)
            if fast is None and self._fast_setting:
                raise ValueError(f"the CPU fast path is unavailable: {reason}")
        self._fast, self._fast_reason, self._fast_decided = fast, reason, self.dtype
        for layer in self.layers:
            layer.self_attn._fast = fast
            layer.mlp._fast = fast

    @property
    def layers(self) -> list[Block]:
        return self.model.layers

    def make_cache(self) -> list[FullKVCache | WindowKVCache]:
        return [
            WindowKVCache(self.config.sliding_window) if t == "sliding_attention" else FullKVCache()
            for t in self.config.layer_types
        ]

    def embed(self, tokens: mx.array) -> mx.array:
        return self.model.embed_tokens(tokens).astype(self.dtype)

    def hidden(
        self, tokens: mx.array, cache: list | None = None, last_only: bool = False
    ) -> mx.array:
        """Final-norm hidden states [B, L, H] (or [B, 1, H] with `last_only`: then the last
        layer's attention and MLP, a whole layer's worth of work in a prefill, run for one
        position)."""
        self._decide_fast_path()
        x = self.embed(tokens)
        L = x.shape[1]
        if self._fast is not None:
            self._fast.begin(x.shape[0] * L)
        window = self.config.sliding_window
        masks: dict[str, Any] = {}
        last = len(self.layers) - 1
        for n, (layer, kind, c) in enumerate(
            zip(
                self.model.layers,
                self.config.layer_types,
                cache or [None] * len(self.layers),
                strict=True,
            )
        ):
            if kind not in masks:
                if kind == "full_attention":
                    masks[kind] = "causal" if L > 1 else None
                else:
                    cached = c.cached_len if c is not None else 0
                    if L == 1 and cached < window:
                        masks[kind] = None
                    elif cached + L <= window:  # every key is inside the window (as mlx-lm)
                        masks[kind] = "causal"
                    else:
                        masks[kind] = _window_mask(L, cached, window)
            x = layer(x, masks[kind], c, last_only=last_only and n == last)
        return self.model.norm(x)

    def __call__(
        self, tokens: mx.array, cache: list | None = None, last_only: bool = False
    ) -> mx.array:
        """tokens [B, L] -> logits [B, L, vocab] (or [B, 1, vocab] with last_only)."""
        h = self.hidden(tokens, cache, last_only)
        return self._fast.linear(self.lm_head, h) if self._fast is not None else self.lm_head(h)
