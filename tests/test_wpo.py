"""WPO/DiffWPO: the chain's per-step signals, the K = 1 reduction to WPO, the trust region, resume (learning: test_learning.py)."""


import pytest
import torch
from click.testing import CliRunner
from torch.distributions import Normal

from diffagent import Agent
from diffagent.algos.wpo import gaussian_kl, natural_gradient
from diffagent.cli import main as cli
from diffagent.policies.chain import gaussian_log_prob


def _tiny(algo, **overrides):
    return Agent(algo, "Pendulum-v1", **{"policy_hidden_sizes": (32, 32), "critic_hidden_sizes": (32, 32),
                                         "learning_starts": 0, **overrides})


class _Critic(torch.nn.Module):
    """Two identical critics with a smooth, state-dependent Q(s, a)."""

    def forward(self, obs, action):
        q = -((action - 0.3 * obs[..., :1]) ** 2).sum(-1) * 4.0 + torch.sin(2.0 * action).sum(-1)
        return torch.stack([q, q])


def _perturbed(algo, **overrides):
    agent = _tiny(algo, **overrides)
    wpo = agent.algorithm
    wpo.critic = _Critic()
    torch.manual_seed(0)
    with torch.no_grad():  # move away from the near-zero initial drift so every term matters
        for p in wpo.policy.parameters():
            p.add_(0.1 * torch.randn_like(p))
    wpo.policy_old.load_state_dict(wpo.policy.state_dict())
    return agent, wpo


def _grads(module):
    return torch.cat([p.grad.flatten() for p in module.parameters() if p.grad is not None])


@pytest.mark.math
def test_k1_gaussian_gradient_equals_the_analytical_wpo_gradient():
    """grad_theta of -E[grad_u log pi(u|s) . sg(grad_u (Q(s, tanh u) - alpha log pi))], u held fixed."""
    agent, wpo = _perturbed("wpo", fisher_preconditioning=False)
    policy, alpha = wpo.policy, 0.3
    obs = torch.randn(16, 3)
    torch.manual_seed(7)
    policy.zero_grad()
    loss, _ = wpo.actor_loss(obs, obs, torch.tensor(alpha))
    loss.backward()  # the KL penalty adds nothing: old == new is its minimum
    ours = _grads(policy)

    torch.manual_seed(7)
    eps = torch.randn(16, 2, 1)[:, 1]
    mean, log_std = policy.context(obs)
    u = (mean + log_std.exp() * eps).detach().requires_grad_(True)
    (score,) = torch.autograd.grad(Normal(mean, log_std.exp()).log_prob(u).sum(), u, create_graph=True)
    fixed_log_pi = (Normal(mean.detach(), log_std.exp().detach()).log_prob(u).sum(-1)
                    - torch.log(1 - torch.tanh(u) ** 2).sum(-1))
    soft_q = wpo.critic(obs, torch.tanh(u)).min(0).values - alpha * fixed_log_pi
    (signal,) = torch.autograd.grad(soft_q.sum(), u)
    policy.zero_grad()
    (-(score * signal).sum(-1).mean()).backward()
    expected = _grads(policy)
    torch.testing.assert_close(ours, expected, rtol=1e-4, atol=1e-6)


@pytest.mark.math
def test_k1_gaussian_preconditioned_gradient_is_the_pathwise_gradient_sample_by_sample():
    """With the inverse Fisher in (mean, sigma) coordinates, WPO's update of a Gaussian is SAC's reparameterised
    gradient of Q: for u = mean + sigma eps, d log pi(u)/d mean = 1/sigma^2 and d(grad_u log pi)/d log sigma =
    2 eps / sigma, so the preconditioned terms are grad_u Q and sigma eps grad_u Q: dQ/dmean and dQ/dlog sigma.
    (With alpha > 0 the two differ: WPO holds log pi's own dependence on theta fixed.)"""
    agent, wpo = _perturbed("wpo", fisher_preconditioning=True)
    policy, obs = wpo.policy, torch.randn(16, 3)
    torch.manual_seed(7)
    policy.zero_grad()
    loss, _ = wpo.actor_loss(obs, obs, torch.tensor(0.0))
    loss.backward()
    ours = _grads(policy)
    torch.manual_seed(7)
    sample = policy.sample(obs)  # the same noise, reparameterised
    policy.zero_grad()
    (-wpo.critic(obs, sample.action).min(0).values.mean()).backward()
    torch.testing.assert_close(ours, _grads(policy), rtol=1e-4, atol=1e-6)


