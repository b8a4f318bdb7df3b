"""Callbacks: code that `Agent.learn` runs as training goes, with Stable-Baselines3's names and habits.

    stop = StopTrainingOnRewardThreshold(-200)
    agent.learn(100_000, eval_every=5_000, callbacks=[stop, CheckpointCallback(20_000, "runs/snapshots")])
    agent.learn(100_000, callbacks=EvalCallback(2_000, callback_on_new_best=stop, best_model_save_path="best"))

A callback sees the agent at five points: `on_training_start`, `on_step` (after each iteration of
the algorithm: one env step for SAC and WPO, one rollout for PPO), `on_evaluation` (after each
evaluation, with its EvalResult: learn's own, every `eval_every` steps, or an EvalCallback's),
`on_log` (each metrics record, as metrics.jsonl gets it) and `on_training_end`. Returning False
from `on_step` or `on_evaluation` stops training there; the run ends as a finished one (checkpoint,
artifact, results.json) whose budget is the steps trained.

From Stable-Baselines3: BaseCallback._on_step -> Callback.on_step; EvalCallback, CheckpointCallback,
StopTrainingOnRewardThreshold, StopTrainingOnNoModelImprovement keep their names and arguments
(in steps of the env, as `learn` counts them). TensorBoard is `learn(tensorboard=True)`, which
adds `TensorBoardCallback` for the run directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

from diffagent.errors import ConfigError


class Callback:
    """Does nothing at every point; a subclass overrides the points it needs. `agent` is the Agent training,
    `result` an EvalResult; on_step and on_evaluation return False to stop training."""

    def on_training_start(self, agent: Any) -> None:
        pass

    def on_step(self, agent: Any) -> bool:
        return True

    def on_evaluation(self, agent: Any, result: Any) -> bool:
        return True

    def on_log(self, agent: Any, record: dict[str, Any]) -> None:
        pass

    def on_training_end(self, agent: Any) -> None:
        pass


class CallbackList(Callback):
    """Several callbacks as one: each sees every point, and training stops when any asks to."""

    def __init__(self, callbacks: Iterable[Callback]):
        self.callbacks = list(callbacks)
        for callback in self.callbacks:
            if not isinstance(callback, Callback):
                raise ConfigError(f"{callback!r} is not a diffagent.callbacks.Callback; subclass Callback and "
                                  "override on_step, on_evaluation or the other points")

    def on_training_start(self, agent: Any) -> None:
        for callback in self.callbacks:
            callback.on_training_start(agent)

    def on_step(self, agent: Any) -> bool:
        return all([callback.on_step(agent) is not False for callback in self.callbacks])  # every one runs

    def on_evaluation(self, agent: Any, result: Any) -> bool:
        return all([callback.on_evaluation(agent, result) is not False for callback in self.callbacks])

    def on_log(self, agent: Any, record: dict[str, Any]) -> None:
        for callback in self.callbacks:
            callback.on_log(agent, record)

    def on_training_end(self, agent: Any) -> None:
        for callback in self.callbacks:
            callback.on_training_end(agent)


def _every(name: str, value: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be a positive number of steps, got {value!r}")
    return value


class _Periodic(Callback):
    """Acts once every `every` env steps (on the first iteration that reaches the next multiple)."""

    def __init__(self, every: int, name: str):
        self.every = _every(name, every)
        self._last = 0

    def on_training_start(self, agent: Any) -> None:
        self._last = agent.num_timesteps

    def due(self, agent: Any) -> bool:
        due = agent.num_timesteps // self.every > self._last // self.every
        self._last = agent.num_timesteps
        return due


class CheckpointCallback(_Periodic):
    """Save the agent (save_pretrained: config.json and model.safetensors) to save_path/NAME_PREFIX_STEP_steps
    every `save_freq` steps, each kept. (The run directory's own checkpoints, which resume training, are
    learn's `checkpoint_every`.)"""

    def __init__(self, save_freq: int, save_path: str | Path, name_prefix: str = "agent"):
        super().__init__(save_freq, "save_freq")
        self.save_path, self.name_prefix = Path(save_path), name_prefix

    def on_step(self, agent: Any) -> bool:
        if self.due(agent):
            agent.save_pretrained(self.save_path / f"{self.name_prefix}_{agent.num_timesteps}_steps")
        return True


class StopTrainingOnRewardThreshold(Callback):
    """Stop once an evaluation's mean return reaches `reward_threshold`."""

    def __init__(self, reward_threshold: float):
        self.reward_threshold = float(reward_threshold)

    def on_evaluation(self, agent: Any, result: Any) -> bool:
        return result.mean < self.reward_threshold


class StopTrainingOnNoModelImprovement(Callback):
    """Stop when `max_no_improvement_evals` evaluations in a row have not beaten the best mean return so far,
    counting only after the first `min_evals` evaluations."""

    def __init__(self, max_no_improvement_evals: int, min_evals: int = 0):
        self.max_no_improvement_evals = _every("max_no_improvement_evals", max_no_improvement_evals)
        self.min_evals = min_evals
        self.best, self.evaluations, self.without_improvement = float("-inf"), 0, 0

    def on_evaluation(self, agent: Any, result: Any) -> bool:
        self.evaluations += 1
        if result.mean > self.best:
            self.best, self.without_improvement = result.mean, 0
        elif self.evaluations > self.min_evals:
            self.without_improvement += 1
        return self.without_improvement < self.max_no_improvement_evals


class EvalCallback(_Periodic):
    """Evaluate every `eval_freq` steps (`agent.evaluate`, deterministic by default), keep the best agent in
    `best_model_save_path`, and hand each result to `callback_after_eval` and each new best to
    `callback_on_new_best` (either may stop training). learn's own `eval_every` needs no callback; this
    is for a second schedule, or SB3 code that builds one."""

    def __init__(self, eval_freq: int, n_eval_episodes: int = 5, *, best_model_save_path: str | Path | None = None,
                 callback_on_new_best: Callback | None = None, callback_after_eval: Callback | None = None,
                 deterministic: bool = True):
        super().__init__(eval_freq, "eval_freq")
        self.n_eval_episodes, self.deterministic = n_eval_episodes, deterministic
        self.best_model_save_path = Path(best_model_save_path) if best_model_save_path is not None else None
        self.callback_on_new_best, self.callback_after_eval = callback_on_new_best, callback_after_eval
        self.best_mean_reward = float("-inf")
        self.results: list[tuple[int, Any]] = []  # (step, EvalResult) of every evaluation

    def on_step(self, agent: Any) -> bool:
        if not self.due(agent):
            return True
        result = agent.evaluate(self.n_eval_episodes, deterministic=self.deterministic)
        self.results.append((agent.num_timesteps, result))
        keep_going = True
        if result.mean > self.best_mean_reward:
            self.best_mean_reward = result.mean
            if self.best_model_save_path is not None:
                agent.save_pretrained(self.best_model_save_path)
            if self.callback_on_new_best is not None:
                keep_going &= self.callback_on_new_best.on_evaluation(agent, result) is not False
        if self.callback_after_eval is not None:
            keep_going &= self.callback_after_eval.on_evaluation(agent, result) is not False
        return keep_going


# metrics.jsonl's names -> TensorBoard tags as Stable-Baselines3 writes them; the algorithm's losses go to train/
_TENSORBOARD_TAGS = {"eval_return": "eval/mean_reward", "eval_return_std": "eval/std_reward",
                     "eval_return_stochastic": "eval/mean_reward_stochastic",
                     "eval_return_stochastic_std": "eval/std_reward_stochastic",
                     "train_return": "rollout/ep_rew_mean", "steps_per_second": "time/fps", "episodes": "time/episodes"}


class TensorBoardCallback(Callback):
    """Write every metrics record as TensorBoard scalars (event files in `log_dir`), at its env step.

    A run continued from step N (resumed, or `learn` called again) purges the events after N, as
    metrics.jsonl drops its records after the checkpoint it resumes from.
    """

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("TensorBoard logging needs the tensorboard package: pip install tensorboard "
                              "(or pip install 'diffagent[tensorboard]')") from None
        self._writer_class, self.log_dir = SummaryWriter, Path(log_dir)
        self.writer = None

    def on_training_start(self, agent: Any) -> None:
        self.writer = self._writer_class(str(self.log_dir), purge_step=agent.num_timesteps + 1)

    def on_log(self, agent: Any, record: dict[str, Any]) -> None:
        step = record["step"]
        for key, value in record.items():
            if key != "step" and isinstance(value, (int, float)):
                self.writer.add_scalar(_TENSORBOARD_TAGS.get(key, f"train/{key}"), value, step)

    def on_training_end(self, agent: Any) -> None:
        self.writer.close()


__all__ = ["Callback", "CallbackList", "CheckpointCallback", "EvalCallback", "StopTrainingOnRewardThreshold",
           "StopTrainingOnNoModelImprovement", "TensorBoardCallback"]
