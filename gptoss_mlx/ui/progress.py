"""Progress on the terminal (stderr): prefill of long prompts, convert, download. The layers below
report through plain callbacks; this is where they are drawn."""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any

from ..units import human_bytes

SHOW_ABOVE_TOKENS = 1024


class PrefillProgress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar = None
        self._task = None

    def __enter__(self) -> PrefillProgress:
        return self

    def update(self, done: int, total: int) -> None:
        if not self.enabled or total <= SHOW_ABOVE_TOKENS:
            return
        if self._bar is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("reading prompt"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                console=Console(stderr=True),
                transient=True,
            )
            self._task = self._bar.add_task("prefill", total=total)
            self._bar.start()
        self._bar.update(self._task, completed=done)
        if done >= total:
            self.close()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class ConvertBar:
    """`gptoss convert`'s bar: a callback `(bytes_done, bytes_total)`; transient, terminal only."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, done: int, total: int) -> None:
        if not self.enabled:
            return
        if self._bar is None:
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
            )

            self._bar = Progress(
                TextColumn("converting"),
                BarColumn(),
                DownloadColumn(),
                TimeRemainingColumn(),
                transient=True,
            )
            self._task = self._bar.add_task("convert", total=total)
            self._bar.start()
        self._bar.update(self._task, completed=done)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def __enter__(self) -> ConvertBar:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class DownloadBars:
    """Download progress (hub.download's `progress=`): a bar per weight file and one in all on a
    terminal, one line otherwise."""

    def __init__(self, live: bool | None = None) -> None:
        self.live = sys.stderr.isatty() if live is None else live
        self._progress: Any = None
        self._tasks: dict[str, Any] = {}
        self._total: Any = None

    def start(
        self, repo_id: str, missing: Sequence[tuple[str, int]], total: int, done: int
    ) -> None:
        if not self.live:
            size = human_bytes(sum(n for _, n in missing))
            print(f"Downloading {repo_id} ({len(missing)} file(s), {size})...", file=sys.stderr)
            return
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            DownloadColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
            TransferSpeedColumn,
        )

        self._progress = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(binary_units=True),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=Console(stderr=True),
        )
        self._total = self._progress.add_task(f"[bold]{repo_id}", total=total, completed=done)
        for path, size in missing:
            if path.endswith(".safetensors"):
                self._tasks[path] = self._progress.add_task(f"  {path}", total=size)
        self._progress.start()

    def update(self, done_by_file: Mapping[str, int], done: int) -> None:
        if self._progress is None:
            return
        for path, task in self._tasks.items():
            self._progress.update(task, completed=done_by_file.get(path, 0))
        self._progress.update(self._total, completed=done)

    def stop(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
