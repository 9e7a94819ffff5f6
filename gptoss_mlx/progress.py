"""A prefill progress bar for long prompts on a terminal (stderr, transient)."""

from __future__ import annotations

from types import TracebackType

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
