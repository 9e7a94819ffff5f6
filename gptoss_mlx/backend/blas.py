"""An optimized BLAS for MLX's CPU backend on Linux, loaded before MLX.

The Linux `mlx[cpu]` wheel links the reference BLAS (its `cblas_sgemm` is ~70x slower than
OpenBLAS here). MLX resolves `cblas_*` through the global symbol scope when it is loaded, so an
OpenBLAS opened with RTLD_GLOBAL *before the first `import mlx`* takes its place; after that it is
too late (Python loads extensions with RTLD_NOW). Only an LP64 build fits (32-bit integers,
unsuffixed symbols): numpy's bundled scipy-openblas is ILP64 with suffixed names, so it cannot.

GPTOSS_BLAS=off disables this; GPTOSS_BLAS=/path/to/libopenblas.so.0 picks the library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import platform
import sys
from dataclasses import dataclass
from pathlib import Path

SEARCH = (
    "/usr/lib/{triplet}/openblas-pthread/libopenblas.so.0",
    "/usr/lib/{triplet}/openblas-openmp/libopenblas.so.0",
    "/usr/lib/{triplet}/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
    "/usr/lib64/libopenblasp.so.0",
    "/usr/local/lib/libopenblas.so.0",
)


@dataclass(frozen=True)
class BlasStatus:
    loaded: bool
    path: str | None
    reason: str


_status: BlasStatus | None = None
_lib: ctypes.CDLL | None = None
_threads: int | None = None


def _triplet() -> str:
    machine = platform.machine()
    return {"x86_64": "x86_64-linux-gnu", "aarch64": "aarch64-linux-gnu"}.get(
        machine, f"{machine}-linux-gnu"
    )


def candidates() -> list[str]:
    found = [p.format(triplet=_triplet()) for p in SEARCH]
    found = [p for p in found if Path(p).exists()]
    name = ctypes.util.find_library("openblas")
    if name:
        found.append(name)
    return list(dict.fromkeys(found))


def _config(lib: ctypes.CDLL) -> str:
    try:
        fn = lib.openblas_get_config
    except AttributeError:
        return ""
    fn.restype = ctypes.c_char_p
    return (fn() or b"").decode(errors="replace")


def _open(path: str) -> tuple[ctypes.CDLL | None, str]:
    try:
        lib = ctypes.CDLL(path, mode=ctypes.RTLD_GLOBAL)
    except OSError as e:
        return None, f"cannot load {path}: {e}"
    if not hasattr(lib, "cblas_sgemm"):
        return None, f"{path} has no cblas_sgemm"
    config = _config(lib)
    if "USE64BITINT" in config:
        return None, f"{path} uses 64-bit integers (ILP64); MLX needs an LP64 BLAS"
    return lib, config or "BLAS"


def preload() -> BlasStatus:
    """Load the BLAS (once). Must run before MLX is first imported; reports why not otherwise."""
    global _status
    if _status is not None:
        return _status
    setting = os.environ.get("GPTOSS_BLAS", "").strip()
    if setting.lower() in ("0", "off", "no", "false", "none"):
        _status = BlasStatus(False, None, "disabled by GPTOSS_BLAS=off")
    elif not sys.platform.startswith("linux"):
        _status = BlasStatus(
            False, None, "not Linux: MLX uses the platform BLAS (Accelerate on macOS)"
        )
    elif "mlx.core" in sys.modules:
        _status = BlasStatus(
            False, None, "mlx was imported before gptoss_mlx; MLX keeps its reference BLAS"
        )
    else:
        paths = [setting] if setting else candidates()
        if not paths:
            _status = BlasStatus(
                False, None, "no OpenBLAS found (apt-get install libopenblas0-pthread)"
            )
        else:
            reasons = []
            for path in paths:
                lib, why = _open(path)
                if lib is not None:
                    global _lib
                    _lib, _status = lib, BlasStatus(True, path, why)
                    break
                reasons.append(why)
            else:
                _status = BlasStatus(False, None, "; ".join(reasons))
    return _status


def status() -> BlasStatus:
    return _status or BlasStatus(
        False, None, "not loaded: gptoss_mlx.backend.device.prepare_backend() was not called"
    )


def set_threads(n: int | None) -> None:
    """Threads of the loaded OpenBLAS (None: as many as cores). Decode sets 1: MLX's attention
    then makes hundreds of tiny sgemm calls a token, and waking OpenBLAS's threads for each one
    costs more than the matmuls (measured 5x on the CI machine)."""
    global _threads
    if _lib is None or n == _threads:
        return
    fn = getattr(_lib, "openblas_set_num_threads", None)
    if fn is not None:
        fn(ctypes.c_int(n or os.cpu_count() or 1))
        _threads = n
