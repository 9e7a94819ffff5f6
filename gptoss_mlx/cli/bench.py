"""`gptoss bench`: speed and memory of this machine, optionally against mlx-lm on the same weights."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from ..errors import ModelNotFoundError, UserError
from .options import DtypeOpt, ModelOpt


def _counts(text: str) -> list[int]:
    try:
        counts = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        counts = []
    if not counts or min(counts) < 1:
        raise UserError(f"--prompt-tokens takes positive token counts like 512,4096, not {text!r}")
    return counts


def bench_cmd(
    model: ModelOpt = None,
    vs: Annotated[
        str | None,
        typer.Option("--vs", help="Also measure this runner on the same weights: mlx-lm."),
    ] = None,
    prompt_tokens: Annotated[
        str, typer.Option("--prompt-tokens", help="Prompt lengths to prefill, comma-separated.")
    ] = "512,4096",
    decode_tokens: Annotated[
        int, typer.Option("--decode-tokens", help="Tokens to decode after the first prompt.")
    ] = 128,
    dtype: DtypeOpt = None,
    rounds: Annotated[
        int,
        typer.Option(
            "--rounds",
            help="Measure each runner this many times, taking turns (who goes first alternates); "
            "medians are reported.",
        ),
    ] = 1,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Measure prefill and decode speed, time to first token and peak memory on this machine.

    Each runner runs in its own process. With --vs mlx-lm, mlx-lm is measured the same way on the
    same weights and the ratios are printed (above 1: gptoss is better). With --rounds N each
    figure is the median of N runs (for a machine with other work on it)."""
    from ..hub.local import find_local
    from ..model import benchmark
    from ..settings import resolve

    if vs is not None and vs != "mlx-lm":
        raise UserError(f"--vs takes mlx-lm, not {vs!r}")
    if decode_tokens < 2:
        raise UserError("--decode-tokens must be at least 2 (the first token comes from prefill)")
    if rounds < 1:
        raise UserError(f"--rounds must be at least 1, not {rounds}")
    prompts = _counts(prompt_tokens)
    settings = resolve({"model": model, "dtype": dtype})
    spec = settings.model
    path = find_local(spec)
    if path is None:
        raise ModelNotFoundError(f"model {spec} is not downloaded; run `gptoss download {spec}`")
    runners = ["gptoss", vs] if vs else ["gptoss"]
    dtypes = {"gptoss": settings.dtype}
    runs: dict[str, list] = {r: [] for r in runners}
    for i in range(rounds):  # turns alternate, so a machine getting busier slows both alike
        for runner in runners if i % 2 == 0 else runners[::-1]:
            runs[runner].append(
                benchmark.run(runner, path, prompts, decode_tokens, dtypes.get(runner))
            )
    results = [benchmark.median(runs[r]) for r in runners]
    ratios = benchmark.ratios(results[0], results[1]) if vs else {}
    if as_json:
        out = {"model": str(path), "rounds": rounds,
               "results": [r.to_dict() for r in results], "ratios": ratios}  # fmt: skip
        if rounds > 1:
            out["runs"] = {r: [x.to_dict() for x in runs[r]] for r in runners}
        print(json.dumps(out, indent=2))
        return
    _print_table(str(path), prompts, results, ratios)


def _print_table(title: str, prompts: list[int], results: list, ratios: dict[str, float]) -> None:
    from rich.console import Console
    from rich.table import Table

    from ..units import human_bytes

    table = Table(title=title, title_justify="left")
    table.add_column("")
    for r in results:
        table.add_column(r.runner, justify="right")
    if ratios:
        table.add_column("gptoss vs mlx-lm", justify="right")

    def row(label: str, values: list[str], ratio: float | None = None) -> None:
        table.add_row(label, *values, *([f"{ratio:.2f}x" if ratio else ""] if ratios else []))

    for n in prompts:
        row(
            f"prefill {n} tok/s",
            [f"{r.prefill_tps[n]:.1f}" for r in results],
            ratios.get(f"prefill_{n}"),
        )
        row(f"time to first token ({n})", [f"{r.time_to_first_token[n]:.3f} s" for r in results])
    row("decode tok/s", [f"{r.decode_tps:.2f}" for r in results], ratios.get("decode"))
    row(
        "peak memory (MLX)",
        [human_bytes(r.peak_memory_bytes) for r in results],
        ratios.get("peak_memory"),
    )
    row("peak RSS", [human_bytes(r.max_rss_bytes) for r in results])
    row("load", [f"{r.load_seconds:.1f} s" for r in results])
    console = Console()
    console.print(table)
    for r in results:
        console.print(f"{r.runner}: {r.detail}")
    if ratios:
        console.print("ratios above 1: gptoss is faster (or uses less memory)")


def register(app: typer.Typer) -> None:
    app.command("bench")(bench_cmd)
