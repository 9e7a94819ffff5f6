"""`gptoss run`: one-shot prompts. stdout carries only the final answer, so it pipes cleanly."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from .cli_options import (
    ContextOpt,
    DtypeOpt,
    EffortOpt,
    ForceOpt,
    InstructionsOpt,
    MaxTokensOpt,
    MinPOpt,
    ModelOpt,
    SeedOpt,
    TemperatureOpt,
    TopKOpt,
    TopPOpt,
    YesOpt,
    settings_from,
)
from .errors import UserError

MAX_STDIN_BYTES = 64 * 2**20


def read_prompt(prompt: str | None, stdin: Any = None) -> str:
    """The user message: the argument, stdin, or both (stdin is the material, the argument the instruction)."""
    stdin = stdin if stdin is not None else sys.stdin
    piped = None
    if prompt == "-" or (stdin is not None and not stdin.isatty()):
        raw = (
            stdin.buffer.read(MAX_STDIN_BYTES + 1)
            if hasattr(stdin, "buffer")
            else stdin.read().encode()
        )
        if len(raw) > MAX_STDIN_BYTES:
            raise UserError("input on stdin is larger than 64 MiB; pass a smaller file")
        try:
            piped = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise UserError(
                f"input on stdin is not UTF-8 text (bad byte at offset {e.start}); convert it first (e.g. iconv)"
            ) from e
        if prompt == "-":
            prompt = None
    text = (prompt or "").strip()
    material = (piped or "").strip()
    if text and material:
        return f"{text}\n\n{material}"
    if text or material:
        return text or material
    raise UserError(
        'no prompt: pass one as an argument (gptoss run "...") or on stdin (echo ... | gptoss run)'
    )


def read_tools(path: Path) -> list[Any]:
    from .harmony import ToolSpec

    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if isinstance(data, dict):
            data = [data]
        specs = [ToolSpec.from_dict(t.get("function", t)) for t in data]
    except OSError as e:
        raise UserError(f"cannot read --tools file {path}: {e.strerror}") from e
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise UserError(
            f'--tools file {path} is not a JSON list of {{"name", "description", "parameters"}} objects ({e})'
        ) from e
    return specs


def run_cmd(
    prompt: Annotated[
        str | None,
        typer.Argument(
            help='The prompt; "-" or none reads stdin. With both, stdin is the material and the argument the instruction.',
            show_default=False,
        ),
    ] = None,
    model: ModelOpt = None,
    effort: EffortOpt = None,
    instructions: InstructionsOpt = None,
    temperature: TemperatureOpt = None,
    top_p: TopPOpt = None,
    top_k: TopKOpt = None,
    min_p: MinPOpt = None,
    seed: SeedOpt = None,
    max_tokens: MaxTokensOpt = None,
    context: ContextOpt = None,
    dtype: DtypeOpt = None,
    yes: YesOpt = False,
    force: ForceOpt = False,
    show_reasoning: Annotated[
        bool, typer.Option("--show-reasoning", help="Stream the reasoning (analysis) to stderr.")
    ] = False,
    as_json: Annotated[
        bool,
        typer.Option(
            "--json", help="Print one JSON object: final, reasoning, tool calls, usage, timings."
        ),
    ] = False,
    show_prompt: Annotated[
        bool, typer.Option("--show-prompt", help="Print the rendered harmony prompt and exit.")
    ] = False,
    tools: Annotated[
        Path | None,
        typer.Option(
            "--tools",
            help='JSON file of function tools the model may call: [{"name", "description", "parameters": JSON schema}]. Calls are reported in --json.',
            show_default=False,
        ),
    ] = None,
) -> None:
    """Answer one prompt and exit. Only the final answer goes to stdout."""
    settings = settings_from(locals())
    text = read_prompt(prompt)
    specs = read_tools(tools) if tools else []
    from .engine import open_session

    session = open_session(
        settings,
        interactive=sys.stdin.isatty() and sys.stderr.isatty(),
        for_prompt_only=show_prompt,
        on_warning=lambda text: print(f"warning: {text}", file=sys.stderr),
    )
    session.settings.tools = specs
    if show_prompt:
        from . import harmony

        session.messages.append(harmony.Message(role="user", content=text))
        sys.stdout.write(session.tokenizer.decode(session.prompt_tokens()) + "\n")
        return
    result = run_turn(session, text, show_reasoning=show_reasoning, as_json=as_json)
    code = 130 if result.finish_reason == "interrupted" else 0
    if code:
        raise typer.Exit(code)


def run_turn(session: Any, text: str, *, show_reasoning: bool, as_json: bool) -> Any:
    from . import harmony
    from .progress import PrefillProgress

    out = sys.stdout
    err = sys.stderr
    dim = err.isatty() and not os.environ.get("NO_COLOR")
    state = {"final_started": False, "reasoning_open": False}

    def on_event(ev: Any) -> None:
        if as_json:
            return
        if isinstance(ev, harmony.FinalDelta):
            if state["reasoning_open"]:
                err.write("\x1b[0m\n" if dim else "\n")
                state["reasoning_open"] = False
            out.write(ev.text)
            out.flush()
            state["final_started"] = True
        elif isinstance(ev, harmony.ReasoningDelta) and show_reasoning:
            if not state["reasoning_open"]:
                err.write("\x1b[2m" if dim else "")
                state["reasoning_open"] = True
            err.write(ev.text)
            err.flush()

    interrupted = False
    with PrefillProgress(enabled=err.isatty() and not as_json) as progress:
        session.progress = progress.update
        result = session.turn(text, on_event=on_event)
        interrupted = result.finish_reason == "interrupted"
    if state["reasoning_open"]:
        err.write("\x1b[0m\n" if dim else "\n")
    if as_json:
        out.write(json.dumps(result_json(session, result), ensure_ascii=False) + "\n")
    else:
        if state["final_started"]:
            out.write("\n")
        out.flush()
        if result.finish_reason == "length":
            err.write(
                f"gptoss: the reply was cut at --max-tokens ({result.stats.generated_tokens} tokens)\n"
            )
        elif result.finish_reason == "context_full":
            err.write("gptoss: the reply was cut: the context is full (raise --context)\n")
        elif result.finish_reason == "tool_call":
            err.write("gptoss: the model asked for a tool call; see --json for its arguments\n")
        elif interrupted:
            err.write("gptoss: interrupted\n")
    return result


def result_json(session: Any, result: Any) -> dict[str, Any]:
    s = result.stats
    return {
        "final": result.final,
        "reasoning": result.reasoning,
        "tool_calls": [
            {
                "recipient": c.recipient,
                "arguments": c.arguments,
                "channel": c.channel,
                "content_type": c.content_type,
            }
            for c in result.tool_calls
        ],
        "finish_reason": s.finish_reason,
        "usage": {
            "prompt_tokens": s.prompt_tokens,
            "completion_tokens": s.generated_tokens,
            "total_tokens": s.prompt_tokens + s.generated_tokens,
        },
        "timings": {
            "time_to_first_token_s": round(s.time_to_first_token, 4),
            "prefill_tokens_per_s": round(s.prefill_tps, 2),
            "decode_tokens_per_s": round(s.decode_tps, 2),
            "total_s": round(s.wall_seconds, 4),
            "peak_memory_bytes": s.peak_memory_bytes,
        },
        "model": str(getattr(session, "model_path", "")),
        "effort": session.settings.effort,
    }
