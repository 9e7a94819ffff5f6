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
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

# Tokens per prefill step: mlx-lm's 2048 on Metal (fuller expert matmuls, fewer KV-growth copies);
# 512 suits the CPU fast path (experts dequantized per chunk, attention scores materialised).
PREFILL_CHUNK_CPU = 512
PREFILL_CHUNK_METAL = 2048


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


def prefill_chunk(metal: bool | None = None) -> int:
    """Prefill chunk for this device (or for `metal` if given); memory.py estimates with it."""
    metal = device_info().metal if metal is None else metal
    return PREFILL_CHUNK_METAL if metal else PREFILL_CHUNK_CPU


def metal_working_set_limit() -> int | None:
    """Metal's max_recommended_working_set_size, or None off Metal."""
    if not device_info().metal:
        return None
    import mlx.core as mx

    info_fn = getattr(mx, "device_info", None) or mx.metal.device_info
    try:
        value = info_fn().get("max_recommended_working_set_size")
    except Exception:
        return None
    return int(value) if value else None


@contextmanager
def wired_limit() -> Iterator[None]:
    """While generating on Metal, let MLX wire up to the working-set limit (as mlx-lm does), so
    the weights stay resident instead of being paged or compressed; the old limit comes back after,
    also on an exception. A no-op off Metal."""
    limit = metal_working_set_limit()
    if not limit:
        yield
        return
    import mlx.core as mx

    old = mx.set_wired_limit(limit)
    try:
        yield
    finally:
        mx.synchronize()
        mx.set_wired_limit(old)


def default_dtype() -> str:
    return device_info().default_dtype


def dtype_nbytes(dtype: str) -> int:
    return 4 if dtype == "float32" else 2


def cpu_fast_path(dtype: Any) -> tuple[Any, str]:
    """(CpuFastPath, reason) if a model with these activations should use it, else (None, reason)."""
    import mlx.core as mx

    info = device_info()
    if info.metal:
        return None, "Metal GPU: MLX's fused kernels (gather_qmm), bf16"
    if dtype != mx.float32:
        return None, f"{dtype} activations requested: plain MLX (the fast path computes in float32)"
    from . import kernels as cpu_kernels

    lib = cpu_kernels.load()
    if lib is None:
        return None, f"plain MLX: {cpu_kernels.status().reason}"
    from .cpu_path import CpuFastPath

    return CpuFastPath(
        lib
    ), "CPU fast path: C kernels for decode, BLAS (experts dequantized per chunk) for prefill"


def keeps_dense_weights_stored(dtype: str) -> bool:
    """Whether the loader keeps float dense matmul weights as stored instead of casting them to
    the activation dtype `dtype`: on the CPU fast path our kernels read bf16 directly (the same
    numbers at half the bytes per token and half the memory); MLX's own matmuls want one dtype."""
    if dtype != "float32" or device_info().metal:
        return False
    from . import kernels as cpu_kernels

    return cpu_kernels.load() is not None


def stored_dtype_params(model: Any, dtype: Any) -> set[str]:
    """Parameters the loader keeps as stored instead of casting to `dtype` (an mx.Dtype)."""
    import mlx.core as mx

    if dtype != mx.float32 or not keeps_dense_weights_stored("float32"):
        return set()
    from ..checkpoint.layout import is_dense_matmul_weight
    from .cpu_path import CpuFastPath

    return {
        f"{name}.weight"
        for name, module in model.named_modules()
        if is_dense_matmul_weight(f"{name}.weight") and CpuFastPath.supports_linear(module)
    }


def backend_report() -> list[tuple[str, str, str]]:
    """Which compute path is active and why: (row, status, detail) rows for `gptoss doctor`,
    status "ok", "warn" (slower than it could be, with the fix) or "info"."""
    import mlx.core as mx

    from . import blas
    from . import kernels as cpu_kernels

    info = device_info()
    rows = [("compute path", "ok" if info.metal else "info", f"{info.name}: {info.reason}")]
    if info.metal:
        return rows + [
            ("blas", "ok", "Accelerate (macOS)"),
            ("experts", "ok", "mx.gather_qmm (fused MXFP4 kernels), bf16 activations"),
        ]
    b = blas.status()
    if b.loaded:
        rows.append(("blas", "ok", f"{b.path} ({b.reason.split(' ')[0]})"))
    else:
        rows.append(("blas", "warn", f"MLX's bundled reference BLAS (slow): {b.reason}"))
    k = cpu_kernels.status()
    fast, why = cpu_fast_path(mx.float32)
    if k.available and "not writable" in k.reason:  # rebuilt at every start: say why, once
        rows.append(("kernels", "warn", f"{k.simd}, {k.threads} threads, {k.reason}"))
    elif k.available:
        rows.append(("kernels", "ok", f"{k.simd}, {k.threads} threads, {k.path}"))
    else:
        rows.append(("kernels", "warn", f"{k.reason}; decode and prefill run in plain MLX"))
    if fast is not None:
        rows += [
            ("fast path", "ok", why),
            ("decode", "info", "C kernels: dense gemv on stored bf16 weights, MXFP4 experts read directly"),
            ("prefill", "info", "BLAS in float32; experts hit by many tokens dequantized once per chunk"),
            ("dense weights", "info", "kept as stored (bf16): half the memory of float32 copies"),
        ]  # fmt: skip
    else:
        rows.append(("fast path", "warn", why))
    return rows
