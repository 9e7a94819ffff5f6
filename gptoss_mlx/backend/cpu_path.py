"""The CPU fast path: the model's matmuls outside MLX, on zero-copy numpy views of its weights.

MLX's CPU backend has no fast quantized kernels (gather_qmm) and its float32 gemv runs far below
memory bandwidth, so on the CPU backend the big matmuls go here (device.py decides when):

- few rows (decode): our C kernels read the weights as stored (float32 or bfloat16 dense,
  MXFP4 experts) once per step, at memory bandwidth;
- many rows (prefill): BLAS (numpy's) in float32; experts are grouped by token, and each expert
  hit by enough tokens is dequantized once per chunk and run as one matmul.

Everything is float32 arithmetic; the rest of the model (norms, RoPE, attention, routing) stays
in MLX. These calls evaluate their inputs, so a forward pass through them runs eagerly.
"""

from __future__ import annotations

import ctypes

import mlx.core as mx
import mlx.nn as nn
import numpy as np

from . import blas
from . import kernels as ck

# Up to this many rows the C kernels (which read the weights once per 8 rows) beat BLAS.
GEMV_MAX_ROWS = 8
# An expert hit by fewer tokens runs on its MXFP4 weights directly (cost grows with the tokens);
# from this many on it is dequantized once and run through BLAS (fixed cost, then cheap per
# token). Crossover measured at 24-32 tokens on the CI machine (scripts/bench.py --micro).
DEQUANT_MIN_TOKENS = 32
# bfloat16 weights go through BLAS in float32 slabs of this many rows (bounded scratch memory).
SLAB_ROWS = 8192
# From this many queries on (a prefill chunk) full attention's scores and outputs are BLAS
# matmuls, in blocks of queries whose scores take at most this many floats (16 MB: bounded
# scratch, and 1.2x faster than 64 MB blocks): 1.6x the C kernel (AVX2) at 465 queries over
# 4,683 keys, 2.1x at 64 over 4,000. Sliding-window layers stay in C (most keys are outside the
# window: BLAS was 0.6x there).
BLAS_ATTENTION_MIN_QUERIES = 64
ATTENTION_BLOCK_FLOATS = 1 << 22


def as_numpy(a: mx.array) -> np.ndarray:
    """Zero-copy view of an evaluated MLX array (bfloat16 shows as uint16)."""
    if a.dtype == mx.bfloat16:
        a = a.view(mx.uint16)
    mx.eval(a)
    return np.asarray(a)


def _contiguous_f32(x: mx.array) -> np.ndarray:
    if x.dtype != mx.float32:
        x = x.astype(mx.float32)
    return np.ascontiguousarray(as_numpy(x))


def _row_f32(a: np.ndarray) -> np.ndarray:
    return (a.astype(np.uint32) << 16).view(np.float32) if a.dtype == np.uint16 else a


class _Views:
    """numpy views of one module's parameters, rebuilt if the module's arrays are replaced."""

    def __init__(self) -> None:
        self._cache: dict[int, tuple[list[mx.array], list[np.ndarray | None]]] = {}

    def get(self, module: nn.Module, names: tuple[str, ...]) -> list[np.ndarray | None]:
        arrays = [module.get(n) for n in names]
        hit = self._cache.get(id(module))
        if hit is not None and all(a is b for a, b in zip(hit[0], arrays, strict=True)):
            return hit[1]
        views = [None if a is None else as_numpy(a) for a in arrays]
        for v in views:
            if v is not None and not v.flags.c_contiguous:
                raise ValueError("the CPU fast path needs row-contiguous weights")
        self._cache[id(module)] = (arrays, views)
        return views


