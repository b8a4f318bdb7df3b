"""Hostile and careless input: artifacts are data, acting is total, runs are crash-safe, sizes are bounded.

Each test names the defect it guards against; each failed on the code before the fix.
"""

import json
import os
import sys

import gymnasium as gym
import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from safetensors.torch import load_file, save_file

from diffagent import Agent, ArtifactError, ConfigError
from diffagent.cli import main
from diffagent.config import make_config
from diffagent.errors import DiffAgentError, InputError
from diffagent.export import export_onnx

pytestmark = pytest.mark.artifacts

TINY = dict(policy_hidden_sizes=(16, 16), critic_hidden_sizes=(16, 16), learning_starts=50, batch_size=32)
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _edit_config(directory, **changes):
    path = directory / "config.json"
    path.write_text(json.dumps({**json.loads(path.read_text()), **changes}))


@pytest.fixture
def artifact(tmp_path):
    Agent("diffsac", "Pendulum-v1", diffusion_steps=2, **TINY).save_pretrained(tmp_path / "a")
    return tmp_path / "a"


# --- 1. loading an artifact never imports anything ---------------------------------------------------
def test_an_artifacts_env_id_never_imports_a_module(artifact, tmp_path, monkeypatch):
    marker = tmp_path / "imported"
    (tmp_path / "planted_module.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    for env_id in ("planted_module:Pendulum-v1", "this:Pendulum-v1"):
        _edit_config(artifact, env_id=env_id)
        with pytest.raises(ArtifactError, match="not a plain Gymnasium id"):
            Agent.from_pretrained(artifact)
        result = CliRunner().invoke(main, ["eval", str(artifact), "--episodes", "1"])
        assert result.exit_code != 0 and "not a plain Gymnasium id" in result.output
    assert not marker.exists() and "planted_module" not in sys.modules


def test_an_unregistered_env_id_loads_an_agent_that_acts(artifact):
    _edit_config(artifact, env_id="SomeRobot/Arm-v3")
    agent = Agent.from_pretrained(artifact)
    assert agent.env_id == "SomeRobot/Arm-v3"  # kept, so a re-save does not lose it
    assert agent.act(np.zeros(3), deterministic=True).shape == (1,)
    with pytest.raises(ConfigError, match="not registered with Gymnasium here"):
        agent.evaluate(1)


# --- 3. --set seed --------------------------------------------------------------------------------------
def test_cli_takes_the_seed_from_set_and_refuses_it_twice(tmp_path):
    runner = CliRunner()
    common = ["train", "--algo", "sac", "--steps", "60", "--eval-every", "0", "--set", "learning_starts=30",
              "--set", "policy_hidden_sizes=8", "--set", "critic_hidden_sizes=8", "--set", "batch_size=8"]
    result = runner.invoke(main, [*common, "--set", "seed=3", "--out", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "a" / "config.json").read_text())["config"]["seed"] == 3
    twice = runner.invoke(main, [*common, "--seed", "1", "--set", "seed=3", "--out", str(tmp_path / "b")])
    assert twice.exit_code != 0 and "seed is given twice" in twice.output


# --- 4. acting is total ------------------------------------------------------------------------------------
@pytest.fixture(scope="module", params=[("diffsac", False), ("diffppo", True), ("sac", False)],
                ids=["diffsac", "diffppo-normalised", "sac"])
def acting_agent(request):
    algo, normalize = request.param
    chain = {"diffusion_steps": 3} if algo.startswith("diff") else {}
    agent = Agent(algo, "Pendulum-v1", normalize_obs=normalize, policy_hidden_sizes=(16, 16), **chain)
    if normalize:  # statistics from real observations, not the identity
        agent.policy.obs_normalizer.update(torch.randn(100, 3) * torch.tensor([1.0, 1.0, 8.0]))
    return agent


finite_floats = st.floats(-FLOAT32_MAX, FLOAT32_MAX, width=32, allow_nan=False)
any_floats = st.floats(width=32)  # NaN, inf, subnormals, the extremes


def _assert_in_box(action, agent):
    low, high = agent.action_space.low, agent.action_space.high
    assert np.isfinite(action).all() and (action >= low).all() and (action <= high).all(), action


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_act_gives_a_finite_action_in_the_box_for_any_finite_input(acting_agent, data):
    k1 = acting_agent.policy.num_steps + 1
    obs = data.draw(hnp.arrays(np.float32, (2, 3), elements=finite_floats))
    noise = data.draw(hnp.arrays(np.float32, (2, k1, 1), elements=finite_floats))
    _assert_in_box(acting_agent.act(obs, noise=noise), acting_agent)
    _assert_in_box(acting_agent.act(obs[0], noise=noise[0]), acting_agent)  # one observation


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_act_refuses_non_finite_input(acting_agent, data):
    k1 = acting_agent.policy.num_steps + 1
    obs = data.draw(hnp.arrays(np.float32, (3,), elements=any_floats))
    noise = data.draw(hnp.arrays(np.float32, (k1, 1), elements=any_floats))
    if np.isfinite(obs).all() and np.isfinite(noise).all():
        _assert_in_box(acting_agent.act(obs, noise=noise), acting_agent)
    else:
        with pytest.raises(InputError, match="NaN or inf"):
            acting_agent.act(obs, noise=noise)


def test_float64_beyond_float32_is_refused_not_turned_into_inf(acting_agent):
    with pytest.raises(InputError, match="beyond float32's range"):
        acting_agent.act(np.array([1e300, 0.0, 0.0]))


@pytest.fixture(scope="module")
def onnx_session(acting_agent, tmp_path_factory):
    path = export_onnx(acting_agent, tmp_path_factory.mktemp("onnx") / "policy.onnx")
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_the_onnx_graph_gives_a_finite_action_in_the_box_for_any_finite_input(acting_agent, onnx_session, data):
    k1 = acting_agent.policy.num_steps + 1
    obs = data.draw(hnp.arrays(np.float32, (4, 3), elements=finite_floats))
    noise = data.draw(hnp.arrays(np.float32, (4, k1, 1), elements=finite_floats))
    (action,) = onnx_session.run(None, {"obs": obs, "noise": noise})
    _assert_in_box(action, acting_agent)


def test_evaluate_needs_at_least_one_episode(acting_agent):
    with pytest.raises(ConfigError, match="episodes must be a positive integer"):
        acting_agent.evaluate(episodes=0)


class _NanReward(gym.Wrapper):
    def step(self, action):
        obs, _, terminated, truncated, info = self.env.step(action)
        return obs, float("nan"), terminated, truncated, info


def test_eval_json_is_strict_json_even_for_a_nan_return(artifact):
    gym.register("NanRewardPendulum-v0", entry_point=lambda: _NanReward(gym.make("Pendulum-v1")))
    try:
        _edit_config(artifact, env_id="NanRewardPendulum-v0")
        result = CliRunner().invoke(main, ["eval", str(artifact), "--episodes", "1", "--json"])
    finally:
        del gym.registry["NanRewardPendulum-v0"]
    assert result.exit_code == 0, result.output
    reply = json.loads(result.output, parse_constant=lambda name: pytest.fail(f"{name} is not JSON"))
    assert reply["mean"] is None and reply["returns"] == [None]


# --- 5. crash-safe from step one; a re-run resumes or refuses ----------------------------------------------
class _Killed(Exception):
    pass


def test_a_run_killed_before_its_first_interval_checkpoint_resumes(tmp_path, monkeypatch):
    agent = Agent("sac", "Pendulum-v1", **TINY)
    train_iteration = agent.algorithm.train_iteration

    def killed_at_step_70():
        if agent.algorithm.num_timesteps == 70:
            raise _Killed
        return train_iteration()
    monkeypatch.setattr(agent.algorithm, "train_iteration", killed_at_step_70)
    with pytest.raises(_Killed):
        agent.learn(200, eval_every=0, run_dir=tmp_path, checkpoint_every=1000, log_every=10, progress=False)
    resumed = Agent.resume(tmp_path)
    assert resumed.num_timesteps == 0 and resumed.budget == 200
    resumed.learn(progress=False)
    steps = [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(10, 201, 10))  # the killed run's records were replaced, not repeated


def test_resuming_a_directory_without_a_checkpoint_says_what_to_do(tmp_path):
    (tmp_path / "metrics.jsonl").write_text('{"step": 1000}\n')
    with pytest.raises(ArtifactError, match="holds no checkpoint.*Train it again from the start"):
        Agent.resume(tmp_path)
    result = CliRunner().invoke(main, ["resume", str(tmp_path)])
    assert result.exit_code != 0 and "holds no checkpoint" in result.output


def test_training_into_a_directory_that_holds_a_run_is_refused(tmp_path):
    Agent("sac", "Pendulum-v1", **TINY).learn(60, eval_every=0, run_dir=tmp_path, progress=False)
    metrics = (tmp_path / "metrics.jsonl").read_text()
    with pytest.raises(DiffAgentError, match="already holds a run; continue it with Agent.resume"):
        Agent("sac", "Pendulum-v1", **TINY).learn(60, eval_every=0, run_dir=tmp_path, progress=False)
    assert (tmp_path / "metrics.jsonl").read_text() == metrics  # nothing appended
    result = CliRunner().invoke(main, ["train", "--algo", "sac", "--steps", "60", "--out", str(tmp_path)])
    assert result.exit_code != 0 and "already holds a run" in result.output


def test_cli_train_checkpoints_at_every_evaluation_by_default(tmp_path):
    result = CliRunner().invoke(main, ["train", "--algo", "sac", "--steps", "100", "--out", str(tmp_path / "r"),
                                       "--eval-episodes", "1", "--set", "learning_starts=30",
                                       "--set", "policy_hidden_sizes=8", "--set", "batch_size=8"])
    assert result.exit_code == 0, result.output
    progress = Agent.resume(tmp_path / "r").progress
    assert progress.eval_every == 10 and progress.checkpoint_every == 10


# --- 6. learn(n) trains n more steps; each call's schedules take effect --------------------------------------
def test_learn_trains_n_more_steps_and_uses_each_calls_schedules(tmp_path):
    agent = Agent("sac", "Pendulum-v1", **TINY)
    agent.learn(60, eval_every=30, eval_episodes=1, run_dir=tmp_path, log_every=30, progress=False)
    agent.learn(60, eval_every=20, progress=False)  # into the same run directory, every 20 steps now
    assert agent.num_timesteps == 120
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "eval_return" in r] == [30, 60, 80, 100, 120]
    resumed = Agent.resume(tmp_path)
    assert resumed.progress.eval_every == 20 and resumed.progress.eval_episodes == 1
    with pytest.raises(ConfigError, match="nothing is left of a resumed run's budget"):
        resumed.learn()
    with pytest.raises(ConfigError, match="steps must be a positive integer"):
        agent.learn(0)


