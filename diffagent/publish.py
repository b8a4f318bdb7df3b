"""Publishing an agent on the Hugging Face Hub: a fresh evaluation, the model card, a video, the upload.

    diffagent push runs/diffsac-Pendulum-v1-s0 my-org/diffsac-Pendulum-v1
    push_to_hub(agent, "my-org/diffsac-Pendulum-v1")
    agent = Agent.from_pretrained("my-org/diffsac-Pendulum-v1", revision="main")   # diffagent.io.load_pretrained

A repository *is* an artifact directory (docs/security.md): config.json and model.safetensors, and
when present policy.onnx, results.json, README.md (the model card: huggingface_hub's ModelCard, its
metadata a ModelCardData with the model-index of huggingface_sb3, license and pipeline_tag, its text
from the top-level MODEL_CARD.md template, checked by the Hub's validator before a push) and replay.mp4.
Nothing else in a run directory (checkpoints/,
metrics.jsonl) is uploaded. A push stages what it uploads in a temporary directory, so the
directory it publishes is only read: the evaluation, the card and the video are written to the copy.
Downloads are plain transport (serve/hub.py), below the agent.

results.json may carry an optional `latency` field that the card reports, rows in the shape
benchmarks/onnx_latency.py writes: [{"runtime": "onnxruntime (obs, noise)", "batch": 1,
"p50_us": 41.0, "p99_us": 63.0, "calls": 10000}, ...].
"""

from __future__ import annotations

import ctypes.util
import json
import os
import re
import shlex
import shutil
import string
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from diffagent import __version__
from diffagent.agent import Agent
from diffagent.config import DiffusionPolicyConfig, cli_value, make_config
from diffagent.errors import ArtifactError, ConfigError
from diffagent.export import export_onnx
from diffagent.io import CONFIG_FILE, RESULTS_FILE, WEIGHTS_FILE, atomic_write, read_json, write_json
from serve.contract import ONNX_FILE
from serve.hub import brief, repo_id_problem

CARD_FILE = "README.md"
VIDEO_FILE = "replay.mp4"
# What a push uploads, and deletes from the repo when the directory lacks it (a stale policy.onnx
# or replay.mp4 would describe an older policy than the weights beside it).
ARTIFACT_FILES = (CONFIG_FILE, WEIGHTS_FILE, ONNX_FILE, RESULTS_FILE, CARD_FILE, VIDEO_FILE)
# a link to the top-level template, shipped as package data
MODEL_CARD_TEMPLATE = Path(__file__).parent / "MODEL_CARD.md"
DEFAULT_LICENSE = "apache-2.0"  # diffagent's own; pass license= for a model under other terms


# --- repo ids --------------------------------------------------------------------------------------
def validate_repo_id(repo_id: str) -> str:
    """`repo_id` if it is a valid Hub model id `org/name`, else a ConfigError that says what is wrong."""
    problem = repo_id_problem(repo_id)
    if problem:
        raise ConfigError(f"{repo_id!r} is not a valid Hugging Face repo id: {problem}. "
                          "Example: my-org/diffsac-Pendulum-v1")
    return repo_id


def default_repo_id(org: str, algo: str, env_id: str) -> str:
    """The ecosystem's naming habit, `{org}/{algo}-{env_id}`, with characters the Hub rejects replaced."""
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{algo}-{env_id}")  # e.g. ALE/Pong-v5 -> ALE-Pong-v5
    name = re.sub(r"-{2,}", "-", re.sub(r"\.{2,}", ".", name)).strip("-.")
    return validate_repo_id(f"{org}/{name}")


# --- pushing -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Push:
    """Where a push commits and what it writes: checked before the (slow) evaluation starts."""

    repo_id: str
    token: str
    private: bool
    branch: str | None
    create_pr: bool
    commit_message: str | None
    eval_episodes: int
    video: bool
    license: str


def push(directory: str | Path, repo_id: str, *, token: str | None = None, private: bool = False,
         branch: str | None = None, create_pr: bool = False, commit_message: str | None = None,
         eval_episodes: int = 10, video: bool = True, license: str = DEFAULT_LICENSE,
         agent: Agent | None = None) -> str:
    """Upload the artifact in `directory` with a fresh evaluation and its model card; returns the commit URL
    (the pull request's URL with `create_pr`).

    `directory` is only read. Its artifact files are copied to a staging directory, which gets
    results.json (a fresh deterministic evaluation under "eval"), README.md and, with `video` and a
    renderer, replay.mp4; then the artifact files are uploaded. `branch` commits to that branch
    (created from main when new) instead of main; `create_pr` opens a pull request against main
    instead of committing. `license` is the card's license id. `agent` is the agent in
    `directory` when the caller already holds it. The token comes from `token`, else HF_TOKEN, else
    the login cached by `hf auth login`.
    """
    target = _check_push(repo_id, token, private, branch, create_pr, commit_message, eval_episodes, video, license)
    directory = Path(directory)
    agent = agent if agent is not None else Agent.from_pretrained(directory)
    with tempfile.TemporaryDirectory(prefix="diffagent-push-") as staging:
        for name in ARTIFACT_FILES:
            if (directory / name).is_file():
                shutil.copy2(directory / name, Path(staging) / name)
        return _upload(agent, Path(staging), target)


