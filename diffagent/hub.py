"""Agents on the Hugging Face Hub: push an artifact directory, load one by repo id, write its model card.

    diffagent push runs/diffsac-Pendulum-v1-s0 my-org/diffsac-Pendulum-v1
    agent = Agent.from_pretrained("my-org/diffsac-Pendulum-v1", revision="main")
    agent.push_to_hub("my-org/diffsac-Pendulum-v1")

A repository *is* an artifact directory (docs/security.md): config.json and
model.safetensors, and when present policy.onnx, results.json, README.md (the model card, written
from the top-level MODEL_CARD.md template) and replay.mp4. Nothing else in a run directory
(checkpoints/, metrics.jsonl) is uploaded. Downloads go through huggingface_hub's cache, so a model
loaded once loads again with HF_HUB_OFFLINE=1. Only JSON, safetensors, ONNX and Markdown files are
fetched, and only JSON and safetensors are read: loading runs no code.

results.json may carry an optional `latency` field that the card reports, rows in the shape
benchmarks/onnx_latency.py writes: [{"runtime": "onnxruntime (obs, noise)", "batch": 1,
"p50_us": 41.0, "p99_us": 63.0, "calls": 10000}, ...].
"""

from __future__ import annotations

import ctypes.util
import functools
import json
import os
import re
import shlex
import string
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from diffagent import __version__
from diffagent.config import cli_value, config_to_dict, field_docs, make_config
from diffagent.errors import ArtifactError, ConfigError
from diffagent.io import (CONFIG_FILE, ONNX_FILE, RESULTS_FILE, WEIGHTS_FILE, atomic_write, load_artifact, read_json,
                          write_json)

if TYPE_CHECKING:
    import torch

    from diffagent.agent import Agent

CARD_FILE = "README.md"
VIDEO_FILE = "replay.mp4"
# What a push uploads, and deletes from the repo when this directory lacks it (a stale policy.onnx
# or replay.mp4 would describe an older policy than the weights beside it).
ARTIFACT_FILES = (CONFIG_FILE, WEIGHTS_FILE, ONNX_FILE, RESULTS_FILE, CARD_FILE, VIDEO_FILE)
# What a load downloads: data formats only, never code or pickles.
DOWNLOAD_PATTERNS = ["*.json", "*.safetensors", "*.onnx", "*.md"]
MODEL_CARD_TEMPLATE = Path(__file__).parent / "MODEL_CARD.md"  # a link to the top-level template, shipped as package data

# The Hub's rule for each half of org/name: letters, digits, '-', '_', '.'; no '--' or '..'; no
# '-' or '.' at either end; at most 96 characters.
_NAME = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,94}[A-Za-z0-9_])?$")


# --- repo ids --------------------------------------------------------------------------------------
def validate_repo_id(repo_id: str) -> str:
    """`repo_id` if it is a valid Hub model id `org/name`, else a ConfigError that says what is wrong."""
    parts = repo_id.split("/")
    problem = None
    if len(parts) != 2:
        problem = "it must have the form org/name (one '/')"
    elif not all(_NAME.match(part) for part in parts):
        problem = ("each of org and name must be 1-96 letters, digits, '-', '_' or '.', "
                   "starting with a letter or digit and not ending with '-' or '.'")
    elif "--" in repo_id or ".." in repo_id:
        problem = "'--' and '..' are not allowed"
    if problem:
        raise ConfigError(f"{repo_id!r} is not a valid Hugging Face repo id: {problem}. "
                          "Example: my-org/diffsac-Pendulum-v1")
    return repo_id


