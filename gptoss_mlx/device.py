"""Per-device strategy, in one place.

On Metal (Apple GPU) the model runs in bfloat16 with MLX's fused kernels. On the CPU backend
(Linux `mlx[cpu]`, or macOS without Metal) bf16 activations make MLX's quantized matmuls ~11x
slower than float32 ones (measured on this project's CI machine), so float32 is the default.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class DeviceInfo:
    name: str  # "gpu" or "cpu"
    metal: bool
    default_dtype: str
    reason: str


def device_info() -> DeviceInfo:
    import mlx.core as mx

    metal = False
    try:
        metal = bool(mx.metal.is_available())
    except Exception:
        metal = False
    if metal and mx.default_device() == mx.gpu:
        return DeviceInfo("gpu", True, "bfloat16", "Metal GPU: bf16 activations with MLX's fused kernels")
    return DeviceInfo(
        "cpu",
        False,
        "float32",
        "MLX CPU backend: float32 activations (bf16 quantized matmuls are ~11x slower here)",
    )


def default_dtype() -> str:
    return device_info().default_dtype


def activation_bytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2
