"""gpt-oss across an `mx.distributed` group: tensor parallelism and a pipeline split.

Tensor parallel (as mlx-lm's `gpt_oss.Model.shard`): every rank holds 1/N of the query and KV
heads (with their `sinks`), 1/N of each expert's intermediate dimension, and 1/N of the vocabulary
(embedding rows and lm_head rows). Collectives per forward: one all_sum for the embedding, two per
layer (attention output, MoE output) and one all_gather of the logits.

Pipeline: rank r holds a contiguous run of layers (rank 0 the first, with the embedding; the last
rank the final norm and lm_head). Hidden states move between stages with an all_sum to which only
the sending stage contributes, so every rank issues the same collectives in the same order (no
send/recv, whose ring-backend bugs are listed in the research notes); the logits are shared the
same way, so every rank samples the same token.

Both are applied to a Model (full or a lazily built skeleton) by `restructure`, which changes the
modules, and `shard_params`/`apply_params`, which give it its share of the weights. The CPU fast
path is turned off: collectives run inside MLX's graph.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from typing import Any

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

from ..backend.distributed import PIPELINE, TENSOR
from ..errors import UserError
from .config import ModelConfig
from .gpt_oss import MLP, Model

STRATEGIES = (TENSOR, PIPELINE)


@dataclass(frozen=True)
class Layout:
    """What one rank holds: the strategy, its place in the group and (pipeline) its layers."""

    strategy: str
    rank: int
    size: int
    first: int = 0  # first layer held (pipeline)
    stop: int = 0  # one past the last layer held (pipeline)
    note: str = ""  # why the strategy differs from the one asked for

    @property
    def is_first(self) -> bool:
        return self.rank == 0

    @property
    def is_last(self) -> bool:
        return self.rank == self.size - 1


@dataclass(frozen=True)
class Split:
    """How a parameter is divided: along `axis` into `size` parts (None: whole), then scaled."""

    axis: int | None
    scale: float = 1.0


_TENSOR_RULES: list[tuple[re.Pattern[str], Split]] = [
    (re.compile(r"^(model\.embed_tokens|lm_head)\.(weight|scales|biases)$"), Split(0)),
    (re.compile(r"\.self_attn\.[qkv]_proj\.(weight|scales|biases|bias)$"), Split(0)),
    (re.compile(r"\.self_attn\.o_proj\.(weight|scales|biases)$"), Split(-1)),
    (re.compile(r"\.self_attn\.sinks$"), Split(0)),
    (re.compile(r"\.mlp\.experts\.(gate|up)_proj\.(weight|scales|biases|bias)$"), Split(1)),
    (re.compile(r"\.mlp\.experts\.down_proj\.(weight|scales|biases)$"), Split(-1)),
]
_LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.")


def pipeline_ranges(n_layers: int, size: int) -> list[tuple[int, int]]:
    """Contiguous layer runs per rank, as even as possible (earlier ranks take the remainder)."""
    base, extra = divmod(n_layers, size)
    out, start = [], 0
    for r in range(size):
        stop = start + base + (1 if r < extra else 0)
        out.append((start, stop))
        start = stop
    return out


def make_layout(cfg: ModelConfig, strategy: str, rank: int, size: int) -> Layout:
    if strategy == PIPELINE:
        first, stop = pipeline_ranges(cfg.num_hidden_layers, size)[rank]
        return Layout(PIPELINE, rank, size, first, stop)
    if strategy != TENSOR:
        raise UserError(f"unknown strategy {strategy!r}; use tensor, pipeline or auto")
    return Layout(TENSOR, rank, size)


def param_split(name: str, layout: Layout) -> Split | None:
    """This rank's share of parameter `name`: a Split, or None if the rank does not hold it."""
    if layout.size == 1:
        return Split(None)
    if layout.strategy == PIPELINE:
        m = _LAYER_RE.match(name)
        if m is not None:
            return Split(None) if layout.first <= int(m.group(1)) < layout.stop else None
        if name.startswith("model.embed_tokens."):
            return Split(None) if layout.is_first else None
        if name.startswith(("model.norm.", "lm_head.")):
            return Split(None) if layout.is_last else None
        return Split(None)
    if name.endswith(".mlp.experts.down_proj.bias"):
        return Split(None, 1.0 / layout.size)  # added once per rank before the MoE all_sum
    for pattern, split in _TENSOR_RULES:
        if pattern.search(name):
            return split
    return Split(None)