def default_repo_id(org: str, algo: str, env_id: str) -> str:
    """The ecosystem's naming habit, `{org}/{algo}-{env_id}`, with characters the Hub rejects replaced."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{algo}-{env_id}")  # e.g. ALE/Pong-v5 -> ALE-Pong-v5
    name = re.sub(r"-{2,}", "-", re.sub(r"\.{2,}", ".", name)).strip("-.")
    return validate_repo_id(f"{org}/{name}")


def _looks_like_local_path(text: str) -> bool:
    """True when `text` is to be read as a local path: ./x, ../x, /x, ~/x, a\\b, a/b/c, x, or a/b where a/ exists."""
    return (text.startswith((".", "/", "~")) or "\\" in text or text.count("/") != 1
            or Path(text.split("/")[0]).exists())


# --- loading ---------------------------------------------------------------------------------------
def load_pretrained(path_or_repo_id: str | os.PathLike, revision: str | None = None
                    ) -> tuple[dict, dict[str, torch.Tensor], str]:
    """(config.json contents, policy tensors, a name for messages) of a local artifact or a Hub repo.

    An existing directory is loaded as is. A `pathlib.Path`, or a string that looks like a path
    (./x, /x, ~/x, a/b/c, or a/b where a/ exists), is never looked up on the Hub. `org/name` is
    downloaded at `revision` (branch, tag or commit hash; default main) into the Hub cache.
    """
    text = os.fspath(path_or_repo_id)
    local = Path(text).expanduser()
    if local.exists() or isinstance(path_or_repo_id, os.PathLike) or _looks_like_local_path(text):
        if not local.exists():
            raise ArtifactError(f"no agent at {text}: the directory does not exist. It looks like a local path, "
                                "so it was not looked up on the Hub (a Hub repo id has the form org/name).")
        if revision is not None:
            raise ConfigError(f"revision={revision!r} applies to Hub repos only; {text} is a local directory.")
        meta, weights = load_artifact(local)
        return meta, weights, text
    try:
        repo_id = validate_repo_id(text)
    except ConfigError as err:
        raise ArtifactError(f"no agent at {text}: it is not an existing directory, and {err}") from None
    source = repo_id if revision is None else f"{repo_id}@{revision}"
    directory = download(repo_id, revision)
    try:
        meta, weights = load_artifact(directory, root=directory.parents[1])  # snapshot files link into ../../blobs
    except ArtifactError as err:
        raise ArtifactError(f"{source} on the Hub: {err} If the repository's copy is broken, push the agent "
                            f"again (diffagent push); if only your cached copy is, delete it with "
                            f"`hf cache rm model/{repo_id}` and load again.") from None
    return meta, weights, source


def download(repo_id: str, revision: str | None = None) -> Path:
    """A local snapshot of the repo's data files (cached; served from the cache when offline)."""
    from huggingface_hub import constants, snapshot_download
    from huggingface_hub.utils import (EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError,
                                       RepositoryNotFoundError, RevisionNotFoundError)

    at = f" at revision {revision!r}" if revision else ""
    try:
        return Path(snapshot_download(repo_id, revision=revision, allow_patterns=DOWNLOAD_PATTERNS,
                                      library_name="diffagent", library_version=__version__))
    except RevisionNotFoundError:
        raise ArtifactError(f"{repo_id} exists on the Hub but has no revision {revision!r}. Pass a branch, tag or "
                            f"full commit hash it has (see {constants.ENDPOINT}/{repo_id}/commits/main), or no "
                            "revision for the latest.") from None
    except RepositoryNotFoundError:
        raise ArtifactError(f"no model repository {repo_id} on the Hub ({constants.ENDPOINT}), or it is private "
                            "and your token cannot read it. Check the id; for a private repo set HF_TOKEN or run "
                            f"`hf auth login`. (No local directory {repo_id} exists either.)") from None
    except LocalEntryNotFoundError:  # also an incomplete cached snapshot
        if constants.HF_HUB_OFFLINE:
            raise ArtifactError(f"{repo_id}{at} is not (completely) in the local Hub cache ({constants.HF_HUB_CACHE}) "
                                "and HF_HUB_OFFLINE=1 forbids downloading it. Load it once with network access, "
                                "or unset HF_HUB_OFFLINE.") from None
        raise ArtifactError(f"cannot reach the Hub at {constants.ENDPOINT}, and {repo_id}{at} is not (completely) in "
                            f"the local Hub cache ({constants.HF_HUB_CACHE}). Check your connection and HF_ENDPOINT, "
                            "then try again.") from None
    except EntryNotFoundError as err:
        raise ArtifactError(f"{repo_id}{at}: a file the Hub listed could not be downloaded ({_brief(err)}). "
                            "Try again; if it persists, push the agent again.") from None
    except HfHubHTTPError as err:
        raise ArtifactError(f"downloading {repo_id}{at} failed: {_brief(err)}. Try again later.") from None


