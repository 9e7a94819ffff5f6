"""gptoss-mlx: OpenAI's gpt-oss models on MLX. Heavy imports happen on first use, not at import."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from .backend.device import prepare_backend as _prepare_backend  # noqa: E402

_prepare_backend()  # an optimized BLAS must be loaded before anything imports mlx

if TYPE_CHECKING:
    from .harmony.tokenizer import Tokenizer
    from .model.gpt_oss import Model


def load_model(path: Any, dtype: str | None = None) -> tuple[Model, Tokenizer]:
    """Load a gpt-oss checkpoint (HF MXFP4, our converted MLX dir, or mlx-community layout)."""
    from .harmony.tokenizer import Tokenizer
    from .model.loader import load_model as _load

    return _load(path, dtype=dtype), Tokenizer.from_dir(path)


__all__ = ["load_model", "__version__"]
