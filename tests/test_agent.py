"""Round trips and bad input: save -> load -> same actions, clear errors, atomic checkpoints."""

import json
import shutil
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch
from click.testing import CliRunner

from diffagent import Agent, ArtifactError, ConfigError, TrainingError
from diffagent import io as dio
from diffagent.cli import main

pytestmark = pytest.mark.artifacts

TINY = dict(policy_hidden_sizes=(16, 16), critic_hidden_sizes=(16, 16), learning_starts=50, batch_size=32)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    agent = Agent("diffsac", "Pendulum-v1", diffusion_steps=4, normalize_obs=True, **TINY)
    agent.learn(300, eval_every=150, eval_episodes=1, run_dir=run, checkpoint_every=200, log_every=100, progress=False)
    return agent, run


def test_run_directory_holds_artifact_metrics_and_checkpoint(trained):
    agent, run = trained
    assert {"config.json", "model.safetensors", "results.json", "metrics.jsonl"} <= {p.name for p in run.iterdir()}
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [100, 150, 200, 300]  # every 100 (log_every), and at each evaluation
    assert {"critic_loss", "actor_loss", "alpha", "entropy_estimate", "steps_per_second"} <= set(records[-1])
    assert [r["step"] for r in records if "eval_return" in r] == [150, 300]
    assert [r["step"] for r in records if "eval_return_stochastic" in r] == [150, 300]  # recorded beside
    results = json.loads((run / "results.json").read_text())
    assert results["total_steps"] == 300
    assert {"step", "mean", "std", "stochastic_mean", "stochastic_std"} == set(results["evaluations"][-1])
    assert agent.policy.obs_normalizer.count.item() == 300


def test_saved_agent_acts_identically_in_a_new_process(trained, tmp_path):
    agent, run = trained
    obs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    noise = np.random.default_rng(1).normal(size=(5, 5, 1)).astype(np.float32)
    np.save(tmp_path / "obs.npy", obs)
    np.save(tmp_path / "noise.npy", noise)
    script = (f"import numpy as np; from diffagent import Agent; a = Agent.from_pretrained({str(run)!r}); "
              f"np.save({str(tmp_path / 'out.npy')!r}, a.act(np.load({str(tmp_path / 'obs.npy')!r}), "
              f"noise=np.load({str(tmp_path / 'noise.npy')!r})))")
    subprocess.run([sys.executable, "-c", script], check=True)
    np.testing.assert_array_equal(np.load(tmp_path / "out.npy"), agent.act(obs, noise=noise))
    single = agent.act(obs[0], deterministic=True)
    assert single.shape == (1,) and np.array_equal(single, agent.act(obs[:1], noise=np.zeros((1, 5, 1)))[0])


def test_a_stochastic_evaluation_is_reproducible_and_leaves_training_randomness_alone(trained):
    agent, _ = trained
    torch.manual_seed(0)
    first = agent.evaluate(2, deterministic=False)
    after_first = torch.rand(1)
    torch.manual_seed(0)
    assert agent.evaluate(2, deterministic=False).returns == first.returns  # its noise is seeded per episode
    assert torch.rand(1) == after_first  # and drawn from its own generator, not torch's
    assert agent.evaluate(2, deterministic=False, seed=7).returns != first.returns


def test_resume_continues_from_the_checkpoint(trained):
    _, run = trained
    resumed = Agent.resume(run)
    assert resumed.num_timesteps == 300
    assert resumed.algorithm.buffer.size == 300
    assert resumed.policy.obs_normalizer.count.item() == 300
    resumed.learn(50, run_dir=run, progress=False)
    assert resumed.num_timesteps == 350
    assert Agent.resume(run).num_timesteps == 350