# --- 7. nothing outside the directory is read --------------------------------------------------------------
@pytest.fixture
def run_dir(tmp_path):
    Agent("sac", "Pendulum-v1", **TINY).learn(60, eval_every=0, run_dir=tmp_path / "run", progress=False)
    return tmp_path / "run"


@pytest.mark.parametrize("pointer", ["../../elsewhere/step_0000000060", "/etc/step_0000000060", "step_60"])
def test_latest_json_cannot_point_outside_the_run(run_dir, pointer):
    (run_dir / "checkpoints" / "latest.json").write_text(json.dumps({"checkpoint": pointer, "step": 60}))
    with pytest.raises(ArtifactError, match="must name a checkpoint folder"):
        Agent.resume(run_dir)


def test_a_symlink_out_of_the_directory_is_refused(run_dir, artifact, tmp_path):
    elsewhere = tmp_path / "elsewhere.safetensors"
    os.replace(artifact / "model.safetensors", elsewhere)
    os.symlink(elsewhere, artifact / "model.safetensors")
    with pytest.raises(ArtifactError, match="points outside"):
        Agent.from_pretrained(artifact)
    checkpoint = run_dir / "checkpoints" / "step_0000000060"
    os.replace(checkpoint / "state.json", tmp_path / "state.json")
    os.symlink(tmp_path / "state.json", checkpoint / "state.json")
    with pytest.raises(ArtifactError, match="points outside"):
        Agent.resume(run_dir)


