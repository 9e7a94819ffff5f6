"""Where `gptoss convert` may write: DST never overlaps SRC, and `--force` replaces only a model
directory this tool could have written (config.json, safetensors, tokenizer files), never a
folder of the user's other files."""

from __future__ import annotations

import contextlib
import errno
import re
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ..errors import UserError

# Files convert copies from the source besides the weights.
COPY_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
    "chat_template.jinja",
    "chat_template.json",
)
# What a model directory this tool writes may hold; `--force` replaces nothing else.
MODEL_FILE_RE = re.compile(
    r"(config\.json|model(-\d+-of-\d+)?\.safetensors|model\.safetensors\.index\.json)$"
)
NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)


def check_paths(src: Path, dst: Path) -> None:
    """SRC and DST may not overlap: replacing one would delete the other, even with --force."""
    s, d = src.resolve(), dst.resolve()
    if s == d:
        raise UserError(f"DST {dst} is SRC; choose a new directory for the converted model")
    if s in d.parents:
        raise UserError(f"DST {dst} is inside SRC {src}; choose a directory outside the checkpoint")
    if d in s.parents:
        raise UserError(
            f"DST {dst} contains SRC {src}; replacing it would delete the source. Choose another DST"
        )


def _foreign_entry(dst: Path) -> str | None:
    """The first entry of `dst` that `gptoss convert` would not have written, if any."""
    for p in sorted(dst.iterdir()):
        if p.is_symlink() or not (p.is_file() or (p.name == ".gptoss" and p.is_dir())):
            return p.name
        if p.is_file() and not (MODEL_FILE_RE.fullmatch(p.name) or p.name in COPY_FILES):
            return p.name
    return None


def may_replace(dst: Path, force: bool) -> bool:
    """Whether atomic_directory may replace an existing DST (an empty directory always may)."""
    if not dst.exists() and not dst.is_symlink():
        return force
    if dst.is_symlink() or not dst.is_dir():
        raise UserError(f"DST {dst} exists and is not a directory; choose another DST")
    try:
        foreign = _foreign_entry(dst)
        empty = not any(dst.iterdir())
    except OSError as e:
        raise UserError(f"cannot read DST {dst}: {e.strerror}; choose another DST") from e
    if empty:
        return True
    if foreign is not None or not (dst / "config.json").is_file():
        what = f"holds {foreign!r}" if foreign else "has no config.json"
        raise UserError(
            f"DST {dst} {what}: it is not a model gptoss converted, so it is never replaced,"
            " not even with --force; choose a new or empty DST"
        )
    if not force:
        raise UserError(f"{dst} already holds a converted model; pass --force to replace it")
    return True


def not_writable(dst: Path, e: OSError) -> UserError:
    return UserError(
        f"cannot write to {dst}: {e.strerror or e}; choose a DST in a folder you can write to"
    )


@contextlib.contextmanager
def writable(dst: Path) -> Iterator[None]:
    """Permission and read-only errors as one line naming DST (not a temporary directory)."""
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=dst.parent):  # before the free-space check: that says 0
            pass
        yield
    except OSError as e:
        if e.errno in NOT_WRITABLE:
            raise not_writable(dst, e) from e
        raise
