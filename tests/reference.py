"""Independent numerical references for tests: transformers' GptOssForCausalLM and mlx-lm's model,
built from the same checkpoint bytes (experts dequantized from the same MXFP4 blocks)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from gptoss_mlx.checkpoint.mxfp4 import dequantize_mxfp4
from gptoss_mlx.checkpoint.safetensors import ShardedCheckpoint, bf16_bits_to_f32


def read_hf_numpy(path: Path) -> dict[str, np.ndarray]:
    ckpt = ShardedCheckpoint(path)
    out = {}
    for name in ckpt:
        a = ckpt.get_numpy(name)
        dtype = ckpt.info(name)[0]
        out[name] = bf16_bits_to_f32(a) if dtype == "BF16" else np.array(a)
    return out


def torch_reference(path: Path):
    """transformers' GptOssForCausalLM in float32 with eager attention, experts dequantized."""
    import torch
    from transformers import GptOssConfig, GptOssForCausalLM

    cfg = json.loads((path / "config.json").read_text())
    cfg.pop("quantization_config", None)
    config = GptOssConfig(**cfg)
    config._attn_implementation = "eager"
    model = GptOssForCausalLM(config).to(torch.float32).eval()
    raw = read_hf_numpy(path)
    state = {}
    for name, a in raw.items():
        if name.endswith("_blocks"):
            base = name[: -len("_blocks")]
            w = dequantize_mxfp4(a, raw[base + "_scales"])  # [E, out, in]
            state[base] = torch.from_numpy(np.ascontiguousarray(w.transpose(0, 2, 1)))
        elif name.endswith("_scales"):
            continue
        else:
            state[name] = torch.from_numpy(a.astype(np.float32))
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert not [m for m in missing if "rotary" not in m], missing
    return model


def torch_logits(model, tokens: list[int]) -> np.ndarray:
    import torch

    with torch.no_grad():
        out = model(torch.tensor([tokens]), use_cache=False)
    return out.logits[0].float().numpy()


def rel_max_err(a: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(a - ref).max() / np.abs(ref).max())
