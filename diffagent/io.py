"""Everything diffagent writes or reads: safetensors for tensors, JSON for the rest, never pickle.

An *artifact* is a directory (and a Hugging Face Hub repository): `config.json` with the format
version, algorithm, env and config, and `model.safetensors` with the policy's weights and
observation statistics; `load_pretrained` reads one from a path or downloads it by repo id. A *checkpoint* is the resumable training state beside it in
`checkpoints/`: the same two formats, written to a temporary folder and renamed into place so a
kill mid-write leaves the previous checkpoint intact.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
from filelock import FileLock, Timeout
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from diffagent.errors import ArtifactError, ConfigError, DiffAgentError
from serve.contract import ModelLoadError
from serve.hub import download, is_local_path, repo_id_problem

# Version 4: DiffWPO's kl_bound bounds the KL per denoising step (the path's KL is held near K times it); a
# version-3 DiffWPO config's kl_bound bounded the path's whole KL, and loads divided by K (Agent._from_meta).
# Version 3: config.json may describe a Dict observation space and records how the env is made (env_module,
# env_kwargs, env_wrappers). Version 2: config.json lists only the hyperparameters its algorithm uses.
# Version 1 listed every field of one flat config, those the algorithm ignored included; loading drops
# those (config.applicable), as they did nothing. The ONNX graph has its own version, serve's
# (serve/contract.py).
FORMAT_VERSION = 4
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
RESULTS_FILE = "results.json"
CHECKPOINT_DIR = "checkpoints"
LATEST_FILE = "latest.json"  # in CHECKPOINT_DIR: names the last complete checkpoint
METRICS_FILE = "metrics.jsonl"  # in a run directory: one JSON record per log interval
LOCK_FILE = ".lock"
_TENSOR_KEY = "__tensor__"
# A config.json or a checkpoint's state.json is a few kB to a few MB (the JSON skeleton of the state;
# tensors live in safetensors): a larger file is not one diffagent wrote.
MAX_JSON_BYTES = 64 * 2**20


# --- nested state <-> (flat tensors, JSON skeleton) ---------------------------------------------
def flatten_state(tree: Any, prefix: str = "") -> tuple[dict[str, torch.Tensor], Any]:
    """Split a nested dict/list of tensors, arrays and JSON scalars into safetensors + JSON parts."""
    if isinstance(tree, (torch.Tensor, np.ndarray)):
        tensor = torch.as_tensor(tree).detach().cpu().contiguous()
        return {prefix: tensor}, {_TENSOR_KEY: prefix}
    if isinstance(tree, dict):
        tensors, skeleton = {}, {}
        for key, value in tree.items():
            sub_tensors, skeleton[str(key)] = flatten_state(value, f"{prefix}.{key}" if prefix else str(key))
            tensors.update(sub_tensors)
        return tensors, skeleton
    if isinstance(tree, (list, tuple)):
        tensors, skeleton = {}, []
        for i, value in enumerate(tree):
            sub_tensors, sub_skeleton = flatten_state(value, f"{prefix}.{i}")
            tensors.update(sub_tensors)
            skeleton.append(sub_skeleton)
        return tensors, skeleton
    if tree is None or isinstance(tree, (bool, int, float, str)):
        return {}, tree
    if isinstance(tree, np.generic):
        return {}, tree.item()
    raise TypeError(f"cannot save a {type(tree).__name__} in a checkpoint (at {prefix!r})")


def unflatten_state(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of `flatten_state`."""
    if isinstance(skeleton, dict):
        if set(skeleton) == {_TENSOR_KEY}:
            return tensors[skeleton[_TENSOR_KEY]]
        return {k: unflatten_state(v, tensors) for k, v in skeleton.items()}
    if isinstance(skeleton, list):
        return [unflatten_state(v, tensors) for v in skeleton]
    return skeleton


