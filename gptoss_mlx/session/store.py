"""Saved chats: one versioned JSON file per conversation, written atomically.

    {"format": "gptoss-chat", "version": 1, "id": ..., "created": ..., "updated": ...,
     "model": ..., "settings": {...}, "messages": [{"role": ..., "content": ..., ...}]}

Autosaves live in state_dir()/chats/<id>.json; /save and /load use the same format anywhere.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import math
import os
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..fsutil import atomic_write_text
from ..paths import state_dir

FORMAT = "gptoss-chat"
VERSION = 1
_SAFE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")


class ChatFileError(UserError):
    advice = "`gptoss chat --list` shows the saved chats"


def chats_dir() -> Path:
    return state_dir() / "chats"


def new_id() -> str:
    """Sortable by creation time, unique enough for one user's chats."""
    return _dt.datetime.now().strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def _messages_from(dicts: list[dict[str, Any]]) -> list[Any]:
    from ..harmony import Message

    return [Message.from_dict(d) for d in dicts]


def to_record(
    session: Any, *, chat_id: str, created: str, model: str | None = None
) -> dict[str, Any]:
    """The saved form of a session's conversation and settings."""
    state = session.to_dict()
    return {
        "format": FORMAT,
        "version": VERSION,
        "id": chat_id,
        "created": created,
        "updated": now(),
        "model": model if model is not None else str(getattr(session, "model_path", "") or ""),
        "settings": state["settings"],
        "messages": [m.to_dict() for m in session.messages],
    }


def apply_record(session: Any, record: dict[str, Any]) -> None:
    """Replace the session's conversation and chat settings with a saved one."""
    session.load_dict({"settings": record.get("settings", {}), "messages": record["messages"]})


def write(path: Path | str, record: dict[str, Any]) -> Path:
    path = Path(path).expanduser()
    if path.is_dir():
        raise ChatFileError(f"{path} is a directory; give a file name, e.g. {path / 'chat.json'}")
    try:
        atomic_write_text(path, json.dumps(record, ensure_ascii=False, indent=1) + "\n")
    except OSError as e:
        raise ChatFileError(f"cannot write {path}: {e.strerror or e}") from e
    return path


def read(path: Path | str) -> dict[str, Any]:
    """A validated chat record; ChatFileError (one line) if the file is not one we can use."""
    path = Path(path).expanduser()
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise ChatFileError(f"no such chat file: {path}") from None
    except IsADirectoryError:
        raise ChatFileError(f"{path} is a directory, not a chat file") from None
    except OSError as e:
        raise ChatFileError(f"cannot read {path}: {e.strerror or e}") from e
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ChatFileError(f"{path} is not a gptoss chat file (not JSON)") from None
    return validate(data, path)


def validate(data: Any, path: Path | str = "chat") -> dict[str, Any]:
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise ChatFileError(f'{path} is not a gptoss chat file (no "format": "{FORMAT}")')
    version = data.get("version")
    if not isinstance(version, int) or version < 1:
        raise ChatFileError(f"{path} has a bad version field {version!r}")
    if version > VERSION:
        raise ChatFileError(
            f"{path} was saved by a newer gptoss (chat format version {version}; this one reads "
            f"up to {VERSION}); upgrade gptoss-mlx to open it"
        )
    messages = data.get("messages")
    if not isinstance(messages, list):
        raise ChatFileError(f"{path} has no message list")
    for i, m in enumerate(messages):
        if not (
            isinstance(m, dict)
            and isinstance(m.get("role"), str)
            and isinstance(m.get("content"), str)
        ):
            raise ChatFileError(
                f"{path}: message {i + 1} is malformed (needs a role and text content)"
            )
        try:
            _messages_from([m])
        except (ValueError, TypeError) as e:
            raise ChatFileError(f"{path}: message {i + 1}: {e}") from None
    settings = data.get("settings", {})
    if not isinstance(settings, dict):
        raise ChatFileError(f"{path} has a malformed settings field")
    for key, ok in _SETTING_CHECKS.items():
        if key in settings and not ok(settings[key]):
            raise ChatFileError(f"{path} has a bad {key} setting: {settings[key]!r}")
    return data


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)


def _int_or_none(v: Any) -> bool:
    return v is None or (isinstance(v, int) and not isinstance(v, bool))


def _efforts() -> tuple[str, ...]:
    from ..harmony.messages import EFFORTS  # harmony loads only when a chat file is read

    return EFFORTS


_SETTING_CHECKS = {
    "effort": lambda v: v in _efforts(),
    "instructions": lambda v: v is None or isinstance(v, str),
    "date": lambda v: v is None or isinstance(v, str),
    "max_tokens": lambda v: v is None or (_int_or_none(v) and v > 0),
    "temperature": lambda v: _number(v) and v >= 0,
    "top_p": lambda v: _number(v) and 0 < v <= 1,
    "top_k": lambda v: _int_or_none(v) and v is not None and v >= 0,
    "min_p": lambda v: _number(v) and 0 <= v < 1,
    "seed": lambda v: v is None or (_int_or_none(v) and 0 <= v < 2**64),
}


