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


@pytest.mark.parametrize("bf16", [False, True], ids=["f32", "bf16"])
def test_linear(lib, bf16):
    rng = np.random.default_rng(0)
    for m in (1, 3):
        w = rng.standard_normal((37, 100)).astype(np.float32)  # 100: a vector tail
        x = rng.standard_normal((m, 100)).astype(np.float32)
        ref = x.astype(np.float64) @ w.T.astype(np.float64)
        if bf16:
            bits = (w.view(np.uint32) >> 16).astype(np.uint16)
            ref = x.astype(np.float64) @ (bits.astype(np.uint32) << 16).view(np.float32).T
            w = bits
        np.testing.assert_allclose(ck.linear(lib, w, x, None), ref, rtol=1e-5, atol=1e-4)


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
    from gptoss_mlx.model.gpt_oss import _window_mask

    keys = mx.random.split(mx.random.key(L + S + window), 4)
    q = mx.random.normal((1, 64, L, 64), key=keys[0])
    k = mx.random.normal((1, 8, S, 64), key=keys[1])
    v = mx.random.normal((1, 8, S, 64), key=keys[2])
    sinks = mx.random.normal((64,), key=keys[3])
    mask = _window_mask(L, S - L, window) if window else ("causal" if L > 1 else None)
    ref = mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, mask=mask, sinks=sinks)
    ref = np.array(ref.transpose(0, 2, 1, 3).reshape(1, L, -1))
    got = np.array(CpuFastPath(lib).attention(q, k, v, sinks, 0.125, 1000, window))
    np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-5)
