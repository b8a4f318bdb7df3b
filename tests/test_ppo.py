"""PPO/DiffPPO: K = 1 is textbook PPO, per-step advantages, episode boundaries, resume (learning: test_learning.py)."""

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch.distributions import Normal

from diffagent import Agent, ConfigError
from diffagent.algos.ppo import per_step_advantages, trace
from diffagent.cli import main as cli
from diffagent.export import LiveOnnxPolicy
from diffagent.policies import DiffusionPolicy
from diffagent.rollout import RolloutBatch, gae


def _small(algo="ppo", env="Pendulum-v1", **overrides):
    config = {"policy_hidden_sizes": (16, 16), "value_hidden_sizes": (16, 16), "rollout_steps": 64,
              "num_minibatches": 2, "num_epochs": 1, **overrides}
    agent = Agent(algo, env, **config)
    return agent, agent.algorithm


def _grads(parameters):
    return torch.cat([p.grad.flatten() for p in parameters if p.grad is not None])


@pytest.mark.parametrize("value_clip, alpha", [(0.0, 0.0), (0.2, 0.0), (0.0, 0.1)])
def test_k1_gaussian_loss_and_gradient_equal_textbook_ppo(value_clip, alpha):
    """Same code path as DiffPPO: with K = 1 its per-step terms must reduce to the PPO-clip loss."""
    torch.manual_seed(0)
    agent, ppo = _small(value_clip_range=value_clip, alpha=alpha)
    batch = ppo.collect_rollout()
    behaviour = copy.deepcopy(ppo.policy)
    with torch.no_grad():  # as in a later epoch: the policy has moved and some ratios are clipped
        for p in ppo.trained_parameters:
            p.add_(0.1 * torch.randn_like(p))
    minibatch = RolloutBatch(*(x[:48] for x in batch))
    ppo.optimizer.zero_grad()
    loss, _ = ppo.loss(minibatch)
    loss.backward()
    ours = _grads(ppo.trained_parameters)

    def log_pi(policy, obs, u):  # the pre-tanh Gaussian's log-density: the tanh Jacobian cancels in the ratio
        mean, log_std = policy.context(policy.obs_normalizer(obs))
        return Normal(mean, log_std.exp()).log_prob(u).sum(-1)

    obs, u = minibatch.obs, minibatch.chains[:, 1]
    old_log_pi = log_pi(behaviour, obs, u).detach()
    torch.testing.assert_close(minibatch.log_q[:, 0], old_log_pi, rtol=1e-5, atol=1e-5)
    ratio = (log_pi(ppo.policy, obs, u) - old_log_pi).exp()
    assert 0 < ((ratio - 1).abs() > 0.2).float().mean() < 1, "the test needs clipped and unclipped ratios"
    adv = (minibatch.advantages - minibatch.advantages.mean()) / (minibatch.advantages.std() + 1e-8)
    policy_loss = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean()
    values = ppo.value(ppo.policy.obs_normalizer(obs)).squeeze(-1)
    value_error = (values - minibatch.returns) ** 2
    if value_clip:
        clipped = minibatch.values + (values - minibatch.values).clamp(-value_clip, value_clip)
        value_error = torch.max(value_error, (clipped - minibatch.returns) ** 2)
    expected = policy_loss + 0.5 * 0.5 * value_error.mean()
    ppo.optimizer.zero_grad()
    expected.backward()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    torch.testing.assert_close(ours, _grads(ppo.trained_parameters), rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("compiled", ["onnxruntime", "trace"])
@pytest.mark.parametrize("algo", ["ppo", "diffppo"])
def test_the_compiled_acting_chain_follows_the_policy(algo, compiled):
    """Rollouts act through onnxruntime (CPU) or a trace; it must follow every update of weights and statistics."""
    torch.manual_seed(0)
    agent, ppo = _small(algo, diffusion_steps=3, num_envs=2, rollout_steps=32)
    assert isinstance(ppo.act, LiveOnnxPolicy)  # what a CPU run acts with
    act = ppo.act if compiled == "onnxruntime" else trace(ppo.policy, (torch.zeros(2, 3),
                                                                       torch.zeros(ppo.policy.noise_shape(2))))
    obs, noise = torch.randn(2, 3) * 3, torch.randn(ppo.policy.noise_shape(2))
    before = ppo.policy(obs, noise).detach()
    for _ in range(2):
        ppo.train_iteration()  # acts 64 times, then updates weights and statistics in place
        torch.testing.assert_close(act(obs, noise), ppo.policy(obs, noise))
    changed = (ppo.policy(obs, noise) - before).abs().max()
    assert changed > 5e-5, f"training moved the action by only {changed:.1e}: a stale copy would pass"


def test_per_step_advantages_add_back_the_past_of_each_step():
    advantages, prior = torch.tensor([1.0, -2.0]), torch.tensor([-0.5, -1.5])
    ratios = torch.tensor([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]])
    expected = torch.tensor([[1.0 - 0.25, 1.0 - 0.2, 1.0 - 0.1], [-2.0 - 0.75, -2.0 - 0.25, -2.0 + 0.75]])
    torch.testing.assert_close(per_step_advantages(advantages, prior, ratios, alpha=0.5), expected)
    torch.testing.assert_close(per_step_advantages(advantages, prior, ratios, alpha=0.0),
                               advantages[:, None].expand(2, 3))


