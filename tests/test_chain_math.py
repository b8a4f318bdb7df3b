"""Math tier: the chain's log-probabilities against closed-form Gaussians (docs/algorithms.md, section 2)."""

import math

import pytest
import torch
from torch.distributions import Normal, TanhTransform, TransformedDistribution

from diffagent.policies import DiffusionPolicy, GaussianPolicy
from diffagent.policies.entropy import entropy_bounds, importance_weighted_log_density, knn_entropy

pytestmark = pytest.mark.math

OBS_DIM, ACT_DIM, K = 4, 2, 5


@pytest.fixture(params=[False, True], ids=["fixed-backward", "learned-backward"])
def diffusion(request) -> DiffusionPolicy:
    torch.manual_seed(0)
    policy = DiffusionPolicy(OBS_DIM, ACT_DIM, -torch.ones(ACT_DIM), torch.ones(ACT_DIM), num_steps=K,
                             hidden_sizes=(32, 32), prior_std=1.5, step_size_max=0.2, step_size_min=0.02,
                             learn_backward_kernel=request.param)
    with torch.no_grad():  # a trained-looking drift, so f_theta (and g_phi, h_phi) matter in every check
        policy.drift[-1].weight.normal_(0.0, 0.5)
        policy.log_step_size.add_(0.1 * torch.randn_like(policy.log_step_size))
        if policy.backward_drift is not None:
            policy.backward_drift.drift[-1].weight.normal_(0.0, 0.1)
    return policy


def test_diffusion_step_log_probs_match_closed_form_gaussians(diffusion):
    obs = torch.randn(64, OBS_DIM)
    sample = diffusion.sample(obs)
    chain, lp = sample.chain, sample.log_probs
    sigma0 = 1.5
    assert torch.allclose(lp.prior, Normal(0.0, sigma0).log_prob(chain[:, 0]).sum(-1), atol=1e-5)
    context = diffusion.obs_in(obs)
    back = diffusion.backward_drift
    for k in range(K):
        eta = diffusion.log_step_size[k].exp()
        x, x_next = chain[:, k], chain[:, k + 1]
        f = diffusion.drift(context + diffusion.latent_in(x) + diffusion.step_embedding[k])
        forward = Normal(x + eta * (-x / sigma0**2 + f), torch.sqrt(2 * eta)).log_prob(x_next).sum(-1)
        g, h = (back.drift(back.obs_in(obs) + back.latent_in(x_next) + back.step_embedding[k]).chunk(2, -1)
                if back is not None else (0.0, torch.zeros(())))
        backward = Normal(x_next + eta * (-x_next / sigma0**2 + g), torch.sqrt(2 * eta) * h.exp()).log_prob(x).sum(-1)
        assert torch.allclose(lp.forward[:, k], forward, atol=1e-4)
        assert torch.allclose(lp.backward[:, k], backward, atol=1e-4)
    squash = -torch.log(1 - torch.tanh(chain[:, -1]) ** 2).sum(-1)
    assert torch.allclose(lp.squash, squash, atol=1e-3)
    expected_l = lp.prior + (lp.forward - lp.backward).sum(-1) + lp.squash
    assert torch.allclose(sample.log_ratio, expected_l)


def test_batched_scoring_equals_sequential_sampling(diffusion):
    obs = torch.randn(32, OBS_DIM)
    sample = diffusion.sample(obs)
    rescored = diffusion.score(obs, sample.chain)
    for name in ("prior", "forward", "backward", "squash"):
        assert torch.allclose(getattr(rescored, name), getattr(sample.log_probs, name), atol=1e-4), name


def test_gaussian_log_ratio_is_exact_tanh_gaussian_log_density():
    torch.manual_seed(1)
    policy = GaussianPolicy(OBS_DIM, ACT_DIM, -torch.ones(ACT_DIM), torch.ones(ACT_DIM), hidden_sizes=(32, 32))
    obs = torch.randn(128, OBS_DIM)
    sample = policy.sample(obs)
    mean, log_std = policy.context(obs)
    pi = TransformedDistribution(Normal(mean, log_std.exp()), [TanhTransform()])
    assert policy.num_steps == 1
    assert torch.allclose(sample.log_ratio, pi.log_prob(sample.action).sum(-1), atol=1e-3)


@pytest.mark.parametrize("make", [
    lambda: GaussianPolicy(OBS_DIM, ACT_DIM, torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 5.0])),
    lambda: DiffusionPolicy(OBS_DIM, ACT_DIM, torch.tensor([-2.0, 0.0]), torch.tensor([2.0, 5.0]), num_steps=3),
])
def test_zero_noise_is_the_deterministic_action_inside_the_box(make):
    policy = make()
    obs = torch.randn(256, OBS_DIM) * 3
    deterministic = policy.sample(obs, deterministic=True).action
    zero = policy(obs, torch.zeros(policy.noise_shape(256)))
    assert torch.allclose(policy.to_env_action(deterministic), zero)
    noisy = policy(obs, torch.randn(policy.noise_shape(256)) * 3)
    assert (noisy >= policy.action_low).all() and (noisy <= policy.action_high).all()


