"""Every SIMD level of the C kernels gives the reference numbers, not only the one this CPU picks.

The product builds kernels.c with -march=native, so a machine runs one of its paths (AVX-512,
AVX2+FMA or portable C) and the others would go untested. Here the source is also built with the
wider instruction sets switched off, and each build's kernels are checked against numpy and
plain MLX (the native build too; test_perf_paths.py checks it in the model).
"""

from __future__ import annotations

import ctypes
import subprocess

import mlx.core as mx
import numpy as np
import pytest

from gptoss_mlx.backend import device
from gptoss_mlx.backend import kernels as ck
from gptoss_mlx.backend.cpu_path import CpuFastPath
from gptoss_mlx.model.loader import load_model

from .reference import rel_max_err
from .test_perf_paths import check_attention, check_linear

NATIVE = None if device.device_info().metal else ck.load()
# The wider paths switched off one by one; a level this CPU cannot run is skipped.
LEVELS = {
    "native": [],  # the library the product loads
    "avx2": ["-mno-avx512f"],
    "portable": ["-mno-avx512f", "-mno-avx2", "-mno-fma"],
}
EXPECTED_SIMD = {"avx2": 256, "portable": 0}

pytestmark = pytest.mark.skipif(NATIVE is None, reason="no CPU kernels on this machine")


@pytest.fixture(scope="module", params=list(LEVELS))
def lib(request, tmp_path_factory) -> ctypes.CDLL:
    if request.param == "native":
        return NATIVE
    cc = ck._compiler()
    out = tmp_path_factory.mktemp("kernels") / f"kernels-{request.param}.so"
    cmd = [cc, *ck.FLAGS, *LEVELS[request.param], "-fopenmp", str(ck.SOURCE), "-o", str(out), "-lm"]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        pytest.skip(f"{request.param}: {cc} cannot build it here ({proc.stderr.strip()[-200:]})")
    built = ctypes.CDLL(str(out))
    for name, (res, args) in ck.SIGNATURES.items():
        fn = getattr(built, name)
        fn.restype, fn.argtypes = res, args
    simd = built.gptoss_simd()
    if simd != EXPECTED_SIMD[request.param]:
        pytest.skip(f"{request.param}: this CPU does not have it (the build uses {simd})")
    return built


@pytest.fixture(scope="module")
def model(tiny_checkpoint):
    return load_model(tiny_checkpoint, dtype="float32")


@pytest.mark.parametrize("m", [1, 3])
@pytest.mark.parametrize("bf16", [False, True], ids=["f32", "bf16"])
def test_linear(lib, m, bf16):
    check_linear(lib, 100, m, bf16)  # 100: a vector tail at every width


def test_dequant(lib):
    w = mx.random.normal((64, 256), key=mx.random.key(0)) * 0.05
    q, s = mx.quantize(w, group_size=32, bits=4, mode="mxfp4")
    ref = np.array(mx.dequantize(q, s, group_size=32, bits=4, mode="mxfp4", dtype=mx.float32))
    out = np.empty((64, 256), dtype=np.float32)
    ck.dequant_mxfp4(lib, np.array(q).view(np.uint8), np.array(s), out)
    np.testing.assert_array_equal(out, ref)


@pytest.mark.parametrize("n", [1, 3, 11])  # decode kernel; one expert's few tokens; > 8 tokens
def test_experts(lib, model, monkeypatch, n):
    from gptoss_mlx.backend import cpu_path

    monkeypatch.setattr(cpu_path, "DEQUANT_MIN_TOKENS", 10**9)  # every expert in C
    mlp = model.layers[1].mlp
    x = mx.random.normal((1, n, model.config.hidden_size), key=mx.random.key(n))
    mlp._fast = None
    ref = np.array(mlp(x))
    mlp._fast = CpuFastPath(lib)
    try:
        got = np.array(mlp(x))
    finally:
        mlp._fast = None
    assert rel_max_err(got, ref) <= 1e-5


@pytest.mark.parametrize(
    ("L", "S", "window"),
    [(1, 300, 0), (1, 300, 128), (40, 167, 128), (5, 9, 0), (200, 700, 0)],
)
def test_attention(lib, L, S, window):
    check_attention(lib, L, S, window)
