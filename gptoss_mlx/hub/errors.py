"""Hub failures as one-line errors that say what to do (exit codes from errors.py)."""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Iterator

from ..errors import (
    DownloadError,
    ModelNotFoundError,
    NotEnoughDiskError,
    UserError,
)
from .cache import ALIASES, hf_endpoint


def _is_network_error(e: BaseException) -> bool:
    names = {
        "ConnectError",
        "ConnectTimeout",
        "TimeoutException",
        "NetworkError",
        "ConnectionError",
        "Timeout",
        "ReadTimeout",
        "RemoteProtocolError",
        "OfflineModeIsEnabled",
    }
    seen: set[int] = set()
    cur: BaseException | None = e
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if any(c.__name__ in names for c in type(cur).__mro__) or isinstance(cur, ConnectionError):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _first_line(e: BaseException) -> str:
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


@contextlib.contextmanager
def hub_errors(repo_id: str, revision: str | None = None) -> Iterator[None]:
    """Turn huggingface_hub's exceptions into one-line errors that say what to do."""
    from huggingface_hub import errors as hfe

    aliases = ", ".join(ALIASES)
    try:
        yield
    except UserError:
        raise
    except hfe.GatedRepoError as e:
        page = f"{hf_endpoint()}/{repo_id}"
        if _has_token():
            raise DownloadError(
                f"{repo_id} is gated and your HF_TOKEN has no access: accept its licence at {page} "
                "with that account (or use a token of an account that has)"
            ) from e
        raise DownloadError(
            f"{repo_id} is gated: accept its licence on the hub ({page}) and set HF_TOKEN"
        ) from e
    except hfe.RevisionNotFoundError as e:
        raise ModelNotFoundError(
            f"revision {revision!r} not found in {repo_id}; check --revision (a branch, tag or commit)"
        ) from e
    except hfe.RepositoryNotFoundError as e:
        raise ModelNotFoundError(
            f"{repo_id} not found on the Hugging Face hub; check the name (aliases: {aliases})"
            + ("" if _has_token() else ", or set HF_TOKEN if it is private")
        ) from e
    except hfe.HFValidationError as e:
        raise UserError(
            f"{repo_id!r} is not a valid hub repo id; use owner/name (aliases: {aliases})"
        ) from e
    except hfe.HfHubHTTPError as e:
        status = getattr(getattr(e, "response", None), "status_code", None)
        if status == 401:
            raise DownloadError(
                "the hub rejected HF_TOKEN (401 Unauthorized); check it or unset it"
            ) from e
        raise DownloadError(
            f"the hub answered {status} for {repo_id} ({_first_line(e)}); try again later"
        ) from e
    except OSError as e:
        if e.errno == errno.ENOSPC:
            raise NotEnoughDiskError(
                f"the disk filled up while downloading {repo_id}; free some space (or set HF_HOME to a "
                "bigger disk) and run the same command again to resume"
            ) from e
        if _is_network_error(e) or isinstance(e, hfe.LocalEntryNotFoundError):
            raise DownloadError(_unreachable(repo_id)) from e
        raise DownloadError(
            f"download of {repo_id} failed ({_first_line(e)}); run the same command again to resume"
        ) from e
    except Exception as e:
        if _is_network_error(e):
            raise DownloadError(_unreachable(repo_id)) from e
        raise


def _unreachable(repo_id: str) -> str:
    return (
        f"cannot reach the Hugging Face hub at {hf_endpoint()} to get {repo_id}; check your connection "
        "(or set HF_HUB_OFFLINE=1 to use downloaded models only)"
    )


def _has_token() -> bool:
    from huggingface_hub import get_token

    return bool(get_token())
