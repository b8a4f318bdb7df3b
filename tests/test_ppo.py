"""PPO/DiffPPO: K = 1 is textbook PPO, per-step advantages, episode boundaries, resume (learning: test_learning.py).

The bandit helpers (a one-state task whose per-chain policy gradients are measured exactly) are shared with
benchmarks/per_step_baseline.py.
"""

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.distributions import Normal

from diffagent import Agent, ConfigError
from diffagent.algos.ppo import per_step_advantages, per_step_gae, trace
from diffagent.algos.rollout import RolloutBatch, gae
from diffagent.algos.sac import reverse_cumsum
from diffagent.cli import main as cli
from diffagent.policies import DiffusionPolicy
from diffagent.policies.onnx import LiveOnnxPolicy


def _small(algo="ppo", env="Pendulum-v1", **overrides):
    config = {"policy_hidden_sizes": (16, 16), "value_hidden_sizes": (16, 16), "rollout_steps": 64,
              "num_minibatches": 2, "num_epochs": 1, **overrides}
    agent = Agent(algo, env, **config)
    return agent, agent.algorithm


def _grads(parameters):
    return torch.cat([p.grad.flatten() for p in parameters if p.grad is not None])


@pytest.mark.math
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


@pytest.mark.artifacts
@pytest.mark.parametrize("compiled", ["onnxruntime", "trace"])
@pytest.mark.parametrize("algo", ["ppo", "diffppo"])
def test_the_compiled_acting_chain_follows_the_policy(algo, compiled):
    """Rollouts act through onnxruntime (CPU) or a trace; it must follow every update of weights and statistics."""
    torch.manual_seed(0)
    agent, ppo = _small(algo, num_envs=2, rollout_steps=32, **({"diffusion_steps": 3} if algo == "diffppo" else {}))
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


@pytest.mark.math
def test_per_step_advantages_add_back_the_past_of_each_step():
    advantages, prior = torch.tensor([1.0, -2.0]), torch.tensor([-0.5, -1.5])
    ratios = torch.tensor([[0.1, 0.2, 0.3], [1.0, 2.0, 3.0]])
    expected = torch.tensor([[1.0 - 0.25, 1.0 - 0.2, 1.0 - 0.1], [-2.0 - 0.75, -2.0 - 0.25, -2.0 + 0.75]])
    torch.testing.assert_close(per_step_advantages(advantages, prior, ratios, alpha=0.5), expected)
    torch.testing.assert_close(per_step_advantages(advantages, prior, ratios, alpha=0.0),
                               advantages[:, None].expand(2, 3))


def bandit_reward(action):
    return -4.0 * (action - 0.5).square().sum(-1)


def bandit_policy(num_steps, seed, step_size_max=0.3, step_size_min=0.1):
    """A diffusion policy on one state (obs 0) and one action dimension, its weights perturbed off the prior walk."""
    torch.manual_seed(seed)
    policy = DiffusionPolicy(1, 1, torch.tensor([-1.0]), torch.tensor([1.0]), num_steps=num_steps,
                             hidden_sizes=(16, 16), activation="tanh", step_size_max=step_size_max,
                             step_size_min=step_size_min)
    with torch.no_grad():
        for p in policy.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return policy


def bandit_baselines(policy, alpha, pilot_chains=16384, degree=4):
    """The shared V(s) and a per-step V(x_k, k) of the bandit, both fit on a pilot batch of chains.

    V(s) is the mean soft return; V(x_k, k) regresses the future of step k, reward - alpha (sum_{j>=k} l_j
    + squash), on a polynomial in the standardised x_k, by least squares per step. It stands in for the
    learned critic, imperfect as that will be; fit on other chains than those measured, it is a fixed
    function of x_k and so a valid baseline for step k.
    """
    with torch.no_grad():
        pilot = policy.sample(torch.zeros(pilot_chains, 1))
    log_probs, reward = pilot.log_probs, bandit_reward(pilot.action)
    state_value = (reward - alpha * pilot.log_ratio).mean()
    futures = reward[:, None] - alpha * (reverse_cumsum(log_probs.step_ratios) + log_probs.squash[:, None])
    latents = pilot.chain[:, :-1, 0].double()
    mean, std = latents.mean(0), latents.std(0)

    def features(chains):  # (N, K, degree + 1); clamped, so a chain far out does not extrapolate the polynomial
        z = ((chains[:, :-1, 0].double() - mean) / std).clamp(-4.0, 4.0)
        return torch.stack([z ** d for d in range(degree + 1)], -1)

    coefficients = torch.linalg.lstsq(features(pilot.chain).transpose(0, 1), futures.double().T[..., None]).solution

    def step_values(chains):
        return torch.einsum("nkd,kd->nk", features(chains), coefficients[..., 0]).float()

    return state_value, step_values


