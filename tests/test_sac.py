"""SAC/DiffSAC: the generic update equals textbook SAC for a Gaussian, and the LV gradient is right."""

import copy

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import Normal

from diffagent import Agent
from diffagent.algos.replay import Batch

pytestmark = pytest.mark.math


def _tiny(algo, **overrides):
    return Agent(algo, "Pendulum-v1", policy_hidden_sizes=(32, 32), critic_hidden_sizes=(32, 32),
                 learning_starts=0, **overrides)


def _batch(n=64, obs_dim=3, act_dim=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(n, obs_dim, generator=g), torch.rand(n, act_dim, generator=g) * 2 - 1,
                 torch.randn(n, generator=g), torch.randn(n, obs_dim, generator=g),
                 (torch.rand(n, generator=g) < 0.2).float())


def test_sac_update_with_gaussian_policy_equals_textbook_sac_losses():
    agent = _tiny("sac", alpha_init=0.3)
    sac = agent.algorithm
    policy, critic, target = copy.deepcopy(sac.policy), copy.deepcopy(sac.critic), copy.deepcopy(sac.critic_target)
    batch, alpha, gamma = _batch(), 0.3, sac.config.gamma

    def tanh_gaussian(obs, eps):  # the textbook reparameterised sample and its log-density
        mean, log_std = policy.context(obs)
        u = mean + log_std.exp() * eps
        log_pi = Normal(mean, log_std.exp()).log_prob(u).sum(-1) - torch.log(1 - torch.tanh(u) ** 2 + 1e-12).sum(-1)
        return torch.tanh(u), log_pi

    torch.manual_seed(123)
    next_noise = torch.randn(64, 2, 1)
    actor_noise = torch.randn(64, 2, 1)
    next_a, next_logp = tanh_gaussian(batch.next_obs, next_noise[:, 1])
    y = batch.rewards + gamma * (1 - batch.terminated) * (target(batch.next_obs, next_a).min(0).values - alpha * next_logp)
    q1, q2 = critic(batch.obs, batch.actions)
    expected_critic = 0.5 * (F.mse_loss(q1, y) + F.mse_loss(q2, y))

    torch.manual_seed(123)
    metrics = sac.update(batch)
    # the actor step follows the critic step, so it sees the updated critic
    a, logp = tanh_gaussian(batch.obs, actor_noise[:, 1])
    expected_actor = (alpha * logp - sac.critic(batch.obs, a).min(0).values).mean()
    assert metrics["critic_loss"] == pytest.approx(expected_critic.item(), rel=1e-4)
    assert metrics["actor_loss"] == pytest.approx(expected_actor.item(), rel=1e-4, abs=1e-4)
    assert metrics["entropy_estimate"] == pytest.approx(-logp.mean().item(), rel=1e-3, abs=1e-3)


@pytest.mark.parametrize("algo", ["diffsac", "diffwpo"])
def test_actor_steps_take_that_many_actor_steps_after_one_critic_step(algo):
    """actor_steps = 3 is one critic step, then three actor steps on fresh chains at the same states: the same
    parameters as one update with actor_steps = 1 followed by two more actor steps by hand."""
    batch = _batch()
    several = _tiny(algo, actor_steps=3, autotune_alpha=False).algorithm
    one = _tiny(algo, autotune_alpha=False).algorithm
    alpha = one.alpha
    torch.manual_seed(7)
    several.update(batch)
    torch.manual_seed(7)
    one.update(batch)
    one.critic.requires_grad_(False)
    for _ in range(2):
        loss, _ = one.actor_loss(batch.obs, one.policy.obs_normalizer(batch.obs), alpha)
        one.actor_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        one.actor_optimizer.step()
    for mine, theirs in zip(several.policy.parameters(), one.policy.parameters()):
        torch.testing.assert_close(mine, theirs, rtol=1e-5, atol=1e-6)
    assert [state["step"].item() for state in several.critic_optimizer.state.values()][0] == 1
    assert {state["step"].item() for state in several.actor_optimizer.state.values()} == {3}


class _QuadraticCritic(torch.nn.Module):
    """Q(s, a) = -|a - c|^2 for two identical critics: a known, smooth target."""

    def forward(self, obs, action):
        q = -((action - 0.4) ** 2).sum(-1) * 5.0
        return torch.stack([q, q])


def _actor_gradient(sac, estimator, obs, alpha):
    sac.config.actor_gradient = estimator
    sac.policy.zero_grad()
    loss, _ = sac.actor_loss(obs, obs, torch.tensor(alpha))
    loss.backward()
    return torch.cat([p.grad.flatten() for p in sac.policy.parameters() if p.grad is not None])


