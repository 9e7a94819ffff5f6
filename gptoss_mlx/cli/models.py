"""`gptoss download`, `models`, `rm` and `info` (heavy imports stay inside commands)."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import ModelNotFoundError, UserError
from .partials import print_partials


def _out() -> Any:
    from rich.console import Console

    return Console(highlight=False, soft_wrap=True)


# -- download ------------------------------------------------------------------------------------


def download_cmd(
    model: Annotated[
        str,
        typer.Argument(
            help="20b, 120b or a hub repo id (e.g. mlx-community/gpt-oss-20b-MXFP4-Q8)."
        ),
    ] = "20b",
    revision: Annotated[
        str | None,
        typer.Option(
            "--revision", help="Branch, tag or commit (default: main).", show_default=False
        ),
    ] = None,
    convert: Annotated[
        bool,
        typer.Option("--convert", help="Convert to MLX right after (into the models directory)."),
    ] = False,
    yes: Annotated[
        bool,
        typer.Option("--yes", "-y", help="Replace an existing converted model without asking."),
    ] = False,
) -> None:
    """Download a gpt-oss model from the Hugging Face hub (only the files gptoss loads)."""
    from ..fsutil import check_disk
    from ..hub import download as hub
    from ..hub import local as registry
    from ..hub.cache import hf_cache_dir, is_offline, repo_id_for
    from ..paths import models_dir
    from ..ui.progress import DownloadBars
    from .interrupt import exit_on_interrupt

    repo = repo_id_for(model)
    if repo is None:
        raise UserError(
            f"{model!r} is not a model on the hub; use 20b, 120b or a repo id (owner/name)"
        )
    dst = registry.converted_dir(repo)
    with exit_on_interrupt():
        if is_offline():
            path = hub.download(repo, revision=revision, progress=DownloadBars())
            print(f"{repo} is already downloaded: {path} (HF_HUB_OFFLINE is set)")
        else:
            plan = hub.plan_download(repo, revision)
            needs = [(hf_cache_dir(), plan.missing_bytes, f"download of {repo}")]
            if convert and not dst.exists():
                needs.append((models_dir(), plan.weights_bytes, f"conversion of {repo}"))
            check_disk(needs)
            fresh = bool(plan.missing)
            path = hub.fetch(plan, progress=DownloadBars())
            print(f"{repo} {'downloaded to' if fresh else 'is already downloaded:'} {path}")
    if convert:
        _convert_after_download(repo, path, dst, yes=yes)


def _convert_after_download(repo: str, src: Path, dst: Path, *, yes: bool) -> None:
    from ..model.config import MLX, ModelConfig
    from ..ui.ask import confirm, stdin_is_interactive
    from ..ui.progress import ConvertBar

    if ModelConfig.from_dir(src).format == MLX:
        print(f"{repo} is already in MLX format; nothing to convert (run it with -m {repo})")
        return
    if dst.exists() and not yes:
        if not stdin_is_interactive():
            print(f"{dst} already exists; kept it (pass --yes to convert again)")
            return
        if not confirm(f"{dst} already exists. Convert again and replace it?"):
            print(f"kept {dst}")
            return
    from ..hub.convert import convert
    from ..model.memory import default_rest_layout

    rest = default_rest_layout(src)
    if rest == "q8":
        print("the GPU working set is small for this model: converting the non-expert weights "
              "to 8 bits (gptoss convert --rest bf16 keeps them bf16)", file=sys.stderr)  # fmt: skip
    with ConvertBar(sys.stderr.isatty()) as bar:
        report = convert(src, dst, rest=rest, force=dst.exists(), progress=bar)
    print(report.summary(), file=sys.stderr)
    print(f"converted {repo} to {report.dst}")


# -- models / rm -----------------------------------------------------------------------------------


def models_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list.")] = False,
) -> None:
    """List local models: converted ones and gpt-oss downloads in the Hugging Face cache."""
    from rich.table import Table

    from ..hub.local import list_local_models
    from ..units import human_bytes

    models = list_local_models()
    if as_json:
        print(json.dumps([m.as_dict() for m in models], indent=2))
        return
    if not models:
        from ..paths import models_dir

        print(f"no local models in {models_dir()}; run `gptoss download 20b`")
        print_partials()
        return
    table = Table(box=None, pad_edge=False)
    rows = []
    for m in models:
        quant = m.quantization if m.complete else f"incomplete: run `gptoss download {m.name}`"
        rows.append((m.name, m.format, quant, human_bytes(m.size_bytes), str(m.path)))
    for i, col in enumerate(("name", "format", "quantization", "size", "path")):
        # Names, formats and sizes never wrap or shrink, even at 80 columns or in a pipe.
        keep = col in ("name", "format", "size")
        width = max(len(col), *(len(r[i]) for r in rows)) if keep else None
        table.add_column(col, overflow="fold", no_wrap=keep, min_width=width)
    for row in rows:
        table.add_row(*row)
    out = _out()
    fixed = sum(max(len(r[i]) for r in rows) for i in (0, 1, 3)) + 4 * 2 + 24
    if out.width < fixed:  # rich would cut a name rather than overflow the terminal
        out.width = fixed
    out.print(table)
    print_partials()


def _managed_root(path: Path) -> Path | None:
    """The directory `gptoss rm` deletes for a model at `path`, if gptoss manages it."""
    from ..hub.cache import hf_cache_dir
    from ..paths import models_dir

    path = path.resolve()
    mdir = models_dir().resolve()
    if path.parent == mdir:
        return path
    cache = hf_cache_dir().resolve()
    if path.parent.name == "snapshots" and path.parent.parent.parent == cache:
        return path.parent.parent  # the whole models--owner--name folder, blobs included
    return None


def rm_cmd(
    model: Annotated[
        str,
        typer.Argument(help="Model to remove: 20b, 120b, a repo id or a converted model's name."),
    ],
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask first.")] = False,
) -> None:
    """Delete a local model (a converted directory or a Hugging Face download) to free disk space."""
    from ..hub.cache import repo_id_for
    from ..hub.local import dir_size, find_local
    from ..ui.ask import stdin_is_interactive
    from ..units import human_bytes

    path = find_local(model)
    if path is None:
        raise ModelNotFoundError(
            f"model {model} is not here; nothing to remove (`gptoss models` lists local ones)"
        )
    root = _managed_root(path)
    if root is None:
        raise UserError(
            f"{path} is not in the models directory or the Hugging Face cache; delete it yourself"
        )
    size = dir_size(root)
    if not yes:
        if not stdin_is_interactive():
            raise UserError(f"pass --yes to remove {root} ({human_bytes(size)}) without a question")
        from rich.prompt import Confirm

        if not Confirm.ask(f"Remove {model} ({human_bytes(size)}) at {root}?", default=False):
            print("kept it")
            return
    shutil.rmtree(root)
    print(f"removed {root} ({human_bytes(size)} freed)")
    repo = repo_id_for(model)
    if repo is not None:
        other = find_local(model)
        if other is not None:
            print(
                f"another copy of {repo} is still at {other}; run `gptoss rm {model}` again to remove it too"
            )


# -- info ----------------------------------------------------------------------------------------


def _local_or_error(spec: str) -> Path:
    from ..hub.local import find_local

    path = find_local(spec)
    if path is None:
        raise ModelNotFoundError(f"model {spec} is not downloaded; run `gptoss download {spec}`")
    return path


def info_dict(path: Path, context: int | None) -> dict[str, Any]:
    """What `gptoss info` shows, as a dict."""
    from ..backend.device import device_info, dtype_nbytes
    from ..hub.local import describe_quantization, dir_size, format_label
    from ..model.config import ModelConfig
    from ..model.memory import Estimator, available_memory

    cfg = ModelConfig.from_dir(path)
    ctx = context or cfg.max_position_embeddings
    dev = device_info()
    dbytes = dtype_nbytes(dev.default_dtype)
    est = Estimator(path, dbytes, dev.metal)
    need = est.at(ctx)
    budget = available_memory()
    params = cfg.param_counts()
    return {
        "path": str(path),
        "format": format_label(path),
        "quantization": describe_quantization(path),
        "layers": cfg.num_hidden_layers,
        "sliding_layers": cfg.n_sliding_layers,
        "full_layers": cfg.n_full_layers,
        "sliding_window": cfg.sliding_window,
        "experts": cfg.num_local_experts,
        "experts_per_token": cfg.num_experts_per_tok,
        "hidden_size": cfg.hidden_size,
        "vocab_size": cfg.vocab_size,
        "max_context": cfg.max_position_embeddings,
        "params_total": params["total"],
        "params_active": params["active"],
        "size_on_disk": dir_size(path),
        "activation_dtype": dev.default_dtype,
        "context": ctx,
        "memory_weights": need.weights,
        "memory_kv_cache": need.kv_cache,
        "memory_overhead": need.overhead,
        "memory_total": need.total,
        "memory_available": budget.bytes,
        "memory_available_source": budget.source,
        "largest_context_that_fits": est.largest_context(budget.bytes),
    }


def info_cmd(
    model: Annotated[
        str, typer.Argument(help="20b, 120b, a repo id, a converted model's name or a path.")
    ] = "20b",
    context: Annotated[
        int | None,
        typer.Option(
            "--context",
            "-c",
            help="Context length for the memory figures (default: the model's maximum).",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Show a local model's architecture, size and the memory it needs."""
    from ..units import human_bytes

    if context is not None and context < 1:
        raise UserError("--context must be a positive number of tokens")
    d = info_dict(_local_or_error(model), context)
    if as_json:
        print(json.dumps(d, indent=2))
        return
    fits = d["largest_context_that_fits"]
    rows = [
        ("path", d["path"]),
        ("format", f"{d['format']} ({d['quantization']})"),
        (
            "layers",
            f"{d['layers']} ({d['sliding_layers']} sliding-window of {d['sliding_window']} tokens, {d['full_layers']} full)",
        ),
        ("experts", f"{d['experts']}, {d['experts_per_token']} active per token"),
        (
            "parameters",
            f"{d['params_total'] / 1e9:.2f} B total, {d['params_active'] / 1e9:.2f} B active",
        ),
        ("max context", f"{d['max_context']} tokens"),
        ("size on disk", human_bytes(d["size_on_disk"])),
        (
            f"memory at {d['context']} tokens",
            (
                f"{human_bytes(d['memory_total'])} = weights {human_bytes(d['memory_weights'])} + KV cache "
                f"{human_bytes(d['memory_kv_cache'])} + overhead {human_bytes(d['memory_overhead'])} "
                f"({d['activation_dtype']} activations)"
            ),
        ),
        ("available", f"{human_bytes(d['memory_available'])} ({d['memory_available_source']})"),
        ("fits", "no context fits" if fits is None else f"up to {fits} tokens of context"),
    ]
    _print_rows(model, rows)


def _print_rows(title: str, rows: list[tuple[str, str]]) -> None:
    from rich.table import Table

    table = Table(box=None, show_header=False, title=title, title_justify="left", pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(overflow="fold")
    for k, v in rows:
        table.add_row(k, v)
    _out().print(table)


def register(app: typer.Typer) -> None:
    from .convert import EXIT_CODES_HELP

    app.command("download", epilog=EXIT_CODES_HELP)(download_cmd)
    app.command("models")(models_cmd)
    app.command("rm")(rm_cmd)
    app.command("info")(info_cmd)
