"""Stable-Baselines3's SAC and PPO as grid algorithms, `sb3-sac` and `sb3-ppo`: what a user would pick instead,
trained on the same envs, budgets and seeds as diffagent's runs, evaluated on the same schedule and episode
seeds, deterministic and stochastic, and writing the run-directory files the report reads (config.json,
metrics.jsonl, results.json) and resumable checkpoints.

Hyperparameters are rl-baselines3-zoo's MuJoCo defaults (its hyperparams/sac.yml and ppo.yml, the
`&mujoco-defaults` entries of the v4 envs): SB3's own defaults, with 10,000 random steps before SAC learns, and
PPO inside VecNormalize (observations and rewards). The zoo also ships Optuna-tuned PPO settings for
Hopper-v4, Walker2d-v4 and HalfCheetah-v4; they are not used here, as diffagent's runs use its library
defaults, tuned for no env. A grid's `set` may override any keyword argument of the SB3 class.

stable-baselines3 is in the `bench` extra; it is imported only when an SB3 run is checked or trained.
"""

from __future__ import annotations

import copy
import json
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import gymnasium as gym
import numpy as np

from diffagent.agent import evaluation_seed
from diffagent.config import parse_overrides
from diffagent.envs import split_env_id
from diffagent.errors import ArtifactError, ConfigError
from diffagent.io import (CHECKPOINT_DIR, CONFIG_FILE, LATEST_FILE, METRICS_FILE, RESULTS_FILE, drop_records_after,
                          json_safe, read_json, run_lock, write_json)

# Names of the files an SB3 checkpoint holds, beside its progress (the curve and the time so far).
MODEL_FILE = "model.zip"
REPLAY_BUFFER_FILE = "replay_buffer.pkl"
NORMALIZATION_FILE = "vecnormalize.pkl"
PROGRESS_FILE = "progress.json"


@dataclass(frozen=True)
class SB3Algorithm:
    """An SB3 algorithm as a grid runs it."""

    sb3_class: str
    family: str
    """The diffagent algorithm it stands beside (sac or ppo): its colour, panel and references in a report."""
    on_policy: bool
    hyperparameters: Mapping[str, Any] = field(default_factory=dict)
    """What rl-baselines3-zoo sets beyond SB3's defaults for MuJoCo."""
    normalize: bool = False
    """VecNormalize around the training env (rl-baselines3-zoo's `normalize: true`)."""


SB3_ALGORITHMS = {
    # hyperparams/sac.yml: "HalfCheetah-v4: &mujoco-defaults" = {n_timesteps: 1e6, policy: MlpPolicy,
    # learning_starts: 10000}, shared by Ant-v4, Hopper-v4 and Walker2d-v4
    "sb3-sac": SB3Algorithm("SAC", family="sac", on_policy=False, hyperparameters={"learning_starts": 10_000}),
    # hyperparams/ppo.yml: "Ant-v4: &mujoco-defaults" = {normalize: true, n_timesteps: 1e6, policy: MlpPolicy}
    "sb3-ppo": SB3Algorithm("PPO", family="ppo", on_policy=True, normalize=True),
}


def is_sb3(algo: str) -> bool:
    return algo.lower() in SB3_ALGORITHMS


def _sb3_class(spec: SB3Algorithm) -> type:
    try:
        import stable_baselines3
    except ImportError:
        raise ConfigError("sb3-sac and sb3-ppo runs need Stable-Baselines3: pip install 'diffagent[bench]'") from None
    return getattr(stable_baselines3, spec.sb3_class)