@pytest.mark.parametrize("algo", ["diffsac", "sac"])
def test_lv_gradient_matches_the_pathwise_gradient_of_the_same_objective(algo):
    """Both are unbiased estimators of grad E[alpha L - Q]; averaged over many chains they agree."""
    torch.manual_seed(0)
    agent = _tiny(algo, lv_chains=2048, **({"diffusion_steps": 3} if algo == "diffsac" else {}))
    sac = agent.algorithm
    sac.critic = _QuadraticCritic()
    with torch.no_grad():
        for p in sac.policy.parameters():
            p.add_(0.05 * torch.randn_like(p))
    obs = torch.randn(4, 3)
    torch.manual_seed(1)
    lv = _actor_gradient(sac, "lv", obs, alpha=0.5)
    torch.manual_seed(2)
    pathwise = _actor_gradient(sac, "pathwise", obs.repeat(2048, 1), alpha=0.5)
    cosine = F.cosine_similarity(lv, pathwise, dim=0).item()
    assert cosine > 0.9, f"cosine {cosine:.3f}"
    assert lv.norm().item() == pytest.approx(pathwise.norm().item(), rel=0.25)


def test_the_forward_kl_term_alone_fits_the_gaussian_to_exp_q_over_alpha_and_pulls_a_chain_toward_it():
    """The mass-covering term is maximum likelihood of exp(Q/alpha)'s own actions. With Q = -5 (a - 0.4)^2 and
    alpha = 0.1 the target is N(0.4, 0.1^2) (its tails cut at +-1, 6 std away): minimised alone, the term fits
    the Gaussian's mean and std to it, from 0 and ~0.6 (seeds 0-3: 0.38-0.42 and 0.095-0.104). A K = 3 chain's paths are drawn back through its own
    (detached) backward kernel, so the term alone takes it only near the target (it is meant beside the actor
    loss, docs/algorithms.md, section 10), but there from 0 and 0.65 (0.36 and 0.21): with flat weights it
    would stay at 0."""
    for algo, updates, spread in (("sac", 300, (0.075, 0.125)), ("diffsac", 600, (0.0, 0.3))):
        agent = _tiny(algo, forward_kl_weight=1.0, forward_kl_proposals=512, actor_lr=3e-3, autotune_alpha=False,
                      alpha_init=0.1, **({"diffusion_steps": 3, "step_size_max": 0.5} if algo == "diffsac" else {}))
        sac = agent.algorithm
        sac.critic = _QuadraticCritic()
        obs = torch.zeros(1, 3)
        for _ in range(updates):
            loss = sac.forward_kl_loss(obs, torch.tensor(0.1))
            sac.actor_optimizer.zero_grad(set_to_none=True)
            loss.backward()
            sac.actor_optimizer.step()
        with torch.no_grad():
            actions = sac.policy.sample(obs.repeat(4096, 1)).action
        assert actions.mean().item() == pytest.approx(0.4, abs=0.04 if algo == "sac" else 0.07), algo
        assert spread[0] < actions.std().item() < spread[1], algo


def test_the_forward_kl_weight_is_held_then_fades_linearly_to_zero():
    sac = _tiny("diffsac", diffusion_steps=2, forward_kl_weight=2.0, forward_kl_fade_start=100,
                forward_kl_fade_end=300).algorithm
    weights = {}
    for step in (0, 100, 200, 250, 300, 1000):
        sac.num_timesteps = step
        weights[step] = sac.forward_kl_weight()
    assert weights == pytest.approx({0: 2.0, 100: 2.0, 200: 1.0, 250: 0.5, 300: 0.0, 1000: 0.0})
    sac.num_timesteps = 200
    assert sac.update(_batch())["forward_kl_weight"] == pytest.approx(1.0)
    assert "forward_kl_weight" not in _tiny("diffsac", diffusion_steps=2).algorithm.update(_batch())


@pytest.mark.parametrize("anneal_lr", [True, False])
def test_anneal_lr_decays_every_learning_rate_linearly_over_the_budget(anneal_lr):
    sac = _tiny("sac", anneal_lr=anneal_lr, actor_lr=1e-3, critic_lr=2e-3, alpha_lr=4e-3).algorithm
    sac.total_steps = 40
    for _ in range(10):
        sac.train_iteration()
    left = 0.75 if anneal_lr else 1.0
    rates = [optimizer.param_groups[0]["lr"]
             for optimizer in (sac.actor_optimizer, sac.critic_optimizer, sac.alpha_optimizer)]
    assert rates == pytest.approx([1e-3 * left, 2e-3 * left, 4e-3 * left])