def split_range(length: int, layout: Layout) -> tuple[int, int]:
    part = length // layout.size
    return layout.rank * part, (layout.rank + 1) * part


def take_share(a: Any, split: Split, layout: Layout) -> Any:
    """Slice an array (numpy or mlx) to this rank's part; the scale is applied by the caller."""
    if split.axis is None:
        return a
    axis = split.axis % a.ndim
    lo, hi = split_range(a.shape[axis], layout)
    return a[(slice(None),) * axis + (slice(lo, hi),)]


# ---- divisibility ------------------------------------------------------------------------------
def tensor_problem(
    cfg: ModelConfig, experts_group_size: int, size: int, dense_groups: int = 0
) -> str:
    """Why tensor parallelism cannot split this model `size` ways ("" if it can).

    `dense_groups` is the number of quantization groups along o_proj's input (0: not quantized).
    """
    checks = [
        (cfg.num_key_value_heads, "KV heads"),
        (cfg.num_attention_heads, "query heads"),
        (cfg.intermediate_size, "expert intermediate size"),
        (cfg.intermediate_size // experts_group_size, "quantization groups of down_proj's scales"),
        (cfg.vocab_size, "vocabulary rows"),
    ]
    if dense_groups:
        checks.append((dense_groups, "quantization groups of o_proj's scales"))
    for count, what in checks:
        if count % size:
            return f"{size} does not divide the {count} {what}"
    return ""


def tensor_sizes(cfg: ModelConfig, experts_group_size: int, dense_groups: int = 0) -> list[int]:
    return [n for n in range(2, 65) if not tensor_problem(cfg, experts_group_size, n, dense_groups)]


def settle_strategy(
    cfg: ModelConfig, strategy: str, size: int, experts_group_size: int, dense_groups: int = 0
) -> tuple[str, str]:
    """For `--strategy auto`: tensor if it can split the model, else pipeline, and why."""
    problem = tensor_problem(cfg, experts_group_size, size, dense_groups)
    if strategy != TENSOR or size == 1 or not problem:
        return strategy, ""
    return PIPELINE, f"pipeline: tensor parallelism cannot split this model ({problem})"


def check_layout(
    cfg: ModelConfig, strategy: str, size: int, experts_group_size: int, dense_groups: int = 0
) -> None:
    """UserError (one line, naming the world sizes that work) if the model cannot be split so."""
    if size == 1:
        return
    if strategy == PIPELINE:
        if size > cfg.num_hidden_layers:
            raise UserError(
                f"a pipeline over {size} ranks needs at least {size} layers; this model has "
                f"{cfg.num_hidden_layers}: use at most {cfg.num_hidden_layers} ranks"
            )
        return
    problem = tensor_problem(cfg, experts_group_size, size, dense_groups)
    if problem:
        ok = tensor_sizes(cfg, experts_group_size, dense_groups)
        sizes = ", ".join(map(str, ok[:8])) if ok else "none"
        raise UserError(
            f"tensor parallelism cannot split this model across {size} ranks ({problem}); "
            f"world sizes that work: {sizes}; or use --strategy pipeline"
        )


# ---- sharded modules (same parameter names as the modules they replace) -------------------------
class _SumLinear(nn.Linear):
    """Input-sharded linear: partial products, all_sum, then the (whole) bias."""

    _group: Any = None

    def __call__(self, x: mx.array) -> mx.array:
        y = mx.distributed.all_sum(x @ self["weight"].T, group=self._group)
        return y + self["bias"] if "bias" in self else y


class _SumQuantizedLinear(nn.QuantizedLinear):
    _group: Any = None

    def __call__(self, x: mx.array) -> mx.array:
        y = mx.quantized_matmul(
            x,
            self["weight"],
            scales=self["scales"],
            biases=self.get("biases"),
            transpose=True,
            group_size=self.group_size,
            bits=self.bits,
            mode=self.mode,
        )
        y = mx.distributed.all_sum(y, group=self._group)
        return y + self["bias"] if "bias" in self else y


class _VocabRows:
    """Embedding holding rows [rank*R, (rank+1)*R): look up local ids, zero the rest, all_sum."""

    _group: Any = None
    _rank = 0

    def __call__(self, x: mx.array) -> mx.array:
        rows = self["weight"].shape[0]
        local = x - self._rank * rows
        inside = (local >= 0) & (local < rows)
        e = super().__call__(mx.where(inside, local, 0))  # type: ignore[misc]
        e = mx.where(inside[..., None], e, mx.zeros((), e.dtype))
        return mx.distributed.all_sum(e, group=self._group)


class _VocabEmbedding(_VocabRows, nn.Embedding):
    pass


class _VocabQuantizedEmbedding(_VocabRows, nn.QuantizedEmbedding):
    pass


class _GatherColumns:
    """lm_head holding a slice of the vocabulary: local logits, then an all_gather of them."""

    _group: Any = None

    def __call__(self, x: mx.array) -> mx.array:
        y = super().__call__(x)  # type: ignore[misc]
        full = mx.distributed.all_gather(mx.moveaxis(y, -1, 0), group=self._group)
        return mx.moveaxis(full, 0, -1)


class _GatherLinear(_GatherColumns, nn.Linear):
    pass


class _GatherQuantizedLinear(_GatherColumns, nn.QuantizedLinear):
    pass


class ShardedMLP(MLP):
    """The MoE block on 1/N of every expert's intermediate dimension: one all_sum at the end."""

    _group: Any = None

    def __call__(self, x: mx.array) -> mx.array:
        shape = x.shape
        x = x.reshape(-1, shape[-1])
        idx, weights = self.route(x)
        y = (self.experts(x, idx) * weights[..., None]).sum(axis=-2)
        return mx.distributed.all_sum(y, group=self._group).reshape(shape)


def _become(module: nn.Module, classes: dict[type, type], **attrs: Any) -> None:
    cls = classes.get(type(module))
    if cls is None:
        raise TypeError(f"cannot shard a {type(module).__name__}")
    module.__class__ = cls
    for k, v in attrs.items():
        object.__setattr__(module, k, v)


class PipelineModel(Model):
    """A Model holding only its stage's layers; `__call__` runs the whole pipeline collectively."""

    _group: Any = None
    _layout: Layout = Layout(PIPELINE, 0, 1)
    _inbox: mx.array | None = None

    def embed(self, tokens: mx.array) -> mx.array:
        return self._inbox if self._inbox is not None else super().embed(tokens)

    def __call__(
        self, tokens: mx.array, cache: list | None = None, last_only: bool = False
    ) -> mx.array:
        lay, g = self._layout, self._group
        B, L = tokens.shape
        cfg = self.full_config
        x = None
        for stage in range(lay.size):
            if stage == lay.rank:
                object.__setattr__(self, "_inbox", x)  # not a parameter
                try:
                    x = self.hidden(tokens, cache)
                finally:
                    object.__setattr__(self, "_inbox", None)
            if stage < lay.size - 1:
                # Evaluated per stage so every rank runs its collectives in the same order; on
                # the CPU stream so a rank waiting for its turn holds no GPU command buffer.
                out = x if stage == lay.rank else mx.zeros((B, L, cfg.hidden_size), self.dtype)
                x = mx.distributed.all_sum(out, group=g, stream=mx.cpu)
                mx.eval(x)
        n = 1 if last_only else L
        if lay.is_last:
            h = x[:, -1:, :] if last_only else x
            logits = self.lm_head(h).astype(self.dtype)
        else:
            logits = mx.zeros((B, n, cfg.vocab_size), self.dtype)
        return mx.distributed.all_sum(logits, group=g, stream=mx.cpu)


def restructure(model: Model, layout: Layout, group: Any) -> None:
    """Change `model`'s modules to what `layout` holds (the parameters are set afterwards)."""
    model.set_fast_path(False)
    object.__setattr__(model, "full_config", model.config)
    if layout.size == 1:
        return
    if layout.strategy == PIPELINE:
        _restructure_pipeline(model, layout, group)
        return
    n = layout.size
    for layer in model.layers:
        attn = layer.self_attn
        attn.n_heads //= n
        attn.n_kv //= n
        _become(
            attn.o_proj,
            {nn.Linear: _SumLinear, nn.QuantizedLinear: _SumQuantizedLinear},
            _group=group,
        )
        _become(layer.mlp, {MLP: ShardedMLP}, _group=group)
    _become(
        model.model.embed_tokens,
        {nn.Embedding: _VocabEmbedding, nn.QuantizedEmbedding: _VocabQuantizedEmbedding},
        _group=group,
        _rank=layout.rank,
    )
    _become(
        model.lm_head,
        {nn.Linear: _GatherLinear, nn.QuantizedLinear: _GatherQuantizedLinear},
        _group=group,
    )


def _restructure_pipeline(model: Model, layout: Layout, group: Any) -> None:
    cfg = model.config
    model.model.layers = model.model.layers[layout.first : layout.stop]
    model.config = replace(
        cfg,
        layer_types=cfg.layer_types[layout.first : layout.stop],
        num_hidden_layers=layout.stop - layout.first,
    )
    if not layout.is_first:
        del model.model["embed_tokens"]
    if not layout.is_last:
        model.model.norm = nn.Identity()  # the next stage gets the un-normed residual stream
        del model["lm_head"]
    model.__class__ = PipelineModel
    object.__setattr__(model, "_group", group)
    object.__setattr__(model, "_layout", layout)


def local_name(name: str, layout: Layout) -> str:
    """A checkpoint parameter name as the restructured model calls it (pipeline layers renumbered)."""
    m = _LAYER_RE.match(name)
    if layout.strategy != PIPELINE or m is None or layout.first == 0:
        return name
    return f"model.layers.{int(m.group(1)) - layout.first}.{name[m.end() :]}"


def apply_params(
    model: Model,
    arrays: dict[str, mx.array],
    expected: dict[str, tuple[int, ...]],
    layout: Layout,
) -> None:
    """Install this rank's parameters (checkpoint names), checking names and shapes."""
    missing = sorted(set(expected) - set(arrays))
    extra = sorted(set(arrays) - set(expected))
    bad = [k for k, v in arrays.items() if k in expected and tuple(v.shape) != expected[k]]
    if missing or extra or bad:
        what = (
            (missing and f"missing {missing[:3]}")
            or (extra and f"unexpected {extra[:3]}")
            or (f"shape of {bad[0]} is {tuple(arrays[bad[0]].shape)}, expected {expected[bad[0]]}")
        )
        raise UserError(f"the checkpoint does not match the sharded model: {what}")
    model.update(tree_unflatten([(local_name(k, layout), v) for k, v in arrays.items()]))


def expected_shapes(full: dict[str, tuple[int, ...]], layout: Layout) -> dict[str, tuple[int, ...]]:
    """Parameter shapes this rank holds, from the full model's."""
    out = {}
    for name, shape in full.items():
        split = param_split(name, layout)
        if split is None:
            continue
        if split.axis is not None:
            axis = split.axis % len(shape)
            shape = (*shape[:axis], shape[axis] // layout.size, *shape[axis + 1 :])
        out[name] = tuple(shape)
    return out


def full_shapes(model: Model) -> dict[str, tuple[int, ...]]:
    return {k: tuple(v.shape) for k, v in tree_flatten(model.parameters())}


def quant_facts(model: Model) -> tuple[int, int]:
    """(group size of the experts, quantization groups along o_proj's input or 0)."""
    layer = model.layers[0]
    o = layer.self_attn.o_proj
    dense = o["scales"].shape[-1] if "scales" in o else 0
    return layer.mlp.experts.down_proj.group_size, dense


def shard_model(model: Model, group: Any, strategy: str = TENSOR) -> Layout:
    """Shard an already loaded full Model in place for this rank of `group`."""
    layout = make_layout(model.config, strategy, group.rank(), group.size())
    gs, dense = quant_facts(model)
    check_layout(model.config, strategy, group.size(), gs, dense)
    full = dict(tree_flatten(model.parameters()))
    want = expected_shapes({k: tuple(v.shape) for k, v in full.items()}, layout)
    arrays = {}
    for name in want:
        split = param_split(name, layout)
        a = mx.contiguous(take_share(full[name], split, layout))
        arrays[name] = a * split.scale if split.scale != 1.0 else a
    restructure(model, layout, group)
    apply_params(model, arrays, want, layout)
    mx.eval(model.parameters())
    return layout