# --- atomic file writes -----------------------------------------------------------------------
def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    """Call write(temporary_path), then rename it over `path`: readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp creates files private (0600); artifacts are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def json_safe(tree: Any) -> Any:
    """`tree` with every NaN or inf float replaced by None: strict JSON has no NaN, and readers choke on it."""
    if isinstance(tree, float):
        return tree if np.isfinite(tree) else None
    if isinstance(tree, dict):
        return {k: json_safe(v) for k, v in tree.items()}
    if isinstance(tree, (list, tuple)):
        return [json_safe(v) for v in tree]
    return tree


def write_json(path: str | Path, obj: Any) -> None:
    """Write JSON atomically (a reader sees the old file or the new one, never half of one)."""
    def write(tmp: str) -> None:
        with open(tmp, "w") as f:
            json.dump(json_safe(obj), f, indent=2, allow_nan=False)
            f.write("\n")
    atomic_write(Path(path), write)


def write_safetensors(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, str] | None = None) -> None:
    """Write a safetensors file atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    atomic_write(Path(path), lambda tmp: save_file(tensors, tmp, metadata=metadata))


def read_json(path: Path, what: str, max_bytes: int = MAX_JSON_BYTES) -> Any:
    if not path.is_file():
        raise ArtifactError(f"{what}: {path} is missing. Is this a directory written by diffagent "
                            "(save_pretrained or `diffagent train`)?")
    if path.stat().st_size > max_bytes:
        raise ArtifactError(f"{what}: {path} is {path.stat().st_size:,} bytes, more than the {max_bytes:,} such a "
                            "file can need; it is corrupted or not diffagent's.")
    try:
        return json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as err:
        reason = "nested too deeply" if isinstance(err, RecursionError) else str(err)
        raise ArtifactError(f"{what}: {path} is not valid JSON ({reason}); the file is corrupted. "
                            "Re-download or re-save the agent.") from None


def read_safetensors(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise ArtifactError(f"{what}: {path} is missing; the artifact is incomplete. Re-download or re-save it.")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise ArtifactError(f"{what}: {path} is not a readable safetensors file ({err}); it is corrupted or "
                            "truncated. Re-download or re-save the agent.") from None


def check_format_version(meta: dict, path: Path) -> None:
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise ArtifactError(f"{path} has no integer 'format_version'; it was not written by diffagent.")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{path} has format version {version}, newer than this diffagent understands "
                            f"({FORMAT_VERSION}). Upgrade diffagent: pip install -U diffagent")
    if version < 1:
        raise ArtifactError(f"{path} has an unknown format version {version}.")


# --- artifacts -----------------------------------------------------------------------------------
def save_artifact(directory: str | Path, meta: dict, policy_state: dict[str, torch.Tensor]) -> Path:
    """Write `model.safetensors` then `config.json` (which marks the artifact complete)."""
    directory = Path(directory)
    write_safetensors(directory / WEIGHTS_FILE, policy_state, {"format_version": str(FORMAT_VERSION)})
    write_json(directory / CONFIG_FILE, {"format_version": FORMAT_VERSION, **meta})
    return directory


def contained(path: Path, root: Path) -> Path:
    """`path`, after checking that it resolves (symlinks followed) to a place inside `root`.

    Loading reads nothing outside the artifact or run directory it was given: a symlink or a
    `latest.json` naming ../elsewhere or /etc/... is an ArtifactError.
    """
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise ArtifactError(f"{path} points outside {root} (to {resolved}); diffagent reads only files inside the "
                            "directory it loads. Replace the link with the file itself.")
    return path


