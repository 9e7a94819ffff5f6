"""Open a chat session from resolved settings: find the model, check memory, load, set up harmony.

Shared by `gptoss run` and `gptoss chat`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from .settings import Settings


def session_settings(settings: Settings, context_limit: int) -> Any:
    from .generate import SamplerSettings
    from .session import SessionSettings

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
    *,
    interactive: bool,
    for_prompt_only: bool = False,
    path: Path | None = None,
    on_warning: Callable[[str], None] | None = None,
) -> Any:
    from . import harmony
    from .config import ModelConfig
    from .errors import UserError
    from .registry import resolve_model
    from .session import ChatSession

    path = path or resolve_model(settings.model, yes=settings.yes, interactive=interactive)
    cfg = ModelConfig.from_dir(path)
    max_ctx = min(cfg.max_position_embeddings, 131072)
    if settings.context and settings.context > max_ctx:
        raise UserError(
            f"--context {settings.context} is larger than the model's maximum of {max_ctx} tokens"
        )
    encoding = harmony.encoding_for_model(path)
    if for_prompt_only:
        from .tokenizer import Tokenizer

        context = settings.context or max_ctx
        model, tokenizer = None, Tokenizer.from_dir(path)
    else:
        import mlx.core as mx

        from .device import activation_bytes, default_dtype
        from .loader import load_model
        from .memory import check_memory, largest_context_that_fits

        dtype = settings.dtype or default_dtype()
        dtype_bytes = activation_bytes(dtype)
        context = settings.context
        if context is None:
            # Not asked for: the longest context that fits this machine (all of it on a big Mac).
            fits = largest_context_that_fits(path, dtype_bytes=dtype_bytes)
            context = min(max_ctx, fits) if fits and fits >= 1024 else max_ctx
        est = check_memory(path, context, dtype_bytes=dtype_bytes, force=settings.force)
        if est.warning and on_warning is not None:
            on_warning(est.warning)  # past the GPU working set: runs, may page
        model, tokenizer = load_model(path, dtype=dtype)
        if settings.seed is not None:
            mx.random.seed(settings.seed)
    if settings.max_tokens and settings.max_tokens >= context:
        raise UserError(
            f"--max-tokens {settings.max_tokens} does not fit in a {context}-token context"
        )
    session = ChatSession(model, tokenizer, encoding, session_settings(settings, context))
    session.model_path = path
    return session