# --- 8. sizes and values are bounded before anything is allocated -----------------------------------------
@pytest.mark.parametrize("algo, overrides, message", [
    ("diffsac", {"diffusion_steps": 10_000_000}, "diffusion_steps must lie in"),
    ("diffsac", {"diffusion_steps": "1e9"}, "diffusion_steps must lie in"),
    ("sac", {"batch_size": "1e20"}, "batch_size must lie in"),
    ("sac", {"learning_starts": -5}, "learning_starts must lie in"),
    ("sac", {"actor_lr": "inf"}, "expected a finite float"),
    ("sac", {"alpha_init": float("nan")}, "expected a finite float"),
    ("sac", {"policy_hidden_sizes": [100_000]}, "policy_hidden_sizes must be"),
    ("sac", {"critic_hidden_sizes": [8] * 40}, "at most 16 integers"),
    ("ppo", {"rollout_steps": 1_000_000, "num_envs": 1000}, "exceeds 10,000,000"),
])
def test_sizes_and_values_are_bounded(algo, overrides, message):
    with pytest.raises(ConfigError, match=message):
        make_config(algo, overrides)


def test_a_deeply_nested_config_json_is_an_artifact_error(artifact):
    (artifact / "config.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ArtifactError, match="nested too deeply"):
        Agent.from_pretrained(artifact)


@pytest.mark.parametrize("change, message", [
    (lambda t: t.fill_(float("nan")), "holds NaN or inf"),
    (lambda t: t.double(), "is float64"),
    (lambda t: t.to(torch.int32), "is int32"),
])
def test_weights_of_the_wrong_dtype_or_non_finite_are_refused(artifact, change, message):
    weights = load_file(artifact / "model.safetensors")
    name = next(k for k in weights if k.endswith("weight"))
    weights[name] = change(weights[name].clone())
    save_file(weights, artifact / "model.safetensors")
    with pytest.raises(ArtifactError, match=message):
        Agent.from_pretrained(artifact)


def test_an_artifact_config_with_absurd_sizes_is_refused_before_allocating(artifact):
    config = json.loads((artifact / "config.json").read_text())["config"]
    _edit_config(artifact, config={**config, "diffusion_steps": 10_000_000})
    with pytest.raises(ArtifactError, match="diffusion_steps must lie in"):
        Agent.from_pretrained(artifact)
    _edit_config(artifact, config={**config, "device": "cuda"})
    with pytest.raises(ArtifactError, match="no hyperparameter 'device'"):
        Agent.from_pretrained(artifact)