def load_artifact(directory: str | Path, root: str | Path | None = None) -> tuple[dict, dict[str, torch.Tensor]]:
    """(config.json contents, policy tensors) of an artifact directory, or an ArtifactError.

    Every file must resolve inside `root` (default: the directory itself; a Hub snapshot's files are
    links into its repository's cache folder, which is then the root).
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise ArtifactError(f"no agent at {directory}: the directory does not exist.")
    root = Path(root) if root is not None else directory
    meta = read_json(contained(directory / CONFIG_FILE, root), "cannot load agent")
    if not isinstance(meta, dict):
        raise ArtifactError(f"{directory / CONFIG_FILE} must hold a JSON object; it is corrupted.")
    check_format_version(meta, directory / CONFIG_FILE)
    return meta, read_safetensors(contained(directory / WEIGHTS_FILE, root), "cannot load agent")


# What loading an artifact downloads from the Hub: data formats only, never code or pickles.
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.onnx", "*.md"]


def load_pretrained(path_or_repo_id: str | os.PathLike, revision: str | None = None, *,
                    token: str | bool | None = None, cache_dir: str | os.PathLike | None = None,
                    local_files_only: bool = False) -> tuple[dict, dict[str, torch.Tensor], str]:
    """(config.json contents, policy tensors, a name for messages) of a local artifact or a Hub repo.

    An existing directory is loaded as is. A `pathlib.Path`, or a string that looks like a path
    (./x, /x, ~/x, a/b/c, or a/b where a/ exists), is never looked up on the Hub. `org/name` is
    downloaded at `revision` (branch, tag or commit hash; default main) into the Hub cache, with
    huggingface_hub's `token`, `cache_dir` and `local_files_only`.
    """
    text = os.fspath(path_or_repo_id)
    local = Path(text).expanduser()
    if local.exists() or isinstance(path_or_repo_id, os.PathLike) or is_local_path(text):
        if not local.exists():
            raise ArtifactError(f"no agent at {text}: the directory does not exist. It looks like a local path, "
                                "so it was not looked up on the Hub (a Hub repo id has the form org/name).")
        if revision is not None:
            raise ConfigError(f"revision={revision!r} applies to Hub repos only; {text} is a local directory.")
        meta, weights = load_artifact(local)
        return meta, weights, text
    problem = repo_id_problem(text)
    if problem:
        raise ArtifactError(f"no agent at {text}: it is not an existing directory, and {text!r} is not a valid "
                            f"Hugging Face repo id: {problem}.")
    source = text if revision is None else f"{text}@{revision}"
    try:
        directory = download(text, DOWNLOAD_PATTERNS, revision, token=token, cache_dir=cache_dir,
                             local_files_only=local_files_only)
    except ModelLoadError as err:
        raise ArtifactError(str(err)) from None
    try:
        meta, weights = load_artifact(directory, root=directory.parents[1])  # snapshot files link into ../../blobs
    except ArtifactError as err:
        raise ArtifactError(f"{source} on the Hub: {err} If the repository's copy is broken, push the agent "
                            f"again (diffagent push); if only your cached copy is, delete it with "
                            f"`hf cache rm model/{text}` and load again.") from None
    return meta, weights, source


# --- checkpoints -----------------------------------------------------------------------------------
_CHECKPOINT_NAME = re.compile(r"^step_\d{10}$")


def save_checkpoint(run_dir: str | Path, step: int, state: dict, keep: int = 2) -> Path:
    """Write training state to run_dir/checkpoints/step_N atomically and point `latest` at it."""
    root = Path(run_dir) / CHECKPOINT_DIR
    root.mkdir(parents=True, exist_ok=True)
    tensors, skeleton = flatten_state(state)
    final = root / f"step_{step:010d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=".partial-"))
    try:
        write_safetensors(tmp / "state.safetensors", tensors)
        write_json(tmp / "state.json", {"format_version": FORMAT_VERSION, "step": step, "state": skeleton})
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    write_json(root / LATEST_FILE, {"checkpoint": final.name, "step": step})
    for old in sorted(p for p in root.glob("step_*") if p.is_dir())[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for partial in root.glob(".partial-*"):  # left by a run killed mid-write
        if partial != tmp:
            shutil.rmtree(partial, ignore_errors=True)
    return final


def load_checkpoint(run_dir: str | Path) -> dict:
    """The state saved by the last completed `save_checkpoint` in run_dir."""
    run_dir = Path(run_dir)
    root = run_dir / CHECKPOINT_DIR
    what = f"cannot resume {run_dir}"
    if not (root / LATEST_FILE).is_file():
        if not run_dir.is_dir():
            raise ArtifactError(f"{what}: the directory does not exist.")
        raise ArtifactError(f"{what}: it holds no checkpoint ({root / LATEST_FILE} is missing), so it is not a run "
                            "directory, or its run was stopped before the first checkpoint was written. Train it "
                            f"again from the start: delete {run_dir} and run the same `diffagent train` command.")
    pointer = read_json(contained(root / LATEST_FILE, run_dir), what)
    name = pointer.get("checkpoint") if isinstance(pointer, dict) else None
    if not isinstance(name, str) or not _CHECKPOINT_NAME.match(name):
        raise ArtifactError(f"{what}: {root / LATEST_FILE} must name a checkpoint folder step_NNNNNNNNNN beside it, "
                            f"got {str(name)[:80]!r}; it is corrupted.")
    folder = root / name
    meta = read_json(contained(folder / "state.json", run_dir), what)
    if not isinstance(meta, dict) or "state" not in meta:
        raise ArtifactError(f"{what}: {folder / 'state.json'} is not a checkpoint's state; it is corrupted.")
    check_format_version(meta, folder / "state.json")
    tensors = read_safetensors(contained(folder / "state.safetensors", run_dir), what)
    try:
        return unflatten_state(meta["state"], tensors)
    except (KeyError, TypeError, RecursionError) as err:
        raise ArtifactError(f"{what}: {folder} holds a state whose parts do not match ({err!r}); it is corrupted.") from None


@contextlib.contextmanager
def run_lock(run_dir: str | Path, wait_seconds: float = 2.0) -> Iterator[None]:
    """Hold an exclusive lock on a run directory while training writes to it.

    Two processes training into one directory would interleave their checkpoints and metrics; the
    second is refused after `wait_seconds`, which rides out a brief `bench status` probe. The lock
    is filelock's (flock on POSIX, LockFileEx on Windows): it dies with the process holding it, so a
    kill never leaves a stale one.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(run_dir / LOCK_FILE, timeout=wait_seconds)
    try:
        lock.acquire()
    except Timeout:
        raise DiffAgentError(f"{run_dir} is being trained by another process; wait for it to finish, or stop it, or "
                             "train into another directory") from None
    try:
        yield
    finally:
        lock.release()