def push_to_hub(agent: Agent, repo_id: str, *, token: str | None = None, private: bool = False,
                branch: str | None = None, create_pr: bool = False, commit_message: str | None = None,
                eval_episodes: int = 10, video: bool = True, license: str = DEFAULT_LICENSE) -> str:
    """Upload an in-memory agent as `repo_id` (`org/name`), with policy.onnx, a fresh evaluation and its
    model card; returns the commit URL. See `push` for the other arguments."""
    target = _check_push(repo_id, token, private, branch, create_pr, commit_message, eval_episodes, video, license)
    with tempfile.TemporaryDirectory(prefix="diffagent-push-") as staging:
        agent.save_pretrained(staging)
        export_onnx(agent, Path(staging) / ONNX_FILE)
        return _upload(agent, Path(staging), target)


def _check_push(repo_id: str, token: str | None, private: bool, branch: str | None, create_pr: bool,
                commit_message: str | None, eval_episodes: int, video: bool, license: str) -> _Push:
    """Everything a push needs, checked before the (slow) evaluation; the token resolved."""
    from huggingface_hub import constants, get_token

    validate_repo_id(repo_id)
    if branch is not None and create_pr:
        raise ConfigError("a pull request opens against main: pass either branch (commit to it) or create_pr")
    if eval_episodes < 1:
        raise ConfigError(f"eval_episodes must be at least 1, got {eval_episodes}")
    token = token or get_token()
    if not token:
        raise ArtifactError("no Hugging Face token: pass --token (token=...), set HF_TOKEN, or log in with "
                            "`hf auth login`. The token needs write access to the repo's namespace.")
    if constants.HF_HUB_OFFLINE:
        raise ArtifactError("HF_HUB_OFFLINE=1 is set, so nothing can be pushed; unset it and try again.")
    return _Push(repo_id, token, private, branch, create_pr, commit_message, eval_episodes, video, license)


def _upload(agent: Agent, staging: Path, target: _Push) -> str:
    """Evaluate, write the card (and video) into `staging`, check the card with the Hub, and upload its
    artifact files."""
    from huggingface_hub import HfApi, ModelCard, constants
    from huggingface_hub.utils import HfHubHTTPError, RepositoryNotFoundError

    repo_id = target.repo_id
    results = evaluate_for_card(agent, staging, target.eval_episodes)
    if target.video:
        record_video(agent, staging / VIDEO_FILE)
    card = write_model_card(agent, staging, repo_id, results, license=target.license)
    summary = results["eval"]
    message = target.commit_message or (f"Upload {agent.algo} agent for {agent.env_id} (mean reward "
                                        f"{_mean_and_std(summary)})")
    api = HfApi(token=target.token, library_name="diffagent", library_version=__version__)
    try:
        try:
            ModelCard.load(card).validate()
        except ValueError as err:  # the Hub's validator refused the card's metadata
            raise ArtifactError(f"the Hub refuses the model card's metadata ({brief(err)}); check the license (an "
                                "id such as apache-2.0 or mit) and push again.") from None
        api.create_repo(repo_id, private=target.private, exist_ok=True)
        if target.branch is not None and not target.create_pr:
            api.create_branch(repo_id, branch=target.branch, exist_ok=True)
        commit = api.upload_folder(repo_id=repo_id, folder_path=staging, commit_message=message,
                                   revision=target.branch, create_pr=target.create_pr,
                                   allow_patterns=list(ARTIFACT_FILES), delete_patterns=list(ARTIFACT_FILES))
    except RepositoryNotFoundError:
        raise ArtifactError(f"cannot write to {repo_id}: the token has no write access to it (or to the namespace "
                            f"{repo_id.split('/')[0]}). Use a write token of a member of that user or org.") from None
    except HfHubHTTPError as err:
        status = err.response.status_code if err.response is not None else None
        hint = ("the Hub rejected the token: check HF_TOKEN or run `hf auth login` with a write token"
                if status in (401, 403) else "try again later")
        raise ArtifactError(f"pushing to {repo_id} failed: {brief(err)}; {hint}.") from None
    except Exception as err:
        if not _is_transport_error(err):
            raise
        raise ArtifactError(f"cannot reach the Hub at {constants.ENDPOINT} ({type(err).__name__}: {err}). Check your "
                            "connection and HF_ENDPOINT, then push again.") from None
    return commit.pr_url if target.create_pr else commit.commit_url


