"""Publish an adapter run or a merged model to the Hugging Face Hub with huggingface_hub.

The upload is one commit (all files or none), retried with backoff on network failure. The token
comes from HF_TOKEN or the Hugging Face login and only ever travels in request headers: it is not
written to any file and not printed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from qlcode.errors import QlcodeError

try:  # huggingface_hub 2.x talks through httpx2, 1.x through httpx
    from httpx2 import TransportError
except ImportError:  # pragma: no cover
    from httpx import TransportError

SKIPPED_DIRS = {"checkpoints"}


@dataclass
class PushReport:
    repo_id: str
    revision: str
    files: list[str]
    commit_url: str


def files_to_push(path: Path) -> list[Path]:
    """Everything a user needs from the directory: not checkpoints, not hidden temporary files."""
    return sorted(p for p in path.rglob("*") if p.is_file()
                  and not SKIPPED_DIRS & set(p.relative_to(path).parts) and not p.name.startswith("."))


def _token(token: str | None) -> str:
    from huggingface_hub import get_token

    found = token or get_token()
    if not found:
        raise QlcodeError("no Hugging Face token: set HF_TOKEN, or log in with `hf auth login` (a token with write access)")
    return found


def push(path: str | Path, repo_id: str, private: bool = True, revision: str | None = None, token: str | None = None,
         endpoint: str | None = None, attempts: int = 4, backoff: float = 2.0) -> PushReport:
    from huggingface_hub import CommitOperationAdd, HfApi
    from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled

    path = Path(path)
    if not (path / "adapter_config.json").is_file() and not (path / "config.json").is_file():
        raise QlcodeError(f"{path}: neither an adapter run (adapter_config.json) nor a model directory (config.json)")
    api = HfApi(endpoint=endpoint, token=_token(token))
    files = files_to_push(path)

    def http_error(e: HfHubHTTPError, doing: str) -> QlcodeError:
        status = e.response.status_code if e.response is not None else None
        if status in (401, 403):
            return QlcodeError(f"the Hub refused {doing} {repo_id} ({status}): the namespace is not yours or the token "
                               "has no write access; use your own user/name or a token with write access")
        return QlcodeError(f"the Hub answered {status} while {doing} {repo_id}: {e}")

    try:
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
    except HfHubHTTPError as e:
        raise http_error(e, "creating") from None
    except OfflineModeIsEnabled:
        raise QlcodeError("HF_HUB_OFFLINE is set, so the Hub is not asked: nothing was uploaded; "
                          "unset HF_HUB_OFFLINE to push") from None
    except TransportError as e:
        raise QlcodeError(f"cannot reach the Hub ({e}); nothing was uploaded") from None

    operations = [CommitOperationAdd(path_in_repo=str(p.relative_to(path)), path_or_fileobj=str(p)) for p in files]
    for attempt in range(1, attempts + 1):
        try:
            info = api.create_commit(repo_id, operations=operations, revision=revision,
                                     commit_message=f"Upload {path.name} with qlcode")
            return PushReport(repo_id, revision or "main", [str(p.relative_to(path)) for p in files], info.commit_url)
        except HfHubHTTPError as e:
            status = e.response.status_code if e.response is not None else None
            if status is not None and status < 500:
                raise http_error(e, "uploading to") from None
            failure = f"{status} {e}"
        except TransportError as e:
            failure = str(e) or type(e).__name__
        if attempt < attempts:
            time.sleep(backoff * 2 ** (attempt - 1))
    raise QlcodeError(f"uploading to {repo_id} failed {attempts} times ({failure}): the repository exists, but none of "
                      f"the {len(files)} files was uploaded (a commit is all or nothing); run the same push again")
