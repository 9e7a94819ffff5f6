"""The C kernels of the CPU fast path (kernels.c): built once per machine, loaded with ctypes.

The library is compiled at first use with the system C compiler (`$CC`, else cc/gcc/clang) for
this exact CPU (-march=native) and cached under the user cache dir, keyed by the source, the
compiler and the CPU. No compiler, or a failed build, means no fast path: `load()` then returns
None and `status()` says why. GPTOSS_KERNELS=off disables it.
"""

from __future__ import annotations

import ctypes
import errno
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

SOURCE = Path(__file__).with_name("kernels.c")
FLAGS = ["-O3", "-march=native", "-fPIC", "-shared", "-fno-math-errno"]
F32, BF16 = 0, 1

_f = ctypes.c_float
_i64 = ctypes.c_int64
_i = ctypes.c_int
_p = ctypes.c_void_p

SIGNATURES: dict[str, tuple[type | None, list[type]]] = {
    "gptoss_num_threads": (_i, []),
    "gptoss_simd": (_i, []),
    "gptoss_linear": (None, [_p, _i, _i64, _i64, _p, _i64, _p, _i, _p]),
    "gptoss_bf16_to_f32": (None, [_p, _i64, _p]),
    "gptoss_expert_mxfp4": (
        None,
        [_p, _i64, _i64, _i64, _i64, _p, _p, _p, _p, _p, _p, _p, _p, _p, _i, _f, _f, _p],
    ),
    "gptoss_moe_mxfp4": (
        None,
        [_p, _i64, _i64, _i64, _p, _p, _i64, _p, _p, _p, _p, _p, _p, _p, _p, _p, _i, _f, _f, _p],
    ),
    "gptoss_dequant_mxfp4": (None, [_p, _p, _i64, _i64, _p]),
    "gptoss_swiglu_bias_t": (None, [_p, _i64, _i64, _p, _p, _i64, _i, _f, _f, _p]),
    "gptoss_softmax_sinks": (None, [_p, _i64, _i64, _i64, _i64, _p]),
    "gptoss_attention": (
        None,
        [_p, _p, _p, _i64, _p, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _f, _p],
    ),
}


@dataclass(frozen=True)
class KernelStatus:
    available: bool
    reason: str
    path: str | None = None
    threads: int = 0
    simd: str = ""


def _compiler() -> str | None:
    for name in (os.environ.get("CC"), "cc", "gcc", "clang"):
        if name and shutil.which(name):
            return name
    return None


