"""Saved chats: the versioned file format, refusals, the autosave directory, and the
`gptoss chat --list` / `--resume` command line."""

from __future__ import annotations

import json
import os
import subprocess

import pytest

from gptoss_mlx import harmony
from gptoss_mlx.errors import UserError
from gptoss_mlx.session import store as chatstore

from .conftest import run_gptoss


@pytest.fixture(autouse=True)
def clean_env(tmp_path, monkeypatch):
    for key in list(os.environ):
        if key.startswith("GPTOSS_") or key == "NO_COLOR":
            monkeypatch.delenv(key)
    monkeypatch.setenv("GPTOSS_CONFIG", str(tmp_path / "no-config.toml"))
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "state"))


@pytest.fixture(scope="module")
def tokenizer_only(tiny_checkpoint):
    from gptoss_mlx.session.open import open_session
    from gptoss_mlx.settings import resolve

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GPTOSS_CONFIG", "/nonexistent/gptoss-config.toml")
        return open_session(resolve({}), tiny_checkpoint, for_prompt_only=True)


@pytest.fixture
def session(tokenizer_only):
    """A real session (tokenizer, harmony encoding, settings) without the model's weights."""
    from gptoss_mlx.session.chat import ChatSession

    s = ChatSession(None, tokenizer_only.tokenizer, tokenizer_only.encoding)
    s.model_path = tokenizer_only.model_path
    return s


def conversation(s, *pairs: tuple[str, str]) -> None:
    for question, answer in pairs:
        s.messages.append(harmony.Message("user", question))
        s.messages.append(harmony.Message("assistant", "Let me think.", channel="analysis"))
        s.messages.append(harmony.Message("assistant", answer, channel="final"))


def test_round_trip(session, tmp_path):
    conversation(session, ("What is 2+2?", "2 + 2 = 4."), ("And 3+3?", "6"))
    session.messages[-1].interrupted = True
    session.settings.effort = "high"
    session.settings.instructions = "Be brief."
    session.settings.sampler.temperature = 0.5

    record = chatstore.to_record(session, chat_id="abc", created="2026-01-01T10:00:00+00:00")
    path = chatstore.write(tmp_path / "sub" / "chat.json", record)
    data = json.loads(path.read_text())
    assert list(data) == [
        "format",
        "version",
        "id",
        "created",
        "updated",
        "model",
        "settings",
        "messages",
    ]
    assert data["format"] == "gptoss-chat" and data["version"] == 1 and data["id"] == "abc"
    assert data["model"] == str(session.model_path)
    assert data["messages"][1] == {
        "role": "assistant",
        "content": "Let me think.",
        "channel": "analysis",
    }
    assert data["messages"][-1]["interrupted"] is True
    assert [p.name for p in path.parent.iterdir()] == ["chat.json"]  # no temp files left

    from gptoss_mlx.session.chat import ChatSession

    other = ChatSession(None, session.tokenizer, session.encoding)
    chatstore.apply_record(other, chatstore.read(path))
    assert other.messages == session.messages
    assert other.settings.effort == "high" and other.settings.instructions == "Be brief."
    assert other.settings.sampler.temperature == 0.5
    assert other.prompt_tokens() == session.prompt_tokens()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x89PNG\r\n", "is not a gptoss chat file (not JSON)"),
        (b"[1, 2]", 'is not a gptoss chat file (no "format": "gptoss-chat")'),
        (
            json.dumps({"format": "other-chat", "version": 1, "messages": []}).encode(),
            "is not a gptoss chat file",
        ),
        (
            json.dumps({"format": "gptoss-chat", "version": 2, "messages": []}).encode(),
            "was saved by a newer gptoss (chat format version 2; this one reads up to 1); upgrade gptoss-mlx to open it",
        ),
        (
            json.dumps({"format": "gptoss-chat", "version": "1", "messages": []}).encode(),
            "has a bad version field '1'",
        ),
        (json.dumps({"format": "gptoss-chat", "version": 1}).encode(), "has no message list"),
        (
            json.dumps(
                {"format": "gptoss-chat", "version": 1, "messages": [{"role": "user"}]}
            ).encode(),
            "message 1 is malformed",
        ),
        (
            json.dumps(
                {
                    "format": "gptoss-chat",
                    "version": 1,
                    "messages": [{"role": "robot", "content": "x"}],
                }
            ).encode(),
            "message 1: unknown role 'robot'",
        ),
        (
            json.dumps(
                {
                    "format": "gptoss-chat",
                    "version": 1,
                    "messages": [],
                    "settings": {"effort": "max"},
                }
            ).encode(),
            "has a bad effort setting: 'max'",
        ),
    ],
    ids=[
        "binary",
        "json-list",
        "other-format",
        "newer-version",
        "bad-version",
        "no-messages",
        "malformed-message",
        "bad-role",
        "bad-effort",
    ],
)
def test_refusals(tmp_path, content, message):
    path = tmp_path / "chat.json"
    path.write_bytes(content)
    with pytest.raises(chatstore.ChatFileError) as info:
        chatstore.read(path)
    text = str(info.value)
    assert message in text and str(path) in text
    assert "\n" not in text
    assert isinstance(info.value, UserError)


