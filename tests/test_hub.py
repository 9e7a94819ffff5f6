"""`gptoss download` against a real HTTP server speaking the hub's protocol, with the real
huggingface_hub client, running the real CLI in a subprocess."""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path

import pytest

from gptoss_mlx.hub.cache import PARTIAL_SUFFIX

from .hub_server import (
    FakeHub,
    Repo,
    RepoFile,
    cli_env,
    gpt_oss_decoys,
    popen_cli,
    repo_from_dir,
    run_cli,
    wait_for,
)

EXPECTED_SUFFIXES = (".safetensors", ".json", ".jinja")


@pytest.fixture(scope="module")
def source(tiny_checkpoint) -> Path:
    return Path(tiny_checkpoint)


@pytest.fixture
def hub(source):
    with FakeHub() as h:
        h.add(repo_from_dir("openai/gpt-oss-20b", source, gpt_oss_decoys()))
        h.add(repo_from_dir("openai/gated-oss", source, gated=True))
        yield h


def snapshot_of(home: Path, repo_id: str) -> Path:
    snaps = list(
        (home / "hf" / "hub" / ("models--" + repo_id.replace("/", "--")) / "snapshots").iterdir()
    )
    assert len(snaps) == 1
    return snaps[0]


def one_error_line(stderr: str) -> str:
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, stderr
    assert lines[0].startswith("gptoss: error: "), stderr
    return lines[0].removeprefix("gptoss: error: ")


