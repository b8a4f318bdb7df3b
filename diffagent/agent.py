"""`Agent`: the one interface over every algorithm and policy.

    agent = Agent("diffsac", "Pendulum-v1")
    agent.learn(20_000)
    action = agent.act(obs)                      # numpy in, numpy out, in the env's units
    agent.save_pretrained("runs/pendulum")
    agent = Agent.from_pretrained("runs/pendulum")
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import gymnasium as gym
import numpy as np
import torch

from diffagent import __version__
from diffagent.algos import ALGORITHM_CLASSES, Algorithm
from diffagent.config import PolicyConfig, algo_spec, config_to_dict, make_config
from diffagent.envs import EnvSource, UnavailableEnv, check_spaces, env_factory, space_from_dict, space_to_dict
from diffagent.errors import ArtifactError, ConfigError, DiffAgentError
from diffagent.io import (METRICS_FILE, RESULTS_FILE, atomic_write, load_checkpoint, read_jsonl, run_lock, save_artifact,
                          save_checkpoint, write_json)
from diffagent.policies import Policy, make_policy

if TYPE_CHECKING:
    from diffagent.export import LiveOnnxPolicy



@dataclass
class EvalResult:
    """Returns of evaluation episodes."""

    returns: list[float]
    lengths: list[int]
    deterministic: bool

    @property
    def mean(self) -> float:
        return float(np.mean(self.returns))

    @property
    def std(self) -> float:
        return float(np.std(self.returns))

    def to_dict(self) -> dict[str, Any]:
        return {"mean_reward": self.mean, "std_reward": self.std, "episodes": len(self.returns),
                "deterministic": self.deterministic, "returns": self.returns, "lengths": self.lengths}


@dataclass
class _LearnProgress:
    """What `learn` needs to pick up where a checkpoint left it."""

    total_steps: int
    eval_every: int
    eval_episodes: int
    checkpoint_every: int
    log_every: int
    evaluations: list[dict] = field(default_factory=list)
    train_time: float = 0.0


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        resolved = torch.device(device)
    except RuntimeError as err:
        raise ConfigError(f"device {device!r} is not valid ({err}); use 'cpu', 'cuda', 'cuda:0' or 'auto'") from None
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' was asked for but torch sees no GPU; use device='cpu' or 'auto'")
    return resolved


class Agent:
    """A policy, the algorithm that trains it, and the environment it acts in.

    Args:
        algo: one of `diffagent.config.ALGORITHMS` (sac, diffsac, ...).
        env: a Gymnasium id, an env instance, or a zero-argument factory. Box actions only.
        device: 'cpu', 'cuda' or 'auto'.
        **overrides: hyperparameters of the algorithm's config (see `diffagent train --help-config`).
    """

    def __init__(self, algo: str, env: EnvSource, *, device: str | torch.device = "cpu", **overrides: Any):
        self.algo = algo.lower()
        self.spec = algo_spec(self.algo)
        self.config: PolicyConfig = make_config(self.algo, overrides)
        self.device = _resolve_device(device)
        self._make_env, self.env_id = env_factory(env)
        first_env = self._make_env()
        self.observation_space, self.action_space = check_spaces(first_env, self.env_id)
        self._env_pool = [first_env]  # handed to the algorithm or the evaluator, whoever asks first
        torch.manual_seed(self.config.seed)
        self.policy: Policy = make_policy(self.spec.policy, self.config, self.observation_space.shape[0],
                                          self.action_space.low, self.action_space.high).to(self.device)
        self._algorithm: Algorithm | None = None
        self._eval_env: gym.Env | None = None
        self._live_policy: LiveOnnxPolicy | None = None  # what act runs one observation through on a CPU
        self._progress: _LearnProgress | None = None
        self._resumed_from: Path | None = None  # the run directory `resume` read, until `learn` continues it

    # --- properties --------------------------------------------------------------------------------
    @property
    def algorithm(self) -> Algorithm:
        """The training algorithm; built on first use (a loaded agent that only acts never needs it)."""
        if self._algorithm is None:
            algo_class = ALGORITHM_CLASSES[self.spec.config_class]
            self._algorithm = algo_class(self.config, self.policy, self._new_env, self.device)
        return self._algorithm

    @property
    def num_steps(self) -> int:
        """Environment steps trained so far."""
        return self._algorithm.num_steps if self._algorithm is not None else 0

    def _new_env(self) -> gym.Env:
        return self._env_pool.pop() if self._env_pool else self._make_env()

    # --- acting --------------------------------------------------------------------------------------
    def act(self, obs: np.ndarray, deterministic: bool = False, noise: np.ndarray | None = None) -> np.ndarray:
        """Actions in the env's units for one observation (obs_dim,) or a batch (B, obs_dim).

        `noise` (K+1, act_dim) or (B, K+1, act_dim) fixes the chain's randomness; zero noise is the
        deterministic action. One observation on a CPU (a control loop, `evaluate`) runs the chain in
        onnxruntime on the policy's own parameters (`LiveOnnxPolicy`), where torch's per-op cost would
        dominate: 153 us against 1,831 us eager for DiffPPO's K = 8 chain
        (benchmarks/acting_latency.py). Its first such call exports the chain (~0.3 s).
        """
        obs_array = np.asarray(obs, dtype=np.float32)
        single = obs_array.ndim == 1
        obs_dim = self.policy.obs_dim
        if obs_array.ndim not in (1, 2) or obs_array.shape[-1] != obs_dim:
            raise ValueError(f"expected an observation of shape ({obs_dim},) or a batch (B, {obs_dim}), "
                             f"got shape {obs_array.shape}")
        batch = np.ascontiguousarray(obs_array[None] if single else obs_array)
        with torch.inference_mode():
            obs_t = torch.from_numpy(batch).to(self.device)
            if noise is None:
                shape = self.policy.noise_shape(batch.shape[0])
                noise_t = torch.zeros(shape, device=self.device) if deterministic else torch.randn(shape, device=self.device)
            else:
                noise_array = np.asarray(noise, dtype=np.float32)
                noise_array = noise_array[None] if single and noise_array.ndim == 2 else noise_array
                if noise_array.shape != self.policy.noise_shape(batch.shape[0]):
                    raise ValueError(f"noise must have shape {self.policy.noise_shape(batch.shape[0])} "
                                     f"(batch, K+1, act_dim), got {np.asarray(noise).shape}")
                noise_t = torch.from_numpy(np.ascontiguousarray(noise_array)).to(self.device)
            policy = self._single_policy() if batch.shape[0] == 1 and self.device.type == "cpu" else self.policy
            action = policy(obs_t, noise_t).cpu().numpy()
        return action[0] if single else action

    def _single_policy(self) -> LiveOnnxPolicy:
        """The policy at batch 1 in onnxruntime, made on first use. The Agent only ever updates the
        policy's tensors in place (training, loading weights), so binding once is enough."""
        if self._live_policy is None:
            from diffagent.export import LiveOnnxPolicy  # onnxruntime loads when an agent first acts on one obs

            self._live_policy = LiveOnnxPolicy(self.policy, batch=1)
        return self._live_policy

    def evaluate(self, episodes: int = 10, deterministic: bool = True, seed: int | None = None) -> EvalResult:
        """Run `episodes` full episodes on a separate env; episode i is reset with seed + i."""
        if self._eval_env is None:
            self._eval_env = self._new_env()
        env = self._eval_env
        base_seed = 1_000_000 + self.config.seed if seed is None else seed
        returns, lengths = [], []
        for i in range(episodes):
            obs, _ = env.reset(seed=base_seed + i)
            total, length, done = 0.0, 0, False
            while not done:
                obs, reward, terminated, truncated, _ = env.step(self.act(obs, deterministic=deterministic))
                total += float(reward)
                length += 1
                done = terminated or truncated
            returns.append(total)
            lengths.append(length)
        return EvalResult(returns, lengths, deterministic)

    # --- training -------------------------------------------------------------------------------------
    def learn(self, total_steps: int, *, eval_every: int = 10_000, eval_episodes: int = 5,
              run_dir: str | Path | None = None, checkpoint_every: int = 50_000, log_every: int = 1_000,
              progress: bool | None = None) -> "Agent":
        """Train until `total_steps` environment steps in all (counting steps already trained).

        With `run_dir`, metrics go to run_dir/metrics.jsonl, resumable checkpoints to
        run_dir/checkpoints/ every `checkpoint_every` steps, and the final agent and its evaluation
        to run_dir (config.json, model.safetensors, results.json). `eval_every=0` turns off periodic
        evaluation; `progress=None` shows a progress bar only on a terminal.
        """
        from tqdm.auto import tqdm

        if total_steps < 1:
            raise ConfigError(f"total_steps must be positive, got {total_steps}")
        if self._progress is None:
            self._progress = _LearnProgress(total_steps, eval_every, eval_episodes, checkpoint_every, log_every)
        state = self._progress
        state.total_steps = total_steps
        run_path = Path(run_dir) if run_dir is not None else None
        with run_lock(run_path) if run_path is not None else contextlib.nullcontext():
            if run_path is not None and run_path.resolve() == self._resumed_from:
                _drop_metrics_after(run_path / METRICS_FILE, self.num_steps)  # under the lock, once
                self._resumed_from = None
            algorithm = self.algorithm
            algorithm.total_steps = total_steps
            bar = tqdm(total=total_steps, initial=algorithm.num_steps, disable=None if progress is None else not progress,
                       unit="step", dynamic_ncols=True)
            window: dict[str, list[float]] = {}
            last_log_time, last_log_step = time.perf_counter(), algorithm.num_steps
            start = time.perf_counter()
            try:
                while algorithm.num_steps < total_steps:
                    before = algorithm.num_steps
                    for key, value in algorithm.train_iteration().items():
                        window.setdefault(key, []).append(value)
                    now_step = algorithm.num_steps
                    bar.update(now_step - before)
                    evaluate_now = state.eval_every and (_crossed(before, now_step, state.eval_every)
                                                         or now_step >= total_steps)
                    if evaluate_now or _crossed(before, now_step, state.log_every) or now_step >= total_steps:
                        now = time.perf_counter()
                        record = {"step": now_step, "steps_per_second": (now_step - last_log_step) / max(now - last_log_time, 1e-9),
                                  "episodes": algorithm.num_episodes,
                                  **{k: float(np.mean(v)) for k, v in window.items()}}
                        if algorithm.recent_returns:
                            record["train_return"] = float(np.mean(algorithm.recent_returns))
                        window.clear()
                        last_log_time, last_log_step = now, now_step
                        if evaluate_now:
                            result = self.evaluate(state.eval_episodes)
                            record.update(eval_return=result.mean, eval_return_std=result.std)
                            state.evaluations.append({"step": now_step, "mean": result.mean, "std": result.std})
                            bar.set_postfix(eval_return=f"{result.mean:.1f}")
                        elif "train_return" in record:
                            bar.set_postfix(train_return=f"{record['train_return']:.1f}")
                        if run_path is not None:
                            with open(run_path / METRICS_FILE, "a") as f:
                                f.write(json.dumps(record) + "\n")
                    if run_path is not None and state.checkpoint_every and _crossed(before, now_step, state.checkpoint_every):
                        state.train_time += time.perf_counter() - start
                        start = time.perf_counter()
                        self.save_checkpoint(run_path)
            finally:
                bar.close()
            state.train_time += time.perf_counter() - start
            if run_path is not None:
                self.save_checkpoint(run_path)
                self.save_pretrained(run_path)
            return self

    # --- artifacts ------------------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        return {"library": "diffagent", "library_version": __version__, "algo": self.algo, "policy": self.spec.policy,
                "env_id": self.env_id, "observation_space": space_to_dict(self.observation_space),
                "action_space": space_to_dict(self.action_space), "config": config_to_dict(self.config)}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the artifact: config.json and model.safetensors (policy weights + observation statistics)."""
        path = save_artifact(directory, self._meta(), self.policy.state_dict())
        if self._progress is not None and self._progress.evaluations:
            write_json(path / RESULTS_FILE, self.results())
        return path

    def push_to_hub(self, repo_id: str, *, token: str | None = None, private: bool = False,
                    commit_message: str | None = None, eval_episodes: int = 10) -> str:
        """Upload the agent to the Hugging Face Hub as `repo_id` (`org/name`); returns the commit URL.

        The repo gets the artifact, policy.onnx, results.json with a fresh deterministic evaluation
        over `eval_episodes`, a model card (README.md) and, when a renderer is available, replay.mp4.
        The token comes from `token`, else HF_TOKEN, else `hf auth login`. See `diffagent.hub.push`.
        """
        from diffagent.hub import push_agent

        return push_agent(self, repo_id, token=token, private=private, commit_message=commit_message,
                          eval_episodes=eval_episodes)

    def export_onnx(self, path: str | Path, *, sample_noise: bool = False, verify: bool = True) -> Path:
        """Export the policy's chain f(obs, noise) -> action to an ONNX file (see `diffagent.export`).

        `sample_noise` exports the form whose only input is obs (the noise is drawn in the graph).
        `verify` checks onnxruntime against PyTorch and raises an ArtifactError if they differ by more than
        `diffagent.export.PARITY_TOLERANCE` of the action range.
        """
        from diffagent.export import export_onnx, verify_onnx

        path = export_onnx(self.policy, self._meta(), path, sample_noise=sample_noise)
        if verify:
            verify_onnx(self.policy, path)
        return path

    def results(self) -> dict[str, Any]:
        """Training summary for results.json and the model card."""
        state = self._progress
        return {"algo": self.algo, "env_id": self.env_id, "total_steps": self.num_steps,
                "train_time_s": state.train_time if state else 0.0,
                "evaluations": state.evaluations if state else [],
                "final_eval": state.evaluations[-1] if state and state.evaluations else None,
                "library_version": __version__, "torch_version": torch.__version__,
                "machine": {"platform": platform.platform(), "processor": platform.processor(),
                            "cpu_count": os.cpu_count()}}

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | Path, env: EnvSource | None = None, *,
                        revision: str | None = None, device: str | torch.device = "cpu") -> "Agent":
        """Load an agent from a directory written by `save_pretrained`, or from a Hub repo `org/name`.

        A missing local path (./x, /x, ~/x, a/b/c, or a/b where a/ exists) is an error, never a Hub
        lookup. A repo is downloaded at `revision` (branch, tag or commit; default main) into the Hub
        cache and loads offline from there (HF_HUB_OFFLINE=1). Only JSON and safetensors are read.
        `env` overrides the saved env id, for envs that are not registered with Gymnasium.
        """
        from diffagent.hub import load_pretrained

        meta, weights, source = load_pretrained(path_or_repo_id, revision)
        return cls._from_meta(meta, weights, env, device, source=source)

    @classmethod
    def _from_meta(cls, meta: dict, weights: dict[str, torch.Tensor], env: EnvSource | None,
                   device: str | torch.device, source: str) -> "Agent":
        try:
            algo, config, env_id = meta["algo"], meta["config"], meta["env_id"]
        except KeyError as err:
            raise ArtifactError(f"{source}: config.json lacks the field {err}; it is corrupted.") from None
        if env is None:
            env = _saved_env(meta, env_id)
        try:
            agent = cls(algo, env, device=device, **config)
        except ConfigError as err:
            raise ArtifactError(f"{source}: cannot rebuild the agent from config.json: {err}") from None
        try:
            agent.policy.load_state_dict({k: v.to(agent.device) for k, v in weights.items()})
        except RuntimeError as err:
            raise ArtifactError(f"{source}: model.safetensors does not match config.json ({err}); "
                                "the artifact is corrupted or was edited by hand.") from None
        return agent

    # --- checkpoints ---------------------------------------------------------------------------------
    def save_checkpoint(self, run_dir: str | Path) -> Path:
        """Write everything needed to resume training to run_dir/checkpoints/ (atomically)."""
        progress = self._progress or _LearnProgress(self.num_steps, 0, 0, 0, 1000)
        state = {"meta": self._meta(), "algorithm": self.algorithm.state_dict(), "progress": progress.__dict__}
        return save_checkpoint(run_dir, self.num_steps, state)

    @classmethod
    def resume(cls, run_dir: str | Path, env: EnvSource | None = None, *,
               device: str | torch.device = "cpu") -> "Agent":
        """An agent restored from the last checkpoint in run_dir; call `learn` to continue.

        The training env starts a fresh episode: the episode in progress at the checkpoint is lost.
        """
        state = load_checkpoint(run_dir)
        meta = state["meta"]
        agent = cls._from_meta(meta, state["algorithm"]["components"]["policy"], env, device, source=str(run_dir))
        agent.algorithm.load_state_dict(state["algorithm"])
        agent._progress = _LearnProgress(**state["progress"])
        agent._resumed_from = Path(run_dir).resolve()
        return agent


def _saved_env(meta: dict, env_id: str) -> EnvSource:
    """The saved env, made here, or else a stand-in with the saved spaces (acting needs no env)."""
    try:
        return gym.make(env_id)
    except Exception as err:  # unknown id, a missing package (mujoco), a failing constructor: all mean "not here"
        try:
            spaces = space_from_dict(meta["observation_space"]), space_from_dict(meta["action_space"])
        except (KeyError, TypeError, ValueError):
            raise ArtifactError(f"config.json lacks valid observation/action spaces for {env_id}; it is corrupted.") from None
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        return lambda: UnavailableEnv(env_id, *spaces, reason)


def _drop_metrics_after(path: Path, step: int) -> None:
    """Forget the metrics logged after the checkpoint a run resumes from: those steps are trained again,
    and a curve must not hold two records of one step."""
    if not path.is_file():
        return
    kept = "".join(json.dumps(record) + "\n" for record in read_jsonl(path) if record.get("step", 0) <= step)
    atomic_write(path, lambda tmp: Path(tmp).write_text(kept))


def _crossed(before: int, after: int, every: int) -> bool:
    """True when a multiple of `every` lies in (before, after]."""
    return every > 0 and after // every > before // every


__all__ = ["Agent", "EvalResult", "DiffAgentError"]