class CpuFastPath:
    def __init__(self, lib: ctypes.CDLL):
        self.lib = lib
        self.views = _Views()
        self._scratch: dict[str, np.ndarray] = {}

    def begin(self, tokens: int) -> None:
        """Called before each forward pass of `tokens` positions."""
        blas.set_threads(1 if tokens <= GEMV_MAX_ROWS else None)

    def _buffer(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        buf = self._scratch.get(name)
        if buf is None or buf.size < int(np.prod(shape)):
            buf = self._scratch[name] = np.empty(shape, dtype=np.float32)
        return buf.reshape(-1)[: int(np.prod(shape))].reshape(shape)

    # -- dense layers ----------------------------------------------------------------------

    @staticmethod
    def supports_linear(module: nn.Module) -> bool:
        w = module.get("weight") if isinstance(module, nn.Linear) else None
        return (
            w is not None
            and "scales" not in module
            and w.dtype in (mx.float32, mx.bfloat16)
            and w.ndim == 2
        )

    def linear(self, module: nn.Module, x: mx.array) -> mx.array:
        if not self.supports_linear(module):
            return module(x)
        w, b = self.views.get(module, ("weight", "bias"))
        lead = x.shape[:-1]
        xn = _contiguous_f32(x).reshape(-1, x.shape[-1])
        y = self.matmul_t(w, xn, b)
        return mx.array(y).reshape(*lead, w.shape[0])

    def matmul_t(self, w: np.ndarray, x: np.ndarray, bias: np.ndarray | None) -> np.ndarray:
        """x [M, K] @ w[N, K].T + bias, float32 out."""
        if x.shape[0] <= GEMV_MAX_ROWS:
            return ck.linear(self.lib, w, x, bias)
        if w.dtype == np.float32:
            y = x @ w.T
        else:
            y = np.empty((x.shape[0], w.shape[0]), dtype=np.float32)
            for r0 in range(0, w.shape[0], SLAB_ROWS):
                slab = w[r0 : r0 + SLAB_ROWS]
                wf = ck.bf16_to_f32(self.lib, slab, self._buffer("slab", slab.shape))
                np.matmul(x, wf.T, out=y[:, r0 : r0 + slab.shape[0]])
        if bias is not None:
            y += _row_f32(bias)
        return y

    # -- attention -------------------------------------------------------------------------

    def attention(
        self,
        q: mx.array,
        k: mx.array,
        v: mx.array,
        sinks: mx.array,
        scale: float,
        q_start: int,
        window: int,
    ) -> mx.array:
        """Causal attention with sinks (and a sliding window if window > 0) -> [B, L, H * D].

        q [B, H, L, D] at positions q_start..; k, v [B, KV, S, D] hold the keys of positions
        q_start + L - S .. q_start + L - 1 (what the caches return)."""
        B, H, L, D = q.shape
        KV, S = k.shape[1], k.shape[2]
        qn = _contiguous_f32(q)
        kn, vn = (self._kv_rows(a) for a in (k, v))
        sn = np.ascontiguousarray(as_numpy(sinks.astype(mx.float32)))
        out = np.empty((B, L, H, D), dtype=np.float32)
        k_start = q_start + L - S
        if L >= BLAS_ATTENTION_MIN_QUERIES and window == 0:
            for b in range(B):
                _blas_attention(self.lib, qn[b], kn[b], vn[b], sn, scale, q_start, k_start, out[b])
            return mx.array(out).reshape(B, L, H * D)
        for b in range(B):
            self.lib.gptoss_attention(
                ck.ptr(qn[b]), ck.ptr(kn[b]), ck.ptr(vn[b]), kn.strides[1] // 4, ck.ptr(sn),
                H, KV, L, S, D, q_start, k_start, window, scale, ck.ptr(out[b]),
            )  # fmt: skip
        return mx.array(out).reshape(B, L, H * D)

    @staticmethod
    def _kv_rows(a: mx.array) -> np.ndarray:
        """A cache slice as numpy without copying when each head's [S, D] rows are contiguous."""
        n = as_numpy(a if a.dtype == mx.float32 else a.astype(mx.float32))
        if n.strides[3] != 4 or n.strides[2] != 4 * n.shape[3]:
            n = np.ascontiguousarray(n)
        return n

    # -- experts ---------------------------------------------------------------------------

    @staticmethod
    def supports_experts(experts: nn.Module) -> bool:
        projs = (experts.gate_proj, experts.up_proj, experts.down_proj)
        return (
            all(
                p.mode == "mxfp4"
                and p.bits == 4
                and p.group_size == 32
                and p.bias.dtype in (mx.float32, mx.bfloat16)
                for p in projs
            )
            and len({p.bias.dtype for p in projs}) == 1
        )

    def _expert_views(self, experts: nn.Module) -> list[np.ndarray]:
        out = []
        for p in (experts.gate_proj, experts.up_proj, experts.down_proj):
            w, s, b = self.views.get(p, ("weight", "scales", "bias"))
            out += [w.view(np.uint8), s, b]
        return out

    def moe(self, mlp: nn.Module, x: mx.array) -> mx.array:
        """The MLP block (router + experts + weighted sum) on x [..., H]."""
        experts = mlp.experts
        shape = x.shape
        x2 = x.reshape(-1, shape[-1])
        idx, gates = mlp.route(x2)
        if not self.supports_experts(experts):
            y = experts(x2, idx)
            return (y * gates[..., None]).sum(axis=-2).reshape(shape)
        xn = _contiguous_f32(x2)
        idx_n = as_numpy(idx).astype(np.int32)
        gates_n = np.ascontiguousarray(as_numpy(gates.astype(mx.float32)))
        wg, sg, bg, wu, su, bu, wd, sd, bd = self._expert_views(experts)
        n, h = xn.shape
        inter = experts.gate_proj.weight.shape[1]
        bcode = ck.dtype_code(bg)
        alpha, limit = float(experts._alpha), float(experts._limit)
        p = ck.ptr
        if n == 1:  # decode: one pass over the token's k experts
            y = np.empty_like(xn)
            self.lib.gptoss_moe_mxfp4(
                p(xn), n, h, inter, p(idx_n), p(gates_n), idx_n.shape[1],
                p(wg), p(sg), p(bg), p(wu), p(su), p(bu), p(wd), p(sd), p(bd), bcode, alpha, limit, p(y),
            )  # fmt: skip
            return mx.array(y).reshape(shape)
        y = np.zeros_like(xn)
        k = idx_n.shape[1]
        flat = idx_n.reshape(-1)
        order = np.argsort(flat, kind="stable")
        starts = np.flatnonzero(np.diff(flat[order])) + 1
        for seg in np.split(order, starts):
            e = int(flat[seg[0]])
            tok = seg // k
            xe = np.ascontiguousarray(xn[tok])
            if len(tok) < DEQUANT_MIN_TOKENS:
                d = np.empty_like(xe)
                self.lib.gptoss_expert_mxfp4(
                    p(xe), len(tok), h, inter, e,
                    p(wg), p(sg), p(bg), p(wu), p(su), p(bu), p(wd), p(sd), p(bd), bcode, alpha, limit, p(d),
                )  # fmt: skip
            else:
                # Weight rows as BLAS's long dimension (W @ X.T) runs ~2x faster than X @ W.T.
                wgu = self._buffer("gate_up", (2 * inter, h))
                ck.dequant_mxfp4(self.lib, wg[e], sg[e], wgu[:inter])
                ck.dequant_mxfp4(self.lib, wu[e], su[e], wgu[inter:])
                gu_t = wgu @ xe.T
                hid_t = np.empty((inter, len(tok)), dtype=np.float32)
                self.lib.gptoss_swiglu_bias_t(
                    p(gu_t), len(tok), inter, p(bg), p(bu), e, bcode, alpha, limit, p(hid_t)
                )
                wdn = ck.dequant_mxfp4(self.lib, wd[e], sd[e], self._buffer("down", (h, inter)))
                d = (wdn @ hid_t).T
                d += _row_f32(bd[e])
            y[tok] += gates_n.reshape(-1)[seg][:, None] * d
        return mx.array(y).reshape(shape)


def _blas_attention(
    lib: ctypes.CDLL,
    q: np.ndarray,
    k: np.ndarray,
    v: np.ndarray,
    sinks: np.ndarray,
    scale: float,
    q_start: int,
    k_start: int,
    out: np.ndarray,
) -> None:
    """Causal attention with sinks for many queries through BLAS: q [H, L, D], k and v
    [KV, S, D] -> out [L, H, D]. Per block of queries and KV head, its query heads' scores are
    one [G*L, D] x [D, S] matmul, turned into probabilities in place by a C kernel (mask, sink,
    softmax; both cores), then one matmul with V."""
    H, L, D = q.shape
    KV, S = k.shape[0], k.shape[1]
    rep = H // KV
    block = max(1, min(L, ATTENTION_BLOCK_FLOATS // max(1, rep * S)))
    for i0 in range(0, L, block):
        i1 = min(L, i0 + block)
        last0 = q_start + i0 - k_start  # the last key the block's first query sees
        hi = q_start + i1 - k_start  # keys after the block's last query: unseen
        for kh in range(KV):
            heads = slice(kh * rep, (kh + 1) * rep)
            qb = q[heads, i0:i1].reshape(-1, D) * np.float32(scale)
            scores = (qb @ k[kh, :hi].T).reshape(rep, i1 - i0, hi)
            ck.softmax_sinks(lib, scores, last0, sinks[heads])
            o = (scores.reshape(-1, hi) @ v[kh, :hi]).reshape(rep, i1 - i0, D)
            out[i0:i1, heads] = o.transpose(1, 0, 2)
