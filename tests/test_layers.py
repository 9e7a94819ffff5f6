"""The package's layers import one way. Every import of every module is checked, including the
ones inside functions (they keep start-up fast but would otherwise hide the graph)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "gptoss_mlx"
FOUNDATION = {"errors", "paths", "fsutil", "units", "__main__", "__init__"}
# layer -> the layers it may import (foundation is always allowed).
ALLOWED: dict[str, set[str]] = {
    "cli": {
        "ui",
        "server",
        "session",
        "settings",
        "tools",
        "harmony",
        "hub",
        "model",
        "backend",
        "checkpoint",
    },
    "ui": {"session", "settings", "tools", "harmony"},
    "server": {"session", "settings", "tools", "harmony"},
    "session": {"settings", "tools", "harmony", "model", "backend"},
    "settings": {"harmony", "model"},
    "tools": {"harmony"},
    "harmony": set(),
    "hub": {"model", "checkpoint", "backend"},
    "model": {"backend", "checkpoint"},
    "backend": {"checkpoint"},
    "checkpoint": set(),
}
# Only these layers draw or ask: the terminal libraries stay out of everything else.
UI_LIBRARIES = {"rich", "prompt_toolkit", "typer", "click"}
DRAWING_LAYERS = {"cli", "ui"}


def layer_of(module: str) -> str:
    """`gptoss_mlx.hub.download` -> `hub`; foundation modules -> `foundation`."""
    parts = module.split(".")
    if len(parts) == 1:
        return "foundation"
    name = parts[1]
    return "foundation" if name in FOUNDATION else name


def module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, absolute module) for every import in the file."""
    module = module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if node.level and not node.module:  # `from . import a, b`: a name may be a module
                out += [(node.lineno, _submodule(target, a.name)) for a in node.names]
            else:
                out.append((node.lineno, target))
    return out


def _submodule(package: str, name: str) -> str:
    folder = PKG.parent.joinpath(*package.split("."))
    is_module = (folder / f"{name}.py").is_file() or (folder / name / "__init__.py").is_file()
    return f"{package}.{name}" if is_module else package


def violations() -> list[str]:
    bad = []
    for path in sorted(PKG.rglob("*.py")):
        me = layer_of(module_name(path))
        if path.parent == PKG and path.name in ("__init__.py", "__main__.py"):
            continue  # the facade (load_model) and `python -m gptoss_mlx` sit above every layer
        for line, target in imports(path):
            where = f"{path.relative_to(PKG.parent)}:{line}"
            top = target.split(".")[0]
            if top in UI_LIBRARIES and me not in DRAWING_LAYERS:
                bad.append(f"{where} {me} imports {target} (only cli/ and ui/ draw or ask)")
            if top != "gptoss_mlx":
                continue
            other = layer_of(target)
            if other in (me, "foundation"):
                if me == "foundation" and other != "foundation":
                    bad.append(f"{where} foundation imports {target}")
                continue
            if me == "foundation" or other not in ALLOWED.get(me, set()):
                bad.append(f"{where} {me} imports {target} ({other})")
    return bad


def test_every_layer_imports_only_downwards() -> None:
    assert violations() == []


def test_the_table_covers_every_package() -> None:
    packages = {p.name for p in PKG.iterdir() if (p / "__init__.py").is_file()}
    assert packages <= set(ALLOWED), packages - set(ALLOWED)


def test_the_checker_sees_function_level_imports(tmp_path: Path) -> None:
    src = tmp_path / "m.py"
    src.write_text("def f():\n    from .hub import download\n")
    assert (2, "hub") in [(n, t) for n, t in _imports_of(src, "gptoss_mlx.model.x")]


def _imports_of(path: Path, module: str) -> list[tuple[int, str]]:
    package = module.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = package.split(".")[: len(package.split(".")) - node.level + 1]
            out.append((node.lineno, ".".join(base[2:] + [node.module or ""])))
    return out
