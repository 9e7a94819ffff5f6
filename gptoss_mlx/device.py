"""Per-device strategy, in one place.

- Metal (Apple GPU): bfloat16 activations with MLX's fused kernels (gather_qmm for the experts);
  no BLAS loading (macOS MLX uses Accelerate) and no CPU kernels.
- CPU backend (Linux `mlx[cpu]`, or macOS without Metal): float32 activations (MLX's bf16
  quantized matmuls are ~11x slower here), an optimized BLAS loaded before MLX (blas.py), and the
  CPU fast path (cpu_path.py): our C kernels for decode (bf16/f32 gemv, MXFP4 experts read
  directly), BLAS for prefill (experts dequantized once per chunk).

`prepare_backend()` must run before the first `import mlx` (gptoss_mlx/__init__.py calls it);
`backend_report()` says which path is active and why (for `gptoss doctor`).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class DeviceInfo:
    name: str  # "gpu" or "cpu"
    metal: bool
    default_dtype: str
    reason: str


def _metal_possible() -> bool:
    """Without importing mlx: could this be the Metal backend?"""
    return sys.platform == "darwin" and os.uname().machine == "arm64"


def prepare_backend() -> Any:
    """Load an optimized BLAS for MLX's CPU backend; call before anything imports mlx.

    Cheap (one dlopen), and a no-op on Apple Silicon, off Linux, with GPTOSS_BLAS=off, or once
    mlx is already imported (then the report says so).
    """
    from . import blas

    if _metal_possible():
        return blas.BlasStatus(False, None, "Apple Silicon: MLX uses Metal and Accelerate")
    return blas.preload()


def device_info() -> DeviceInfo:
    import mlx.core as mx

    metal = False
    try:
        metal = bool(mx.metal.is_available())
    except Exception:
        metal = False
    if metal and mx.default_device() == mx.gpu:
        return DeviceInfo(
            "gpu", True, "bfloat16", "Metal GPU: bf16 activations with MLX's fused kernels"
        )
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


def cpu_fast_path(dtype: Any) -> tuple[Any, str]:
    """(CpuFastPath, reason) if a model with these activations should use it, else (None, reason)."""
    import mlx.core as mx

    info = device_info()
    if info.metal:
        return None, "Metal GPU: MLX's fused kernels (gather_qmm), bf16"
    if dtype != mx.float32:
        return None, f"{dtype} activations requested: plain MLX (the fast path computes in float32)"
    from . import cpu_kernels

    lib = cpu_kernels.load()
    if lib is None:
        return None, f"plain MLX: {cpu_kernels.status().reason}"
    from .cpu_path import CpuFastPath

    return CpuFastPath(
        lib
    ), "CPU fast path: C kernels for decode, BLAS (experts dequantized per chunk) for prefill"


def stored_dtype_params(model: Any, dtype: Any) -> set[str]:
    """Parameters the loader should keep as stored (bf16) instead of casting to `dtype`.

    On the CPU fast path the dense matmul weights (attention projections, lm_head) are read by
    our kernels as stored, in float32 arithmetic: the same numbers at half the bytes per token
    and half the memory. Anywhere else: none (MLX's own matmuls want one dtype).
    """
    fast, _ = cpu_fast_path(dtype)
    if fast is None:
        return set()
    dense = ("q_proj", "k_proj", "v_proj", "o_proj", "lm_head")
    return {
        f"{name}.weight"
        for name, module in model.named_modules()
        if name.endswith(dense) and fast.supports_linear(module)
    }


def backend_report() -> dict[str, str]:
    """Which path is active and why, one line each (for `gptoss doctor`)."""
    from . import blas, cpu_kernels

    info = device_info()
    report = {"device": f"{info.name}: {info.reason}", "dtype": info.default_dtype}
    if info.metal:
        report["blas"] = "Accelerate (macOS)"
        report["experts"] = "mx.gather_qmm (fused MXFP4 kernels)"
        return report
    b = blas.status()
    report["blas"] = (
        f"{b.path} ({b.reason})" if b.loaded else f"MLX's bundled reference BLAS: {b.reason}"
    )
    k = cpu_kernels.status()
    if k.available:
        report["kernels"] = f"{k.simd}, {k.threads} threads, {k.path}"
        report["decode"] = (
            "C kernels: dense gemv on stored bf16/f32 weights, MXFP4 experts read directly"
        )
        report["prefill"] = "numpy BLAS float32; experts dequantized once per chunk"
    else:
        report["kernels"] = f"unavailable: {k.reason}"
        report["decode"] = report["prefill"] = "plain MLX (mx.gather_qmm)"
    return report