class StepLogProbs(nn.Module):
    """A policy's per-step log q_theta(x_{k+1} | x_k, s, k) as a module's forward, for torch.func."""

    def __init__(self, policy):
        super().__init__()
        self.policy = policy

    def forward(self, obs, chains):
        return self.policy.score(obs, chains).forward


def per_chain_scores(policy, chains):
    """grad_theta log q_theta(x_{k+1} | x_k) of every step of every chain on the bandit's state: (N, K, parameters)."""
    module = StepLogProbs(policy)
    params = {name: p.detach() for name, p in module.named_parameters() if p.requires_grad}

    def step_log_probs(params, chain):
        return torch.func.functional_call(module, params, (torch.zeros(1, 1), chain[None]))[0]

    jacobian = torch.func.vmap(torch.func.jacrev(step_log_probs), in_dims=(None, 0))(params, chains)
    return torch.cat([j.flatten(2) for j in jacobian.values()], -1)


def bandit_gradients(num_steps, alpha, seed, chains=4000, gae_lambdas=(0.95,), step_size_max=0.3,
                     step_size_min=0.1):
    """Per-chain policy gradients (N, parameters) on the bandit, the same chains under each weighting of the steps.

    'default': A = soft return - V(s) for every step; 'cancel_past': A + alpha past_k (shared V(s));
    'per-step lambda L': `per_step_gae` with V(x_k, k), gae_lambda L. One chain is a batch of one: with fixed
    baselines the variance of a batch's mean gradient is this variance over its size.
    """
    policy = bandit_policy(num_steps, seed, step_size_max, step_size_min)
    state_value, step_values = bandit_baselines(policy, alpha)
    with torch.no_grad():
        sample = policy.sample(torch.zeros(chains, 1))
    log_probs, reward = sample.log_probs, bandit_reward(sample.action)
    advantage = reward - alpha * sample.log_ratio - state_value
    weights = {"default": advantage[:, None].expand(-1, num_steps),
               "cancel_past": per_step_advantages(advantage, log_probs.prior, log_probs.step_ratios, alpha)}
    for gae_lambda in gae_lambdas:  # the bandit's episode ends with the action: G = reward
        weights[f"per-step lambda {gae_lambda}"] = per_step_gae(log_probs, reward, step_values(sample.chain), alpha,
                                                                gae_lambda)
    scores = per_chain_scores(policy, sample.chain)
    return {name: torch.einsum("nk,nkp->np", w, scores) for name, w in weights.items()}


def paired_z(gradients, reference):
    """z-score of the mean difference of two estimators on the same chains, per parameter."""
    difference = gradients - reference
    return difference.mean(0) / (difference.std(0) / len(difference) ** 0.5 + 1e-12)


@pytest.mark.math
def test_cancelling_the_past_keeps_the_expected_gradient_but_raises_its_variance():
    """A one-state bandit with reward Q(a): the per-step policy gradient with and without the past terms.

    docs/algorithms.md once expected the cancelled estimator to have the lower variance; measured, it is higher
    (past and future of a chain are anti-correlated), which is why `cancel_past` is off by default.
    With a per-step baseline it is lower: the test after this one.
    """
    policy = bandit_policy(num_steps=3, seed=0)
    alpha, n, batches = 1.0, 8, 300
    obs = torch.zeros(n, 1)
    parameters = [p for p in policy.parameters() if p.requires_grad]

    with torch.no_grad():  # a fixed baseline from a pilot batch, so neither estimator is biased by it
        pilot = policy.sample(torch.zeros(4096, 1))
        baseline = (bandit_reward(pilot.action) - alpha * pilot.log_ratio).mean()
    cancelled, uncancelled = [], []
    for _ in range(batches):
        with torch.no_grad():
            sample = policy.sample(obs)
            advantage = bandit_reward(sample.action) - alpha * sample.log_ratio - baseline
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


@pytest.mark.math
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_per_step_baseline_makes_cancelling_the_past_lower_the_variance(seed):
    """K = 8 bandit, alpha = 1: the option's estimator against the default and against cancel_past with V(s).

    Per-chain gradient variance (summed over parameters) of 4000 paired chains, seeds 0, 1, 2: default
    69.7, 320.9, 174.1; cancel_past with the shared V(s) 1.92, 1.07, 1.45 times that; per_step_baseline
    (cancel_past with V(x_k, k), gae_lambda 0.95) 0.72, 0.56, 0.61 times. Other settings, and lambda = 1:
    benchmarks/per_step_baseline.py.
    """
    gradients = bandit_gradients(num_steps=8, alpha=1.0, seed=seed)
    default, cancelled, per_step = gradients["default"], gradients["cancel_past"], gradients["per-step lambda 0.95"]
    z = paired_z(per_step, default)
    assert z.abs().max() < 4.5, f"max |z| = {z.abs().max():.1f}: the expected gradients differ"
    assert z.square().mean() < 2.0, f"mean z^2 = {z.square().mean():.2f}: the expected gradients differ"
    var_default, var_cancelled, var_per_step = (g.var(0).sum() for g in (default, cancelled, per_step))
    assert var_per_step < 0.85 * var_default and var_per_step < 0.85 * var_cancelled, (
        var_default, var_cancelled, var_per_step)


