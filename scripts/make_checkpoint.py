"""Write a random-weight gpt-oss checkpoint laid out exactly like openai/gpt-oss-20b on the hub.

    python scripts/make_checkpoint.py OUT [--preset tiny|tiny64|20b] [--layers N] [--seed S]

Weights are random but give sane activations: projections scaled by 1/sqrt(fan_in), norms near 1,
a router strong enough that top-k routing differs from token to token, and experts quantized to
MXFP4 from a normal with per-row gains so the E8M0 scales vary. Writing streams tensor by tensor.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from statistics import NormalDist

import numpy as np

if __package__ in (None, ""):  # run as a script: make the repo importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gptoss_mlx.checkpoint.mxfp4 import GROUP_SIZE, quantize_mxfp4
from gptoss_mlx.checkpoint.safetensors import ShardWriter, f32_to_bf16_bits
from gptoss_mlx.fsutil import atomic_directory
from gptoss_mlx.harmony.tokenizer import HARMONY_SPECIAL_TOKENS, tokenizer_json_path

PRESETS: dict[str, dict] = {
    "tiny": {
        "hidden_size": 128,
        "head_dim": 32,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "num_local_experts": 8,
        "num_experts_per_tok": 4,
        "num_hidden_layers": 4,
        "sliding_window": 8,
        "max_shard_bytes": 64 * 2**20,
    },
    # tiny with the real head size: on a Mac its attention takes MLX's fused Metal kernels
    # (head_dim 64 and up), which tiny's 32 never reaches.
    "tiny64": {
        "hidden_size": 128,
        "head_dim": 64,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 128,
        "num_local_experts": 8,
        "num_experts_per_tok": 4,
        "num_hidden_layers": 4,
        "sliding_window": 8,
        "max_shard_bytes": 64 * 2**20,
    },
    "20b": {
        "hidden_size": 2880,
        "head_dim": 64,
        "num_attention_heads": 64,
        "num_key_value_heads": 8,
        "intermediate_size": 2880,
        "num_local_experts": 32,
        "num_experts_per_tok": 4,
        "num_hidden_layers": 4,
        "sliding_window": 128,
        "max_shard_bytes": 2 * 2**30,
    },
}
VOCAB_SIZE = 201088
CHUNK_VALUES = 1 << 24
TRANSFORMERS_VERSION = "4.55.0.dev0"


def make_config(preset: str = "tiny", num_layers: int | None = None) -> dict:
    """config.json of a preset, with the keys and fixed values of openai/gpt-oss-20b."""
    p = PRESETS[preset]
    layers = num_layers if num_layers is not None else p["num_hidden_layers"]
    return {
        "architectures": ["GptOssForCausalLM"],
        "attention_bias": True,
        "attention_dropout": 0.0,
        "eos_token_id": 200002,
        "experts_per_token": p["num_experts_per_tok"],
        "head_dim": p["head_dim"],
        "hidden_act": "silu",
        "hidden_size": p["hidden_size"],
        "initial_context_length": 4096,
        "initializer_range": 0.02,
        "intermediate_size": p["intermediate_size"],
        "layer_types": [("sliding_attention", "full_attention")[i % 2] for i in range(layers)],
        "max_position_embeddings": 131072,
        "model_type": "gpt_oss",
        "num_attention_heads": p["num_attention_heads"],
        "num_experts_per_tok": p["num_experts_per_tok"],
        "num_hidden_layers": layers,
        "num_key_value_heads": p["num_key_value_heads"],
        "num_local_experts": p["num_local_experts"],
        "output_router_logits": False,
        "pad_token_id": 199999,
        "quantization_config": {
            "modules_to_not_convert": [
                "model.layers.*.self_attn",
                "model.layers.*.mlp.router",
                "model.embed_tokens",
                "lm_head",
            ],
            "quant_method": "mxfp4",
        },
        "rms_norm_eps": 1e-05,
        "rope_scaling": {
            "beta_fast": 32.0,
            "beta_slow": 1.0,
            "factor": 32.0,
            "original_max_position_embeddings": 4096,
            "rope_type": "yarn",
            "truncate": False,
        },
        "rope_theta": 150000,
        "router_aux_loss_coef": 0.9,
        "sliding_window": p["sliding_window"],
        "swiglu_limit": 7.0,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "transformers_version": TRANSFORMERS_VERSION,
        "use_cache": True,
        "vocab_size": VOCAB_SIZE,
    }


def tokenizer_files() -> dict[str, dict]:
    """tokenizer_config.json, special_tokens_map.json and generation_config.json as in the hub repo."""
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|return|>",
        "pad_token": "<|endoftext|>",
    }
    added = {
        str(i): {
            "content": name,
            "lstrip": False,
            "normalized": False,
            "rstrip": False,
            "single_word": False,
            "special": True,
        }
        for name, i in HARMONY_SPECIAL_TOKENS.items()
    }
    return {
        "tokenizer_config.json": {
            "added_tokens_decoder": added,
            **special,
            "clean_up_tokenization_spaces": False,
            "extra_special_tokens": {},
            "model_input_names": ["input_ids", "attention_mask"],
            "model_max_length": 1000000000000000019884624838656,
            "tokenizer_class": "PreTrainedTokenizerFast",
        },
        "special_tokens_map.json": special,
        "generation_config.json": {
            "bos_token_id": 199998,
            "do_sample": True,
            "eos_token_id": [200002, 199999, 200012],
            "pad_token_id": 199999,
            "transformers_version": TRANSFORMERS_VERSION,
        },
    }


# Normal quantiles at 65536 evenly spaced probabilities: indexing them with random uint16 draws
# a (finely discretised) normal 2-3x faster than standard_normal, and for bf16 tensors the table
# can hold the final bit patterns, which skips the float32 -> bf16 conversion.
_NORMAL_TABLE = np.array(
    [NormalDist().inv_cdf((i + 0.5) / 65536) for i in range(65536)], dtype=np.float32
)


class _Weights:
    """Draws every tensor from one generator, in writing order, so a seed fixes the checkpoint."""

    def __init__(self, writer: ShardWriter, seed: int) -> None:
        self.w = writer
        self.rng = np.random.default_rng(seed)

    def _draw(self, shape: tuple[int, ...]) -> np.ndarray:
        return self.rng.integers(0, 65536, size=shape, dtype=np.uint16)

    def normal(self, shape: tuple[int, ...], std: float) -> np.ndarray:
        return _NORMAL_TABLE[self._draw(shape)] * np.float32(std)

    def bf16(self, name: str, shape: tuple[int, ...], std: float, mean: float = 0.0) -> None:
        rows = max(1, CHUNK_VALUES // int(np.prod(shape[1:], dtype=np.int64)))
        table = f32_to_bf16_bits(_NORMAL_TABLE * np.float32(std) + np.float32(mean))

        def chunks() -> Iterator[np.ndarray]:
            for start in range(0, shape[0], rows):
                yield table[self._draw((min(rows, shape[0] - start), *shape[1:]))]

        self.w.add_chunks(name, shape, "BF16", chunks())

    def mxfp4(self, name: str, experts: int, rows: int, cols: int) -> None:
        """Expert matrices [experts, rows, cols] as `name`_blocks then `name`_scales."""
        groups = cols // GROUP_SIZE
        scales = np.empty((experts, rows, groups), dtype=np.uint8)

        def chunks() -> Iterator[np.ndarray]:
            for e in range(experts):
                # Per-row gains spread the block maxima over several binades, so scales vary.
                gain = np.exp(self.normal((rows, 1), 0.5)) / np.float32(np.sqrt(cols))
                blocks, scales[e] = quantize_mxfp4(self.normal((rows, cols), 1.0) * gain)
                yield blocks

        self.w.add_chunks(f"{name}_blocks", (experts, rows, groups, 16), "U8", chunks())
        self.w.add(f"{name}_scales", scales)


def _write_layer(g: _Weights, cfg: dict, i: int) -> None:
    h, d = cfg["hidden_size"], cfg["head_dim"]
    q, kv = cfg["num_attention_heads"] * d, cfg["num_key_value_heads"] * d
    e, inter = cfg["num_local_experts"], cfg["intermediate_size"]
    p = f"model.layers.{i}."
    g.bf16(p + "input_layernorm.weight", (h,), 0.05, mean=1.0)
    g.bf16(p + "self_attn.o_proj.bias", (h,), 0.02)
    g.bf16(p + "self_attn.o_proj.weight", (h, q), q**-0.5)
    g.bf16(p + "self_attn.q_proj.bias", (q,), 0.02)
    g.bf16(p + "self_attn.k_proj.bias", (kv,), 0.02)
    g.bf16(p + "self_attn.v_proj.bias", (kv,), 0.02)
    g.bf16(p + "self_attn.q_proj.weight", (q, h), h**-0.5)
    g.bf16(p + "self_attn.k_proj.weight", (kv, h), h**-0.5)
    g.bf16(p + "self_attn.v_proj.weight", (kv, h), h**-0.5)
    g.bf16(p + "self_attn.sinks", (cfg["num_attention_heads"],), 1.0)
    g.bf16(p + "mlp.router.bias", (e,), 0.1)
    # Router logits with std ~2.5 make the top-k choice decisive and token-dependent.
    g.bf16(p + "mlp.router.weight", (e, h), 2.5 * h**-0.5)
    # gate_up rows interleave gate and up (row 2j is gate j, row 2j+1 is up j).
    g.bf16(p + "mlp.experts.gate_up_proj_bias", (e, 2 * inter), 0.02)
    g.mxfp4(p + "mlp.experts.gate_up_proj", e, 2 * inter, h)
    g.bf16(p + "mlp.experts.down_proj_bias", (e, h), 0.02)
    g.mxfp4(p + "mlp.experts.down_proj", e, h, inter)
    g.bf16(p + "post_attention_layernorm.weight", (h,), 0.05, mean=1.0)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def make_checkpoint(
    out_dir: Path | str,
    preset: str = "tiny",
    num_layers: int | None = None,
    seed: int = 0,
    max_shard_bytes: int | None = None,
) -> Path:
    """Write the checkpoint to `out_dir` atomically (replacing an earlier checkpoint there)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    out_dir = Path(out_dir)
    if out_dir.exists() and any(out_dir.iterdir()) and not (out_dir / "config.json").is_file():
        raise FileExistsError(f"{out_dir} exists and is not a checkpoint; not replacing it")
    cfg = make_config(preset, num_layers)
    shard_bytes = max_shard_bytes or PRESETS[preset]["max_shard_bytes"]
    with atomic_directory(out_dir, force=True) as tmp:
        writer = ShardWriter(tmp, shard_bytes, metadata={"format": "pt"}, zero_based=True)
        with writer:
            g = _Weights(writer, seed)
            # The hub checkpoint lists layers in string order, then the embedding, norm and head.
            for i in sorted(range(cfg["num_hidden_layers"]), key=str):
                _write_layer(g, cfg, i)
            h = cfg["hidden_size"]
            g.bf16("model.embed_tokens.weight", (VOCAB_SIZE, h), 1.0)
            g.bf16("model.norm.weight", (h,), 0.05, mean=1.0)
            g.bf16("lm_head.weight", (VOCAB_SIZE, h), 2.0 * h**-0.5)
        _write_json(tmp / "config.json", cfg)
        for fname, data in tokenizer_files().items():
            _write_json(tmp / fname, data)
        shutil.copyfile(tokenizer_json_path(), tmp / "tokenizer.json")
    return out_dir


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path, help="folder to write (replaced if it holds a checkpoint)")
    ap.add_argument("--preset", choices=sorted(PRESETS), default="tiny")
    ap.add_argument("--layers", type=int, default=None, help="number of layers (default 4)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--max-shard-mb", type=int, default=None, help="shard size limit in MiB")
    args = ap.parse_args(argv)
    start = time.perf_counter()
    shard = args.max_shard_mb * 2**20 if args.max_shard_mb else None
    out = make_checkpoint(args.out, args.preset, args.layers, args.seed, shard)
    size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
    print(f"wrote {out} ({size / 2**30:.2f} GiB) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