@pytest.mark.math
def test_natural_gradient_keeps_values_and_scales_gradients_by_the_inverse_fisher_in_sigma():
    mean, log_std = torch.randn(5, 2, requires_grad=True), torch.randn(5, 2, requires_grad=True)
    scaled_mean, scaled_log_std = natural_gradient(mean, log_std)
    torch.testing.assert_close((scaled_mean, scaled_log_std), (mean, log_std))
    (scaled_mean.sum() + scaled_log_std.sum()).backward()
    var = torch.exp(2 * log_std.detach())
    torch.testing.assert_close(mean.grad, var)  # sigma^2 on the mean
    torch.testing.assert_close(log_std.grad, var / 2)  # sigma^2/2 on sigma = sigma^2/2 on log sigma (d sigma = sigma d log sigma)


@pytest.mark.math
@pytest.mark.parametrize("learn_backward_kernel", [False, True])
def test_diffusion_signals_equal_the_soft_value_gradient_along_the_rest_of_the_chain(learn_backward_kernel):
    """g_{k+1}: rerun the chain from each x_{k+1} with its noise fixed and differentiate the future. With a learned
    backward kernel its network's gradient is the direct term's."""
    agent, wpo = _perturbed("diffwpo", diffusion_steps=3, fisher_preconditioning=False,  # the raw signals
                            learn_backward_kernel=learn_backward_kernel)
    policy, alpha, k_steps = wpo.policy, 0.4, 3
    obs = torch.randn(8, 3)
    torch.manual_seed(3)
    policy.zero_grad()
    loss, _ = wpo.actor_loss(obs, obs, torch.tensor(alpha))
    loss.backward()
    ours = _grads(policy)

    torch.manual_seed(3)
    noise = torch.randn(policy.noise_shape(8))
    with torch.no_grad():
        chain = policy.sample(obs, noise).chain
    context = policy.context(policy.obs_normalizer(obs))
    signals = []
    for k in range(k_steps):  # brute force: the future of x_{k+1}, differentiated by autograd
        x_next = chain[:, k + 1].clone().requires_grad_(True)
        states, x = [chain[:, k], x_next], x_next
        for j in range(k + 1, k_steps):
            mean, log_std = policy.forward_kernel(context, x, j)
            x = mean + log_std.exp() * noise[:, j + 1]
            states.append(x)
        future = torch.stack(states, 1)  # x_k .. x_K
        ratios = []
        for j in range(k, k_steps):
            i = j - k
            fm, fs = policy.forward_kernel(context, future[:, i], j)
            bm, bs = policy.backward_kernel(context, future[:, i + 1], j)
            ratios.append(gaussian_log_prob(future[:, i + 1], fm, fs) - gaussian_log_prob(future[:, i], bm, bs))
        x_k = future[:, -1]
        squash = -torch.log(1 - torch.tanh(x_k) ** 2).sum(-1)
        soft = wpo.critic(obs, torch.tanh(x_k)).min(0).values - alpha * (torch.stack(ratios, -1).sum(-1) + squash)
        (g,) = torch.autograd.grad(soft.sum(), x_next)
        signals.append(g)
    signal = torch.stack(signals, 1)
    mean, log_std = policy.kernels(obs, chain)
    score = (mean - chain[:, 1:]) * torch.exp(-2 * log_std)
    backward = policy.backward_log_probs(obs, chain).sum(-1)
    policy.zero_grad()
    (-(score * signal).sum((1, 2)).mean() - alpha * backward.mean()).backward()
    torch.testing.assert_close(ours, _grads(policy), rtol=2e-3, atol=1e-5)


@pytest.mark.math
def test_gaussian_kl_matches_torch_distributions():
    g = torch.Generator().manual_seed(0)
    m1, m2, s1, s2 = (torch.randn(5, 3, generator=g) for _ in range(4))
    expected = torch.distributions.kl_divergence(Normal(m1, s1.exp()), Normal(m2, s2.exp())).sum(-1)
    torch.testing.assert_close(gaussian_kl(m1, s1, m2, s2), expected)