def _cpu_id() -> str:
    """Model and flags of this CPU: a -march=native build must not be reused on another one."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        lines = [
            ln for ln in text.splitlines() if ln.startswith(("model name", "flags", "Features"))
        ]
        return "\n".join(sorted(set(lines)))
    except OSError:
        return platform.processor() + platform.machine()


def _cache_dir() -> Path:
    from ..paths import cache_dir

    return cache_dir() / "kernels"


def _build(cc: str, directory: Path | None = None) -> Path:
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, check=False).stdout
    key = hashlib.sha256(
        SOURCE.read_bytes() + version.encode() + _cpu_id().encode() + " ".join(FLAGS).encode()
    ).hexdigest()[:16]
    out = (directory or _cache_dir()) / f"gptoss-kernels-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    # OpenMP first; without it (e.g. Apple clang) the kernels still work, on one thread.
    for extra in (["-fopenmp"], []):
        with tempfile.NamedTemporaryFile(dir=out.parent, suffix=".so", delete=False) as tmp:
            tmp_path = Path(tmp.name)
        cmd = [cc, *FLAGS, *extra, str(SOURCE), "-o", str(tmp_path), "-lm"]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode == 0:
            os.replace(tmp_path, out)  # atomic: concurrent builds both succeed
            return out
        tmp_path.unlink(missing_ok=True)
        errors.append(proc.stderr.strip().splitlines()[-1:] or ["failed"])
    raise RuntimeError(f"{cc} could not build the kernels: {errors[-1][0]}")


@cache
def _load() -> tuple[ctypes.CDLL | None, KernelStatus]:
    setting = os.environ.get("GPTOSS_KERNELS", "").strip().lower()
    if setting in ("0", "off", "no", "false"):
        return None, KernelStatus(False, "disabled by GPTOSS_KERNELS")
    if not SOURCE.exists():
        return None, KernelStatus(False, f"kernel source {SOURCE.name} is not installed")
    cc = _compiler()
    if cc is None:
        return None, KernelStatus(False, "no C compiler found (install gcc, or set CC)")
    # Idle OpenMP workers sleep instead of spinning: on a shared or busy machine spinning
    # threads steal the cores the next kernel needs (4x slower gemv measured on the CI machine).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    how = f"built with {cc}"
    try:
        try:
            path = _build(cc)
            lib = ctypes.CDLL(str(path))
        except OSError as e:
            if e.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            # An unwritable cache dir must not silently cost the fast path: build in a
            # temporary folder (removed at once; the loaded library stays mapped) and say so.
            with tempfile.TemporaryDirectory(prefix="gptoss-kernels-") as tmp:
                path = _build(cc, Path(tmp))
                lib = ctypes.CDLL(str(path))
            how += f" at each start: the cache dir {_cache_dir()} is not writable ({e.strerror})"
    except (OSError, RuntimeError) as e:
        return None, KernelStatus(False, f"kernels unavailable: {e}")
    for name, (res, args) in SIGNATURES.items():
        fn = getattr(lib, name)
        fn.restype, fn.argtypes = res, args
    simd = {512: "AVX-512", 256: "AVX2"}.get(lib.gptoss_simd(), "portable C")
    status = KernelStatus(True, how, str(path), lib.gptoss_num_threads(), simd)
    return lib, status


def load() -> ctypes.CDLL | None:
    return _load()[0]


def status() -> KernelStatus:
    return _load()[1]


def ptr(a: np.ndarray | None) -> int | None:
    return None if a is None else a.ctypes.data


def dtype_code(a: np.ndarray) -> int:
    """Our views show bfloat16 as uint16 (numpy has no bfloat16)."""
    if a.dtype == np.float32:
        return F32
    if a.dtype == np.uint16:
        return BF16
    raise TypeError(f"unsupported weight dtype {a.dtype}")


def linear(lib: ctypes.CDLL, w: np.ndarray, x: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
    """x [M, K] f32 @ w [N, K].T (+ bias) -> [M, N] f32; w float32 or bfloat16 (as uint16)."""
    m, k = x.shape
    n = w.shape[0]
    y = np.empty((m, n), dtype=np.float32)
    bcode = dtype_code(bias) if bias is not None else F32
    lib.gptoss_linear(ptr(w), dtype_code(w), n, k, ptr(x), m, ptr(bias), bcode, ptr(y))
    return y


def bf16_to_f32(lib: ctypes.CDLL, a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    out = np.empty(a.shape, dtype=np.float32) if out is None else out
    lib.gptoss_bf16_to_f32(ptr(a), a.size, ptr(out))
    return out


def dequant_mxfp4(lib: ctypes.CDLL, w: np.ndarray, s: np.ndarray, out: np.ndarray) -> np.ndarray:
    """MXFP4 rows (w uint8 [R, K/2], s uint8 [R, K/32]) -> out f32 [R, K]."""
    rows, k = out.shape
    lib.gptoss_dequant_mxfp4(ptr(w), ptr(s), rows, k, ptr(out))
    return out


def softmax_sinks(
    lib: ctypes.CDLL, scores: np.ndarray, last0: int, sinks: np.ndarray
) -> np.ndarray:
    """Attention scores [G, L, n] (f32, contiguous) -> probabilities in place: query i sees
    keys 0..last0 + i, head g's sink sinks[g] joins each row's denominator."""
    g, rows, n = scores.shape
    lib.gptoss_softmax_sinks(ptr(scores), g, rows, n, last0, ptr(sinks))
    return scores
