"""Hugging Face Hub transport, shared by serve and diffagent: repository ids and downloads of inert files.

A name is a local path or a Hub repository by one rule (`is_local_path`), and a download fetches
only the file patterns it is given (data formats: never code or pickles), through huggingface_hub's
cache, so a model loaded once loads again with HF_HUB_OFFLINE=1. Every failure is a ModelLoadError
that says what to do.
"""

from __future__ import annotations

import re
from pathlib import Path

from serve.contract import ModelLoadError

# The Hub's rule for each half of org/name: letters, digits, '-', '_', '.'; no '--' or '..'; no
# '-' or '.' at either end; at most 96 characters.
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?$")


def repo_id_problem(repo_id: str) -> str | None:
    """What makes `repo_id` an invalid Hub model id `org/name`, or None when it is valid."""
    parts = repo_id.split("/")
    if len(parts) != 2:
        return "it must have the form org/name (one '/')"
    if not all(_NAME.match(part) for part in parts):
        return ("each of org and name must be 1-96 letters, digits, '-', '_' or '.', starting with a letter or "
                "digit and not ending with '-' or '.'")
    if "--" in repo_id or ".." in repo_id:
        return "'--' and '..' are not allowed"
    return None


def is_local_path(text: str) -> bool:
    """Whether `text` names a local path rather than a Hub repository: ./x, ../x, /x, ~/x, a\\b, x, a/b/c,
    or a/b where a/ exists. So a mistyped directory is never looked up on the Hub."""
    return (text.startswith((".", "/", "~")) or "\\" in text or text.count("/") != 1
            or Path(text.split("/")[0]).exists())


def download(repo_id: str, patterns: list[str], revision: str | None = None) -> Path:
    """A local snapshot of the repository's files that match `patterns` (cached; from the cache when offline)."""
    try:
        from huggingface_hub import constants, snapshot_download
        from huggingface_hub.utils import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                           RepositoryNotFoundError, RevisionNotFoundError)
    except ImportError:
        raise ModelLoadError(f"{repo_id!r} looks like a Hub id, and downloading it needs huggingface_hub: "
                             "`pip install huggingface_hub`.") from None
    at = f" at revision {revision!r}" if revision else ""
    pinned = {"revision": revision} if revision else {}
    try:
        return Path(snapshot_download(repo_id, allow_patterns=patterns, **pinned))
    except RevisionNotFoundError:
        raise ModelLoadError(f"{repo_id} exists on the Hub but has no revision {revision!r}. Pass a branch, tag or "
                             f"full commit hash it has (see {constants.ENDPOINT}/{repo_id}/commits/main), or no "
                             "revision for the latest.") from None
    except RepositoryNotFoundError:
        raise ModelLoadError(f"no model repository {repo_id} on the Hub ({constants.ENDPOINT}), or it is private "
                             "and your token cannot read it. Check the id; for a private repo set HF_TOKEN or run "
                             f"`hf auth login`. (No local directory {repo_id} exists either.)") from None
    except LocalEntryNotFoundError:  # also an incomplete cached snapshot
        if constants.HF_HUB_OFFLINE:
            raise ModelLoadError(f"{repo_id}{at} is not (completely) in the local Hub cache "
                                 f"({constants.HF_HUB_CACHE}) and HF_HUB_OFFLINE=1 forbids downloading it. Load it "
                                 "once with network access, or unset HF_HUB_OFFLINE.") from None
        raise ModelLoadError(f"cannot reach the Hub at {constants.ENDPOINT}, and {repo_id}{at} is not (completely) "
                             f"in the local Hub cache ({constants.HF_HUB_CACHE}). Check your connection and "
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