def run_is_locked(run_dir: str | Path) -> bool:
    """Whether a process holds `run_lock` on run_dir now (a probe that holds the lock for an instant if free)."""
    path = Path(run_dir) / LOCK_FILE
    if not path.is_file():
        return False
    probe = FileLock(path, timeout=0)
    try:
        probe.acquire()
    except Timeout:
        return True
    probe.release()
    return False


def checkpoint_step(run_dir: str | Path) -> int | None:
    """The step of run_dir's last complete checkpoint, where a resumed run restarts, or None without one."""
    pointer = Path(run_dir) / CHECKPOINT_DIR / LATEST_FILE
    if not pointer.is_file():
        return None
    latest = read_json(pointer, f"the checkpoint of {run_dir}")
    step = latest.get("step") if isinstance(latest, dict) else None
    return step if isinstance(step, int) else None


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether run_dir holds a completed checkpoint to resume from."""
    return (Path(run_dir) / CHECKPOINT_DIR / LATEST_FILE).is_file()


def drop_records_after(path: str | Path, step: int) -> None:
    """Forget the metrics.jsonl records logged after the checkpoint a run resumes from: those steps are trained
    again, and a curve must not hold two records of one step."""
    path = Path(path)
    if not path.is_file():
        return
    kept = "".join(json.dumps(record) + "\n" for record in read_jsonl(path) if record.get("step", 0) <= step)
    atomic_write(path, lambda tmp: Path(tmp).write_text(kept))


def read_jsonl(path: str | Path) -> list[dict]:
    """The records of a JSON-lines file (metrics.jsonl); [] when it does not exist.

    A damaged last line, what a kill in mid-append leaves, is dropped; damage anywhere else is an
    ArtifactError that names the file.
    """
    path = Path(path)
    if not path.is_file():
        return []
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    records = []
    for number, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if number == len(lines):
                break
            raise ArtifactError(f"{path} line {number} is not valid JSON ({err}); the file is damaged. "
                                "Delete that line (or the file) and try again.") from None
    return records