def test_a_checkpoint_that_counts_num_steps_resumes(trained, tmp_path):
    """Checkpoints written before the env-step counter became num_timesteps (num_steps is K, the chain's length,
    in policies and ONNX metadata) call it num_steps; they resume, and Agent.num_steps still answers, deprecated."""
    _, run = trained
    old = tmp_path / "old-run"
    shutil.copytree(run, old, ignore=shutil.ignore_patterns(".lock"))
    latest = json.loads((old / "checkpoints" / "latest.json").read_text())
    state_file = old / "checkpoints" / latest["checkpoint"] / "state.json"
    saved = json.loads(state_file.read_text())
    algorithm = saved["state"]["algorithm"]
    algorithm["num_steps"] = algorithm.pop("num_timesteps")
    state_file.write_text(json.dumps(saved))
    resumed = Agent.resume(old)
    assert resumed.num_timesteps == latest["step"] > 0
    with pytest.warns(DeprecationWarning, match="num_timesteps"):
        assert resumed.num_steps == latest["step"]
    assert resumed.policy.num_steps == 4  # K
    resumed.save_checkpoint(old)  # the same step: written again, under the new name
    assert "num_timesteps" in json.loads(state_file.read_text())["state"]["algorithm"]


def test_resume_forgets_metrics_logged_after_its_checkpoint(tmp_path):
    agent = Agent("sac", "Pendulum-v1", **TINY)
    agent.learn(300, eval_every=0, run_dir=tmp_path, checkpoint_every=200, log_every=100, progress=False)
    # as if killed between the checkpoints at 200 and 300: metrics reach 300, the checkpoint only 200
    dio.write_json(tmp_path / "checkpoints" / "latest.json", {"checkpoint": "step_0000000200", "step": 200})
    resumed = Agent.resume(tmp_path)
    steps = lambda: [json.loads(line)["step"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]  # noqa: E731
    assert steps() == [100, 200, 300]  # resuming only reads the run
    resumed.learn(progress=False)  # to the run's own budget, in its own directory
    assert steps() == [100, 200, 300]  # the records past the checkpoint were replaced, not repeated


def test_checkpoint_restores_optimizer_state_exactly(tmp_path):
    agent = Agent("sac", "Pendulum-v1", **TINY)
    agent.learn(120, eval_every=0, progress=False)
    agent.save_checkpoint(tmp_path)
    resumed = Agent.resume(tmp_path)
    for name in ("actor_optimizer", "critic_optimizer"):
        original, restored = getattr(agent.algorithm, name).state_dict(), getattr(resumed.algorithm, name).state_dict()
        assert original["state"].keys() == restored["state"].keys() and original["state"]
        for key, value in original["state"].items():
            assert torch.equal(value["exp_avg"], restored["state"][key]["exp_avg"])
    assert torch.equal(agent.algorithm.log_alpha, resumed.algorithm.log_alpha)


def test_a_kill_mid_checkpoint_leaves_the_last_good_one(tmp_path, monkeypatch):
    agent = Agent("sac", "Pendulum-v1", **TINY)
    agent.learn(60, eval_every=0, progress=False)
    agent.save_checkpoint(tmp_path)
    agent.learn(80, eval_every=0, progress=False)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("killed mid-write")
    monkeypatch.setattr(dio, "write_json", killed)  # the tensors are written, the JSON never is
    with pytest.raises(KeyboardInterrupt):
        agent.save_checkpoint(tmp_path)
    monkeypatch.undo()
    assert Agent.resume(tmp_path).num_timesteps == 60
    assert not list((tmp_path / "checkpoints").glob(".partial-*"))


def test_a_diverged_update_stops_training_before_it_saves_weights(tmp_path, monkeypatch):
    """A loss that becomes NaN stops the run with an error at that step; the checkpoints keep the weights from
    before it, and no artifact of non-finite weights is written."""
    agent = Agent("sac", "Pendulum-v1", **TINY)
    update = agent.algorithm.update

    def diverging(batch):
        metrics = update(batch)
        return {**metrics, "critic_loss": float("nan")} if agent.num_timesteps >= 150 else metrics
    monkeypatch.setattr(agent.algorithm, "update", diverging)
    with pytest.raises(TrainingError, match="training diverged at step 150: critic_loss = nan"):
        agent.learn(300, eval_every=0, run_dir=tmp_path, checkpoint_every=100, progress=False)
    assert Agent.resume(tmp_path).num_timesteps == 100
    assert not (tmp_path / "model.safetensors").exists()


@pytest.mark.parametrize("algo, env, overrides, message", [
    ("nope", "Pendulum-v1", {}, "unknown algorithm 'nope'"),
    ("sac", "NoSuchEnv-v9", {}, "unknown environment id"),
    ("sac", "CartPole-v1", {}, "Discrete action space"),
    ("sac", "Pendulum-v1", {"batchsize": 3}, "Did you mean: batch_size"),
    ("sac", "Pendulum-v1", {"batch_size": "many"}, "expected int"),
    ("sac", "Pendulum-v1", {"tau": 2.0}, "tau must lie in"),
    ("diffsac", "Pendulum-v1", {"actor_gradient": "magic"}, "must be one of pathwise, lv"),
])
def test_bad_input_gets_a_clear_error(algo, env, overrides, message):
    with pytest.raises(ConfigError, match=message):
        Agent(algo, env, **overrides)


def test_act_rejects_a_wrong_shape():
    agent = Agent("sac", "Pendulum-v1", **TINY)
    with pytest.raises(ValueError, match=r"expected an observation of shape \(3,\)"):
        agent.act(np.zeros(4))
    with pytest.raises(ValueError, match="noise must have shape"):
        agent.act(np.zeros(3), noise=np.zeros((3, 1)))


@pytest.fixture
def artifact(tmp_path):
    Agent("sac", "Pendulum-v1", **TINY).save_pretrained(tmp_path / "a")
    return tmp_path / "a"


@pytest.mark.parametrize("damage, message", [
    (lambda d: (d / "config.json").unlink(), "config.json is missing"),
    (lambda d: (d / "model.safetensors").unlink(), "model.safetensors is missing"),
    (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
    (lambda d: (d / "model.safetensors").write_bytes((d / "model.safetensors").read_bytes()[:100]),
     "not a readable safetensors file"),
    (lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()),
                                                          "format_version": 99})), "newer than this diffagent"),
    (lambda d: (d / "config.json").write_text(json.dumps({**json.loads((d / "config.json").read_text()),
                                                          "config": {"policy_hidden_sizes": [8]}})),
     "does not match config.json"),
])
def test_damaged_artifacts_fail_clearly(artifact, damage, message):
    damage(artifact)
    with pytest.raises(ArtifactError, match=message):
        Agent.from_pretrained(artifact)