def test_cancelling_the_past_keeps_the_expected_gradient_but_raises_its_variance():
    """A one-state bandit with reward Q(a): the per-step policy gradient with and without the past terms.

    algorithms.md expects the cancelled estimator to have the lower variance; measured, it is higher
    (past and future of a chain are anti-correlated), which is why `cancel_past` is off by default.
    """
    torch.manual_seed(0)
    policy = DiffusionPolicy(1, 1, torch.tensor([-1.0]), torch.tensor([1.0]), num_steps=3, hidden_sizes=(16, 16),
                             activation="tanh", step_size_max=0.3, step_size_min=0.1)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    alpha, n, batches = 1.0, 8, 300
    obs = torch.zeros(n, 1)
    parameters = [p for p in policy.parameters() if p.requires_grad]

    def reward(action):
        return -4.0 * (action - 0.5).square().sum(-1)

    with torch.no_grad():  # a fixed baseline from a pilot batch, so neither estimator is biased by it
        pilot = policy.sample(torch.zeros(4096, 1))
        baseline = (reward(pilot.action) - alpha * pilot.log_ratio).mean()
    cancelled, uncancelled = [], []
    for _ in range(batches):
        with torch.no_grad():
            sample = policy.sample(obs)
            advantage = reward(sample.action) - alpha * sample.log_ratio - baseline
        log_q = policy.score(obs, sample.chain).forward
        for weights, out in ((per_step_advantages(advantage, sample.log_probs.prior, sample.log_probs.step_ratios,
                                                  alpha), cancelled),
                             (advantage[:, None].expand_as(log_q), uncancelled)):
            grads = torch.autograd.grad((log_q * weights).sum(-1).mean(), parameters, retain_graph=True)
            out.append(torch.cat([g.flatten() for g in grads]))
    cancelled, uncancelled = torch.stack(cancelled), torch.stack(uncancelled)
    difference = cancelled - uncancelled  # paired: the same chains feed both estimators
    z = difference.mean(0) / (difference.std(0) / batches ** 0.5 + 1e-12)
    assert z.abs().max() < 4.5, f"max |z| = {z.abs().max():.1f}: the expected gradients differ"
    assert z.square().mean() < 2.0, f"mean z^2 = {z.square().mean():.2f}: the expected gradients differ"
    var_cancelled, var_uncancelled = cancelled.var(0).sum(), uncancelled.var(0).sum()
    assert var_cancelled > 1.05 * var_uncancelled, (var_cancelled, var_uncancelled)


def test_gae_matches_a_reference_loop():
    g = torch.Generator().manual_seed(0)
    rewards, values = torch.randn(7, 3, generator=g), torch.randn(7, 3, generator=g)
    dones, last = (torch.rand(7, 3, generator=g) < 0.3).float(), torch.randn(3, generator=g)
    gamma, lam = 0.9, 0.8
    expected = torch.zeros(7, 3)
    for n in range(3):
        running = 0.0
        for t in reversed(range(7)):
            next_value = last[n] if t == 6 else values[t + 1, n]
            alive = 1.0 - dones[t, n]
            running = rewards[t, n] + gamma * alive * next_value - values[t, n] + gamma * lam * alive * running
            expected[t, n] = running
    torch.testing.assert_close(gae(rewards, values, dones, last, gamma, lam), expected)


