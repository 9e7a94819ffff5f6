"""Load only this rank's share of a checkpoint: tensors are sliced while they are read.

The model is first built as a skeleton (lazy zeros that are never evaluated), restructured for
the rank (distributed.restructure), then each parameter it holds is read from the safetensors
files as a slice of a memory-mapped view, copied, and the map dropped, so no rank ever holds the
whole model. Both layouts load: the Hugging Face one (experts as interleaved gate_up MXFP4
blocks) and the MLX one (ours, mlx-lm's, mlx-community's).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any, NamedTuple

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from ..checkpoint.layout import EXPERT_RE, gate_up_part, infer_quant
from ..errors import NotEnoughMemoryError
from . import sharding as dist
from .config import HF_MXFP4, ModelConfig
from .gpt_oss import Model, SwitchLinear


class _Meta(NamedTuple):
    shape: tuple[int, ...]
    dtype: str  # safetensors dtype string


class Source(NamedTuple):
    """Where a model parameter comes from in the checkpoint."""

    tensor: str
    interleave: int | None = None  # HF gate_up: 0 = gate (even rows), 1 = up (odd rows)
    blocks: bool = False  # HF MXFP4 blocks uint8 [..., G, 16] -> uint32 [..., G*4]


def _hf_param(name: str, info: Any) -> list[tuple[str, Source, _Meta]]:
    m = EXPERT_RE.match(name)
    shape = tuple(info.shape)
    if m is None:
        return [(name, Source(name), _Meta(shape, info.dtype))]
    prefix, proj, part = m.groups()
    blocks = part == "blocks"
    suffix = {"blocks": "weight", "scales": "scales", "bias": "bias"}[part]
    dtype = "U32" if blocks else info.dtype
    if blocks:
        shape = (*shape[:-2], shape[-2] * 4)
    if proj == "down_proj":
        return [(f"{prefix}.down_proj.{suffix}", Source(name, None, blocks), _Meta(shape, dtype))]
    half = (shape[0], shape[1] // 2, *shape[2:])
    return [
        (f"{prefix}.{p}.{suffix}", Source(name, i, blocks), _Meta(half, dtype))
        for i, p in enumerate(("gate_proj", "up_proj"))
    ]


def param_sources(ckpt: Any, cfg: ModelConfig) -> dict[str, tuple[Source, _Meta]]:
    """Model parameter name -> (its source tensor, full shape and dtype)."""
    out: dict[str, tuple[Source, _Meta]] = {}
    for name in ckpt:
        info = ckpt.info(name)
        if cfg.format == HF_MXFP4:
            for pname, src, meta in _hf_param(name, info):
                out[pname] = (src, meta)
        else:
            out[name] = (Source(name), _Meta(tuple(info.shape), info.dtype))
    return out


def skeleton(cfg: ModelConfig, meta: dict[str, _Meta]) -> Model:
    """The full model with lazy placeholder parameters, quantized like the checkpoint."""
    from .loader import experts_quantization

    model = Model(cfg, experts_quantization(cfg, meta))

    def predicate(p: str, m: nn.Module) -> bool | dict[str, Any]:
        if isinstance(m, SwitchLinear) or not hasattr(m, "to_quantized"):
            return False
        w, s = meta.get(f"{p}.weight"), meta.get(f"{p}.scales")
        if s is None or w is None:
            return False
        return infer_quant(w.shape, s.shape, m.weight.shape[-1], s.dtype)

    nn.quantize(model, class_predicate=predicate)
    return model


def read_share(
    ckpt: Any, src: Source, meta: _Meta, split: dist.Split, layout: dist.Layout
) -> mx.array:
    """Read this rank's slice of one parameter (touching only the bytes a row slice needs)."""
    f, info = ckpt[src.tensor]
    try:
        a = f.get_numpy(src.tensor)
        if split.axis is not None:
            axis = split.axis % len(meta.shape)
            src_axis = a.ndim - 2 if src.blocks and axis == len(meta.shape) - 1 else axis
            # Interleaved gate/up rows: an even split of the source rows is the same split.
            lo, hi = dist.split_range(a.shape[src_axis], layout)
            a = a[(slice(None),) * src_axis + (slice(lo, hi),)]
        if src.interleave is not None:
            a = gate_up_part(a, src.interleave, 1)
        a = np.ascontiguousarray(a)
    finally:
        f.close()  # drop the map: pages touched stay out of this process's memory
    if src.blocks:
        a = a.view(np.uint32).reshape(*a.shape[:-2], -1)
    out = mx.array(a).view(mx.bfloat16) if info.dtype == "BF16" else mx.array(a)
    return out * split.scale if split.scale != 1.0 else out