# --- pushing -----------------------------------------------------------------------------------------
def push(directory: str | Path, repo_id: str, *, token: str | None = None, private: bool = False,
         commit_message: str | None = None, eval_episodes: int = 10, video: bool = True,
         agent: Agent | None = None) -> str:
    """Evaluate, write the model card and results, and upload an artifact directory; returns the commit URL.

    Writes results.json (a fresh deterministic evaluation under "eval"), README.md and, with `video`
    and a renderer, replay.mp4 into `directory`, then uploads the artifact files only. `agent` is
    the agent in `directory` when the caller already holds it. The token comes from `token`, else
    HF_TOKEN, else the login cached by `hf auth login`.
    """
    from huggingface_hub import HfApi, constants, get_token
    from huggingface_hub.utils import HfHubHTTPError, RepositoryNotFoundError

    validate_repo_id(repo_id)
    directory = Path(directory)
    if eval_episodes < 1:
        raise ConfigError(f"eval_episodes must be at least 1, got {eval_episodes}")
    # Fail before the (slow) evaluation rather than after it.
    token = token or get_token()
    if not token:
        raise ArtifactError("no Hugging Face token: pass --token (token=...), set HF_TOKEN, or log in with "
                            "`hf auth login`. The token needs write access to the repo's namespace.")
    if constants.HF_HUB_OFFLINE:
        raise ArtifactError("HF_HUB_OFFLINE=1 is set, so nothing can be pushed; unset it and try again.")
    if agent is None:
        from diffagent.agent import Agent

        agent = Agent.from_pretrained(directory)

    results = evaluate_for_card(agent, directory, eval_episodes)
    if video:
        record_video(agent, directory / VIDEO_FILE)
    write_model_card(agent, directory, repo_id, results)
    summary = results["eval"]
    message = commit_message or (f"Upload {agent.algo} agent for {agent.env_id} "
                                 f"(mean reward {summary['mean_reward']:.2f} +/- {summary['std_reward']:.2f})")
    api = HfApi(token=token, library_name="diffagent", library_version=__version__)
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=directory, commit_message=message,
                                   allow_patterns=list(ARTIFACT_FILES), delete_patterns=list(ARTIFACT_FILES))
    except RepositoryNotFoundError:
        raise ArtifactError(f"cannot write to {repo_id}: the token has no write access to it (or to the namespace "
                            f"{repo_id.split('/')[0]}). Use a write token of a member of that user or org.") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        hint = ("the Hub rejected the token: check HF_TOKEN or run `hf auth login` with a write token"
                if status in (401, 403) else "try again later")
        raise ArtifactError(f"pushing to {repo_id} failed: {_brief(err)}; {hint}.") from None
    except Exception as err:
        if not _is_transport_error(err):
            raise
        raise ArtifactError(f"cannot reach the Hub at {constants.ENDPOINT} ({type(err).__name__}: {err}). Check your "
                            "connection and HF_ENDPOINT, then push again.") from None
    return commit.commit_url


def push_agent(agent: Agent, repo_id: str, *, token: str | None = None, private: bool = False,
               commit_message: str | None = None, eval_episodes: int = 10, video: bool = True) -> str:
    """Save an in-memory agent to a temporary artifact directory (with ONNX export) and push that."""
    with tempfile.TemporaryDirectory(prefix="diffagent-push-") as tmp:
        agent.save_pretrained(tmp)
        agent.export_onnx(Path(tmp) / ONNX_FILE)
        return push(tmp, repo_id, token=token, private=private, commit_message=commit_message,
                    eval_episodes=eval_episodes, video=video, agent=agent)


def _is_transport_error(err: Exception) -> bool:
    """A connection, DNS or timeout failure of the HTTP client huggingface_hub runs on.

    Matched by class name because that client (requests, httpx or httpx2) depends on its version.
    """
    return any(cls.__name__ in ("TransportError", "ConnectionError") for cls in type(err).__mro__)


