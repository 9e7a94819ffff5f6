"""Load a gpt-oss checkpoint (HF MXFP4 as downloaded, our converted dir, or mlx-community layout)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlx.core as mx
import mlx.nn as nn

from ..checkpoint.layout import hf_to_mlx, infer_quant
from ..errors import BadCheckpointError, ModelNotFoundError
from .config import HF_MXFP4, ModelConfig
from .gpt_oss import Model, SwitchLinear

DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16}


def read_weights(path: Path, cfg: ModelConfig) -> dict[str, mx.array]:
    """All tensors, mapped to the model's names (lazily loaded by MLX)."""
    from ..checkpoint.safetensors import ShardedCheckpoint

    weights: dict[str, mx.array] = {}
    hf = cfg.format == HF_MXFP4
    # Checks every shard is there, whole and consistent with the index (one-line errors).
    ckpt = ShardedCheckpoint(path)
    files = [f.path for f in ckpt.files.values()]
    ckpt.close()
    for f in files:
        try:
            tensors = mx.load(str(f))
        except Exception as e:
            raise BadCheckpointError(
                f"cannot read {f.name} ({e}); the file is damaged, re-download it"
            ) from e
        for name, value in tensors.items():
            if hf:
                weights.update(hf_to_mlx(name, value))
            else:
                weights[name] = value
    return weights


def experts_quantization(cfg: ModelConfig, weights: dict[str, mx.array]) -> dict[str, Any]:
    prefix = "model.layers.0.mlp.experts.gate_proj"
    w, s = weights.get(f"{prefix}.weight"), weights.get(f"{prefix}.scales")
    if w is None or s is None:
        raise BadCheckpointError(
            "the experts in this checkpoint are not quantized; convert it with `gptoss convert`"
            if w is not None
            else "no expert weights found (model.layers.0.mlp.experts...); is this a gpt-oss checkpoint?"
        )
    return infer_quant(tuple(w.shape), tuple(s.shape), cfg.hidden_size, str(s.dtype))


def build_model(cfg: ModelConfig, weights: dict[str, mx.array]) -> Model:
    model = Model(cfg, experts_quantization(cfg, weights))

    def predicate(p: str, m: nn.Module) -> bool | dict[str, Any]:
        if isinstance(m, SwitchLinear) or not hasattr(m, "to_quantized"):
            return False
        w, s = weights.get(f"{p}.weight"), weights.get(f"{p}.scales")
        if s is None:
            return False
        in_dims = m.weight.shape[-1]
        return infer_quant(tuple(w.shape), tuple(s.shape), in_dims, str(s.dtype))

    nn.quantize(model, class_predicate=predicate)
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as e:
        raise BadCheckpointError(
            f"weights do not match a gpt-oss model of this config: {str(e)[:300]}"
        ) from e
    return model


def cast_activations(model: Model, dtype: mx.Dtype) -> None:
    """Run activations in `dtype`: cast float parameters used in matmuls; keep packed weights, the
    embedding table (rows are cast when gathered) and, on the CPU fast path, the dense matmul
    weights (device.stored_dtype_params) as stored."""
    from ..backend.device import stored_dtype_params

    model.dtype = dtype
    keep = stored_dtype_params(model, dtype)

    def cast(path: str, a: mx.array) -> mx.array:
        # A quantized embedding's scales and biases are cast so rows dequantize at full precision.
        if (
            not mx.issubdtype(a.dtype, mx.floating)
            or path == "model.embed_tokens.weight"
            or path in keep
        ):
            return a
        return a.astype(dtype)

    from mlx.utils import tree_flatten, tree_unflatten

    params = tree_flatten(model.parameters())
    model.update(tree_unflatten([(k, cast(k, v)) for k, v in params]))


def checked_source(path: Any, dtype: str | None) -> tuple[Path, ModelConfig, str]:
    """The model directory, its config and the activation dtype (this device's default if None),
    or a one-line error for a missing model or an unknown dtype."""
    from ..backend.device import default_dtype

    path = Path(path).expanduser()
    if not path.exists():
        raise ModelNotFoundError(f"no model at {path}; run `gptoss models` to list local models")
    cfg = ModelConfig.from_dir(path)
    dtype = dtype or default_dtype()
    if dtype not in DTYPES:
        raise BadCheckpointError(f"unknown dtype {dtype!r}; use float32 or bfloat16")
    return path, cfg, dtype


def load_model(path: Any, dtype: str | None = None) -> Model:
    path, cfg, dtype = checked_source(path, dtype)
    weights = read_weights(path, cfg)
    model = build_model(cfg, weights)
    del weights
    cast_activations(model, DTYPES[dtype])
    mx.eval(model.parameters())
    model.eval()
    return model