def test_missing_directory_fails_clearly(tmp_path):
    with pytest.raises(ArtifactError, match="does not exist"):
        Agent.from_pretrained(tmp_path / "nothing-here")


def test_cli_train_eval_resume_and_errors(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    args = ["train", "--algo", "sac", "--steps", "120", "--out", str(out), "--eval-episodes", "1",
            "--set", "learning_starts=50", "--set", "policy_hidden_sizes=16,16", "--set", "batch_size=16"]
    result = runner.invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "eval return" in result.output and (out / "model.safetensors").exists()
    again = runner.invoke(main, args)
    assert again.exit_code != 0 and "diffagent resume" in again.output
    resumed = runner.invoke(main, ["resume", str(out), "--steps", "150"])
    assert resumed.exit_code == 0, resumed.output
    assert "resuming sac on Pendulum-v1 at step 120 of 150" in resumed.output
    evaluated = runner.invoke(main, ["eval", str(out), "--episodes", "1", "--json"])
    assert evaluated.exit_code == 0 and json.loads(evaluated.output)["episodes"] == 1
    for bad, message in [(["train", "--algo", "dqn"], "unknown algorithm"),
                         (["train", "--set", "nokey"], "not of the form key=value"),
                         (["eval", str(tmp_path / "missing")], "does not exist")]:
        result = runner.invoke(main, bad)
        assert result.exit_code != 0 and message in result.output, result.output


def test_an_agent_whose_env_cannot_be_made_here_still_acts(artifact):
    config = json.loads((artifact / "config.json").read_text())
    (artifact / "config.json").write_text(json.dumps({**config, "env_id": "RobotOnlyEnv-v0"}))
    agent = Agent.from_pretrained(artifact)
    assert agent.act(np.zeros(3, np.float32), deterministic=True).shape == (1,)
    with pytest.raises(ConfigError, match="RobotOnlyEnv-v0 cannot be made on this machine"):
        agent.evaluate(1)


class _RecordActions(gym.Wrapper):
    """Keeps every (observation, action) pair the env was stepped with."""

    def __init__(self, env: gym.Env):
        super().__init__(env)
        self.steps: list[tuple[np.ndarray, np.ndarray]] = []

    def reset(self, **kwargs):
        self.obs, info = self.env.reset(**kwargs)
        return self.obs, info

    def step(self, action):
        self.steps.append((self.obs, np.array(action)))
        self.obs, *rest = self.env.step(action)
        return (self.obs, *rest)


@pytest.mark.parametrize("algo, overrides", [("diffsac", {"diffusion_steps": 3, "learning_starts": 100}),
                                             ("ppo", {"rollout_steps": 256})])
def test_evaluate_acts_like_the_torch_policy_before_and_after_training(algo, overrides):
    """act on one observation (so evaluate) runs onnxruntime on a CPU; every action must be the torch policy's,
    as training changes it."""
    agent = Agent(algo, lambda: _RecordActions(gym.make("Pendulum-v1")), seed=0, **overrides)
    actions = []
    for trained_steps in (0, 512):
        if trained_steps:
            agent.learn(trained_steps, eval_every=0, progress=False)
        agent.evaluate(1)
        recorder = agent._eval_env
        assert len(recorder.steps) == 200
        for obs, action in recorder.steps:
            with torch.no_grad():
                reference = agent.policy(torch.as_tensor(obs, dtype=torch.float32)[None],
                                         torch.zeros(agent.policy.noise_shape(1)))
            np.testing.assert_allclose(action, reference[0].numpy(), atol=1e-5)
        actions.append(np.stack([action for _, action in recorder.steps]))
        recorder.steps.clear()
    assert np.abs(actions[1][0] - actions[0][0]).max() > 1e-3, "training did not change the first action"


@pytest.mark.parametrize("algo, steps, version, loaded", [("diffwpo", {"diffusion_steps": 4}, 3, 0.1 / 4),
                                                          ("diffwpo", {"diffusion_steps": 4}, 4, 0.1),
                                                          ("wpo", {}, 3, 0.1)])
def test_a_format_3_diffwpo_bound_on_the_path_loads_per_denoising_step(tmp_path, algo, steps, version, loaded):
    """Format 3 held DiffWPO's path KL below kl_bound; format 4 holds it below K * kl_bound, so an older
    artifact (or checkpoint) keeps training under the bound it was trained with. The Gaussian's (K = 1) is as was."""
    Agent(algo, "Pendulum-v1", kl_bound=0.1, **steps, **TINY).save_pretrained(tmp_path)
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({**json.loads(config_file.read_text()), "format_version": version}))
    agent = Agent.from_pretrained(tmp_path)
    assert agent.algorithm.config.kl_bound == pytest.approx(loaded)
    agent.save_pretrained(tmp_path / "again")  # now format 4, with the bound per step: not divided a second time
    assert Agent.from_pretrained(tmp_path / "again").algorithm.config.kl_bound == pytest.approx(loaded)


def test_a_format_3_diffwpo_checkpoint_resumes_under_its_bound_on_the_path(tmp_path):
    agent = Agent("diffwpo", "Pendulum-v1", diffusion_steps=4, kl_bound=0.1, **TINY)
    agent.learn(60, eval_every=0, checkpoint_every=60, run_dir=tmp_path, progress=False)
    latest = json.loads((tmp_path / "checkpoints" / "latest.json").read_text())["checkpoint"]
    state_file = tmp_path / "checkpoints" / latest / "state.json"
    state = json.loads(state_file.read_text())
    state["state"]["meta"]["format_version"] = 3
    state_file.write_text(json.dumps(state))
    assert Agent.resume(tmp_path).algorithm.config.kl_bound == pytest.approx(0.1 / 4)