def _brief(err: Exception) -> str:
    """An error's message on one line, cut to a readable length (the Hub's can run to paragraphs)."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 300 else text[:297] + "..."


# --- evaluation, model card, video ----------------------------------------------------------------------
def evaluate_for_card(agent: Agent, directory: Path, episodes: int) -> dict[str, Any]:
    """Run a fresh deterministic evaluation and store it under "eval" in directory/results.json."""
    path = directory / RESULTS_FILE
    results = read_json(path, f"cannot push {directory}") if path.is_file() else {}
    if not isinstance(results, dict):
        raise ArtifactError(f"{path} must hold a JSON object; delete or fix it and push again.")
    result = agent.evaluate(episodes, deterministic=True)
    results["eval"] = {**result.to_dict(), "protocol": "Agent.evaluate: deterministic chain, default seeds"}
    write_json(path, results)
    return results


def write_model_card(agent: Agent, directory: str | Path, repo_id: str, results: dict[str, Any]) -> Path:
    """Write directory/README.md from the MODEL_CARD.md template; `results` must hold an "eval" entry."""
    from huggingface_hub import constants

    directory = Path(directory)
    evaluation = results["eval"]
    mean_reward = f"{evaluation['mean_reward']:.2f} +/- {evaluation['std_reward']:.2f}"
    diffusion = agent.spec.policy == "diffusion"
    tags = ["reinforcement-learning", "deep-reinforcement-learning", "diffagent", agent.algo, agent.env_id]
    tags += ["diffusion-policy"] if diffusion else []
    present = [name for name in ARTIFACT_FILES if (directory / name).is_file() or name == CARD_FILE]
    policy = (f"a diffusion-chain policy with K = {agent.config.diffusion_steps} denoising steps" if diffusion
              else "a tanh-Gaussian policy")
    noise_shape = agent.policy.noise_shape(1)
    blob = f"{constants.ENDPOINT}/{repo_id}/blob/main"
    values = {
        "tags": "\n".join(f"- {json.dumps(tag)}" for tag in tags),
        "model_name": json.dumps(agent.algo),
        "env_id_yaml": json.dumps(agent.env_id),
        "mean_reward_yaml": json.dumps(mean_reward),
        "algo": agent.algo,
        "env_id": agent.env_id,
        "repo_id": repo_id,
        "algo_description": agent.spec.description,
        "policy": policy,
        "mean_reward": mean_reward,
        "eval_episodes": str(evaluation["episodes"]),
        "eval_episodes_text": _episodes(evaluation["episodes"]),
        "seed": str(agent.config.seed),
        "video": f'\n<video controls src="{constants.ENDPOINT}/{repo_id}/resolve/main/{VIDEO_FILE}"></video>\n'
                 if VIDEO_FILE in present else "",
        "onnx_usage": _ONNX_USAGE.substitute(repo_id=repo_id, obs_dim=agent.policy.obs_dim, k1=noise_shape[1],
                                             act_dim=noise_shape[2]) if ONNX_FILE in present else "",
        "results": _results_section(evaluation, results),
        "latency": _latency_section(results.get("latency")),
        "train_command": training_command(agent, results.get("total_steps")),
        "hyperparameters": _hyperparameter_rows(agent),
        "files": "\n".join(f"| [{name}]({blob}/{name}) | {_FILE_CONTENTS[name]} |" for name in present),
    }
    if not MODEL_CARD_TEMPLATE.is_file():
        raise ArtifactError(f"the model-card template {MODEL_CARD_TEMPLATE} is missing; reinstall diffagent.")
    try:
        card = string.Template(MODEL_CARD_TEMPLATE.read_text()).substitute(values)
    except (KeyError, ValueError) as err:
        raise ArtifactError(f"{MODEL_CARD_TEMPLATE} has an unknown or malformed placeholder ({err}); fix the "
                            f"template (known placeholders: {', '.join(sorted(values))}; write $$ for a "
                            "literal $).") from None
    path = directory / CARD_FILE
    atomic_write(path, lambda tmp: Path(tmp).write_text(card))
    return path


def training_command(agent: Agent, total_steps: int | None) -> str:
    """The `diffagent train` command that reproduces the agent's config (non-default values as --set)."""
    defaults = config_to_dict(make_config(agent.algo))
    overrides = [f"--set {shlex.quote(f'{name}={cli_value(value)}')}"
                 for name, value in config_to_dict(agent.config).items()
                 if name != "seed" and value != defaults.get(name)]
    steps = [f"--steps {total_steps}"] if total_steps else []
    return " ".join(["diffagent train", f"--algo {agent.algo}", f"--env {shlex.quote(agent.env_id)}", *steps,
                     f"--seed {agent.config.seed}", *overrides])