# ---- the autosave directory ----------------------------------------------------------------


@dataclass
class ChatSummary:
    id: str
    path: Path
    updated: str
    turns: int
    first_line: str
    model: str


def summarize(record: dict[str, Any], path: Path) -> ChatSummary:
    users = [m["content"] for m in record["messages"] if m.get("role") == "user"]
    first = next(
        (line.strip() for line in (users[0] if users else "").splitlines() if line.strip()), ""
    )
    return ChatSummary(
        id=str(record.get("id") or path.stem),
        path=path,
        updated=str(record.get("updated", "")),
        turns=len(users),
        first_line=first,
        model=str(record.get("model", "")),
    )


def list_chats(directory: Path | None = None) -> list[ChatSummary]:
    """Saved chats, most recently updated first; files we cannot read are skipped."""
    directory = directory or chats_dir()
    out = []
    for path in directory.glob("*.json") if directory.is_dir() else []:
        try:
            out.append(summarize(read(path), path))
        except ChatFileError:
            continue
    out.sort(key=lambda s: (_sort_time(s.updated), s.id), reverse=True)
    return out


def _sort_time(stamp: str) -> float:
    try:
        return _dt.datetime.fromisoformat(stamp).timestamp()
    except ValueError:
        return 0.0


def _check_newest_readable(directory: Path) -> None:
    """The latest chat is the newest file: if that one is damaged, say so rather than quietly
    resuming an older chat (or claiming there is none)."""
    try:
        files = [(p.stat().st_mtime, p) for p in directory.glob("*.json")]
    except OSError:
        return
    if not files:
        return
    newest = max(files)[1]
    try:
        read(newest)
    except ChatFileError as e:
        raise ChatFileError(
            f"the latest saved chat is damaged ({e}); move {newest} away, or resume another by id"
            " (gptoss chat --list)"
        ) from None


def find(ref: str | None, directory: Path | None = None) -> Path:
    """The chat file for `--resume [ref]`: the latest chat, a file path, an id or an id prefix."""
    directory = directory or chats_dir()
    if not ref:
        _check_newest_readable(directory)
        chats = list_chats(directory)
        if not chats:
            raise ChatFileError(f"no saved chats in {directory} yet")
        return chats[0].path
    as_path = Path(ref).expanduser()
    if as_path.is_file():
        return as_path
    exact = directory / f"{ref}.json"
    if exact.is_file():
        return exact
    matches = (
        sorted(directory.glob(f"{ref}*.json")) if directory.is_dir() and "/" not in ref else []
    )
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise ChatFileError(
            f"{ref!r} matches {len(matches)} chats; give more of the id (gptoss chat --list)"
        )
    raise ChatFileError(f"no saved chat {ref!r}; see gptoss chat --list")


class Autosaver:
    """Keeps one conversation's file in chats_dir() up to date.

    While a process writes a chat it holds a lock on `.<id>.lock` beside it: the same chat
    resumed in a second terminal continues under a new id (`forked_from` names the original)
    instead of the two overwriting each other's turns."""

    def __init__(
        self, directory: Path | None = None, chat_id: str | None = None, created: str | None = None
    ) -> None:
        self.directory = directory or chats_dir()
        self.id = chat_id or new_id()
        self.created = created or now()
        self.forked_from: str | None = None
        self._lock: tuple[str, Any] | None = None

    @property
    def path(self) -> Path:
        return self.directory / f"{self.id}.json"

    def save(self, session: Any) -> Path | None:
        if not session.messages:
            return None
        if not self._acquire():
            self.forked_from, self.id, self.created = self.id, new_id(), now()
            self._acquire()
        return write(self.path, to_record(session, chat_id=self.id, created=self.created))

    def adopt(self, record: dict[str, Any]) -> None:
        """Continue a loaded chat under its own id (a foreign id that is no safe file name gets a
        new one, and so does a chat another process is writing: see forked_from)."""
        chat_id = str(record.get("id") or "")
        self.id = chat_id if _SAFE_ID.fullmatch(chat_id) else new_id()
        self.created = str(record.get("created") or now())
        self.forked_from = None
        if not self._acquire():
            self.forked_from, self.id = self.id, new_id()
            self._acquire()

    def restart(self) -> None:
        """A new conversation gets a new file; the old one stays saved."""
        self.release()
        self.id = new_id()
        self.created = now()
        self.forked_from = None

    def _acquire(self) -> bool:
        """Lock this chat id for this process; False if another process holds it."""
        if self._lock is not None and self._lock[0] == self.id:
            return True
        self.release()
        lock = self.directory / f".{self.id}.lock"
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            fh = open(lock, "a")  # noqa: SIM115 (held open: the lock lives with it)
        except OSError:
            return True  # no lock without a writable folder; the save itself will say why
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.close()
            return False
        self._lock = (self.id, fh)
        return True

    def release(self) -> None:
        """Give up the chat's lock (and its lock file): at exit, or when the chat changes."""
        if self._lock is None:
            return
        chat_id, fh = self._lock
        self._lock = None
        with contextlib.suppress(OSError):
            os.unlink(self.directory / f".{chat_id}.lock")
        fh.close()
