"""Open a chat session from resolved settings: find the model, check memory, load, set up harmony.

Shared by `gptoss run` and `gptoss chat`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..settings import Settings


def session_settings(settings: Settings, context_limit: int) -> Any:
    from ..model.sampling import SamplerSettings
    from .chat import SessionSettings

    return SessionSettings(
        effort=settings.effort,
        instructions=settings.instructions,
        max_tokens=settings.max_tokens,
        context=context_limit,
        sampler=SamplerSettings(
            temperature=settings.temperature,
            top_p=settings.top_p,
            top_k=settings.top_k,
            min_p=settings.min_p,
            seed=settings.seed,
        ),
    )


def open_session(
    settings: Settings,
    path: Path,
    *,
    for_prompt_only: bool = False,
    strategy: str = "auto",
    on_warning: Callable[[str], None] | None = None,
) -> Any:
    """A ChatSession on the model at `path` (resolved by the caller: see cli/resolve.py). Under
    `mlx.launch` each rank loads its share of the model (`strategy`: tensor, pipeline or auto)."""
    from .. import harmony
    from ..errors import UserError
    from ..harmony.tokenizer import Tokenizer
    from ..model.config import MAX_CONTEXT, ModelConfig
    from .chat import ChatSession

    cfg = ModelConfig.from_dir(path)
    max_ctx = min(cfg.max_position_embeddings, MAX_CONTEXT)
    if settings.context and settings.context > max_ctx:
        raise UserError(
            f"--context {settings.context} is larger than the model's maximum of {max_ctx} tokens"
        )
    encoding = harmony.encoding_for_model(path)
    note = ""  # how the model is split across ranks, if it is
    if for_prompt_only:
        context = settings.context or max_ctx
        model = None
    else:
        import mlx.core as mx

        from ..backend.device import default_dtype, dtype_nbytes
        from ..backend.distributed import current_group
        from ..model.loader import load_model
        from ..model.memory import check_memory, largest_context_that_fits

        dtype = settings.dtype or default_dtype()
        dtype_bytes = dtype_nbytes(dtype)
        context = settings.context
        group = current_group()
        if group is not None:
            context = context or max_ctx
            model, note = _load_sharded(path, group, settings, dtype, context, strategy)
        else:
            if context is None:
                # Not asked for: the longest context that fits this machine (all of it on a big Mac).
                fits = largest_context_that_fits(path, dtype_bytes=dtype_bytes)
                context = min(max_ctx, fits) if fits and fits >= 1024 else max_ctx
            est = check_memory(path, context, dtype_bytes=dtype_bytes, force=settings.force)
            if est.warning and on_warning is not None:
                on_warning(est.warning)  # past the GPU working set: runs, may page
            model = load_model(path, dtype=dtype)
            if settings.seed is not None:
                mx.random.seed(settings.seed)
    if settings.max_tokens and settings.max_tokens >= context:
        raise UserError(
            f"--max-tokens {settings.max_tokens} does not fit in a {context}-token context"
        )
    tokenizer = Tokenizer.from_dir(path)
    session = ChatSession(model, tokenizer, encoding, session_settings(settings, context))
    session.model_path = path
    session.max_context = max_ctx
    session.distributed_note = note
    return session


def _load_sharded(
    path: Path, group: Any, settings: Settings, dtype: str, context: int, strategy: str
) -> tuple[Any, str]:
    """This rank's share of the model, the RNG synced with rank 0, and what was chosen and why."""
    from ..backend.distributed import backend_name, choose_strategy, sync_seed
    from ..model.sharded_load import sharded_load

    chosen, why = choose_strategy(strategy, backend_name())
    model, layout = sharded_load(
        path, group, chosen, dtype, context=context, force=settings.force,
        fallback=strategy == "auto",
    )  # fmt: skip
    sync_seed(group, settings.seed)
    return model, f"{layout.size} ranks, {layout.note or why}"