@pytest.mark.math
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


@pytest.mark.math
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


@pytest.mark.math
@pytest.mark.parametrize("gae_lambda", [0.5, 1.0])
def test_per_step_baseline_advantages_by_hand(gae_lambda):
    """A tiny rollout, K = 2, with known critics V(s) = c and V(s, x_k, k) = k + x_k.

    GAE over the chain, undiscounted: A_{t,1} = -alpha (l_1 + squash) + G_t - V_1 and
    A_{t,0} = -alpha l_0 + V_1 - V_0 + lambda A_{t,1}, where G_t = R_t + alpha L_t (R_t: test_returns_stop_...).
    With lambda = 1 that is cancel_past with V(s) replaced by V(s, x_k, k).
    """
    def make():
        return gym.wrappers.TimeLimit(_Counter(True), max_episode_steps=100)

    alpha, c = 0.1, 2.0
    _, ppo = _small("diffppo", env=make, diffusion_steps=2, num_envs=2, rollout_steps=12, gamma=0.9,
                    gae_lambda=gae_lambda, scale_rewards=False, normalize_obs=False, alpha=alpha, per_step_baseline=True)
    with torch.no_grad():
        ppo.value[-1].weight.zero_()
        ppo.value[-1].bias.fill_(c)

    def known_step_values(obs, chains):
        return torch.arange(2.0) + chains[:, :-1, 0]

    ppo.step_values = known_step_values
    batch = ppo.collect_rollout()
    log_probs = ppo.policy.score(batch.obs, batch.chains)  # the behaviour policy's: nothing was updated
    l, squash, v = log_probs.step_ratios, log_probs.squash, known_step_values(batch.obs, batch.chains)
    action_return = batch.returns + alpha * batch.log_ratio
    last = -alpha * (l[:, 1] + squash) + action_return - v[:, 1]
    first = -alpha * l[:, 0] + v[:, 1] - v[:, 0] + gae_lambda * last
    torch.testing.assert_close(batch.step_advantages, torch.stack([first, last], -1))
    torch.testing.assert_close(batch.step_returns, batch.step_advantages + v)
    torch.testing.assert_close(batch.step_values, v)
    if gae_lambda == 1.0:
        cancelled = per_step_advantages(batch.advantages, log_probs.prior, l, alpha)
        torch.testing.assert_close(batch.step_advantages, cancelled + batch.values[:, None] - v)


@pytest.mark.artifacts
@pytest.mark.parametrize("per_step_baseline", [False, True])
def test_resume_continues_from_the_same_step_with_the_same_state(tmp_path, per_step_baseline):
    agent, ppo = _small("diffppo", diffusion_steps=2, num_epochs=2, per_step_baseline=per_step_baseline)
    agent.learn(128, eval_every=0, checkpoint_every=64, run_dir=tmp_path, progress=False)
    resumed = Agent.resume(tmp_path)
    assert resumed.num_timesteps == agent.num_timesteps == 128
    new = resumed.algorithm
    critics = (("value", ppo.value), ("step_value", ppo.step_value)) if per_step_baseline else (("value", ppo.value),)
    for name, module in (*critics, ("reward_scaler", ppo.reward_scaler), ("policy", ppo.policy)):
        for a, b in zip(module.state_dict().values(), getattr(new, name).state_dict().values()):
            torch.testing.assert_close(a, b, msg=name)
    assert new.reward_scaler.return_stats.count.item() == 128
    assert torch.equal(new.shuffler.get_state(), ppo.shuffler.get_state())
    assert new.optimizer.state_dict()["state"][0]["step"] == ppo.optimizer.state_dict()["state"][0]["step"]
    resumed.learn(64, eval_every=0, progress=False)
    assert resumed.num_timesteps == 192


@pytest.mark.artifacts
def test_saved_diffppo_acts_identically(tmp_path):
    agent, _ = _small("diffppo", diffusion_steps=3)
    agent.learn(64, eval_every=0, progress=False)
    agent.save_pretrained(tmp_path)
    loaded = Agent.from_pretrained(tmp_path)
    obs, noise = np.random.default_rng(0).normal(size=(5, 3)), np.random.default_rng(1).normal(size=(5, 4, 1))
    np.testing.assert_array_equal(agent.act(obs, noise=noise), loaded.act(obs, noise=noise))


@pytest.mark.artifacts
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
@pytest.mark.math
def test_bad_ppo_config_says_what_to_do(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Agent("ppo", "Pendulum-v1", **overrides)