def test_missing_and_directory(tmp_path):
    with pytest.raises(chatstore.ChatFileError, match="no such chat file"):
        chatstore.read(tmp_path / "nope.json")
    with pytest.raises(chatstore.ChatFileError, match="is a directory"):
        chatstore.read(tmp_path)
    with pytest.raises(chatstore.ChatFileError, match="is a directory; give a file name"):
        chatstore.write(tmp_path, {})


def test_autosave_list_and_find(session, tmp_path):
    chats = tmp_path / "chats"
    saver = chatstore.Autosaver(chats)
    assert saver.save(session) is None and not chats.exists()  # an empty chat is not saved

    conversation(session, ("First question\nwith two lines", "answer"))
    first = saver.save(session)
    assert first == chats / f"{saver.id}.json"
    record = json.loads(first.read_text())
    record["updated"] = "2026-01-01T10:00:00+00:00"
    first.write_text(json.dumps(record))

    second = chatstore.Autosaver(chats, chat_id="20260102-second")
    conversation(session, ("Second question", "answer"))
    second.save(session)
    (chats / "broken.json").write_text("{")  # unreadable files are skipped by --list
    os.utime(chats / "broken.json", (1e9, 1e9))  # an old one: the latest chat is still fine

    listed = chatstore.list_chats(chats)
    assert [c.id for c in listed] == ["20260102-second", saver.id]
    assert listed[1].turns == 1 and listed[1].first_line == "First question"
    assert listed[0].turns == 2

    assert chatstore.find(None, chats) == chats / "20260102-second.json"
    assert chatstore.find(saver.id, chats) == first
    assert chatstore.find("20260102", chats) == chats / "20260102-second.json"
    assert chatstore.find(str(first), chats) == first
    with pytest.raises(chatstore.ChatFileError, match="no saved chat 'zzz'"):
        chatstore.find("zzz", chats)
    with pytest.raises(chatstore.ChatFileError, match="no saved chats in"):
        chatstore.find(None, tmp_path / "empty")
    # The newest autosave damaged: --resume names it instead of resuming an older chat (or
    # saying there are none).
    (chats / "broken.json").touch()
    with pytest.raises(chatstore.ChatFileError, match="latest saved chat is damaged.*broken.json"):
        chatstore.find(None, chats)


def test_adopt_keeps_only_safe_ids(tmp_path):
    saver = chatstore.Autosaver(tmp_path)
    saver.adopt({"id": "20260101-120000-ab12", "created": "2026-01-01T12:00:00+00:00"})
    assert saver.id == "20260101-120000-ab12"
    saver.adopt({"id": "../../etc/passwd"})
    assert "/" not in saver.id and saver.path.parent == tmp_path


def gptoss(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return run_gptoss(*args, env=env, timeout=60)


def test_list_and_resume_errors_on_the_command_line(session, tmp_path):
    env = {**os.environ, "COLUMNS": "120"}
    r = gptoss("chat", "--list", env=env)
    assert r.returncode == 0 and "no saved chats yet" in r.stdout

    conversation(session, ("Hello there", "Hi!"))
    saver = chatstore.Autosaver()
    saver.save(session)
    r = gptoss("chat", "--list", env=env)
    assert r.returncode == 0
    assert "ID" in r.stdout and saver.id in r.stdout and "Hello there" in r.stdout

    r = gptoss("chat", "--resume", "nothing-like-this", env=env)
    assert r.returncode == 1
    assert r.stderr.strip().splitlines() == [
        "gptoss: error: no saved chat 'nothing-like-this'; see gptoss chat --list"
    ]

    newer = tmp_path / "newer.json"
    newer.write_text(json.dumps({"format": "gptoss-chat", "version": 9, "messages": []}))
    r = gptoss("chat", "--resume", str(newer), env=env)
    assert r.returncode == 1 and "saved by a newer gptoss" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1

    r = gptoss("chat", saver.id, env=env)
    assert r.returncode == 1 and f"gptoss chat --resume {saver.id}" in r.stderr
