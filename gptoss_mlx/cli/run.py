"""`gptoss run`: one-shot prompts. stdout carries only the final answer, so it pipes cleanly."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import INTERRUPTED, ContextFullError, UserError
from .options import (
    BrowserOpt,
    ContextOpt,
    DtypeOpt,
    EffortOpt,
    ForceOpt,
    InstructionsOpt,
    MaxTokensOpt,
    MaxToolCallsOpt,
    McpOpt,
    MinPOpt,
    ModelOpt,
    PythonNetworkOpt,
    PythonOpt,
    PythonTimeoutOpt,
    PythonUnsafeOpt,
    SearchOpt,
    SeedOpt,
    TemperatureOpt,
    ToolsFileOpt,
    TopKOpt,
    TopPOpt,
    YesOpt,
    settings_from,
)
from .tools import citation_stream, tool_note, with_citations, with_tool_records

MAX_STDIN_BYTES = 64 * 2**20


def stdin_waiting(stdin: Any) -> bool:
    """Whether stdin (not a terminal) has data or end-of-file ready now: never blocks."""
    import select

    try:
        ready, _, _ = select.select([stdin], [], [], 0)
    except (OSError, ValueError, TypeError):  # closed, or no file descriptor (a test's StringIO)
        return not hasattr(stdin, "fileno")
    return bool(ready)


def read_prompt(prompt: str | None, stdin: Any = None) -> str:
    """The user message: the argument, stdin, or both (stdin is the material, the argument the instruction).

    stdin is read when PROMPT is "-", when there is no PROMPT, or when data is already waiting on
    it; a PROMPT with a pipe that stays silent (a `while read` loop, mlx.launch) never waits."""
    stdin = stdin if stdin is not None else sys.stdin
    piped = None
    if stdin is None or getattr(stdin, "closed", False):
        stdin = None
    use_stdin = prompt in (None, "-") or (
        stdin is not None and not stdin.isatty() and stdin_waiting(stdin)
    )
    if stdin is not None and use_stdin and (prompt == "-" or not stdin.isatty()):
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
    from ..harmony import ToolSpec

    shape = '{"name", "description", "parameters"}'
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise UserError(f"cannot read --tools file {path}: {e.strerror}; check the path") from e
    except UnicodeDecodeError:
        raise UserError(f"--tools file {path} is not UTF-8 text; save it as UTF-8 JSON") from None
    except json.JSONDecodeError as e:
        raise UserError(
            f"--tools file {path} is not valid JSON (line {e.lineno}, column {e.colno}: {e.msg}); fix it"
        ) from None
    if isinstance(data, dict):
        data = [data]
    if not isinstance(data, list):
        raise UserError(f"--tools file {path} must be a JSON list of {shape} objects")
    specs = []
    for i, t in enumerate(data, 1):
        if not isinstance(t, dict) or not isinstance(t.get("function", t), dict):
            raise UserError(f"--tools file {path}: tool {i} must be a {shape} object")
        t = t.get("function", t)
        if not isinstance(t.get("name"), str) or not t["name"].strip():
            raise UserError(f'--tools file {path}: tool {i} has no "name" text; add one')
        if not isinstance(t.get("parameters", {}), dict):
            raise UserError(
                f'--tools file {path}: tool {t["name"]!r} has "parameters" that are not a JSON schema object; make them one ({{"type": "object", ...}})'
            )
        try:
            specs.append(ToolSpec.from_dict(t))
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise UserError(
                f"--tools file {path}: tool {t['name']!r} is malformed ({e}); fix it"
            ) from None
    return specs


def run_cmd(
    prompt: Annotated[
        str | None,
        typer.Argument(
            help='The prompt; "-" or none reads stdin. With a PROMPT, stdin is read only if data is already waiting on it (a pipe that stays silent is never waited for): it is then the material and PROMPT the instruction.',
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
    tools: ToolsFileOpt = None,
    python: PythonOpt = False,
    python_timeout: PythonTimeoutOpt = None,
    python_network: PythonNetworkOpt = False,
    python_unsafe: PythonUnsafeOpt = False,
    max_tool_calls: MaxToolCallsOpt = None,
    mcp: McpOpt = None,
    browser: BrowserOpt = False,
    search: SearchOpt = None,
    strategy: Annotated[
        str,
        typer.Option(
            "--strategy",
            help="Under mlx.launch: split the model by tensor, pipeline or auto (tensor on jaccl, pipeline on ring).",
        ),
    ] = "auto",
) -> None:
    """Answer one prompt and exit. Only the final answer goes to stdout."""
    from ..backend import distributed as dist_control
    from ..session.open import open_session
    from ..session.store import new_id
    from ..session.tool_setup import close_tools, offline_note, open_loop, preflight
    from .resolve import model_path

    settings = settings_from(locals())
    tools_file = Path(settings.tools) if settings.tools else None
    settings, text, specs, group = _inputs(settings, prompt, tools_file)
    if group is not None and (settings.python or settings.mcp or settings.browser):
        raise UserError(
            "--python, --browser and --mcp are not available under mlx.launch yet; "
            "run the tools with `gptoss serve --hostfile` and a client instead"
        )
    preflight(settings)
    with dist_control.peer_errors():
        interactive = group is None and sys.stdin.isatty() and sys.stderr.isatty()
        path = model_path(settings.model, yes=settings.yes, interactive=interactive)
        session = open_session(
            settings,
            path,
            for_prompt_only=show_prompt,
            strategy=strategy,
            on_warning=lambda text: print(f"warning: {text}", file=sys.stderr),
        )
        if session.distributed_note and group is not None and group.rank() == 0:
            print(f"gptoss: {session.distributed_note}", file=sys.stderr)
        note_slow_start()
        loop = open_loop(session, settings, specs, chat_id=new_id(), on_status=_status)
        if offline_note(loop.table):
            _status(offline_note(loop.table) or "")
        if settings.python_unsafe:  # nobody to ask in a one-shot run: the flag is the consent
            loop.always.add(("python", ""))
        try:
            _run(
                session,
                loop,
                text,
                show_prompt,
                show_reasoning,
                as_json,
                quiet=group is not None and group.rank() != 0,
            )
        finally:
            close_tools(loop.table)


def _status(line: str) -> None:
    sys.stderr.write(f"gptoss: {line}\n")


def _inputs(settings: Any, prompt: str | None, tools: Path | None) -> tuple[Any, str, list, Any]:
    """Settings, prompt text, tool specs and the distributed group (None for one process).

    Under mlx.launch rank 0 decides and shares them; the other ranks never read stdin and
    print nothing."""
    from ..backend import distributed as dist_control

    group = dist_control.current_group() if dist_control.launched() else None
    if group is None:
        return settings, read_prompt(prompt), read_tools(tools) if tools else [], None
    settings, text, specs = dist_control.share_outcome(
        group, lambda: (settings, launched_prompt(prompt), read_tools(tools) if tools else [])
    )
    if group.rank() != 0:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 - for the life of the process
    return settings, text, specs, group


def launched_prompt(prompt: str | None) -> str:
    """The prompt under mlx.launch: only the argument, since the ranks' stdin never ends."""
    if prompt is None or prompt == "-" or not prompt.strip():
        raise UserError(
            'under mlx.launch give the prompt as an argument (gptoss run "..."): stdin is not read'
        )
    return prompt.strip()