def last_error_line(stderr: str) -> str:
    """The one error line, last on stderr (after the non-terminal "Downloading ..." notice)."""
    assert "Traceback" not in stderr, stderr
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("gptoss: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], stderr
    return errors[0].removeprefix("gptoss: error: ")


def loadable_files(source: Path) -> set[str]:
    return {p.name for p in source.iterdir() if p.is_file() and p.name.endswith(EXPECTED_SUFFIXES)}


def test_download_fetches_only_what_the_loader_reads(hub, source, tmp_path):
    r = run_cli(["download", "20b"], cli_env(tmp_path, hub))
    assert r.returncode == 0, r.stderr
    snap = snapshot_of(tmp_path, "openai/gpt-oss-20b")
    got = {p.relative_to(snap).as_posix() for p in snap.rglob("*") if p.is_file()}
    assert got == loadable_files(source)
    assert any(n.startswith("model-") and n.endswith(".safetensors") for n in got)
    assert "model.safetensors.index.json" in got
    for name in got:
        assert (snap / name).read_bytes() == (source / name).read_bytes(), name
    fetched = [
        r.path
        for r in hub.requests
        if r.method == "GET" and ("/resolve/" in r.path or r.server == "cdn")
    ]
    assert fetched and not [
        p for p in fetched if "/original/" in p or "/metal/" in p or "README" in p
    ]
    assert not [
        r
        for r in hub.requests
        if r.method == "HEAD" and ("original/" in r.path or "metal/" in r.path)
    ]
    assert str(snap) in r.stdout


def test_second_download_transfers_nothing(hub, tmp_path):
    env = cli_env(tmp_path, hub)
    assert run_cli(["download", "openai/gpt-oss-20b"], env).returncode == 0
    hub.requests.clear()
    r = run_cli(["download", "20b"], env)
    assert r.returncode == 0, r.stderr
    assert "already downloaded" in r.stdout
    assert not [r for r in hub.requests if r.server == "cdn" or "/resolve/" in r.path]


def test_cut_connection_resumes_with_a_range_request(hub, source, tmp_path):
    shard = _shards(source)[0]
    size = (source / shard).stat().st_size
    cut = 25 * 1024 * 1024
    assert size > cut
    hub.cut_once[shard] = cut
    r = run_cli(["download", "20b"], cli_env(tmp_path, hub))
    assert r.returncode == 0, r.stderr
    gets = _transfers(hub, shard)
    assert len(gets) == 2, [(g.range, g.status, g.sent) for g in gets]
    first, second = gets
    assert first.range is None and first.sent == cut
    # Every byte received is on disk, so the resume starts exactly where the cut was.
    assert second.range == f"bytes={cut}-" and second.status == 206
    assert second.sent == size - cut  # only the rest
    snap = snapshot_of(tmp_path, "openai/gpt-oss-20b")
    assert (snap / shard).read_bytes() == (source / shard).read_bytes()


def _shards(source: Path) -> list[str]:
    return sorted(
        set(
            json.loads((source / "model.safetensors.index.json").read_text())["weight_map"].values()
        )
    )


def _blobs(home: Path, repo_id: str) -> Path:
    return home / "hf" / "hub" / ("models--" + repo_id.replace("/", "--")) / "blobs"


def _transfers(hub: FakeHub, filename: str):
    """The CDN GETs that carried an LFS file's bytes (the hub's GETs only redirect there)."""
    return [r for r in hub.file_requests(filename) if r.server == "cdn"]


def _partial(hub: FakeHub, home: Path, filename: str) -> Path:
    sha = hub.repos["openai/gpt-oss-20b"].files[filename].sha256
    return _blobs(home, "openai/gpt-oss-20b") / (sha + PARTIAL_SUFFIX)


def _start_stalled_download(hub: FakeHub, source: Path, env: dict[str, str]):
    """Start `gptoss download 20b` with the last shard stalling halfway; wait until everything
    else has arrived and the first half of that shard is on disk."""
    shards = _shards(source)
    assert len(shards) >= 2, "the tiny checkpoint should be sharded like the real one"
    stalled = shards[-1]
    half = (source / stalled).stat().st_size // 2
    hub.stall[stalled] = half
    # A read timeout would resume the stalled shard by itself on a slow machine.
    proc = popen_cli(["download", "20b"], {**env, "HF_HUB_DOWNLOAD_TIMEOUT": "600"})
    repo = hub.repos["openai/gpt-oss-20b"]
    done = [repo.files[s].sha256 for s in shards[:-1]]
    home = Path(env["HF_HOME"]).parent
    partial = _partial(hub, home, stalled)

    def others_done() -> bool:
        return all((_blobs(home, "openai/gpt-oss-20b") / h).exists() for h in done)

    def half_on_disk() -> bool:
        return partial.exists() and partial.stat().st_size >= half

    assert wait_for(lambda: others_done() and half_on_disk(), timeout=60), proc.poll()
    return proc, stalled


def _interrupted_download(hub: FakeHub, source: Path, env: dict[str, str], sig: int) -> str:
    """Stop a download with `sig` while its last shard is half there; return that shard."""
    proc, stalled = _start_stalled_download(hub, source, env)
    proc.send_signal(sig)
    try:
        proc.communicate(timeout=15)
    finally:
        hub.release()
    assert proc.returncode == (-signal.SIGKILL if sig == signal.SIGKILL else 130)
    hub.stall.clear()
    hub.requests.clear()
    return stalled


@pytest.mark.parametrize(
    "sig", [signal.SIGKILL, signal.SIGINT, signal.SIGTERM], ids=["SIGKILL", "ctrl-c", "SIGTERM"]
)
def test_an_interrupted_download_resumes_where_it_stopped(hub, source, tmp_path, sig):
    env = cli_env(tmp_path, hub)
    stalled = _interrupted_download(hub, source, env, sig)
    size = (source / stalled).stat().st_size
    partial = _partial(hub, tmp_path, stalled)
    assert partial.exists(), "the interrupted download keeps its partial file"
    kept = partial.stat().st_size
    assert kept == size // 2  # all the server sent
    # `gptoss models` lists it as incomplete, with what has arrived so far.
    r = run_cli(["models", "--json"], {**env, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    [entry] = [m for m in json.loads(r.stdout) if m["name"] == "openai/gpt-oss-20b"]
    assert not entry["complete"] and entry["format"] == "incomplete"
    others = sum((source / n).stat().st_size for n in _shards(source) if n != stalled)
    assert entry["size_bytes"] >= kept + others

    # Room is needed for the missing half and the small files (fetched after the weights), only.
    small = loadable_files(source) - set(_shards(source)) - {"config.json"}
    need = size - kept + sum((source / n).stat().st_size for n in small)
    r = run_cli(["download", "20b"], {**env, "GPTOSS_FAKE_FREE_BYTES": str(need)})
    assert r.returncode == 0, r.stderr
    [get] = _transfers(hub, stalled)
    assert get.range == f"bytes={kept}-" and get.status == 206
    assert hub.bytes_sent(stalled) == size - kept
    assert {n for n in _shards(source) if hub.file_requests(n)} == {stalled}
    snap = snapshot_of(tmp_path, "openai/gpt-oss-20b")
    assert (snap / stalled).read_bytes() == (source / stalled).read_bytes()
    blobs = _blobs(tmp_path, "openai/gpt-oss-20b")
    assert not partial.exists() and not list(blobs.glob("*.incomplete"))


def test_a_damaged_partial_file_is_caught_and_removed(hub, source, tmp_path):
    env = cli_env(tmp_path, hub)
    stalled = _interrupted_download(hub, source, env, signal.SIGKILL)
    partial = _partial(hub, tmp_path, stalled)
    data = bytearray(partial.read_bytes())
    data[len(data) // 3] ^= 0xFF  # same size, one byte flipped
    partial.write_bytes(bytes(data))

    r = run_cli(["download", "20b"], env)
    assert r.returncode == 8
    assert last_error_line(r.stderr) == (
        f"the download of {stalled} from openai/gpt-oss-20b is damaged (its sha256 differs from "
        "the hub's); deleted it: run the same command again to download it afresh"
    )
    assert not partial.exists()
    assert [g.range for g in _transfers(hub, stalled)] == [f"bytes={len(data)}-"]

    hub.requests.clear()
    r = run_cli(["download", "20b"], env)
    assert r.returncode == 0, r.stderr
    assert [(g.range, g.sent) for g in _transfers(hub, stalled)] == [
        (None, (source / stalled).stat().st_size)
    ]
    snap = snapshot_of(tmp_path, "openai/gpt-oss-20b")
    assert (snap / stalled).read_bytes() == (source / stalled).read_bytes()


def test_a_partial_file_longer_than_the_file_starts_over(hub, source, tmp_path):
    env = cli_env(tmp_path, hub)
    stalled = _interrupted_download(hub, source, env, signal.SIGKILL)
    size = (source / stalled).stat().st_size
    with _partial(hub, tmp_path, stalled).open("ab") as f:
        f.write(b"\0" * size)
    r = run_cli(["download", "20b"], env)
    assert r.returncode == 0, r.stderr
    assert [(g.range, g.sent) for g in _transfers(hub, stalled)] == [(None, size)]
    snap = snapshot_of(tmp_path, "openai/gpt-oss-20b")
    assert (snap / stalled).read_bytes() == (source / stalled).read_bytes()


def test_a_server_that_ignores_range_still_gives_the_right_file(hub, source, tmp_path):
    env = cli_env(tmp_path, hub)
    stalled = _interrupted_download(hub, source, env, signal.SIGKILL)
    hub.ignore_range = True
    r = run_cli(["download", "20b"], env)
    assert r.returncode == 0, r.stderr
    size = (source / stalled).stat().st_size
    [get] = _transfers(hub, stalled)
    assert get.range == f"bytes={size // 2}-" and get.status == 200 and get.sent == size
    snap = snapshot_of(tmp_path, "openai/gpt-oss-20b")
    assert (snap / stalled).read_bytes() == (source / stalled).read_bytes()


def test_a_second_download_of_the_same_file_at_once_is_refused(hub, source, tmp_path):
    env = cli_env(tmp_path, hub)
    proc, stalled = _start_stalled_download(hub, source, env)
    try:
        r = run_cli(["download", "20b"], env)
        partial_size = _partial(hub, tmp_path, stalled).stat().st_size
    finally:
        proc.kill()
        proc.wait(timeout=10)
        hub.release()
    assert r.returncode == 8
    assert last_error_line(r.stderr) == (
        f"another download of openai/gpt-oss-20b is writing {stalled}; let it finish (or stop it) "
        "and run the same command again"
    )
    assert partial_size == (source / stalled).stat().st_size // 2  # left alone


def test_ctrl_c_stops_the_download_at_once(hub, source, tmp_path):
    proc, _ = _start_stalled_download(hub, source, cli_env(tmp_path, hub))
    t0 = time.monotonic()
    proc.send_signal(signal.SIGINT)
    try:
        out, err = proc.communicate(timeout=15)
    finally:
        hub.release()
    assert proc.returncode == 130
    assert time.monotonic() - t0 < 10
    assert "download interrupted; run the same command again to resume" in err


def test_offline_uses_the_cache_and_says_what_to_do_when_missing(hub, tmp_path):
    env = cli_env(tmp_path, hub)
    assert run_cli(["download", "20b"], env).returncode == 0
    hub.requests.clear()
    r = run_cli(["download", "20b"], {**env, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert "already downloaded" in r.stdout
    r = run_cli(["info", "20b", "--json"], {**env, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["path"].startswith(str(tmp_path / "hf" / "hub"))

    other = cli_env(tmp_path / "empty", hub, HF_HUB_OFFLINE="1")
    r = run_cli(["download", "20b"], other)
    assert r.returncode == 8
    assert one_error_line(r.stderr) == (
        "HF_HUB_OFFLINE is set and openai/gpt-oss-20b is not downloaded; unset HF_HUB_OFFLINE to download it"
    )
    assert hub.requests == []


def test_gated_repo_without_token_says_accept_the_licence(hub, tmp_path):
    r = run_cli(["download", "openai/gated-oss"], cli_env(tmp_path, hub))
    assert r.returncode == 8
    msg = one_error_line(r.stderr)
    assert (
        msg
        == f"openai/gated-oss is gated: accept its licence on the hub ({hub.url}/openai/gated-oss) and set HF_TOKEN"
    )
    assert any(r.status == 401 for r in hub.requests)


def test_gated_repo_with_a_token_without_access(hub, tmp_path):
    r = run_cli(
        ["download", "openai/gated-oss"], cli_env(tmp_path, hub, HF_TOKEN="hf_someone_else")
    )
    assert r.returncode == 8
    assert "your HF_TOKEN has no access" in one_error_line(r.stderr)
    assert any(r.status == 403 for r in hub.requests)


def test_hf_token_is_sent_to_the_hub_but_not_to_the_cdn(hub, tmp_path):
    r = run_cli(["download", "openai/gated-oss"], cli_env(tmp_path, hub, HF_TOKEN=hub.token))
    assert r.returncode == 0, r.stderr
    assert all(
        r.headers.get("authorization") == f"Bearer {hub.token}"
        for r in hub.requests
        if r.server == "hub" and "agent-harnesses" not in r.path
    )
    cdn = [r for r in hub.requests if r.server == "cdn"]
    assert cdn and not [r for r in cdn if "authorization" in r.headers]


def test_an_invalid_token_is_reported(hub, tmp_path):
    r = run_cli(["download", "20b"], cli_env(tmp_path, hub, HF_TOKEN="hf_invalid_123"))
    assert r.returncode == 8
    assert (
        one_error_line(r.stderr)
        == "the hub rejected HF_TOKEN (401 Unauthorized); check it or unset it"
    )


def test_misspelled_repo_is_not_found(hub, tmp_path):
    r = run_cli(["download", "openai/gpt-oss-20bb"], cli_env(tmp_path, hub))
    assert r.returncode == 3
    assert one_error_line(r.stderr) == (
        "openai/gpt-oss-20bb not found on the Hugging Face hub; check the name (aliases: 20b, 120b), "
        "or set HF_TOKEN if it is private"
    )


def test_a_repo_that_is_not_gpt_oss_is_refused_before_the_weights(hub, tmp_path):
    hub.add(
        Repo(
            "someone/bert",
            {
                "config.json": RepoFile("config.json", b'{"model_type": "bert"}'),
                "model.safetensors": RepoFile("model.safetensors", b"\0" * 4096),
            },
        )
    )
    r = run_cli(["download", "someone/bert"], cli_env(tmp_path, hub))
    assert r.returncode == 4
    assert one_error_line(r.stderr).startswith(
        "someone/bert is not a gpt-oss model (model_type 'bert')"
    )
    assert not hub.file_requests("model.safetensors")


def test_unknown_revision(hub, tmp_path):
    r = run_cli(["download", "20b", "--revision", "v9"], cli_env(tmp_path, hub))
    assert r.returncode == 3
    assert one_error_line(r.stderr).startswith("revision 'v9' not found in openai/gpt-oss-20b")


def test_not_a_repo_id(tmp_path):
    r = run_cli(["download", "not a repo"], cli_env(tmp_path))
    assert r.returncode == 1
    assert "is not a model on the hub" in one_error_line(r.stderr)


def test_unreachable_hub(tmp_path):
    r = run_cli(["download", "20b"], cli_env(tmp_path, HF_ENDPOINT="http://127.0.0.1:9"))
    assert r.returncode == 8
    assert one_error_line(r.stderr).startswith(
        "cannot reach the Hugging Face hub at http://127.0.0.1:9"
    )


def test_not_enough_disk_is_refused_before_downloading(hub, source, tmp_path):
    r = run_cli(["download", "20b"], cli_env(tmp_path, hub, GPTOSS_FAKE_FREE_BYTES="1000"))
    assert r.returncode == 7
    msg = one_error_line(r.stderr)
    assert msg.startswith("not enough disk space for the download of openai/gpt-oss-20b: ")
    assert "but only 1000 B free" in msg
    fetched = {
        r.path.rsplit("/", 1)[-1]
        for r in hub.requests
        if r.server == "cdn" or "/resolve/" in r.path
    }
    assert fetched == {"config.json"}  # read first to check the repo is gpt-oss; no weights


def test_disk_check_counts_only_what_is_missing(hub, source, tmp_path):
    env = cli_env(tmp_path, hub)
    assert run_cli(["download", "20b"], env).returncode == 0
    r = run_cli(["download", "20b"], {**env, "GPTOSS_FAKE_FREE_BYTES": "0"})
    assert r.returncode == 0, r.stderr


def test_download_then_convert(hub, source, tmp_path):
    env = cli_env(tmp_path, hub)
    r = run_cli(["download", "20b", "--convert"], env, timeout=600)
    assert r.returncode == 0, r.stderr
    dst = tmp_path / "gptoss" / "models" / "gpt-oss-20b-mlx"
    assert "quantization" in json.loads((dst / "config.json").read_text())
    assert f"converted openai/gpt-oss-20b to {dst}" in r.stdout
    again = run_cli(["download", "20b", "--convert"], env)
    assert again.returncode == 0 and "already exists; kept it" in again.stdout
    models = json.loads(run_cli(["models", "--json"], env).stdout)
    assert {(m["name"], m["format"]) for m in models} == {
        ("gpt-oss-20b-mlx", "MLX"),
        ("openai/gpt-oss-20b", "HF MXFP4"),
    }


def test_mlx_community_repo_downloads_and_needs_no_conversion(hub, source, tmp_path):
    from gptoss_mlx.hub.convert import convert

    mlx_dir = tmp_path / "mlx-src"
    convert(source, mlx_dir, rest="q8", verify=False)
    hub.add(repo_from_dir("mlx-community/gpt-oss-20b-MXFP4-Q8", mlx_dir, {"README.md": b"mlx\n"}))
    env = cli_env(tmp_path, hub)
    r = run_cli(["download", "mlx-community/gpt-oss-20b-MXFP4-Q8", "--convert"], env)
    assert r.returncode == 0, r.stderr
    assert "already in MLX format; nothing to convert" in r.stdout
    models = json.loads(run_cli(["models", "--json"], env).stdout)
    assert [(m["name"], m["format"], m["quantization"]) for m in models] == [
        ("mlx-community/gpt-oss-20b-MXFP4-Q8", "MLX", "mxfp4 experts, 8-bit rest")
    ]