def rank_bytes(plan: dict[str, tuple[Source, _Meta]], layout: dist.Layout) -> int:
    """Bytes of the parameters this rank holds, as stored."""
    total = 0
    for name, (_src, meta) in plan.items():
        split = dist.param_split(name, layout)
        if split is not None:
            n = int(np.prod(meta.shape, dtype=np.int64))
            per = {"U32": 4, "F32": 4, "U8": 1}.get(meta.dtype, 2)
            total += n * per // (layout.size if split.axis is not None else 1)
    return total


def cast_param(name: str, a: mx.array, dtype: mx.Dtype) -> mx.array:
    """A float parameter in the activation dtype, except the embedding table (rows are cast when
    gathered). Unlike the single-process loader nothing stays bf16 for the CPU fast path, which
    is off when sharded: a mixed-dtype matmul would convert the whole weight on every call."""
    keep = not mx.issubdtype(a.dtype, mx.floating) or name == "model.embed_tokens.weight"
    return a if keep else a.astype(dtype)


def check_rank_memory(need: int, force: bool) -> None:
    from ..units import human_bytes
    from .memory import available_memory

    budget = available_memory()
    if not force and need > budget.bytes:
        raise NotEnoughMemoryError(
            f"this rank needs about {human_bytes(need)} for its share but has "
            f"{human_bytes(budget.bytes)} ({budget.source}); use more ranks or pass --force"
        )


def sharded_load(
    path: Path | str,
    group: Any,
    strategy: str = dist.TENSOR,
    dtype: str | None = None,
    *,
    context: int = 0,
    force: bool = True,
    fallback: bool = False,
) -> tuple[Model, dist.Layout]:
    """Load this rank's share of the checkpoint at `path` for `group` (UserError if it cannot).

    With `fallback` a model that tensor parallelism cannot split is split as a pipeline instead
    (the layout's note says why)."""
    from ..checkpoint.safetensors import ShardedCheckpoint
    from .loader import DTYPES, checked_source

    path, cfg, dtype = checked_source(path, dtype)
    ckpt = ShardedCheckpoint(path)
    plan = param_sources(ckpt, cfg)
    model = skeleton(cfg, {k: m for k, (_s, m) in plan.items()})
    gs, dense = dist.quant_facts(model)
    note = ""
    if fallback:
        strategy, note = dist.settle_strategy(cfg, strategy, group.size(), gs, dense)
    dist.check_layout(cfg, strategy, group.size(), gs, dense)
    layout = replace(dist.make_layout(cfg, strategy, group.rank(), group.size()), note=note)
    want = dist.expected_shapes({k: m.shape for k, (_s, m) in plan.items()}, layout)
    share = (
        layout.size
        if layout.strategy == dist.TENSOR
        else cfg.num_hidden_layers / max(1, layout.stop - layout.first)
    )
    kv = int(cfg.kv_cache_bytes(context, DTYPES[dtype].size) / share) if context else 0
    check_rank_memory(rank_bytes(plan, layout) + kv, force)
    dist.restructure(model, layout, group)
    arrays = {}
    for name in want:
        src, meta = plan[name]
        a = read_share(ckpt, src, meta, dist.param_split(name, layout), layout)
        arrays[name] = cast_param(name, a, DTYPES[dtype])
        mx.eval(arrays[name])  # one tensor at a time: the peak stays near the share
    ckpt.close()
    dist.apply_params(model, arrays, want, layout)
    del arrays
    model.dtype = DTYPES[dtype]
    model.eval()
    # Every rank has its share before anyone computes (and a dead peer shows up here).
    mx.eval(mx.distributed.all_sum(mx.array(1.0), group=group, stream=mx.cpu))
    return model, layout