def _run(
    session: Any,
    loop: Any,
    text: str,
    show_prompt: bool,
    show_reasoning: bool,
    as_json: bool,
    quiet: bool,
) -> None:
    if show_prompt:
        from .. import harmony

        session.messages.append(harmony.Message(role="user", content=text))
        sys.stdout.write(session.tokenizer.decode(session.prompt_tokens()) + "\n")
        return
    saved = sys.stderr
    if quiet:
        sys.stderr = open(os.devnull, "w")  # noqa: SIM115 - closed below
    try:
        result = run_turn(session, text, show_reasoning=show_reasoning, as_json=as_json, loop=loop)
    finally:
        if quiet:
            sys.stderr.close()
            sys.stderr = saved
    if result.finish_reason == "interrupted":
        raise typer.Exit(INTERRUPTED)
    if result.finish_reason == "context_full":
        raise typer.Exit(ContextFullError.exit_code)


def run_turn(
    session: Any, text: str, *, show_reasoning: bool, as_json: bool, loop: Any = None
) -> Any:
    from .. import harmony
    from ..ui.progress import PrefillProgress

    out = sys.stdout
    err = sys.stderr
    dim = err.isatty() and not os.environ.get("NO_COLOR")
    state = {"final_started": False, "reasoning_open": False}
    citations = None if as_json else citation_stream(loop, "markdown")

    def on_event(ev: Any) -> None:
        if as_json:
            return
        if isinstance(ev, harmony.FinalDelta):
            if state["reasoning_open"]:
                err.write("\x1b[0m\n" if dim else "\n")
                state["reasoning_open"] = False
            out.write(ev.text if citations is None else citations.feed(ev.text))
            out.flush()
            state["final_started"] = True
        elif isinstance(ev, harmony.ReasoningDelta) and show_reasoning:
            if not state["reasoning_open"]:
                err.write("\x1b[2m" if dim else "")
                state["reasoning_open"] = True
            err.write(ev.text)
            err.flush()
        elif show_reasoning:
            note = tool_note(ev)
            if note:
                if state["reasoning_open"]:
                    err.write("\x1b[0m\n" if dim else "\n")
                    state["reasoning_open"] = False
                err.write(note + "\n")
                err.flush()

    with PrefillProgress(enabled=err.isatty() and not as_json) as progress:
        session.progress = progress.update
        result = (loop or session).turn(text, on_event=on_event)
    if state["reasoning_open"]:
        err.write("\x1b[0m\n" if dim else "\n")
    if citations is not None:
        out.write(citations.finish())
    if as_json:
        data = result_json(session, result)
        if loop is not None:
            with_tool_records(data, loop)
            with_citations(data, loop)
        out.write(json.dumps(data, ensure_ascii=False) + "\n")
    else:
        if state["final_started"]:
            out.write("\n")
        out.flush()
        if result.finish_reason == "length":
            err.write(
                f"gptoss: the reply was cut at --max-tokens ({result.stats.generated_tokens} tokens)\n"
            )
        elif result.finish_reason == "context_full":
            err.write(f"gptoss: error: {context_full_advice(session)}\n")
        elif result.finish_reason == "tool_call":
            err.write("gptoss: the model asked for a tool call; see --json for its arguments\n")
        elif result.finish_reason == "tool_limit":
            err.write("gptoss: stopped: the model kept calling tools (raise --max-tool-calls)\n")
    return result


def note_slow_start() -> None:
    """Say (on stderr) when the C kernels had to be rebuilt because the cache dir is read-only."""
    mod = sys.modules.get("gptoss_mlx.backend.kernels")
    status = mod.status() if mod is not None else None
    if status is not None and status.available and "not writable" in status.reason:
        print(f"gptoss: note: C kernels {status.reason}", file=sys.stderr)


def context_full_advice(session: Any) -> str:
    """What to do when a reply filled the context: raise --context only while it can grow."""
    limit = session.settings.context
    top = session.max_context
    if limit < top:
        return (
            f"the reply was cut: the {limit}-token context is full; raise --context (up to {top})"
        )
    return f"the reply was cut: the {limit}-token context (the model's maximum) is full; shorten the prompt or set --max-tokens"


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
        "usage": s.usage(),
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