@pytest.mark.math
def test_trust_region_penalty_grows_while_the_kl_exceeds_the_bound():
    wpo = _tiny("wpo", kl_bound=1e-4, kl_penalty_lr=0.1).algorithm
    with torch.no_grad():  # put the old policy far away
        for p in wpo.policy_old.parameters():
            p.add_(0.5)
    obs = torch.randn(32, 3)
    batch = wpo.buffer
    for _ in range(20):
        batch.add(obs[0].numpy(), [0.1], -1.0, obs[1].numpy(), False)
    before = wpo.log_kl_penalty.item()
    metrics = [wpo.update(batch.sample(16)) for _ in range(5)]
    assert all(m["kl"] > 1e-4 for m in metrics)
    assert wpo.log_kl_penalty.item() > before + 0.3


@pytest.mark.math
@pytest.mark.parametrize("bound_over_kl_per_step, penalty_grows", [(1.5, False), (1 / 1.5, True)])
def test_the_chains_trust_region_bounds_the_kl_per_denoising_step(bound_over_kl_per_step, penalty_grows):
    """The dual variable compares the bound with the path's KL over K = 4, not with the path's KL: it falls with the
    bound 1.5 times the KL per step (a path bound would have it grow) and grows with the bound 1.5 times below it."""
    wpo = _tiny("diffwpo", diffusion_steps=4, kl_penalty_lr=0.1).algorithm
    with torch.no_grad():  # the old drift shifted by a constant: each kernel's KL is eta_k / 4 at every state
        wpo.policy_old.drift[-1].bias.add_(1.0)
    for _ in range(20):
        wpo.buffer.add(torch.randn(3).numpy(), [0.1], -1.0, torch.randn(3).numpy(), False)
    batch = wpo.buffer.sample(16)
    wpo.actor_loss(batch.obs, wpo.policy.obs_normalizer(batch.obs), wpo.alpha)  # measures the path's KL, no step
    kl_per_step = wpo.kl.item() / 4
    wpo.config.kl_bound = kl_per_step * bound_over_kl_per_step
    before = wpo.log_kl_penalty.item()
    metrics = [wpo.update(wpo.buffer.sample(16)) for _ in range(5)]
    assert all(abs(m["kl"] / 4 / kl_per_step - 1) < 0.1 for m in metrics)  # the KL holds still meanwhile
    change = wpo.log_kl_penalty.item() - before
    assert change > 0.3 if penalty_grows else change < -0.3


@pytest.mark.artifacts
def test_resume_continues_from_the_same_step_with_the_same_state(tmp_path):
    agent = _tiny("wpo", learning_starts=50, seed=1, buffer_size=1000)
    agent.learn(120, eval_every=0, checkpoint_every=60, run_dir=tmp_path, progress=False)
    resumed = Agent.resume(tmp_path)
    assert resumed.num_timesteps == agent.num_timesteps == 120
    old, new = agent.algorithm, resumed.algorithm
    assert new.log_kl_penalty.item() == pytest.approx(old.log_kl_penalty.item())
    for a, b in zip(old.policy_old.state_dict().values(), new.policy_old.state_dict().values()):
        torch.testing.assert_close(a, b)
    assert new.buffer.size == old.buffer.size
    resumed.learn(30, eval_every=0, progress=False)  # 30 more, in the run directory it was resumed from
    assert resumed.num_timesteps == 150


@pytest.mark.artifacts
def test_cli_trains_diffwpo(tmp_path):
    out = tmp_path / "run"
    result = CliRunner().invoke(cli, ["train", "--algo", "diffwpo", "--steps", "80", "--out", str(out),
                                      "--set", "learning_starts=40", "--set", "diffusion_steps=2",
                                      "--eval-episodes", "1", "--set", "policy_hidden_sizes=16,16",
                                      "--set", "critic_hidden_sizes=16,16"])
    assert result.exit_code == 0, result.output
    assert Agent.from_pretrained(out).algo == "diffwpo"
