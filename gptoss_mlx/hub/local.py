"""Local models: converted MLX dirs in models_dir() and gpt-oss snapshots in the huggingface_hub
cache; turning a `-m` spec (alias, repo id, name, path) into a model directory.

The cache is read through its documented layout (models--owner--name/{refs,snapshots,blobs})
rather than through huggingface_hub, whose import would cost every `gptoss run` ~0.3 s.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..checkpoint.contents import is_complete, tensors
from ..errors import BadCheckpointError, ModelNotFoundError, UserError
from ..fsutil import tree_size
from ..paths import models_dir
from ..units import human_bytes
from . import download as hub
from .cache import (
    _incomplete_snapshot,
    blobs_dir,
    cached_snapshot,
    hf_cache_dir,
    is_offline,
    repo_id_for,
)

# Download sizes of the aliased repos (root files only, as `gptoss download` fetches them).
APPROX_DOWNLOAD_BYTES = {
    "openai/gpt-oss-20b": 13_762_000_000,
    "openai/gpt-oss-120b": 65_280_000_000,
}
COMMIT_RE = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class LocalModel:
    name: str  # repo id for cached snapshots, directory name for converted models
    kind: str  # "converted" or "hf-cache"
    path: Path
    format: str  # "HF MXFP4", "MLX" or "incomplete"
    quantization: str
    size_bytes: int
    complete: bool = True

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "path": str(self.path),
            "format": self.format,
            "quantization": self.quantization,
            "size_bytes": self.size_bytes,
            "complete": self.complete,
        }


# -- checkpoint inspection ------------------------------------------------------------------------


_DTYPE_NAMES = {"BF16": "bf16", "F16": "fp16", "F32": "fp32"}


def describe_quantization(model_dir: Path) -> str:
    """e.g. "mxfp4 experts, bf16 rest" or "mxfp4 experts, 8-bit rest" (from the tensor headers)."""
    from ..checkpoint.layout import infer_quant
    from ..model.config import ModelConfig

    cfg = ModelConfig.from_dir(model_dir)
    ts = tensors(model_dir)

    def describe(prefix: str, in_dims: int) -> str:
        w, s = ts.get(f"{prefix}.weight"), ts.get(f"{prefix}.scales")
        if w is None:
            return "?"
        if s is None:
            return _DTYPE_NAMES.get(w["dtype"], w["dtype"].lower())
        q = infer_quant(tuple(w["shape"]), tuple(s["shape"]), in_dims, s["dtype"])
        return q["mode"] if q["mode"] != "affine" else f"{q['bits']}-bit"

    if any(n.endswith("mlp.experts.gate_up_proj_blocks") for n in ts):
        experts = "mxfp4"
    else:
        experts = describe("model.layers.0.mlp.experts.gate_proj", cfg.hidden_size)
    rest = describe("model.layers.0.self_attn.q_proj", cfg.hidden_size)
    return f"{experts} experts, {rest} rest"


def dir_size(path: Path) -> int:
    """Bytes of the files under `path`, following the cache's symlinks to their blobs."""
    return tree_size(path, follow_links=True)


def format_label(model_dir: Path) -> str:
    from ..model.config import HF_MXFP4, ModelConfig

    return "HF MXFP4" if ModelConfig.from_dir(model_dir).format == HF_MXFP4 else "MLX"


# -- the huggingface_hub cache ---------------------------------------------------------------------


def converted_dir(repo_id: str) -> Path:
    """Where `gptoss download --convert` puts the MLX version of `repo_id`."""
    return models_dir() / f"{repo_id.split('/')[-1]}-mlx"


def _is_gpt_oss(model_dir: Path) -> bool:
    try:
        return json.loads((model_dir / "config.json").read_text()).get("model_type") == "gpt_oss"
    except (OSError, ValueError, AttributeError):
        return False


def _describe(name: str, kind: str, path: Path, arrived: Path | None = None) -> LocalModel:
    """`arrived`: where the bytes of an incomplete download are (its blobs, partial files too)."""
    if not is_complete(path):
        size = dir_size(arrived if arrived is not None else path)
        return LocalModel(name, kind, path, "incomplete", "", size, complete=False)
    size = dir_size(path)
    try:
        return LocalModel(name, kind, path, format_label(path), describe_quantization(path), size)
    except UserError as e:
        return LocalModel(name, kind, path, "damaged", str(e), size, complete=False)