def _hyperparameter_rows(agent: Agent) -> str:
    docs = field_docs(type(agent.config))
    return "\n".join(f"| `{name}` | `{cli_value(value)}` | {docs.get(name, '').replace('|', '/')} |"
                     for name, value in config_to_dict(agent.config).items())


def _results_section(evaluation: dict[str, Any], results: dict[str, Any]) -> str:
    lengths = evaluation.get("lengths") or [0]
    rows = [f"| mean return (deterministic, {_episodes(evaluation['episodes'])}) | "
            f"{evaluation['mean_reward']:.2f} +/- {evaluation['std_reward']:.2f} |",
            f"| mean episode length | {sum(lengths) / len(lengths):.1f} |"]
    if results.get("total_steps"):
        rows.append(f"| training steps | {results['total_steps']:,} |")
    if results.get("train_time_s"):
        rows.append(f"| training time | {results['train_time_s'] / 60:.1f} min |")
    machine = results.get("machine") or {}
    if machine:
        rows.append(f"| training machine | {machine.get('platform', '?')}, {machine.get('cpu_count', '?')} CPUs, "
                    f"torch {results.get('torch_version', '?')} |")
    section = "| | |\n| --- | --- |\n" + "\n".join(rows)
    curve = results.get("evaluations") or []
    if curve:
        section += ("\n\nEvaluation return during training:\n\n| step | mean | std |\n| --- | --- | --- |\n"
                    + "\n".join(f"| {e['step']:,} | {e['mean']:.2f} | {e['std']:.2f} |" for e in curve[-20:]))
    else:
        section += "\n\nNo training record (the results.json that `diffagent train` writes) came with this agent."
    return section


def _episodes(count: int) -> str:
    return f"{count} episode{'' if count == 1 else 's'}"


def _latency_section(latency: Any) -> str:
    rows = [row for row in latency if isinstance(row, dict)] if isinstance(latency, list) else []
    if not rows:
        return ""
    lines = ["## Action latency", "", "Time per action call, measured on the machine that wrote results.json.", "",
             "| runtime | batch | p50 (µs) | p99 (µs) | calls |", "| --- | --- | --- | --- | --- |"]
    for row in rows:
        lines.append(f"| {row.get('runtime', '?')} | {row.get('batch', '?')} | {row.get('p50_us', float('nan')):.1f} "
                     f"| {row.get('p99_us', float('nan')):.1f} | {row.get('calls', '?')} |")
    return "\n".join(lines) + "\n"


_FILE_CONTENTS = {
    CONFIG_FILE: "format version, algorithm, env id, spaces and the full config",
    WEIGHTS_FILE: "policy weights and observation-normalisation statistics (safetensors)",
    ONNX_FILE: "the policy as one ONNX graph: obs and chain noise in, action out",
    RESULTS_FILE: "training summary and the evaluation reported here",
    CARD_FILE: "this card",
    VIDEO_FILE: "one deterministic episode, rendered offscreen",
}

_ONNX_USAGE = string.Template('''Without torch, with the exported graph (`pip install onnxruntime huggingface_hub`):

```python
import numpy as np
import onnxruntime as ort
from huggingface_hub import hf_hub_download

session = ort.InferenceSession(hf_hub_download("$repo_id", "policy.onnx"))
obs = np.zeros((1, $obs_dim), dtype=np.float32)        # raw observations, a batch of any size
noise = np.zeros((1, $k1, $act_dim), dtype=np.float32)  # the chain's noise; zeros give the deterministic action
action = session.run(["action"], {"obs": obs, "noise": noise})[0]
```
''')


