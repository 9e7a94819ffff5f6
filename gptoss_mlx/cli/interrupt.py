"""Ctrl-C during a download: the one place besides `cli.main` that ends the process."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator


def _exit_interrupted(*_: object) -> None:
    print(
        "gptoss: download interrupted; run the same command again to resume (what arrived is kept)",
        file=sys.stderr,
        flush=True,
    )
    sys.stdout.flush()
    os._exit(130)


@contextlib.contextmanager
def exit_on_interrupt() -> Iterator[None]:
    """Ctrl-C or SIGTERM during a download exits at once (130).

    Download worker threads (ours and snapshot_download's) cannot be cancelled: after a
    KeyboardInterrupt the process would wait for them to finish their files. A SIGINT handler that
    exits also fires while the main thread is blocked joining them. Written data is already in the
    kernel, so the partial files keep it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGINT, _exit_interrupted)
    previous_term = signal.signal(signal.SIGTERM, _exit_interrupted)
    try:
        yield
    except KeyboardInterrupt:
        _exit_interrupted()
    finally:
        signal.signal(signal.SIGINT, previous)
        signal.signal(signal.SIGTERM, previous_term)
