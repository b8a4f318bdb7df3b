"""The zoo's trained models (zoo/models/NAME/): small artifact directories kept in the repository,
so that `Agent.from_pretrained("zoo/models/NAME")` and `serve` work offline out of the box.

    diffagent zoo add runs/zoo/Hopper-v4/diffsac/s0 diffsac-Hopper-v4   # copy a run's artifact in, export ONNX
    diffagent zoo list
    diffagent zoo push --org my-org                                      # each to my-org/NAME, with its model card
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from diffagent.agent import Agent
from diffagent.errors import ArtifactError
from diffagent.export import export_onnx
from diffagent.io import CONFIG_FILE, RESULTS_FILE, WEIGHTS_FILE, load_artifact, read_json
from diffagent.publish import push, validate_repo_id
from serve.contract import ONNX_FILE

# The repository's zoo, wherever the command runs from (an installed diffagent has none: pass --models).
DEFAULT_MODELS_DIR = Path(__file__).resolve().parents[1] / "zoo" / "models"


def zoo_models(models_dir: str | Path = DEFAULT_MODELS_DIR) -> list[tuple[Path, dict, dict | None]]:
    """(directory, config.json, results.json or None) of every artifact directory in `models_dir`."""
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        raise ArtifactError(f"no zoo at {models_dir}: pass --models DIR, a zoo/models folder of a diffagent "
                            "repository checkout")
    entries = []
    for directory in sorted(p for p in models_dir.iterdir() if (p / CONFIG_FILE).is_file()):
        meta, _ = load_artifact(directory)  # a broken model stops the listing before anything is pushed
        results_path = directory / RESULTS_FILE
        entries.append((directory, meta, read_json(results_path, str(directory)) if results_path.is_file() else None))
    if not entries:
        raise ArtifactError(f"{models_dir} holds no artifact directories (folders with {CONFIG_FILE})")
    return entries


def add_to_zoo(run_dir: str | Path, name: str, models_dir: str | Path = DEFAULT_MODELS_DIR) -> Path:
    """Copy a run's artifact (config, weights, results; never checkpoints or logs) to MODELS_DIR/NAME and
    export its verified ONNX graph beside it. Refuses to overwrite an existing model."""
    validate_repo_id(f"zoo/{name}")  # the folder name becomes the Hub repo name on push
    target = Path(models_dir) / name
    if target.exists():
        raise ArtifactError(f"{target} exists; remove it first or pick another name")
    agent = Agent.from_pretrained(run_dir)  # checks the artifact before anything is copied
    target.parent.mkdir(parents=True, exist_ok=True)
    # staged beside the target, so the final rename is atomic: whole or not at all
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        staged = Path(tmp) / name
        staged.mkdir()
        for file in (CONFIG_FILE, WEIGHTS_FILE, RESULTS_FILE):
            if (Path(run_dir) / file).is_file():
                shutil.copy2(Path(run_dir) / file, staged / file)
        export_onnx(agent, staged / ONNX_FILE)
        os.rename(staged, target)
    return target


def push_zoo(models_dir: str | Path, org: str, *, token: str | None = None, eval_episodes: int = 10,
             video: bool = True, echo: Callable[[str], None] = print) -> list[str]:
    """Push every model of `models_dir` to ORG/FOLDER_NAME with its model card; returns the commit URLs.

    A push only reads the directory it publishes, so the zoo's own files are never rewritten.
    """
    entries = zoo_models(models_dir)
    for directory, _, _ in entries:  # every name checked before the first (slow) push
        validate_repo_id(f"{org}/{directory.name}")
    urls = []
    for directory, _, _ in entries:
        repo_id = f"{org}/{directory.name}"
        echo(f"pushing {directory} -> {repo_id}")
        urls.append(push(directory, repo_id, token=token, eval_episodes=eval_episodes, video=video))
        echo(f"pushed: {urls[-1]}")
    return urls
