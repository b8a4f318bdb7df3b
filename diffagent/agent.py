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
import math
import os
import platform
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import gymnasium as gym
import numpy as np
import torch

from diffagent import __version__
from diffagent.algos import ALGORITHM_CLASSES, Algorithm
from diffagent.callbacks import Callback, CallbackList, TensorBoardCallback
from diffagent.config import Config, algo_spec, applicable, make_config
from diffagent.envs import (EnvRecipe, EnvSource, UnavailableEnv, check_spaces, env_factory, flat_observations,
                            space_from_dict, space_to_dict)
from diffagent.errors import ArtifactError, ConfigError, DiffAgentError, InputError, TrainingError
from diffagent.io import (CONFIG_FILE, FORMAT_VERSION, METRICS_FILE, RESULTS_FILE, drop_records_after, has_checkpoint,
                          json_safe, load_checkpoint, load_pretrained, run_lock, save_artifact, save_checkpoint,
                          write_json)
from diffagent.policies import Policy, make_policy
from diffagent.policies.onnx import LiveOnnxPolicy
from serve.contract import flatten_observation, observation_layout


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
        """The evaluation as results.json's "eval" holds it: mean and std of the returns, the names of its curve
        ("evaluations", "final_eval") too. Earlier versions said mean_reward and std_reward here; readers take both."""
        return {"mean": self.mean, "std": self.std, "episodes": len(self.returns),
                "deterministic": self.deterministic, "returns": self.returns, "lengths": self.lengths}


def evaluation_seed(run_seed: int) -> int:
    """The seed of the first evaluation episode of a run with seed `run_seed` (episode i: this + i): far from the
    training seeds, so an evaluation never replays a training episode's start. The benchmark's SB3 runs use it too."""
    return 1_000_000 + run_seed


# The schedules of `learn` when neither the call, an earlier call nor a resumed checkpoint sets them.
LEARN_DEFAULTS = {"eval_every": 10_000, "eval_episodes": 5, "checkpoint_every": 50_000, "log_every": 1_000}


