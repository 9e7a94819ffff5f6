"""Model configuration parsed from a checkpoint's config.json, and checkpoint format detection."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import BadCheckpointError, ModelNotFoundError

MAX_CONTEXT = 131072  # gpt-oss's longest context (max_position_embeddings of both sizes)

HF_MXFP4 = "hf-mxfp4"  # the Hugging Face checkpoint as published (experts MXFP4 blocks/scales)
MLX = "mlx"  # converted: ours, mlx_lm.convert's, mlx-community's


_FIX = "re-download or re-convert the model"
# config.json keys and the values they must hold; the parse below relies on these checks.
_REQUIRED_COUNTS = (
    "num_hidden_layers",
    "hidden_size",
    "intermediate_size",
    "num_attention_heads",
    "num_key_value_heads",
    "num_local_experts",
    "vocab_size",
)
_OPTIONAL_COUNTS = (
    "head_dim",
    "num_experts_per_tok",
    "experts_per_token",
    "sliding_window",
    "max_position_embeddings",
)
_OPTIONAL_NUMBERS = ("rms_norm_eps", "rope_theta", "swiglu_limit", "swiglu_alpha")
_OPTIONAL_OBJECTS = ("rope_scaling", "rope_parameters", "quantization")


def _check_keys(d: dict[str, Any]) -> None:
    """BadCheckpointError naming the first missing key or value of the wrong type."""

    def bad(key: str, what: str) -> BadCheckpointError:
        return BadCheckpointError(f"config.json: {key!r} must be {what}, not {d[key]!r}; {_FIX}")

    for key in _REQUIRED_COUNTS:
        if key not in d:
            raise BadCheckpointError(f"config.json has no {key!r} key; {_FIX}")
    for key in _REQUIRED_COUNTS + _OPTIONAL_COUNTS:
        v = d.get(key)
        if (key in _REQUIRED_COUNTS or v is not None) and not (
            isinstance(v, int) and not isinstance(v, bool) and v > 0
        ):
            raise bad(key, "a positive whole number")
    for key in _OPTIONAL_NUMBERS:
        v = d.get(key)
        if v is not None and not (
            isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
        ):
            raise bad(key, "a number")
    for key in _OPTIONAL_OBJECTS:
        if d.get(key) is not None and not isinstance(d[key], dict):
            raise bad(key, "a JSON object")
    types = d.get("layer_types")
    if types is not None and not (
        isinstance(types, list) and all(isinstance(t, str) for t in types)
    ):
        raise bad("layer_types", "a list of layer type names")


@dataclass
class ModelConfig:
    hidden_size: int = 2880
    intermediate_size: int = 2880
    num_hidden_layers: int = 24
    num_attention_heads: int = 64
    num_key_value_heads: int = 8
    head_dim: int = 64
    num_local_experts: int = 32
    num_experts_per_tok: int = 4
    vocab_size: int = 201088
    rms_norm_eps: float = 1e-5
    sliding_window: int = 128
    layer_types: list[str] = field(default_factory=list)
    max_position_embeddings: int = MAX_CONTEXT
    rope_theta: float = 150000.0
    rope_scaling: dict[str, Any] = field(default_factory=dict)
    swiglu_limit: float = 7.0
    swiglu_alpha: float = 1.702
    # MLX-format quantization block ({"group_size", "bits", "mode", per-path overrides}); None for HF.
    quantization: dict[str, Any] | None = None
    format: str = HF_MXFP4
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        if not isinstance(d, dict):
            raise BadCheckpointError(
                f"config.json holds a JSON {type(d).__name__}, not an object; {_FIX}"
            )
        if d.get("model_type") != "gpt_oss":
            raise BadCheckpointError(
                f"not a gpt-oss checkpoint (model_type is {d.get('model_type')!r}, expected 'gpt_oss')"
            )
        _check_keys(d)
        n_layers = int(d["num_hidden_layers"])
        layer_types = d.get("layer_types") or [
            "sliding_attention" if i % 2 == 0 else "full_attention" for i in range(n_layers)
        ]
        quant = d.get("quantization")
        fmt = MLX if quant is not None else HF_MXFP4
        rope = dict(d.get("rope_scaling") or d.get("rope_parameters") or {})
        cfg = cls(
            hidden_size=int(d["hidden_size"]),
            intermediate_size=int(d["intermediate_size"]),
            num_hidden_layers=n_layers,
            num_attention_heads=int(d["num_attention_heads"]),
            num_key_value_heads=int(d["num_key_value_heads"]),
            head_dim=int(d.get("head_dim") or d["hidden_size"] // d["num_attention_heads"]),
            num_local_experts=int(d["num_local_experts"]),
            num_experts_per_tok=int(
                d.get("num_experts_per_tok") or d.get("experts_per_token") or 4
            ),
            vocab_size=int(d["vocab_size"]),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)),
            sliding_window=int(d.get("sliding_window") or 128),
            layer_types=list(layer_types),
            max_position_embeddings=int(d.get("max_position_embeddings", MAX_CONTEXT)),
            rope_theta=float(d.get("rope_theta") or rope.get("rope_theta") or 150000.0),
            rope_scaling=rope,
            swiglu_limit=float(d.get("swiglu_limit", 7.0)),
            swiglu_alpha=float(d.get("swiglu_alpha", 1.702)),
            quantization=quant,
            format=fmt,
            raw=d,
        )
        if len(cfg.layer_types) != n_layers:
            raise BadCheckpointError("config.json: layer_types does not match num_hidden_layers")
        return cfg

    @classmethod
    def from_dir(cls, path: Path | str) -> ModelConfig:
        path = Path(path)
        cfg_file = path / "config.json"
        if not path.is_dir():
            raise ModelNotFoundError(f"model directory {path} does not exist")
        if not cfg_file.exists():
            raise BadCheckpointError(f"{path} has no config.json: not a model directory")
        try:
            d = json.loads(cfg_file.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
            raise BadCheckpointError(
                f"{cfg_file} is not valid JSON ({e}); re-download or re-convert the model"
            ) from e
        try:
            return cls.from_dict(d)
        except BadCheckpointError as e:
            raise BadCheckpointError(f"{path}: {e}") from None

    @property
    def n_sliding_layers(self) -> int:
        return sum(t == "sliding_attention" for t in self.layer_types)

    @property
    def n_full_layers(self) -> int:
        return sum(t == "full_attention" for t in self.layer_types)

    def kv_cache_bytes(self, context: int, dtype_bytes: int) -> int:
        """KV cache size at `context` tokens: full layers hold all of it, sliding layers only their window."""
        per_token_layer = 2 * self.num_key_value_heads * self.head_dim * dtype_bytes
        sliding = min(context, self.sliding_window)
        return per_token_layer * (self.n_full_layers * context + self.n_sliding_layers * sliding)

    def param_counts(self) -> dict[str, int]:
        h, i, e = self.hidden_size, self.intermediate_size, self.num_local_experts
        q = self.num_attention_heads * self.head_dim
        kv = self.num_key_value_heads * self.head_dim
        attn_matrices = h * q + 2 * h * kv + q * h  # q, k, v, o weights
        attn = attn_matrices + q + 2 * kv + h + self.num_attention_heads
        experts = e * (h * 2 * i + 2 * i + i * h + h)
        router = e * h + e
        norms = 2 * h
        per_layer = attn + experts + router + norms
        embed = self.vocab_size * h
        total = self.num_hidden_layers * per_layer + 2 * embed + h
        active = total - self.num_hidden_layers * (e - self.num_experts_per_tok) * (
            h * 2 * i + 2 * i + i * h + h
        )
        return {
            "total": total,
            "active": active,
            "experts": self.num_hidden_layers * experts,
            # The attention projection weights and lm_head (checkpoint.layout.is_dense_matmul_weight).
            "dense_matmul": self.num_hidden_layers * attn_matrices + embed,
            "embedding": embed,
            "lm_head": embed,
        }