def test_untrained_chain_is_a_langevin_walk_that_keeps_the_prior():
    torch.manual_seed(2)
    policy = DiffusionPolicy(OBS_DIM, ACT_DIM, -torch.ones(ACT_DIM), torch.ones(ACT_DIM), num_steps=8, prior_std=1.0)
    chain = policy.sample(torch.randn(20000, OBS_DIM)).chain
    assert chain[:, -1].std().item() == pytest.approx(1.0, abs=0.05)
    assert chain[:, -1].mean().abs().item() < 0.05


def test_lower_bound_on_entropy_holds_for_the_gaussian_prior_chain():
    """With f = 0 the chain's marginal is (close to) the prior, so -E[L] <= H(tanh(x_K)) must hold."""
    torch.manual_seed(3)
    policy = DiffusionPolicy(1, 1, -torch.ones(1), torch.ones(1), num_steps=4, prior_std=1.0)
    with torch.no_grad():
        policy.drift[-1].weight.zero_()
    sample = policy.sample(torch.zeros(50000, 1))
    # the marginal of x_K has variance prod/sum of the linear Langevin map: exact Gaussian entropy
    var = sample.chain[:, -1].var().item()
    x = sample.chain[:, -1, 0]
    exact_entropy = 0.5 * math.log(2 * math.pi * math.e * var) + torch.log(1 - torch.tanh(x) ** 2).mean().item()
    assert -sample.log_ratio.mean().item() <= exact_entropy + 0.01


def _squashed_gaussian_entropy(std: torch.Tensor, samples: int = 400_000) -> float:
    """H(tanh(x)) for x ~ N(0, diag(std^2)): H(x) + E[sum_d log(1 - tanh(x_d)^2)], the expectation by Monte Carlo."""
    x = torch.randn(samples, std.shape[0], generator=torch.Generator().manual_seed(1)) * std
    log_det = torch.log1p(-torch.tanh(x) ** 2).sum(-1).mean()
    return float(Normal(0.0, std).entropy().sum() + log_det)


def test_entropy_estimates_of_a_gaussian_all_equal_its_entropy():
    torch.manual_seed(0)
    policy = GaussianPolicy(OBS_DIM, ACT_DIM, -torch.ones(ACT_DIM), torch.ones(ACT_DIM), hidden_sizes=(16,),
                            state_dependent_std=False, log_std_init=-0.5)
    with torch.no_grad():
        policy.mean_head.weight.zero_(), policy.mean_head.bias.zero_()  # every state: N(0, e^-1) before tanh
    obs = torch.randn(4, OBS_DIM)
    exact = _squashed_gaussian_entropy(torch.full((ACT_DIM,), math.exp(-0.5)))
    bounds = entropy_bounds(policy, obs, samples=4096, paths=4)
    torch.testing.assert_close(bounds.lower, bounds.upper, rtol=0, atol=1e-4)  # L is log pi: nothing to bound
    assert bounds.lower.mean().item() == pytest.approx(exact, abs=0.03)
    assert knn_entropy(policy, obs, samples=4096).mean().item() == pytest.approx(exact, abs=0.05)


def _linear_chain(learn_backward_kernel: bool = False) -> tuple[DiffusionPolicy, torch.Tensor]:
    """A chain with no drift, and the exact std of its Gaussian x_K. It is linear: x_{k+1} = (1 - eta_k / sigma0^2) x_k +
    sqrt(2 eta_k) eps, so x_K is Gaussian with variance v_{k+1} = (1 - eta_k / sigma0^2)^2 v_k + 2 eta_k,
    v_0 = sigma0^2. Its steps are large, so that its reverse is far from the fixed backward kernel."""
    torch.manual_seed(0)
    sigma0 = 1.5
    policy = DiffusionPolicy(OBS_DIM, ACT_DIM, -torch.ones(ACT_DIM), torch.ones(ACT_DIM), num_steps=K,
                             hidden_sizes=(16, 16), prior_std=sigma0, step_size_max=1.5, step_size_min=0.5,
                             learn_backward_kernel=learn_backward_kernel)
    with torch.no_grad():
        policy.drift[-1].weight.zero_()
    var = torch.full((ACT_DIM,), sigma0**2)
    for eta in policy.log_step_size.detach().exp():
        var = (1 - eta / sigma0**2) ** 2 * var + 2 * eta
    return policy, var.sqrt()


def test_entropy_estimates_of_a_chain_bracket_its_exact_entropy():
    policy, std = _linear_chain()
    exact = _squashed_gaussian_entropy(std)
    obs = torch.randn(4, OBS_DIM)
    bounds = entropy_bounds(policy, obs, samples=2048, paths=64)
    lower, upper = bounds.lower.mean().item(), bounds.upper.mean().item()  # measured: 0.550-0.563, 0.631-0.650
    assert lower < exact - 0.03, (lower, exact)  # large steps: forward and backward paths differ, a real gap (0.62)
    assert exact <= upper + 0.02, (exact, upper)  # 0.02: the Monte Carlo error of 8,192 sampled actions
    assert knn_entropy(policy, obs, samples=4096).mean().item() == pytest.approx(exact, abs=0.05)