def sb3_hyperparameters(algo: str, overrides: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The keyword arguments the SB3 class gets: rl-baselines3-zoo's, then `overrides`, each checked against the
    class's signature, so a grid's typo fails when the grid is read."""
    import inspect

    spec = SB3_ALGORITHMS[algo]
    hyperparameters = {**spec.hyperparameters, **(overrides or {})}
    sb3_class = _sb3_class(spec)
    known = set(inspect.signature(sb3_class.__init__).parameters) - {"self", "policy", "env", "seed", "device"}
    for key in hyperparameters:
        if key not in known:
            raise ConfigError(f"{algo}: {spec.sb3_class} has no keyword argument {key!r} (policy, env, seed and "
                              f"device are set by the runner); it takes {', '.join(sorted(known))}")
    return hyperparameters


def parse_sb3_overrides(pairs: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """`--set key=value` pairs for an SB3 class: each value read as JSON (3e-4, true, {"net_arch": [64, 64]}),
    and kept as the text when it is not JSON (auto)."""
    values = {}
    for key, text in parse_overrides(pairs).items():
        try:
            values[key] = json.loads(text)
        except json.JSONDecodeError:
            values[key] = text
    return values


def train_sb3(algo: str, env_id: str, steps: int, seed: int, run_dir: str | Path, *, eval_every: int,
              eval_episodes: int, checkpoint_every: int, overrides: Mapping[str, Any] | None = None,
              env_kwargs: Mapping[str, Any] | None = None) -> None:
    """Train `algo` (sb3-sac or sb3-ppo) on `env_id` to `steps` environment steps in `run_dir`, or continue the
    run there from its last checkpoint (to a larger budget too).

    Every `eval_every` steps, and at the end, `eval_episodes` deterministic and as many stochastic episodes on a
    separate env, reset with the seeds diffagent's Agent.evaluate uses, give a metrics.jsonl record. A resumed
    run restores the model, its replay buffer or normalisation statistics, and the curve; the episode in
    progress starts over and the random streams are new, so it is a valid run of the budget, not a replay of
    the uninterrupted one.
    """
    spec = SB3_ALGORITHMS[algo]
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    hyperparameters = sb3_hyperparameters(algo, overrides)
    env_kwargs = dict(env_kwargs or {})
    config = {"library": "stable-baselines3", "library_version": _sb3_version(), "algo": algo,
              "sb3_class": spec.sb3_class, "env_id": env_id, "env_kwargs": env_kwargs, "seed": seed,
              "hyperparameters": hyperparameters, "normalize": spec.normalize,
              "hyperparameters_source": "rl-baselines3-zoo hyperparams/*.yml, &mujoco-defaults (diffagent/bench/sb3.py)"}
    with run_lock(run_dir):
        _check_same_run(run_dir, config)
        write_json(run_dir / CONFIG_FILE, config)
        _SB3Run(algo, env_id, env_kwargs, seed, run_dir, hyperparameters).train(steps, eval_every, eval_episodes,
                                                                                 checkpoint_every)


def _sb3_version() -> str:
    import importlib.metadata

    return importlib.metadata.version("stable-baselines3")


def _check_same_run(run_dir: Path, config: dict[str, Any]) -> None:
    """Refuse a directory that holds another run (another algorithm, env, seed or settings)."""
    if not (run_dir / CONFIG_FILE).is_file():
        return
    saved = read_json(run_dir / CONFIG_FILE, str(run_dir))
    keys = ("library", "algo", "env_id", "env_kwargs", "seed", "hyperparameters")
    if any(saved.get(key) != config[key] for key in keys):
        raise ConfigError(f"{run_dir} holds another run ({', '.join(f'{k}={saved.get(k)!r}' for k in keys)}); "
                          "train into another directory, or delete this one")


class _SB3Run:
    """One SB3 training run in a run directory: the model, its envs, its curve and its checkpoints."""

    def __init__(self, algo: str, env_id: str, env_kwargs: dict[str, Any], seed: int, run_dir: Path,
                 hyperparameters: dict[str, Any]):
        from stable_baselines3.common.monitor import Monitor
        from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

        spec = SB3_ALGORITHMS[algo]
        self.algo, self.spec, self.env_id, self.run_dir, self.seed = algo, spec, env_id, run_dir, seed
        plain_id = split_env_id(env_id)[1]
        self.eval_env = gym.make(plain_id, **env_kwargs)
        train_env = DummyVecEnv([lambda: Monitor(gym.make(plain_id, **env_kwargs))])
        sb3_class = _sb3_class(spec)
        checkpoint = self._latest_checkpoint()
        self.evaluations: list[dict[str, Any]] = []
        self.earlier_time = 0.0  # seconds trained before this process (a resumed run's)
        self.started = self.last_record_time = time.perf_counter()
        if checkpoint is None:
            if spec.normalize:
                train_env = VecNormalize(train_env, gamma=hyperparameters.get("gamma", 0.99))
            # a copy: SB3 writes into the dicts it gets (policy_kwargs), and config.json keeps what was asked for
            self.model = sb3_class("MlpPolicy", train_env, seed=seed, device="cpu", **copy.deepcopy(hyperparameters))
        else:
            if spec.normalize:
                train_env = VecNormalize.load(str(checkpoint / NORMALIZATION_FILE), train_env)
            # the runner's own checkpoint, written by this class: SB3 reads its zip and pickles as it wrote them
            self.model = sb3_class.load(checkpoint / MODEL_FILE, env=train_env, device="cpu")
            if not spec.on_policy:
                self.model.load_replay_buffer(checkpoint / REPLAY_BUFFER_FILE)
            progress = read_json(checkpoint / PROGRESS_FILE, str(checkpoint))
            self.evaluations, self.earlier_time = progress["evaluations"], progress["train_time_s"]
        # the steps after the checkpoint (all of them for a new run) are trained again: their records go
        drop_records_after(run_dir / METRICS_FILE, self.model.num_timesteps)
        self.last_record_step = self.model.num_timesteps

    @property
    def train_time(self) -> float:
        """Seconds trained so far, evaluations included, over every process that trained this run."""
        return self.earlier_time + time.perf_counter() - self.started

    @property
    def normalization(self) -> Any:
        """The training env's VecNormalize (its observation statistics act in evaluation), or None."""
        return self.model.get_env() if self.spec.normalize else None

    def _latest_checkpoint(self) -> Path | None:
        pointer = self.run_dir / CHECKPOINT_DIR / LATEST_FILE
        if not pointer.is_file():
            return None
        folder = self.run_dir / CHECKPOINT_DIR / str(read_json(pointer, str(self.run_dir)).get("checkpoint"))
        if not (folder / MODEL_FILE).is_file():
            raise ArtifactError(f"{pointer} names {folder.name}, which holds no {MODEL_FILE}: the checkpoint is "
                                f"damaged. Delete {self.run_dir} to train this run again from the start.")
        return folder

    def train(self, steps: int, eval_every: int, eval_episodes: int, checkpoint_every: int) -> None:
        from stable_baselines3.common.callbacks import BaseCallback

        run = self

        class Schedule(BaseCallback):
            """Evaluations and checkpoints at multiples of their steps, as diffagent's learn has them."""

            def _on_step(self) -> bool:
                step = self.num_timesteps
                if step % eval_every == 0:
                    run.evaluate(step, eval_episodes)
                if step % checkpoint_every == 0:
                    run.save_checkpoint(step)
                return True

        if steps > self.model.num_timesteps:
            self.model.learn(steps - self.model.num_timesteps, callback=Schedule(), reset_num_timesteps=False)
        step = self.model.num_timesteps
        if not self.evaluations or self.evaluations[-1]["step"] != step:
            self.evaluate(step, eval_episodes)  # the budget's own evaluation, as diffagent's runs end with one
        self.save_checkpoint(step)
        self.model.save(self.run_dir / MODEL_FILE)
        write_json(self.run_dir / RESULTS_FILE, json_safe(self.results()))

    def evaluate(self, step: int, episodes: int) -> None:
        """Deterministic and stochastic episodes, seeded as Agent.evaluate seeds them; a metrics.jsonl record."""
        deterministic = self._episodes(episodes, deterministic=True)
        stochastic = self._episodes(episodes, deterministic=False)
        self.evaluations.append({"step": step, "mean": float(np.mean(deterministic)),
                                 "std": float(np.std(deterministic)), "stochastic_mean": float(np.mean(stochastic)),
                                 "stochastic_std": float(np.std(stochastic))})
        now = time.perf_counter()
        record = {"step": step, "steps_per_second": (step - self.last_record_step) / max(now - self.last_record_time, 1e-9),
                  "eval_return": self.evaluations[-1]["mean"], "eval_return_std": self.evaluations[-1]["std"],
                  "eval_return_stochastic": self.evaluations[-1]["stochastic_mean"],
                  "eval_return_stochastic_std": self.evaluations[-1]["stochastic_std"]}
        if self.model.ep_info_buffer:
            record["train_return"] = float(np.mean([info["r"] for info in self.model.ep_info_buffer]))
        with open(self.run_dir / METRICS_FILE, "a") as f:
            f.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
        self.last_record_step, self.last_record_time = step, time.perf_counter()

    def _episodes(self, episodes: int, deterministic: bool) -> list[float]:
        import torch

        base_seed = evaluation_seed(self.seed)
        returns = []
        for i in range(episodes):
            obs, _ = self.eval_env.reset(seed=base_seed + i)
            # SB3 samples from torch's global generator: a stochastic episode forks it and seeds it like its
            # reset, so the evaluation is reproducible and training's random stream goes on untouched
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(base_seed + i)
                total, done = 0.0, False
                while not done:
                    normalized = self.normalization.normalize_obs(obs) if self.normalization is not None else obs
                    action, _ = self.model.predict(normalized, deterministic=deterministic)
                    obs, reward, terminated, truncated, _ = self.eval_env.step(action)
                    total += float(reward)
                    done = terminated or truncated
            returns.append(total)
        return returns

    def save_checkpoint(self, step: int) -> None:
        """checkpoints/step_N (model, replay buffer or normalisation statistics, the curve so far), written
        whole before checkpoints/latest.json names it; only the newest is kept (a replay buffer is large)."""
        root = self.run_dir / CHECKPOINT_DIR
        partial = root / f".partial-{os.getpid()}"
        shutil.rmtree(partial, ignore_errors=True)
        partial.mkdir(parents=True)
        self.model.save(partial / MODEL_FILE)
        if not self.spec.on_policy:
            self.model.save_replay_buffer(partial / REPLAY_BUFFER_FILE)
        if self.normalization is not None:
            self.normalization.save(str(partial / NORMALIZATION_FILE))
        write_json(partial / PROGRESS_FILE, {"step": step, "evaluations": self.evaluations,
                                             "train_time_s": self.train_time})
        final = root / f"step_{step:010d}"
        shutil.rmtree(final, ignore_errors=True)
        partial.rename(final)
        write_json(root / LATEST_FILE, {"checkpoint": final.name, "step": step})
        for old in root.glob("step_*"):
            if old != final:
                shutil.rmtree(old, ignore_errors=True)

    def results(self) -> dict[str, Any]:
        """results.json as diffagent's runs write it (Agent.results), with SB3's name and version."""
        import torch

        return {"algo": self.algo, "env_id": self.env_id, "total_steps": int(self.model.num_timesteps), "train_time_s": self.train_time,
                "evaluations": self.evaluations, "final_eval": self.evaluations[-1] if self.evaluations else None,
                "library": "stable-baselines3", "library_version": _sb3_version(), "torch_version": torch.__version__,
                "machine": {"platform": platform.platform(), "processor": platform.processor(),
                            "cpu_count": os.cpu_count()}}
