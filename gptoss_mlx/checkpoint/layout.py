"""The one place that maps checkpoint tensor names and layouts to the model's parameters.

Two layouts exist:
- Hugging Face (openai/gpt-oss-*): experts as `mlp.experts.gate_up_proj_{blocks,scales,bias}`
  (MXFP4 blocks uint8 [E, 2I, H/32, 16], E8M0 scales [E, 2I, H/32], rows interleaving gate and
  up) and `mlp.experts.down_proj_{blocks,scales,bias}`; everything else bf16.
- MLX (ours, `mlx_lm.convert`'s, mlx-community's): experts split into
  `mlp.experts.{gate,up,down}_proj.{weight,scales[,biases],bias}` with packed uint32 weights,
  and any other layer optionally quantized (`.scales`/`.biases` beside `.weight`).
The functions here work on numpy arrays and on mlx arrays alike.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import numpy as np

EXPERT_RE = re.compile(
    r"^(model\.layers\.\d+\.mlp\.experts)\.(gate_up_proj|down_proj)_(blocks|scales|bias)$"
)
MLX_EXPERT_RE = re.compile(
    r"^model\.layers\.\d+\.mlp\.experts\.(gate|up|down)_proj\.(weight|scales|biases|bias)$"
)
ROUTER_RE = re.compile(r"^model\.layers\.\d+\.mlp\.router$")


def _view_u32(a: Any) -> Any:
    """uint8 [..., G, 16] -> uint32 [..., G*4] (little-endian, as MLX packs 4-bit values)."""
    if hasattr(a, "view") and type(a).__module__.startswith("numpy"):
        import numpy as np

        a = np.ascontiguousarray(a).view(np.uint32)
        return a.reshape(*a.shape[:-2], -1)
    import mlx.core as mx

    return a.view(mx.uint32).flatten(-2)


def _contiguous(a: Any) -> Any:
    if type(a).__module__.startswith("numpy"):
        import numpy as np

        return np.ascontiguousarray(a)
    import mlx.core as mx

    return mx.contiguous(a)


def is_hf_expert(name: str) -> bool:
    return EXPERT_RE.match(name) is not None


def is_mlx_expert(name: str) -> bool:
    return MLX_EXPERT_RE.match(name) is not None


def hf_to_mlx(name: str, value: Any) -> Iterator[tuple[str, Any]]:
    """Map one Hugging Face tensor to the MLX parameter(s) it becomes."""
    m = EXPERT_RE.match(name)
    if m is None:
        yield name, value
        return
    prefix, proj, part = m.groups()
    if part == "blocks":
        value, suffix = _view_u32(value), "weight"
    elif part == "scales":
        suffix = "scales"
    else:
        suffix = "bias"
    if proj == "down_proj":
        yield f"{prefix}.down_proj.{suffix}", value
        return
    axis = -1 if part == "bias" else -2
    yield f"{prefix}.gate_proj.{suffix}", _contiguous(gate_up_part(value, GATE, axis))
    yield f"{prefix}.up_proj.{suffix}", _contiguous(gate_up_part(value, UP, axis))


GATE, UP = 0, 1  # the two halves of the HF `gate_up_proj`


def gate_up_part(value: np.ndarray, part: int, axis: int) -> np.ndarray:
    """GATE or UP of an HF `gate_up_proj` tensor, whose rows along `axis` alternate gate, up."""
    index = [slice(None)] * value.ndim
    index[axis] = slice(part, None, 2)
    return value[tuple(index)]


def interleave_gate_up(gate: np.ndarray, up: np.ndarray, axis: int) -> np.ndarray:
    """The HF layout from separate gate and up tensors (the inverse of gate_up_part)."""
    out = np.empty_like(np.concatenate([gate, up], axis=axis))
    index = [slice(None)] * out.ndim
    for part, value in ((GATE, gate), (UP, up)):
        index[axis] = slice(part, None, 2)
        out[tuple(index)] = value
    return out


def infer_quant(
    weight_shape: tuple[int, ...], scales_shape: tuple[int, ...], in_dims: int, scales_dtype: str
) -> dict[str, Any]:
    """Bits, group size and mode of a packed matrix, from its shapes and the scales' dtype.

    Same rule as mlx-lm: only affine keeps float scales; the microscaling modes (uint8 scales)
    each allow exactly one (bits, group_size) pair.
    """
    bits = weight_shape[-1] * 32 // in_dims
    group_size = in_dims // scales_shape[-1]
    if "uint8" not in scales_dtype and scales_dtype != "U8":
        return {"group_size": group_size, "bits": bits, "mode": "affine"}
    modes = {(4, 32): "mxfp4", (8, 32): "mxfp8", (4, 16): "nvfp4"}
    if (bits, group_size) not in modes:
        from ..errors import BadCheckpointError

        raise BadCheckpointError(
            f"cannot tell the quantization of {bits}-bit weights with group size {group_size}"
        )
    return {"group_size": group_size, "bits": bits, "mode": modes[(bits, group_size)]}


# Dense matmul weights the CPU fast path reads as stored (bf16) with float32 arithmetic.
DENSE_MATMULS = ("q_proj", "k_proj", "v_proj", "o_proj", "lm_head")


def is_dense_matmul_weight(name: str) -> bool:
    """Checkpoint or model parameter name of a dense matmul weight (same in both layouts)."""
    return name.endswith(tuple(f"{d}.weight" for d in DENSE_MATMULS))