def _is_transport_error(err: Exception) -> bool:
    """A connection, DNS or timeout failure of the HTTP client huggingface_hub runs on.

    Matched by class name because that client (requests, httpx or httpx2) depends on its version.
    """
    return any(cls.__name__ in ("TransportError", "ConnectionError") for cls in type(err).__mro__)



# --- evaluation, model card, video ----------------------------------------------------------------------
def evaluate_for_card(agent: Agent, directory: Path, episodes: int) -> dict[str, Any]:
    """Run a fresh deterministic evaluation and store it under "eval" in directory/results.json (a staging copy)."""
    path = directory / RESULTS_FILE
    results = read_json(path, f"cannot push {directory}") if path.is_file() else {}
    if not isinstance(results, dict):
        raise ArtifactError(f"{path} must hold a JSON object; delete or fix it and push again.")
    result = agent.evaluate(episodes, deterministic=True)
    results["eval"] = {**result.to_dict(), "protocol": "Agent.evaluate: deterministic chain, default seeds"}
    write_json(path, results)
    return results


def _mean_and_std(evaluation: dict[str, Any]) -> str:
    """"mean +/- std" of a results.json evaluation: "mean" and "std", or "mean_reward" and "std_reward", the names
    earlier versions gave those of its "eval" (the curve's entries always said mean and std)."""
    mean = evaluation["mean"] if "mean" in evaluation else evaluation["mean_reward"]
    std = evaluation["std"] if "std" in evaluation else evaluation["std_reward"]
    return f"{mean:.2f} +/- {std:.2f}"


def write_model_card(agent: Agent, directory: str | Path, repo_id: str, results: dict[str, Any], *,
                     license: str = DEFAULT_LICENSE) -> Path:
    """Write directory/README.md, huggingface_hub's ModelCard: ModelCardData metadata (huggingface_sb3's
    model-index with the mean reward, license, pipeline_tag, tags) over the MODEL_CARD.md template's text.
    `results` must hold an "eval" entry."""
    from huggingface_hub import EvalResult, ModelCard, ModelCardData, constants

    directory = Path(directory)
    evaluation = results["eval"]
    mean_reward = _mean_and_std(evaluation)
    diffusion = agent.spec.policy is DiffusionPolicyConfig
    tags = ["reinforcement-learning", "deep-reinforcement-learning", "diffagent", agent.algo, agent.env_id]
    tags += ["diffusion-policy"] if diffusion else []
    metadata = ModelCardData(
        library_name="diffagent", license=license, pipeline_tag="reinforcement-learning", tags=tags,
        model_name=agent.algo, eval_results=[EvalResult(
            task_type="reinforcement-learning", task_name="reinforcement-learning", dataset_type=agent.env_id,
            dataset_name=agent.env_id, metric_type="mean_reward", metric_name="mean_reward", metric_value=mean_reward,
            verified=False)])
    present = [name for name in ARTIFACT_FILES if (directory / name).is_file() or name == CARD_FILE]
    policy = (f"a diffusion-chain policy with K = {agent.policy.num_steps} denoising steps" if diffusion
              else "a tanh-Gaussian policy")
    blob = f"{constants.ENDPOINT}/{repo_id}/blob/main"
    values = {
        "algo": agent.algo,
        "env_id": agent.env_id,
        "repo_id": repo_id,
        "algo_description": agent.spec.description,
        "policy": policy,
        "environment": _environment_section(agent),
        "observation": _observation_text(agent),
        "mean_reward": mean_reward,
        "eval_episodes": str(evaluation["episodes"]),
        "eval_episodes_text": _episodes(evaluation["episodes"]),
        "seed": str(agent.config.run.seed),
        "video": f'\n<video controls src="{constants.ENDPOINT}/{repo_id}/resolve/main/{VIDEO_FILE}"></video>\n'
                 if VIDEO_FILE in present else "",
        "onnx_usage": _onnx_usage(agent, repo_id) if ONNX_FILE in present else "",
        "results": _results_section(evaluation, results),
        "latency": _latency_section(results.get("latency")),
        "train_command": training_command(agent, results.get("total_steps")),
        "hyperparameters": _hyperparameter_rows(agent),
        "files": "\n".join(f"| [{name}]({blob}/{name}) | {_FILE_CONTENTS[name]} |" for name in present),
    }
    if not MODEL_CARD_TEMPLATE.is_file():
        raise ArtifactError(f"the model-card template {MODEL_CARD_TEMPLATE} is missing; reinstall diffagent.")
    try:
        text = string.Template(MODEL_CARD_TEMPLATE.read_text()).substitute(values)
    except (KeyError, ValueError) as err:
        raise ArtifactError(f"{MODEL_CARD_TEMPLATE} has an unknown or malformed placeholder ({err}); fix the "
                            f"template (known placeholders: {', '.join(sorted(values))}; write $$ for a "
                            "literal $).") from None
    card = ModelCard(f"---\n{metadata.to_yaml()}\n---\n\n{text}")
    path = directory / CARD_FILE
    atomic_write(path, lambda tmp: Path(tmp).write_text(str(card)))
    return path


