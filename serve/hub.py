"""Hugging Face Hub transport, shared by serve and diffagent: repository ids and downloads of inert files.

A name is a local path or a Hub repository by one rule (`is_local_path`), and a download fetches
only the file patterns it is given (data formats: never code or pickles), through huggingface_hub's
cache, so a model loaded once loads again with HF_HUB_OFFLINE=1. Every failure is a ModelLoadError
that says what to do.
"""

from __future__ import annotations

from pathlib import Path

from serve.contract import ModelLoadError

def repo_id_problem(repo_id: str) -> str | None:
    """What makes `repo_id` an invalid Hub model id `org/name`, or None when it is valid: huggingface_hub's own
    rule (`validate_repo_id`), with the namespace required."""
    try:
        from huggingface_hub.utils import HFValidationError, validate_repo_id
    except ImportError:
        return "checking a Hub id needs huggingface_hub (`pip install huggingface_hub`)"
    if repo_id.count("/") != 1:
        return "it must have the form org/name (one '/')"
    try:
        validate_repo_id(repo_id)
    except HFValidationError as err:
        return brief(err).rstrip(".")
    return None


def is_local_path(text: str) -> bool:
    """Whether `text` names a local path rather than a Hub repository: ./x, ../x, /x, ~/x, a\\b, x, a/b/c,
    or a/b where a/ exists. So a mistyped directory is never looked up on the Hub."""
    return (text.startswith((".", "/", "~")) or "\\" in text or text.count("/") != 1
            or Path(text.split("/")[0]).exists())


def download(repo_id: str, patterns: list[str], revision: str | None = None, *, token: str | bool | None = None,
             cache_dir: str | Path | None = None, local_files_only: bool = False) -> Path:
    """A local snapshot of the repository's files that match `patterns` (cached; from the cache when offline).

    `token` reads a private repo (default: HF_TOKEN, then the cached login), `cache_dir` replaces the Hub
    cache, and `local_files_only` never goes online: huggingface_hub's arguments of the same names.
    """
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.utils import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                           RepositoryNotFoundError, RevisionNotFoundError)
    except ImportError:
        raise ModelLoadError(f"{repo_id!r} looks like a Hub id, and downloading it needs huggingface_hub: "
                             "`pip install huggingface_hub`.") from None
    at = f" at revision {revision!r}" if revision else ""
    given = {name: value for name, value in (("revision", revision), ("token", token), ("cache_dir", cache_dir),
                                             ("local_files_only", local_files_only)) if value}
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, **given))
    except RevisionNotFoundError:
        raise ModelLoadError(f"{repo_id} exists on the Hub but has no revision {revision!r}. Pass a branch, tag or "
                             f"full commit hash it has (see {constants.ENDPOINT}/{repo_id}/commits/main), or no "
                             "revision for the latest.") from None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"no model repository {repo_id} on the Hub ({constants.ENDPOINT}), or it is private "
                             "and your token cannot read it. Check the id; for a private repo set HF_TOKEN or run "
                             f"`hf auth login`. (No local directory {repo_id} exists either.)") from None
    except LocalEntryNotFoundError:  # also an incomplete cached snapshot
        cache = cache_dir or constants.HF_HUB_CACHE
        if constants.HF_HUB_OFFLINE or local_files_only:
            why = "local_files_only=True forbids" if local_files_only else "HF_HUB_OFFLINE=1 forbids"
            raise ModelLoadError(f"{repo_id}{at} is not (completely) in the local Hub cache ({cache}) and {why} "
                                 "downloading it. Load it once online, without that setting.") from None
        raise ModelLoadError(f"cannot reach the Hub at {constants.ENDPOINT}, and {repo_id}{at} is not (completely) "
                             f"in the local Hub cache ({cache}). Check your connection and "
                             "HF_ENDPOINT, then try again.") from None
    except EntryNotFoundError as err:
        raise ModelLoadError(f"{repo_id}{at}: a file the Hub listed could not be downloaded ({brief(err)}). "
                             "Try again; if it persists, push the model again.") from None
    except HfHubHTTPError as err:
        raise ModelLoadError(f"downloading {repo_id}{at} failed: {brief(err)}. Try again later.") from None


def brief(err: Exception) -> str:
    """An error's message on one line, cut to a readable length (the Hub's can run to paragraphs)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


__all__ = ["repo_id_problem", "is_local_path", "download", "brief"]