class _Counter(gym.Env):
    """obs = steps taken in the episode; reward 1 per step; after 5 steps it terminates (or a TimeLimit truncates)."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, (1,), np.float32)
    action_space = gym.spaces.Box(-1.0, 1.0, (1,), np.float32)

    def __init__(self, terminate: bool):
        self.terminate = terminate

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.t = 0
        return np.array([0.0], np.float32), {}

    def step(self, action):
        self.t += 1
        return np.array([self.t], np.float32), 1.0, self.terminate and self.t == 5, False, {}


@pytest.mark.parametrize("terminate, alpha", [(True, 0.0), (False, 0.0), (False, 0.1)])
def test_returns_stop_at_episode_ends_and_bootstrap_only_truncations(terminate, alpha):
    def make():
        return gym.wrappers.TimeLimit(_Counter(terminate), max_episode_steps=100 if terminate else 5)

    gamma, c = 0.9, 2.0
    agent, ppo = _small(env=make, num_envs=2, rollout_steps=12, gamma=gamma, gae_lambda=1.0, scale_rewards=False,
                        normalize_obs=False, num_minibatches=1, alpha=alpha)
    with torch.no_grad():  # V(s) = c everywhere
        ppo.value[-1].weight.zero_()
        ppo.value[-1].bias.fill_(c)
    batch = ppo.collect_rollout()
    soft_rewards = 1.0 - alpha * batch.log_ratio.view(12, 2)
    returns = batch.returns.view(12, 2)
    for t in range(12):
        end = min(t - t % 5 + 5, 12)  # the step after this episode's last one in the rollout
        expected = sum(gamma ** (i - t) * soft_rewards[i] for i in range(t, end))
        if end == 12 or not terminate:  # the rollout's end and a truncation bootstrap with V = c
            expected = expected + gamma ** (end - t) * c
        torch.testing.assert_close(returns[t], expected, msg=f"step {t}")
    assert ppo.num_episodes == 4 and list(ppo.recent_returns) == [5.0] * 4


def test_resume_continues_from_the_same_step_with_the_same_state(tmp_path):
    agent, ppo = _small("diffppo", diffusion_steps=2, num_epochs=2)
    agent.learn(128, eval_every=0, checkpoint_every=64, run_dir=tmp_path, progress=False)
    resumed = Agent.resume(tmp_path)
    assert resumed.num_steps == agent.num_steps == 128
    new = resumed.algorithm
    for name, module in (("value", ppo.value), ("reward_scaler", ppo.reward_scaler), ("policy", ppo.policy)):
        for a, b in zip(module.state_dict().values(), getattr(new, name).state_dict().values()):
            torch.testing.assert_close(a, b, msg=name)
    assert new.reward_scaler.return_stats.count.item() == 128
    assert torch.equal(new.shuffler.get_state(), ppo.shuffler.get_state())
    assert new.optimizer.state_dict()["state"][0]["step"] == ppo.optimizer.state_dict()["state"][0]["step"]
    resumed.learn(64, eval_every=0, progress=False)
    assert resumed.num_steps == 192


def test_saved_diffppo_acts_identically(tmp_path):
    agent, _ = _small("diffppo", diffusion_steps=3)
    agent.learn(64, eval_every=0, progress=False)
    agent.save_pretrained(tmp_path)
    loaded = Agent.from_pretrained(tmp_path)
    obs, noise = np.random.default_rng(0).normal(size=(5, 3)), np.random.default_rng(1).normal(size=(5, 4, 1))
    np.testing.assert_array_equal(agent.act(obs, noise=noise), loaded.act(obs, noise=noise))


def test_cli_trains_ppo_and_lists_its_parameters(tmp_path):
    runner = CliRunner()
    listed = runner.invoke(cli, ["train", "--algo", "diffppo", "--list-params"])
    assert listed.exit_code == 0 and "rollout_steps = 2048" in listed.output and "alpha = 0.0002" in listed.output
    out = tmp_path / "run"
    result = runner.invoke(cli, ["train", "--algo", "ppo", "--steps", "128", "--out", str(out), "--eval-episodes", "1",
                                 "--set", "rollout_steps=64", "--set", "num_minibatches=2", "--set", "num_epochs=1"])
    assert result.exit_code == 0, result.output
    assert Agent.from_pretrained(out).algo == "ppo"


@pytest.mark.parametrize("overrides, message", [
    ({"num_minibatches": 100, "rollout_steps": 32}, "exceeds the rollout"),
    ({"gae_lambda": 1.5}, "gae_lambda must lie in [0, 1]"),
    ({"alpha": -1.0}, "alpha must be 0 or more"),
    ({"clip_range": 0.0}, "clip_range must be positive"),
])
def test_bad_ppo_config_says_what_to_do(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Agent("ppo", "Pendulum-v1", **overrides)