@dataclass
class LearnProgress:
    """Where training stands: the budget, the schedules of `learn`, the evaluations so far and the time spent.

    A checkpoint saves it, so a resumed run picks up its budget and schedules.
    """

    total_steps: int
    eval_every: int
    eval_episodes: int
    checkpoint_every: int
    log_every: int
    evaluations: list[dict] = field(default_factory=list)
    """The curve: {step, mean, std} of each scheduled deterministic evaluation, and since the stochastic return is
    recorded beside it, stochastic_mean and stochastic_std (a curve from an older checkpoint lacks them)."""
    train_time: float = 0.0
    tensorboard: bool = False
    """Whether the run directory gets TensorBoard event files (kept by a resumed run)."""

    def set_schedules(self, **schedules: int | None) -> None:
        """Replace the schedules given (None keeps one), each checked: an integer, log_every at least 1."""
        for name, value in schedules.items():
            if value is not None:
                minimum = 1 if name == "log_every" else 0
                if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
                    raise ConfigError(f"{name} must be an integer >= {minimum}, got {value!r}")
                setattr(self, name, int(value))
        if self.eval_every and self.eval_episodes < 1:
            raise ConfigError("eval_episodes must be at least 1 while eval_every is set; pass eval_every=0 to "
                              "train without evaluations")


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
        env: a Gymnasium id (`my_module:MyEnv-v0` imports my_module first, as gym.make does), an env
            instance, or a zero-argument factory. Box actions; observations a 1-D Box or a Dict of them.
        env_kwargs: keyword arguments of `gym.make` for an env id; recorded in config.json.
        wrappers: wrappers applied to an env id's env, in order: each a gym.Wrapper class, "module:Class"
            or {"module:Class": {kwargs}}; recorded in config.json.
        device: 'cpu', 'cuda' or 'auto'.
        **overrides: hyperparameters of the algorithm's config, by name (`diffagent train --algo ALGO
            --list-params` lists them); one that the algorithm does not use is a ConfigError.

    Attributes:
        config: the algorithm's `diffagent.config.Config` (run, policy and algorithm parts).
        policy: the `Policy` that acts, is saved and exported; `algorithm` trains it.
        progress: the `LearnProgress` of the current or resumed run, None before the first `learn`.
    """

    def __init__(self, algo: str, env: EnvSource, *, env_kwargs: Mapping[str, Any] | None = None,
                 wrappers: Iterable[Any] = (), device: str | torch.device = "cpu", **overrides: Any):
        self.algo = algo.lower()
        self.spec = algo_spec(self.algo)
        self.config: Config = make_config(self.algo, overrides)
        self.device = _resolve_device(device)
        make_env, self.env_recipe = env_factory(env, env_kwargs, wrappers)
        self.env_id = self.env_recipe.env_id
        first_env = make_env()
        self.observation_space, self.action_space = check_spaces(first_env, self.env_id)
        # A Dict observation: the policy, the algorithms and the ONNX graph see its values concatenated in key order
        self.observation_layout = observation_layout(space_to_dict(self.observation_space))
        self._make_env = lambda: flat_observations(make_env())
        self._env_pool = [flat_observations(first_env)]  # handed to the algorithm or the evaluator, whoever asks first
        torch.manual_seed(self.config.run.seed)
        obs_dim = gym.spaces.flatdim(self.observation_space)
        self.policy: Policy = make_policy(self.config.policy, obs_dim, self.action_space.low,
                                          self.action_space.high).to(self.device)
        self.progress: LearnProgress | None = None
        self._algorithm: Algorithm | None = None
        self._eval_env: gym.Env | None = None
        self._onnx_policy: LiveOnnxPolicy | None = None  # what evaluate acts with on a CPU
        self._run_dir: Path | None = None  # the run directory this agent trains into (or was resumed from)
        self._trim_metrics = False  # resumed: metrics logged after the checkpoint are dropped when learn continues

    # --- properties --------------------------------------------------------------------------------
    @property
    def algorithm(self) -> Algorithm:
        """The training algorithm; built on first use (a loaded agent that only acts never needs it)."""
        if self._algorithm is None:
            algo_class = ALGORITHM_CLASSES[self.spec.algorithm]
            self._algorithm = algo_class(self.config.algorithm, self.policy, self._new_env, self.device,
                                         self.config.run.seed)
        return self._algorithm

    @property
    def num_timesteps(self) -> int:
        """Environment steps trained so far (Stable-Baselines3's name). Not `policy.num_steps`, the chain's K."""
        return self._algorithm.num_timesteps if self._algorithm is not None else 0

    @property
    def num_steps(self) -> int:
        """Deprecated: `num_timesteps`. The name meant K, the chain's length, elsewhere (policies, ONNX metadata)."""
        warnings.warn("Agent.num_steps is deprecated; use Agent.num_timesteps (environment steps trained). "
                      "num_steps names K, the chain's length, in policies and ONNX metadata.", DeprecationWarning,
                      stacklevel=2)
        return self.num_timesteps

    @property
    def temperature(self) -> float | None:
        """The temperature alpha: the algorithm's once it is built (SAC and WPO tune theirs), else the config's
        fixed one; None for a tuned alpha whose algorithm is not built (a loaded agent keeps only its policy)."""
        if self._algorithm is not None:
            return self._algorithm.temperature
        return self.config.algorithm.fixed_temperature

    def _new_env(self) -> gym.Env:
        return self._env_pool.pop() if self._env_pool else self._make_env()

    # --- acting --------------------------------------------------------------------------------------
    def act(self, obs: np.ndarray | Mapping[str, np.ndarray], deterministic: bool = False,
            noise: np.ndarray | None = None) -> np.ndarray:
        """Actions in the env's units for one observation (obs_dim,) or a batch (B, obs_dim), from the torch policy.

        A Dict observation is a mapping of each key to its value, (size,) or a batch (B, size).
        `noise` (K+1, act_dim) or (B, K+1, act_dim) fixes the chain's randomness; zero noise is the
        deterministic action. Any finite input gives an action inside the box; NaN or inf (also beyond
        float32's range) is an InputError, as in `serve`. For fast acting on one observation at a time,
        export the policy and run it with `serve.load_policy` (README, "Publish, export, serve").
        """
        return self._act(self.policy, obs, deterministic, noise)

    def predict(self, observation: np.ndarray | Mapping[str, np.ndarray], state: Any = None,
                episode_start: np.ndarray | None = None, deterministic: bool = False) -> tuple[np.ndarray, Any]:
        """Stable-Baselines3's `predict`: (actions, state) for one observation or a batch, so SB3's
        `evaluate_policy`, rl-zoo3-style enjoy scripts and other SB3 code drive an Agent as is. The
        policy keeps no recurrent state: `state` comes back as given and `episode_start` is not needed."""
        return self.act(observation, deterministic=deterministic), state

    def _act(self, policy: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], obs: Any, deterministic: bool,
             noise: Any) -> np.ndarray:
        """`act` through `policy`: the torch policy, or the ONNX backend that evaluate uses."""
        if isinstance(obs, Mapping):
            if self.observation_layout is None:
                raise InputError(f"{self.env_id} has a Box observation space; pass an array, not a mapping")
            try:
                obs = flatten_observation(obs, self.observation_layout)
            except ValueError as err:
                raise InputError(str(err)) from None
        elif self.observation_layout is not None and np.shape(obs)[-1:] != (self.policy.obs_dim,):
            raise InputError(f"{self.env_id} has a Dict observation space: pass a mapping of "
                             f"{[key for key, _ in self.observation_layout]} to arrays, or their concatenation")
        obs_array = _finite_array(obs, "observation")
        single = obs_array.ndim == 1
        obs_dim = self.policy.obs_dim
        if obs_array.ndim not in (1, 2) or obs_array.shape[-1] != obs_dim:
            raise InputError(f"expected an observation of shape ({obs_dim},) or a batch (B, {obs_dim}), "
                             f"got shape {obs_array.shape}")
        batch = np.ascontiguousarray(obs_array[None] if single else obs_array)
        with torch.inference_mode():
            obs_t = torch.from_numpy(batch).to(self.device)
            if noise is None:
                shape = self.policy.noise_shape(batch.shape[0])
                noise_t = torch.zeros(shape, device=self.device) if deterministic else torch.randn(shape, device=self.device)
            else:
                noise_array = _finite_array(noise, "noise")
                noise_array = noise_array[None] if single and noise_array.ndim == 2 else noise_array
                if noise_array.shape != self.policy.noise_shape(batch.shape[0]):
                    raise InputError(f"noise must have shape {self.policy.noise_shape(batch.shape[0])} "
                                     f"(batch, K+1, act_dim), got {np.shape(noise)}")
                noise_t = torch.from_numpy(np.ascontiguousarray(noise_array)).to(self.device)
            action = policy(obs_t, noise_t).cpu().numpy()
        return action[0] if single else action

    def evaluate(self, episodes: int = 10, deterministic: bool = True, seed: int | None = None) -> EvalResult:
        """Run `episodes` full episodes on a separate env; episode i is reset with seed + i (default seed:
        1,000,000 + the run's seed, so evaluations never replay a training episode's start).

        A stochastic episode draws its chain noise from a generator of its own, seeded like its reset:
        the same call gives the same returns, and training's random streams are left untouched, so an
        evaluation schedule never changes what is learned.

        On a CPU the episodes act through the ONNX acting backend (`LiveOnnxPolicy`), bound to the
        current policy's tensors at the start of each call: one observation at a time, torch's per-op
        cost dominates, and onnxruntime runs the chain several times faster with the same actions up to
        float rounding (benchmarks/acting_latency.py; tests/test_agent.py compares every action). Training
        rollouts do the same on a CPU (SAC.policy_action, PPO's rollouts); `act` always runs torch.
        """
        if isinstance(episodes, bool) or not isinstance(episodes, (int, np.integer)) or episodes < 1:
            raise ConfigError(f"episodes must be a positive integer, got {episodes!r}")
        if self._eval_env is None:
            self._eval_env = self._new_env()
        env = self._eval_env
        policy = self._evaluation_policy()
        base_seed = evaluation_seed(self.config.run.seed) if seed is None else seed
        noise_shape = self.policy.noise_shape(1)
        returns, lengths = [], []
        for i in range(episodes):
            obs, _ = env.reset(seed=base_seed + i)
            noise_source = None if deterministic else np.random.default_rng(base_seed + i)
            total, length, done = 0.0, 0, False
            while not done:
                noise = None if noise_source is None else noise_source.standard_normal(noise_shape, dtype=np.float32)
                obs, reward, terminated, truncated, _ = env.step(self._act(policy, obs, deterministic, noise))
                total += float(reward)
                length += 1
                done = terminated or truncated
            returns.append(total)
            lengths.append(length)
        return EvalResult(returns, lengths, deterministic)

    def _evaluation_policy(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        """What `evaluate` acts with: on a CPU the ONNX backend at batch 1, made for the current policy (or bound
        to its tensors again, which may have been replaced), elsewhere the torch policy."""
        if self.device.type != "cpu":
            return self.policy
        if self._onnx_policy is None or self._onnx_policy.policy is not self.policy:
            self._onnx_policy = LiveOnnxPolicy(self.policy, batch=1)
        else:
            self._onnx_policy.bind()
        return self._onnx_policy

    # --- training -------------------------------------------------------------------------------------
    def learn(self, steps: int | None = None, *, eval_every: int | None = None, eval_episodes: int | None = None,
              run_dir: str | Path | None = None, checkpoint_every: int | None = None, log_every: int | None = None,
              tensorboard: bool | None = None, callbacks: Callback | Iterable[Callback] = (),
              progress: bool | None = None) -> "Agent":
        """Train `steps` more environment steps (Stable-Baselines3's convention: `learn(n)` twice trains 2n).

        `steps=None` continues a resumed run to the budget it was started with. Each schedule left None
        (`eval_every`, `eval_episodes`, `checkpoint_every`, `log_every`, `run_dir`) keeps its value from
        the previous `learn` call or from the resumed checkpoint, else takes its default
        (LEARN_DEFAULTS); one given replaces it from now on. `eval_every=0` turns periodic evaluation off.

        With a run directory, metrics go to run_dir/metrics.jsonl (and, with `tensorboard`, as TensorBoard
        event files to run_dir itself), resumable checkpoints to run_dir/checkpoints/ (one as training
        starts, then every `checkpoint_every` steps), and the final agent and its evaluation to run_dir
        (config.json, model.safetensors, results.json). A directory that holds another run is refused:
        resume it with `Agent.resume`, or choose another. `callbacks` (diffagent.callbacks, SB3's) run
        at every step, evaluation and metrics record, and may stop training early; the budget is then
        the steps trained. `progress=None` shows a progress bar only on a terminal.
        """
        from tqdm.auto import tqdm

        state = self.progress or LearnProgress(total_steps=self.num_timesteps, **LEARN_DEFAULTS)
        if steps is None:
            if self.progress is None or state.total_steps <= self.num_timesteps:
                raise ConfigError("learn() needs a number of steps: nothing is left of a resumed run's budget "
                                  f"({state.total_steps:,} steps, {self.num_timesteps:,} trained)")
            steps = state.total_steps - self.num_timesteps
        if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
            raise ConfigError(f"steps must be a positive integer, got {steps!r}")
        state.set_schedules(eval_every=eval_every, eval_episodes=eval_episodes, checkpoint_every=checkpoint_every,
                            log_every=log_every)
        state.total_steps = self.num_timesteps + int(steps)
        state.tensorboard = state.tensorboard if tensorboard is None else bool(tensorboard)
        self.progress = state
        run_path = self._claim_run_dir(Path(run_dir)) if run_dir is not None else self._run_dir
        callbacks = CallbackList([callbacks] if isinstance(callbacks, Callback) else callbacks)
        if state.tensorboard:
            if run_path is None:
                raise ConfigError("tensorboard=True writes its event files to the run directory: pass run_dir")
            callbacks.callbacks.append(TensorBoardCallback(run_path))
        with run_lock(run_path) if run_path is not None else contextlib.nullcontext():
            algorithm = self.algorithm
            algorithm.total_steps = state.total_steps
            if run_path is not None:
                if self._trim_metrics:  # a resumed run: those steps are trained again (under the lock, once)
                    drop_records_after(run_path / METRICS_FILE, self.num_timesteps)
                    self._trim_metrics = False
                if not has_checkpoint(run_path):  # from the first step on, a killed run can be resumed
                    self.save_checkpoint(run_path)
            self._train_loop(algorithm, state, run_path, callbacks, tqdm(
                total=state.total_steps, initial=algorithm.num_timesteps, unit="step", dynamic_ncols=True,
                disable=None if progress is None else not progress))
            if run_path is not None:
                self.save_checkpoint(run_path)
                self.save_pretrained(run_path)
            return self

    def _claim_run_dir(self, run_path: Path) -> Path:
        """`run_path` as this agent's run directory, unless it holds another run's checkpoints, metrics or artifact."""
        resolved = run_path.resolve()
        if resolved != self._run_dir:
            if has_checkpoint(run_path) or (run_path / METRICS_FILE).exists() or (run_path / CONFIG_FILE).exists():
                raise DiffAgentError(f"{run_path} already holds a run; continue it with Agent.resume({str(run_path)!r}) "
                                     f"(or `diffagent resume {run_path}`), or train into another directory")
            self._run_dir = resolved
        return self._run_dir

    def _train_loop(self, algorithm: Algorithm, state: LearnProgress, run_path: Path | None, callbacks: CallbackList,
                    bar: Any) -> None:
        """Train until the budget or a callback's stop: a metrics record every log_every steps, evaluations and
        checkpoints on schedule."""
        window = _MetricsWindow(algorithm.num_timesteps)
        start = time.perf_counter()
        callbacks.on_training_start(self)
        try:
            keep_going = True
            while keep_going and algorithm.num_timesteps < state.total_steps:
                before = algorithm.num_timesteps
                metrics = algorithm.train_iteration()
                step = algorithm.num_timesteps
                _check_finite(metrics, step, run_path)
                window.add(metrics)
                bar.update(step - before)
                finished = step >= state.total_steps
                evaluate_now = state.eval_every and (_crossed(before, step, state.eval_every) or finished)
                if evaluate_now or finished or _crossed(before, step, state.log_every):
                    record = window.record(algorithm)
                    if evaluate_now:
                        result, stochastic = self._evaluate_progress(step)
                        record.update(eval_return=result.mean, eval_return_std=result.std,
                                      eval_return_stochastic=stochastic.mean, eval_return_stochastic_std=stochastic.std)
                        keep_going = callbacks.on_evaluation(self, result)
                    shown = "eval_return" if evaluate_now else "train_return"
                    if shown in record:
                        bar.set_postfix({shown: f"{record[shown]:.1f}"})
                    if run_path is not None:
                        with open(run_path / METRICS_FILE, "a") as f:
                            f.write(json.dumps(json_safe(record), allow_nan=False) + "\n")
                    callbacks.on_log(self, record)
                keep_going = callbacks.on_step(self) and keep_going
                if run_path is not None and state.checkpoint_every and _crossed(before, step, state.checkpoint_every):
                    state.train_time += time.perf_counter() - start
                    start = time.perf_counter()
                    self.save_checkpoint(run_path)
            if not keep_going:  # a callback stopped the run: it is finished at the steps it trained
                state.total_steps = algorithm.num_timesteps
        finally:
            bar.close()
            state.train_time += time.perf_counter() - start
            callbacks.on_training_end(self)

    def _evaluate_progress(self, step: int) -> tuple[EvalResult, EvalResult]:
        """A scheduled evaluation, deterministic and stochastic on the same episode seeds, kept in `progress`
        (results.json's curve). The deterministic return is the score; the stochastic one is what the
        maximum-entropy objective trains, and the gap between them shows how much the policy's noise costs."""
        result = self.evaluate(self.progress.eval_episodes)
        stochastic = self.evaluate(self.progress.eval_episodes, deterministic=False)
        self.progress.evaluations.append({"step": step, "mean": result.mean, "std": result.std,
                                          "stochastic_mean": stochastic.mean, "stochastic_std": stochastic.std})
        return result, stochastic

    # --- artifacts ------------------------------------------------------------------------------------
    def _meta(self) -> dict[str, Any]:
        """What config.json holds, and a checkpoint beside its state."""
        return {"format_version": FORMAT_VERSION, "library": "diffagent", "library_version": __version__,
                "algo": self.algo, "policy": self.spec.policy.family, **self.env_recipe.to_meta(),
                "observation_space": space_to_dict(self.observation_space),
                "action_space": space_to_dict(self.action_space), "config": self.config.to_dict()}

    def save_pretrained(self, directory: str | Path) -> Path:
        """Write the artifact: config.json and model.safetensors (policy weights + observation statistics)."""
        path = save_artifact(directory, self._meta(), self.policy.state_dict())
        if self.progress is not None and self.progress.evaluations:
            write_json(path / RESULTS_FILE, self.results())
        return path

    def results(self) -> dict[str, Any]:
        """Training summary for results.json and the model card."""
        state = self.progress
        return {"algo": self.algo, "env_id": self.env_id, "total_steps": self.num_timesteps,
                "train_time_s": state.train_time if state else 0.0,
                "evaluations": state.evaluations if state else [],
                "final_eval": state.evaluations[-1] if state and state.evaluations else None,
                "library_version": __version__, "torch_version": torch.__version__,
                "machine": {"platform": platform.platform(), "processor": platform.processor(),
                            "cpu_count": os.cpu_count()}}

    @classmethod
    def from_pretrained(cls, path_or_repo_id: str | Path, env: EnvSource | None = None, *,
                        revision: str | None = None, token: str | bool | None = None,
                        cache_dir: str | Path | None = None, local_files_only: bool = False,
                        device: str | torch.device = "cpu") -> "Agent":
        """Load an agent from a directory written by `save_pretrained`, or from a Hub repo `org/name`.

        A missing local path (./x, /x, ~/x, a/b/c, or a/b where a/ exists) is an error, never a Hub
        lookup. A repo is downloaded at `revision` (branch, tag or commit; default main) into the Hub
        cache (or `cache_dir`), with `token` for a private one, and loads offline from there
        (HF_HUB_OFFLINE=1, or `local_files_only`). Only JSON and safetensors are read. `env` overrides
        the saved env, for envs that are not registered with Gymnasium.
        """
        meta, weights, source = load_pretrained(path_or_repo_id, revision, token=token, cache_dir=cache_dir,
                                                local_files_only=local_files_only)
        return cls._from_meta(meta, weights, env, device, source=source)

    @classmethod
    def _from_meta(cls, meta: dict, weights: dict[str, torch.Tensor], env: EnvSource | None,
                   device: str | torch.device, source: str) -> "Agent":
        algo, config, env_id = meta.get("algo"), meta.get("config"), meta.get("env_id")
        if not isinstance(algo, str) or not isinstance(config, dict) or env_id is None:
            raise ArtifactError(f"{source}: config.json lacks a valid 'algo', 'config' or 'env_id'; it is corrupted.")
        try:
            if meta.get("format_version", 1) < 2:  # format 1 listed fields its algorithm ignores (io.FORMAT_VERSION);
                config = applicable(algo, config)  # its checkpoints carry no version in their meta
            checked = make_config(algo, config)  # every value is checked before anything is built from it
            if meta.get("format_version", 1) < 4 and algo.lower() == "diffwpo":  # its kl_bound was the path's
                config = {**config, "kl_bound": checked.algorithm.kl_bound / checked.policy.diffusion_steps}
        except ConfigError as err:
            raise ArtifactError(f"{source}: cannot rebuild the agent from config.json: {err}") from None
        recipe = None
        if env is None:
            env, recipe = _saved_env(meta, source)
        agent = cls(algo, env, device=device, **config)
        if recipe is not None:  # kept, so a re-save records the same env, made here or not
            agent.env_recipe, agent.env_id = recipe, recipe.env_id
        expected = agent.policy.state_dict()
        for name, tensor in weights.items():
            problem = None
            if name not in expected:
                problem = f"does not match config.json: {name!r} is not a parameter of this policy"
            elif tensor.dtype != expected[name].dtype or tensor.shape != expected[name].shape:
                problem = (f"does not match config.json: {name!r} is {str(tensor.dtype).removeprefix('torch.')} "
                           f"{tuple(tensor.shape)}, expected {str(expected[name].dtype).removeprefix('torch.')} "
                           f"{tuple(expected[name].shape)}")
            elif tensor.is_floating_point() and not torch.isfinite(tensor).all():
                problem = f"holds NaN or inf in {name!r}"
            if problem:
                raise ArtifactError(f"{source}: model.safetensors {problem}; the artifact is corrupted or was edited "
                                    "by hand. Re-download or re-save it.")
        try:
            agent.policy.load_state_dict({k: v.to(agent.device) for k, v in weights.items()})
        except RuntimeError as err:
            raise ArtifactError(f"{source}: model.safetensors does not match config.json ({err}); "
                                "the artifact is corrupted or was edited by hand.") from None
        return agent

    # --- checkpoints ---------------------------------------------------------------------------------
    def save_checkpoint(self, run_dir: str | Path) -> Path:
        """Write everything needed to resume training to run_dir/checkpoints/ (atomically)."""
        progress = self.progress or LearnProgress(total_steps=self.num_timesteps, **LEARN_DEFAULTS)
        state = {"meta": self._meta(), "algorithm": self.algorithm.state_dict(), "progress": progress.__dict__}
        return save_checkpoint(run_dir, self.num_timesteps, state)

    @classmethod
    def resume(cls, run_dir: str | Path, env: EnvSource | None = None, *,
               device: str | torch.device = "cpu") -> "Agent":
        """An agent restored from the last checkpoint in run_dir; call `learn` to continue.

        The training env starts a fresh episode: the episode in progress at the checkpoint is lost.
        """
        state = load_checkpoint(run_dir)
        meta = state["meta"]
        agent = cls._from_meta(meta, state["algorithm"]["components"]["policy"], env, device, source=str(run_dir))
        try:
            agent.algorithm.load_state_dict(state["algorithm"])
            agent.progress = LearnProgress(**state["progress"])
        except (KeyError, TypeError, ValueError, RuntimeError) as err:
            raise ArtifactError(f"cannot resume {run_dir}: its checkpoint does not match its config ({err}); "
                                "it is corrupted or from another diffagent version.") from None
        agent._run_dir = Path(run_dir).resolve()
        agent._trim_metrics = True
        return agent

    @property
    def budget(self) -> int | None:
        """The step budget of the current (or resumed) run: `learn()` with no steps trains up to it."""
        return self.progress.total_steps if self.progress is not None else None


def _check_finite(metrics: Mapping[str, Any], step: int, run_path: Path | None) -> None:
    """Stop a run whose losses became NaN or inf (a diverged update), before a checkpoint or the final artifact
    saves weights that are no longer finite."""
    diverged = {name: float(value) for name, value in metrics.items()
                if name.endswith("loss") and not math.isfinite(float(value))}
    if diverged:
        kept = f" (its checkpoints in {run_path / 'checkpoints'} hold the weights from before)" if run_path else ""
        raise TrainingError(f"training diverged at step {step:,}: {', '.join(f'{k} = {v}' for k, v in diverged.items())}"
                            f"{kept}. Train again with lower learning rates (actor_lr, critic_lr or learning_rate) or "
                            "another seed.")


class _MetricsWindow:
    """The algorithm's metrics since the last record, averaged into one metrics.jsonl record per interval."""

    def __init__(self, step: int):
        self.values: dict[str, list[float]] = {}
        self.step, self.time = step, time.perf_counter()

    def add(self, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.values.setdefault(key, []).append(value)

    def record(self, algorithm: Algorithm) -> dict[str, Any]:
        """The record at the algorithm's step: speed, episodes, the window's means and the recent training return."""
        now = time.perf_counter()
        record = {"step": algorithm.num_timesteps,
                  "steps_per_second": (algorithm.num_timesteps - self.step) / max(now - self.time, 1e-9),
                  "episodes": algorithm.num_episodes, **{k: float(np.mean(v)) for k, v in self.values.items()}}
        if algorithm.recent_returns:
            record["train_return"] = float(np.mean(algorithm.recent_returns))
        self.values.clear()
        self.step, self.time = algorithm.num_timesteps, now
        return record


def _saved_env(meta: dict, source: str) -> tuple[EnvSource, EnvRecipe]:
    """The saved env (its recipe: id, kwargs, wrappers) made here when its id is registered and its wrappers'
    modules are imported, or else a stand-in with the saved spaces (acting needs no env). Nothing is
    imported (`EnvRecipe.from_meta`, `WrapperSpec.resolve`)."""
    try:
        recipe = EnvRecipe.from_meta(meta)
        spaces = space_from_dict(meta.get("observation_space")), space_from_dict(meta.get("action_space"))
    except ValueError as err:
        raise ArtifactError(f"{source}: config.json is invalid: {err}.") from None
    package = recipe.module or "the package that registers it"
    reason = (f"{recipe.env_id} is not registered with Gymnasium here; import {package} first "
              f"(`--gym-packages {recipe.module or 'PACKAGE'}` on the command line)")
    if recipe.env_id in gym.registry:
        try:
            return recipe.make(may_import=False), recipe
        except Exception as err:  # a missing package (mujoco), a failing constructor: both mean "not here"
            reason = str(err).splitlines()[0] if str(err) else type(err).__name__
    return (lambda: UnavailableEnv(recipe.env_id, *spaces, reason)), recipe


def _finite_array(values: Any, what: str) -> np.ndarray:
    """`values` as float32, or an InputError for NaN or inf (float64 beyond float32's range becomes inf)."""
    try:
        with np.errstate(over="ignore"):
            array = np.asarray(values, dtype=np.float32)
    except (TypeError, ValueError) as err:
        raise InputError(f"{what} must be an array of real numbers ({err})") from None
    if not np.isfinite(array).all():
        raise InputError(f"{what} holds NaN or inf (or values beyond float32's range, +-3.4e38); "
                         "an action needs finite inputs")
    return array


def _crossed(before: int, after: int, every: int) -> bool:
    """True when a multiple of `every` lies in (before, after]."""
    return every > 0 and after // every > before // every


__all__ = ["Agent", "EvalResult", "LearnProgress", "evaluation_seed"]