def list_local_models() -> list[LocalModel]:
    """Converted models in models_dir() and gpt-oss snapshots in the huggingface_hub cache."""
    out: list[LocalModel] = []
    mdir = models_dir()
    if mdir.is_dir():
        for d in sorted(mdir.iterdir()):
            if d.is_dir() and not d.name.startswith(".") and (d / "config.json").exists():
                out.append(_describe(d.name, "converted", d))
    cache = hf_cache_dir()
    if cache.is_dir():
        for repo_dir in sorted(cache.glob("models--*--*")):
            repo_id = repo_dir.name[len("models--") :].replace("--", "/", 1)
            snap = cached_snapshot(repo_id)
            if snap is not None:
                if _is_gpt_oss(snap):
                    out.append(_describe(repo_id, "hf-cache", snap))
            else:
                partial = _incomplete_snapshot(repo_id)
                if partial is not None and (
                    repo_id in hub.ALIASES.values() or _is_gpt_oss(partial)
                ):
                    out.append(_describe(repo_id, "hf-cache", partial, blobs_dir(repo_id)))
    return out


# -- resolving a -m spec -------------------------------------------------------------------------------


def _looks_like_path(spec: str) -> bool:
    if spec.startswith(("/", "./", "../", "~")) or spec in (".", "..") or spec.endswith(os.sep):
        return True
    return os.sep in spec and repo_id_for(spec) is None


def _model_dir_or_error(path: Path) -> Path:
    if not path.is_dir():
        raise ModelNotFoundError(
            f"model directory {path} does not exist; run `gptoss models` to list local models"
        )
    if not (path / "config.json").is_file():
        raise BadCheckpointError(f"{path} has no config.json: not a model directory")
    return path.resolve()


def find_local(spec: str) -> Path | None:
    """The local model directory `spec` names, without downloading; None if it is not here."""
    p = Path(spec).expanduser()
    repo = repo_id_for(spec)
    if _looks_like_path(spec) or (p.is_dir() and (repo is None or (p / "config.json").is_file())):
        return _model_dir_or_error(p)
    named = models_dir() / spec
    if "/" not in spec and named.is_dir() and (named / "config.json").is_file():
        return named
    if repo is None:
        return None
    conv = converted_dir(repo)
    if is_complete(conv):
        return conv
    return cached_snapshot(repo)


def display_name(repo_id: str) -> str:
    return repo_id.split("/")[-1]


def resolve_model(
    spec: str,
    *,
    yes: bool,
    ask: Callable[[str], bool] | None = None,
    download: Callable[[str], Path] | None = None,
) -> Path:
    """A model directory for `spec`: a path, a converted model's name, an alias or a hub repo id.

    A repo that is not downloaded yet is downloaded (with `download`, else quietly) when `yes`,
    or when `ask(question)` says so; without `ask` (not interactive) ModelNotFoundError says how
    to get it.
    """
    spec = spec.strip()
    if not spec:
        raise UserError("no model given; use -m 20b, -m 120b, a hub repo id or a path")
    found = find_local(spec)
    if found is not None:
        return found
    repo = repo_id_for(spec)
    if repo is None:
        raise ModelNotFoundError(
            f"unknown model {spec!r}; use 20b, 120b, a hub repo id (owner/name) or a path to a model "
            "directory (`gptoss models` lists local ones)"
        )
    how = f"gptoss download {spec}"
    if is_offline():
        raise ModelNotFoundError(
            f"model {spec} is not downloaded and HF_HUB_OFFLINE is set; unset it and run `{how}`"
        )
    if not yes:
        if ask is None:
            raise ModelNotFoundError(f"model {spec} is not downloaded; run `{how}` (or pass --yes)")
        size = APPROX_DOWNLOAD_BYTES.get(repo)
        size_note = f" ({human_bytes(size)})" if size else ""
        if not ask(f"{display_name(repo)} is not downloaded{size_note}. Download it now?"):
            raise ModelNotFoundError(
                f"model {spec} is not downloaded; run `{how}` when you want it"
            )
    path = (download or hub.download)(repo)
    if not is_complete(path):
        raise BadCheckpointError(f"{repo} downloaded but {path} is incomplete; run `{how}` again")
    return path