def _environment_section(agent: Agent) -> str:
    """How the env is made, when it takes more than its id: gym.make's keyword arguments and the wrappers."""
    recipe = agent.env_recipe
    lines = []
    if recipe.module:
        lines.append(f"The env is registered by the module `{recipe.module}`: import it first "
                     f"(`--gym-packages {recipe.module}` on the command line).")
    if recipe.kwargs:
        lines.append(f"It is made with `gym.make({json.dumps(recipe.env_id)}, **{json.dumps(recipe.kwargs)})`.")
    if recipe.wrappers:
        lines.append("Wrappers, in order: " + ", ".join(f"`{w.entry_point}({json.dumps(w.kwargs)})`"
                                                       for w in recipe.wrappers) + ".")
    return "\n" + " ".join(lines) + "\n" if lines else ""


def _observation_text(agent: Agent) -> str:
    layout = agent.observation_layout
    if layout is None:
        return f"a Box of {agent.policy.obs_dim} values"
    keys = ", ".join(f"`{key}` ({size})" for key, size in layout)
    return (f"a Dict of {keys}; the ONNX graph's `obs` is their values concatenated in this order "
            f"({agent.policy.obs_dim} values). Image observations are not supported yet")


def training_command(agent: Agent, total_steps: int | None) -> str:
    """The `diffagent train` command that reproduces the agent's config (non-default values as --set)."""
    defaults = make_config(agent.algo).to_dict()
    overrides = [f"--set {shlex.quote(f'{name}={cli_value(value)}')}"
                 for name, value in agent.config.to_dict().items()
                 if name != "seed" and value != defaults[name]]
    steps = [f"--steps {total_steps}"] if total_steps else []
    return " ".join(["diffagent train", f"--algo {agent.algo}", shlex.join(agent.env_recipe.cli_options()), *steps,
                     f"--seed {agent.config.run.seed}", *overrides])


def _hyperparameter_rows(agent: Agent) -> str:
    return "\n".join(f"| `{spec.name}` | `{cli_value(value)}` | {spec.metadata['help'].replace('|', '/')} |"
                     for spec, value in agent.config.items())


def _results_section(evaluation: dict[str, Any], results: dict[str, Any]) -> str:
    lengths = evaluation.get("lengths") or [0]
    rows = [f"| mean return (deterministic, {_episodes(evaluation['episodes'])}) | "
            f"{_mean_and_std(evaluation)} |",
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
$obs_lines
noise = np.zeros((1, $k1, $act_dim), dtype=np.float32)  # the chain's noise; zeros give the deterministic action
action = session.run(["action"], {"obs": obs, "noise": noise})[0]
```
''')


def _onnx_usage(agent: Agent, repo_id: str) -> str:
    layout = agent.observation_layout
    if layout is None:
        obs_lines = (f"obs = np.zeros((1, {agent.policy.obs_dim}), dtype=np.float32)"
                     "  # raw observations, a batch of any size")
    else:
        values = ", ".join(f'"{key}": np.zeros((1, {size}), dtype=np.float32)' for key, size in layout)
        order = ", ".join(f'observation["{key}"]' for key, _ in layout)
        obs_lines = (f"observation = {{{values}}}  # raw observations, a batch of any size\n"
                     f"obs = np.concatenate([{order}], axis=1)  # the keys in the order of the metadata")
    noise_shape = agent.policy.noise_shape(1)
    return _ONNX_USAGE.substitute(repo_id=repo_id, obs_lines=obs_lines, k1=noise_shape[1], act_dim=noise_shape[2])


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
    path = Path(path)
    # MuJoCo picks its OpenGL backend when an env first renders: default to one that needs no display.
    os.environ.setdefault("MUJOCO_GL", "egl" if ctypes.util.find_library("EGL") else "osmesa")
    tmp = path.with_name(f".{path.stem}.partial{path.suffix}")
    env = None
    try:
        env = agent.env_recipe.make(may_import=False, render_mode="rgb_array")
        fps = env.metadata.get("render_fps") or 30
        obs, _ = env.reset(seed=agent.config.run.seed if seed is None else seed)
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
