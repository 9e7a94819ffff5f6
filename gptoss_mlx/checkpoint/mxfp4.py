"""MXFP4 (OCP Microscaling, FP4 E2M1 elements with a shared E8M0 scale per 32 values) in numpy.

Layout is the Hugging Face gpt-oss one: `blocks` uint8 [..., G, 16] holds 32 FP4 codes per group,
two per byte with the LOW nibble first; `scales` uint8 [..., G] holds the biased exponents.
"""

from __future__ import annotations

import numpy as np

GROUP_SIZE = 32
E8M0_BIAS = 127

FP4_VALUES = np.array(
    [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0, -0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -6.0],
    dtype=np.float32,
)

# Byte -> (low value, high value): one table lookup decodes a byte without unpacking nibbles.
_BYTE_TO_PAIR = np.stack(
    [FP4_VALUES[np.arange(256) & 0xF], FP4_VALUES[np.arange(256) >> 4]], axis=1
)

# 2**(s - 127) for every E8M0 byte; 255 is NaN by the spec.
_SCALE_VALUES = np.ldexp(1.0, np.arange(256) - E8M0_BIAS)
_SCALE_VALUES[255] = np.nan
_SCALE_VALUES = _SCALE_VALUES.astype(np.float32)

# Magnitude code k (0..7) vs its upper neighbour: midpoints, and whether a tie rounds up.
# Ties go to the even code (even mantissa bit), as round-to-nearest-even requires.
_MIDPOINTS = (
    (0.25, False),
    (0.75, True),
    (1.25, False),
    (1.75, True),
    (2.5, False),
    (3.5, True),
    (5.0, False),
)


def dequantize_mxfp4(blocks: np.ndarray, scales: np.ndarray) -> np.ndarray:
    """uint8 blocks [..., G, 16] and scales [..., G] -> float32 [..., G*32]."""
    blocks = np.asarray(blocks)
    scales = np.asarray(scales)
    if blocks.dtype != np.uint8 or scales.dtype != np.uint8:
        raise TypeError(
            f"MXFP4 blocks and scales must be uint8, got {blocks.dtype} and {scales.dtype}"
        )
    if blocks.shape[-1] != GROUP_SIZE // 2 or blocks.shape[:-1] != scales.shape:
        raise ValueError(f"MXFP4 shapes do not match: blocks {blocks.shape}, scales {scales.shape}")
    values = _BYTE_TO_PAIR[blocks].reshape(*scales.shape, GROUP_SIZE)
    with np.errstate(over="ignore"):  # 6 * 2**127 is inf in float32, as in MLX
        values *= _SCALE_VALUES[scales][..., None]
    return values.reshape(*scales.shape[:-1], scales.shape[-1] * GROUP_SIZE)


def quantize_mxfp4(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float [..., K] (K a multiple of 32) -> (blocks uint8 [..., K/32, 16], scales uint8 [..., K/32]).

    Per OCP MX: the shared exponent is floor(log2(amax)) - 2 (2 is E2M1's emax), clamped to E8M0;
    each value is then rounded to the nearest FP4 value (saturating at 6).
    """
    w = np.asarray(w, dtype=np.float32)
    k = w.shape[-1]
    if k % GROUP_SIZE:
        raise ValueError(f"last dimension {k} is not a multiple of {GROUP_SIZE}")
    groups = w.reshape(*w.shape[:-1], k // GROUP_SIZE, GROUP_SIZE)
    # floor(log2(amax)) is amax's exponent field minus 127; zeros and subnormals clamp to -127.
    amax_bits = (groups.view(np.uint32) & 0x7FFFFFFF).max(axis=-1)
    exp = (amax_bits >> 23).astype(np.int32) - (E8M0_BIAS + 2)
    np.clip(exp, -E8M0_BIAS, E8M0_BIAS, out=exp)
    scales = (exp + E8M0_BIAS).astype(np.uint8)

    scaled = groups * np.ldexp(np.float32(1.0), -exp)[..., None].astype(np.float32)
    mag = np.abs(scaled)
    # Adding uint8 views of the comparisons is several times faster than adding bool arrays.
    code = np.zeros(mag.shape, dtype=np.uint8)
    for mid, tie_up in _MIDPOINTS:
        code += ((mag >= mid) if tie_up else (mag > mid)).view(np.uint8)
    code |= np.signbit(scaled).view(np.uint8) << 3
    blocks = code[..., 0::2] | (code[..., 1::2] << 4)
    return blocks, scales
