"""What a checkpoint directory holds: whether it is complete, and its tensors (headers only)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..errors import BadCheckpointError
from .safetensors import ShardedCheckpoint, shard_paths


def is_complete(model_dir: Path) -> bool:
    """config.json, tokenizer.json and every weight shard are present."""
    model_dir = Path(model_dir)
    if not (model_dir / "config.json").is_file() or not (model_dir / "tokenizer.json").is_file():
        return False
    try:
        files = shard_paths(model_dir)
    except BadCheckpointError:
        return False
    return bool(files) and all(f.is_file() for f in files)


def tensors(model_dir: Path) -> dict[str, dict[str, Any]]:
    """All tensors of a checkpoint: name -> {"dtype", "shape", "nbytes"} (headers only, no data read)."""
    ckpt = ShardedCheckpoint(model_dir)
    try:
        return {
            n: {"dtype": i.dtype, "shape": list(i.shape), "nbytes": i.nbytes}
            for n, i in ((n, ckpt.info(n)) for n in ckpt)
        }
    finally:
        ckpt.close()