def test_importance_weighted_log_density_of_a_chain_matches_its_exact_density_pointwise():
    """The linear chain's x_K is Gaussian, so log pi(x_K) is known at every point: the estimate over 256 backward
    paths lies within 0.15 nats of it at each of 512 points (measured: at most 0.085-0.097, mean |error| under
    0.002, seeds 0-2), and further off with 4 paths (at most 0.9-1.4), as an importance-weighted bound should."""
    policy, std = _linear_chain()
    obs, latents = torch.randn(512, OBS_DIM), torch.randn(512, ACT_DIM) * std
    exact = Normal(0.0, std).log_prob(latents).sum(-1)
    error = exact - importance_weighted_log_density(policy, obs, latents, paths=256)
    assert error.abs().max().item() < 0.15
    assert abs(error.mean().item()) < 0.01
    assert (exact - importance_weighted_log_density(policy, obs, latents, paths=4)).abs().max().item() > 0.3


def test_a_learned_backward_kernel_closes_the_gap_between_minus_l_and_the_entropy():
    """The linear chain, with a backward network trained on E[L] while the forward chain stays fixed: the fixed
    kernel's std cannot match the chain's reverse at its large steps, a learned scale can, so -E[L] rises to the
    exact entropy (measured: 0.553 -> 0.625, exact 0.62-0.64 on seeds 0-2 of this setup)."""
    policy, std = _linear_chain(learn_backward_kernel=True)
    exact = _squashed_gaussian_entropy(std)
    obs = torch.randn(4, OBS_DIM)
    before = entropy_bounds(policy, obs, samples=2048, paths=64).lower.mean().item()
    optimizer = torch.optim.Adam(policy.backward_drift.parameters(), lr=1e-2)
    for _ in range(300):
        loss = policy.sample(obs.repeat(64, 1)).log_ratio.mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    bounds = entropy_bounds(policy, obs, samples=2048, paths=64)
    after, upper = bounds.lower.mean().item(), bounds.upper.mean().item()
    assert before < exact - 0.05, (before, exact)  # the fixed kernel's gap, as in the test above
    assert after == pytest.approx(exact, abs=0.03), (after, exact)  # closed, to the estimates' Monte Carlo error
    assert exact <= upper + 0.02, (exact, upper)  # a learned proposal keeps the importance-weighted side an upper bound


def test_an_untrained_learned_backward_kernel_scores_chains_as_the_fixed_one():
    """Its head starts at zero, and it is made after the forward chain, whose initial weights it leaves as they were."""
    policies = []
    for learned in (False, True):
        torch.manual_seed(0)
        policies.append(DiffusionPolicy(OBS_DIM, ACT_DIM, -torch.ones(ACT_DIM), torch.ones(ACT_DIM), num_steps=K,
                                        hidden_sizes=(32, 32), learn_backward_kernel=learned))
    fixed, learned = policies
    obs, noise = torch.randn(16, OBS_DIM), torch.randn(fixed.noise_shape(16))
    for name, tensor in fixed.state_dict().items():
        torch.testing.assert_close(learned.state_dict()[name], tensor, rtol=0, atol=0)
    a, b = fixed.sample(obs, noise), learned.sample(obs, noise)
    torch.testing.assert_close(b.log_ratio, a.log_ratio, rtol=0, atol=0)
    assert any(name.startswith("backward_drift.") for name in learned.state_dict())


def test_backward_paths_from_the_box_edge_stay_finite_however_the_learned_kernel_extrapolates():
    """The forward-KL term draws paths back from uniform actions up to the box's edge, where a trained chain
    never goes. A backward network that grows with the latent there once compounded to inf within three
    steps; its log-scale is bounded (and latents held, as the forward chain's), so every path stays finite."""
    torch.manual_seed(0)
    policy = DiffusionPolicy(OBS_DIM, ACT_DIM, -torch.ones(ACT_DIM), torch.ones(ACT_DIM), num_steps=8,
                             hidden_sizes=(32, 32), learn_backward_kernel=True)
    with torch.no_grad():  # a log-scale head that extrapolates steeply, as the diverged run's did
        policy.backward_drift.drift[-1].weight.normal_(0.0, 5.0)
    edge = torch.tensor([[0.999, -0.999], [0.999, 0.999], [-0.2, 0.999]]).repeat(64, 1)
    obs = torch.randn(len(edge), OBS_DIM)
    with torch.no_grad():
        chains = policy.backward_paths(obs, torch.atanh(edge))
        log_likelihood = policy.path_log_likelihood(obs, edge)
    assert torch.isfinite(chains).all() and torch.isfinite(log_likelihood).all()
