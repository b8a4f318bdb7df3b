"""Training control and logging: TensorBoard event files read back with tensorboard's own reader,
SB3-style callbacks (early stopping, checkpoints, evaluation), and SB3's evaluate_policy through predict."""

import json

import numpy as np
import pytest
from click.testing import CliRunner

from diffagent import Agent, ConfigError
from diffagent.callbacks import (Callback, CheckpointCallback, EvalCallback, StopTrainingOnNoModelImprovement,
                                 StopTrainingOnRewardThreshold)
from diffagent.cli import main

pytestmark = pytest.mark.artifacts

TINY = dict(policy_hidden_sizes=(16, 16), critic_hidden_sizes=(16, 16), learning_starts=30, batch_size=16)


def scalars(run_dir) -> dict[str, list[tuple[int, float]]]:
    """Every scalar in a run directory's event files, by tag, as TensorBoard itself reads them."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir))
    events.Reload()
    return {tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]}


def test_tensorboard_event_files_hold_the_metrics_and_a_resumed_run_continues_them(tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--algo", "sac", "--steps", "120", "--eval-every", "60",
                                       "--eval-episodes", "1", "--checkpoint-every", "60", "--tensorboard", "--out",
                                       str(run), "--set", "learning_starts=30", "--set", "batch_size=16"])
    assert result.exit_code == 0, result.output
    assert list(run.glob("events.out.tfevents.*"))
    logged = scalars(run)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [step for step, _ in logged["eval/mean_reward"]] == [60, 120]
    assert [value for _, value in logged["eval/mean_reward"]] == pytest.approx([r["eval_return"] for r in records
                                                                                if "eval_return" in r])
    assert {"train/critic_loss", "train/actor_loss", "train/alpha", "time/fps"} <= set(logged)

    resumed = Agent.resume(run)  # the run asked for TensorBoard, so its continuation writes there too
    resumed.learn(60, progress=False)
    assert [step for step, _ in scalars(run)["eval/mean_reward"]] == [60, 120, 180]


def test_tensorboard_needs_a_run_directory():
    with pytest.raises(ConfigError, match="pass run_dir"):
        Agent("sac", "Pendulum-v1", **TINY).learn(10, tensorboard=True, progress=False)


def test_early_stopping_on_a_reward_threshold_ends_training(tmp_path):
    agent = Agent("sac", "Pendulum-v1", **TINY)
    agent.learn(10_000, eval_every=50, eval_episodes=1, run_dir=tmp_path / "run",
                callbacks=[StopTrainingOnRewardThreshold(-1e9)], progress=False)
    assert agent.num_timesteps == 50 and agent.budget == 50  # the first evaluation passed the threshold
    assert json.loads((tmp_path / "run" / "results.json").read_text())["total_steps"] == 50


def test_early_stopping_without_improvement_ends_training():
    class Flat:
        mean = 0.0
    stop = StopTrainingOnNoModelImprovement(max_no_improvement_evals=2, min_evals=1)
    assert [stop.on_evaluation(None, Flat()) for _ in range(4)] == [True, True, False, False]

    agent = Agent("sac", "Pendulum-v1", **TINY)
    agent.learn(10_000, eval_every=0, progress=False, callbacks=EvalCallback(
        20, n_eval_episodes=1, callback_after_eval=StopTrainingOnNoModelImprovement(1)))
    assert agent.num_timesteps < 10_000  # stopped at the first evaluation that did not improve


def test_checkpoint_and_eval_callbacks_save_agents(tmp_path):
    seen = []

    class Steps(Callback):
        def on_step(self, agent):
            seen.append(agent.num_timesteps)
            return agent.num_timesteps < 70  # a callback's False stops training too

    evaluation = EvalCallback(30, n_eval_episodes=1, best_model_save_path=tmp_path / "best")
    agent = Agent("sac", "Pendulum-v1", **TINY)
    agent.learn(1000, eval_every=0, progress=False,
                callbacks=[CheckpointCallback(25, tmp_path / "snapshots"), evaluation, Steps()])
    assert seen[-1] == 70 and agent.num_timesteps == 70
    assert sorted(p.name for p in (tmp_path / "snapshots").iterdir()) == ["agent_25_steps", "agent_50_steps"]
    assert [step for step, _ in evaluation.results] == [30, 60]
    assert Agent.from_pretrained(tmp_path / "best").algo == "sac"


def test_sb3_evaluate_policy_runs_on_an_agent_through_predict():
    import gymnasium as gym
    from stable_baselines3.common.evaluation import evaluate_policy
    from stable_baselines3.common.monitor import Monitor

    agent = Agent("diffsac", "Pendulum-v1", diffusion_steps=2, **TINY)
    env = Monitor(gym.make("Pendulum-v1"))
    mean, std = evaluate_policy(agent, env, n_eval_episodes=2, deterministic=True)
    assert np.isfinite(mean) and -2000 < mean < 0 and std >= 0
    obs = np.zeros((3, 3), np.float32)
    actions, state = agent.predict(obs, deterministic=True)
    assert state is None and actions.shape == (3, 1)
    np.testing.assert_array_equal(actions, agent.act(obs, deterministic=True))
