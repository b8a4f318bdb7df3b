"""A researcher's own envs: `module:Env-v0` from the command line with --env-kwargs, wrappers named in a
hyperparameter file, and Dict observations end to end (training, artifact, ONNX, serve, model card).
The envs are a user's module as it would be written: tests/user_envs.py."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import serve
from diffagent import Agent, ConfigError
from diffagent.cli import main
from diffagent.export import export_onnx, verify_onnx
from diffagent.publish import write_model_card
from serve.server import PolicyServer

pytestmark = pytest.mark.artifacts

TESTS = Path(__file__).parent
TINY = dict(policy_hidden_sizes=(16, 16), critic_hidden_sizes=(16, 16), learning_starts=30, batch_size=16)
TINY_CLI = [option for name, value in (("learning_starts", 30), ("batch_size", 16), ("policy_hidden_sizes", "16,16"),
                                       ("critic_hidden_sizes", "16,16")) for option in ("--set", f"{name}={value}")]


def test_cli_trains_an_env_of_a_users_module_with_env_kwargs(tmp_path):
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--algo", "sac", "--env", "user_envs:UserTarget-v0",
                                       "--env-kwargs", "horizon=7", "--env-kwargs", "target=[1.0, 1.0]",
                                       "--steps", "60", "--eval-every", "60", "--eval-episodes", "2", "--out",
                                       str(run), *TINY_CLI])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert (config["env_id"], config["env_module"]) == ("UserTarget-v0", "user_envs")
    assert config["env_kwargs"] == {"horizon": 7, "target": [1.0, 1.0]}
    agent = Agent.from_pretrained(run)  # user_envs is imported in this process: the env is made as trained
    assert agent.env_recipe.kwargs == {"horizon": 7, "target": [1.0, 1.0]}
    assert agent.evaluate(2).lengths == [7, 7]

    # A fresh process imports nothing an artifact names: it says what to import, and --gym-packages does.
    def evaluate(*options):
        return subprocess.run([sys.executable, "-m", "diffagent.cli", "eval", str(run), "--episodes", "1", *options],
                              cwd=TESTS, capture_output=True, text=True, timeout=120)
    refused = evaluate()
    assert refused.returncode != 0 and "--gym-packages user_envs" in refused.stderr
    assert evaluate("--gym-packages", "user_envs").returncode == 0


def test_a_wrapper_named_in_a_hyperparameter_file_wraps_the_env(tmp_path):
    hparams = tmp_path / "UserTarget-v0.toml"
    hparams.write_text('[sac]\nlearning_starts = 30\nbatch_size = 16\n'
                       'env_wrapper = [{ "user_envs.ScaleReward" = { scale = 0.0 } }]\nenv_kwargs = { horizon = 5 }\n')
    run = tmp_path / "run"
    result = CliRunner().invoke(main, ["train", "--algo", "sac", "--env", "user_envs:UserTarget-v0", "--hparams",
                                       str(hparams), "--steps", "40", "--eval-every", "40", "--eval-episodes", "2",
                                       "--out", str(run)])
    assert result.exit_code == 0, result.output
    config = json.loads((run / "config.json").read_text())
    assert config["env_wrappers"] == [{"entry_point": "user_envs:ScaleReward", "kwargs": {"scale": 0.0}}]
    assert "env_wrapper" not in config["config"]  # env settings, not hyperparameters
    results = json.loads((run / "results.json").read_text())
    assert results["final_eval"]["mean"] == 0.0  # every reward scaled to 0: the wrapper is on

    bad = tmp_path / "bad.toml"
    bad.write_text('[sac]\nenv_wrapper = "not a path"\n')
    refused = CliRunner().invoke(main, ["train", "--algo", "sac", "--hparams", str(bad), "--out", str(tmp_path / "x")])
    assert refused.exit_code != 0 and "is not an import path" in refused.output


def test_an_artifacts_wrapper_is_applied_only_from_a_module_already_imported(tmp_path, monkeypatch):
    agent = Agent("sac", "user_envs:UserTarget-v0", wrappers=["user_envs.ScaleReward"], **TINY)
    agent.save_pretrained(tmp_path / "a")
    monkeypatch.delitem(sys.modules, "user_envs")  # as in a process that never imported it
    loaded = Agent.from_pretrained(tmp_path / "a")
    assert "user_envs" not in sys.modules
    with pytest.raises(ConfigError, match="user_envs, which is not imported here; import it first"):
        loaded.evaluate(1)


@pytest.fixture(scope="module", params=["sac", "diffsac"])
def goal_agent(request, tmp_path_factory):
    """An agent trained a few hundred steps on the Dict-observation env, saved with its ONNX graph."""
    run = tmp_path_factory.mktemp(request.param)
    agent = Agent(request.param, "user_envs:UserGoalReach-v0", diffusion_steps=3, **TINY) if request.param == "diffsac" \
        else Agent(request.param, "user_envs:UserGoalReach-v0", **TINY)
    agent.learn(200, eval_every=100, eval_episodes=2, run_dir=run, progress=False)
    export_onnx(agent, run / "policy.onnx")
    return agent, run


def _goal_observations(batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {"observation": rng.uniform(-1, 1, (batch, 2)), "desired_goal": rng.uniform(-1, 1, (batch, 2))}


def test_a_dict_observation_trains_saves_and_reloads_with_its_keys(goal_agent):
    agent, run = goal_agent
    config = json.loads((run / "config.json").read_text())
    space = config["observation_space"]
    assert space["type"] == "dict" and [entry["key"] for entry in space["spaces"]] == ["desired_goal", "observation"]
    assert all(entry["shape"] == [2] for entry in space["spaces"])
    assert len(agent.progress.evaluations) == 2
    obs = _goal_observations(5)
    loaded = Agent.from_pretrained(run)
    np.testing.assert_array_equal(loaded.act(obs, deterministic=True), agent.act(obs, deterministic=True))
    single = {key: value[0] for key, value in obs.items()}
    np.testing.assert_array_equal(agent.act(single, deterministic=True), agent.act(obs, deterministic=True)[0])
    # the mapping is the concatenation in key order, which a caller may also pass itself
    flat = np.concatenate([obs["desired_goal"], obs["observation"]], axis=1)
    np.testing.assert_array_equal(agent.act(flat, deterministic=True), agent.act(obs, deterministic=True))
    with pytest.raises(Exception, match="exactly the keys"):
        agent.act({"observation": obs["observation"]})


def test_a_dict_observation_exports_to_onnx_and_serves_the_same_actions(goal_agent):
    agent, run = goal_agent
    assert max(verify_onnx(agent.policy, run / "policy.onnx").values()) < 1e-4
    obs = _goal_observations(4)
    expected = agent.act(obs, deterministic=True)
    policy = serve.load_policy(run)
    np.testing.assert_allclose(policy.act(obs, deterministic=True), expected, atol=1e-5)
    with PolicyServer(policy, port=0) as server, serve.Client(*server.address, timeout=10) as client:
        np.testing.assert_allclose(client.act(obs, deterministic=True), expected, atol=1e-5)
        single = {key: value[0] for key, value in obs.items()}
        np.testing.assert_allclose(client.act(single, deterministic=True), expected[0], atol=1e-5)
        with pytest.raises(ValueError, match="exactly the keys"):
            client.act({"desired_goal": obs["desired_goal"]})


def test_the_model_card_documents_a_dict_observation(goal_agent, tmp_path):
    agent, run = goal_agent
    (tmp_path / "policy.onnx").write_bytes((run / "policy.onnx").read_bytes())
    card = write_model_card(agent, tmp_path, "org/goal", {"eval": agent.evaluate(2).to_dict()}).read_text()
    assert "`desired_goal` (2), `observation` (2)" in card
    assert '"desired_goal": np.zeros((1, 2)' in card  # the ONNX usage builds obs from the keys