def record_video(agent: Agent, path: str | Path, *, max_steps: int = 1000, seed: int | None = None) -> Path | None:
    """Render one deterministic episode offscreen to an MP4 at `path`; None, with a printed reason, if it can't.

    Needs the `video` extra (imageio, imageio-ffmpeg) and a renderer: MuJoCo envs render through
    EGL (GPU) or OSMesa (CPU), chosen by MUJOCO_GL; classic-control envs need pygame.
    """
    try:
        import imageio.v2 as imageio
        import imageio_ffmpeg  # noqa: F401  (imageio's MP4 writer)
    except ImportError:
        print(f"replay video skipped: writing {Path(path).name} needs the video extra: "
              "pip install 'diffagent[video]' (imageio, imageio-ffmpeg)")
        return None
    import gymnasium as gym

    path = Path(path)
    # MuJoCo picks its OpenGL backend when an env first renders: default to one that needs no display.
    os.environ.setdefault("MUJOCO_GL", "egl" if ctypes.util.find_library("EGL") else "osmesa")
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    env = None
    try:
        env = gym.make(agent.env_id, render_mode="rgb_array")
        fps = env.metadata.get("render_fps") or 30
        obs, _ = env.reset(seed=agent.config.seed if seed is None else seed)
        with imageio.get_writer(tmp, fps=fps, macro_block_size=1) as writer:
            writer.append_data(env.render())
            for _ in range(max_steps):
                obs, _, terminated, truncated, _ = env.step(agent.act(obs, deterministic=True))
                writer.append_data(env.render())
                if terminated or truncated:
                    break
        os.replace(tmp, path)
    except Exception as err:  # any renderer failure (no GL, no pygame, no display) must not fail a push
        tmp.unlink(missing_ok=True)
        print(f"replay video skipped: cannot render {agent.env_id} offscreen ({type(err).__name__}: {err}). "
              "MuJoCo envs need MUJOCO_GL=egl (GPU) or MUJOCO_GL=osmesa (CPU, libOSMesa); classic-control envs "
              "need pygame.")
        return None
    finally:
        if env is not None:
            env.close()
    return path


# --- command line --------------------------------------------------------------------------------------
def _friendly(command):
    """diffagent.cli.friendly_errors, looked up at call time: diffagent.cli imports this module."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        from diffagent.cli import friendly_errors

        return friendly_errors(command)(*args, **kwargs)
    return wrapper


@click.command("push")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("repo_id", metavar="ORG/NAME")
@click.option("--private", is_flag=True, help="Create the repo private (an existing repo keeps its visibility).")
@click.option("--token", default=None, help="Hub token with write access [default: HF_TOKEN, then `hf auth login`].")
@click.option("--eval-episodes", default=10, show_default=True, type=int,
              help="Episodes of the fresh deterministic evaluation reported in the model card.")
@click.option("--video/--no-video", default=True, show_default=True,
              help="Record replay.mp4 (skipped, with a message, without a renderer or the video extra).")
@click.option("--message", "commit_message", default=None, help="Commit message [default: algo, env and reward].")
@_friendly
def push_command(directory, repo_id, private, token, eval_episodes, video, commit_message):
    """Push an artifact directory to the Hugging Face Hub as ORG/NAME, with a model card.

    ORG alone pushes to ORG/ALGO-ENV_ID. Only the artifact files are uploaded (config.json,
    model.safetensors, policy.onnx, results.json, README.md, replay.mp4), never checkpoints/.
    """
    from diffagent.agent import Agent

    agent = Agent.from_pretrained(Path(directory))
    if "/" not in repo_id:
        repo_id = default_repo_id(repo_id, agent.algo, agent.env_id)
    click.echo(f"evaluating {agent.algo} on {agent.env_id} ({eval_episodes} episodes), then pushing to {repo_id}")
    url = push(directory, repo_id, token=token, private=private, commit_message=commit_message,
               eval_episodes=eval_episodes, video=video, agent=agent)
    click.echo(f"pushed: {url}")
