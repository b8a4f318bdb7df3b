"""Training's fast paths compute what the plain ones did, to float rounding (issue 15, docs/throughput.md).

Each test runs the fast path and the computation it replaced on the same inputs: fused Adam against
torch's per-parameter Adam, acting and the TD target through onnxruntime against the eager torch
modules, the replay buffer's rows against a tensor per field.
"""

import numpy as np
import pytest
import torch

from diffagent import Agent
from diffagent.algos.replay import Batch, ReplayBuffer

pytestmark = pytest.mark.math

TINY = {"policy_hidden_sizes": (32, 32), "critic_hidden_sizes": (32, 32), "learning_starts": 0}
ALGOS = [("sac", {}), ("diffsac", {"diffusion_steps": 3}), ("wpo", {}), ("diffwpo", {"diffusion_steps": 3}),
         ("diffsac", {"diffusion_steps": 3, "learn_backward_kernel": True})]  # the target scores with g_phi, h_phi


def _batch(n=64, obs_dim=3, act_dim=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    return Batch(torch.randn(n, obs_dim, generator=g), torch.rand(n, act_dim, generator=g) * 2 - 1,
                 torch.randn(n, generator=g), torch.randn(n, obs_dim, generator=g),
                 (torch.rand(n, generator=g) < 0.2).float())


def _trained_tensors(algorithm) -> dict[str, torch.Tensor]:
    tensors = {f"policy.{k}": v for k, v in algorithm.policy.state_dict().items()}
    tensors.update({f"critic.{k}": v for k, v in algorithm.critic.state_dict().items()})
    tensors["log_alpha"] = algorithm.log_alpha.detach()
    return tensors


@pytest.mark.parametrize("algo, overrides", ALGOS)
def test_updates_with_fused_adam_equal_updates_with_per_parameter_adam(algo, overrides):
    """Three updates: losses, the parameters they leave and the optimizers' moments, against torch's default Adam."""
    fused, plain = (Agent(algo, "Pendulum-v1", seed=0, **TINY, **overrides).algorithm for _ in range(2))
    for name, optimizer in plain.components().items():
        if isinstance(optimizer, torch.optim.Optimizer):  # the same Adam, stepped one parameter at a time
            assert optimizer.defaults["fused"], name
            setattr(plain, name, torch.optim.Adam(optimizer.param_groups[0]["params"], lr=optimizer.defaults["lr"],
                                                  foreach=False))
    for a, b in zip(_trained_tensors(fused).values(), _trained_tensors(plain).values()):
        assert torch.equal(a, b)  # the same initial networks
    for step in range(3):
        batch = _batch(seed=step)
        torch.manual_seed(step)
        fused_metrics = fused.update(batch)
        torch.manual_seed(step)
        plain_metrics = plain.update(batch)
        assert fused_metrics == pytest.approx(plain_metrics, rel=1e-4, abs=1e-6)
    for name, value in _trained_tensors(fused).items():
        torch.testing.assert_close(value, _trained_tensors(plain)[name], rtol=1e-5, atol=1e-6, msg=name)
    for fused_param, plain_param in zip(fused.critic.parameters(), plain.critic.parameters()):
        fused_state, plain_state = fused.critic_optimizer.state[fused_param], plain.critic_optimizer.state[plain_param]
        for moment in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(fused_state[moment], plain_state[moment], rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("algo, overrides", ALGOS[:2])
def test_acting_through_onnxruntime_equals_the_torch_policy_as_it_trains(algo, overrides):
    """SAC's action at each env step (onnxruntime on a CPU) is the torch policy's squashed action for the same
    noise, before and after updates change the policy in place, and after a checkpoint is loaded."""
    sac = Agent(algo, "Pendulum-v1", seed=0, **TINY, **overrides).algorithm
    obs = torch.randn(5, 3).numpy()

    def check() -> None:
        for row in obs:
            torch.manual_seed(7)
            action = sac.policy_action(row)
            torch.manual_seed(7)
            with torch.no_grad():
                noise = torch.randn(sac.policy.noise_shape(1))
                expected = sac.policy.squashed_action(torch.as_tensor(row)[None], noise)[0]
            torch.testing.assert_close(torch.as_tensor(action), expected, rtol=1e-5, atol=1e-5)

    check()
    before = sac.policy_action(obs[0])
    for step in range(3):
        sac.update(_batch(seed=step))
    check()
    restored = Agent(algo, "Pendulum-v1", seed=1, **TINY, **overrides).algorithm
    restored.policy_action(obs[0])  # its onnxruntime session exists before the checkpoint is loaded
    restored.load_state_dict(sac.state_dict())
    sac = restored
    check()
    assert abs(sac.policy_action(obs[0]) - before).max() > 0  # the updates did change the action




@pytest.mark.parametrize("algo, overrides", ALGOS)
def test_the_td_target_through_onnxruntime_equals_torch_as_the_networks_train(algo, overrides):
    """The target every update regresses on (onnxruntime on a CPU) against the eager SoftTarget, the chains
    driven by the same noise: at the first update, after updates have moved the policy and the target
    critics in place, and at another batch size."""
    sac = Agent(algo, "Pendulum-v1", seed=0, **TINY, **overrides).algorithm

    def check(batch: Batch) -> None:
        noise = torch.randn(sac.policy.noise_shape(len(batch.rewards)))
        with torch.no_grad():
            expected = sac.soft_target(batch.next_obs, noise, batch.rewards, batch.terminated, sac.alpha)
        torch.testing.assert_close(sac.td_target(batch, noise, sac.alpha), expected, rtol=1e-5, atol=1e-5)

    check(_batch(seed=10))
    first = sac.td_target(_batch(seed=10), torch.zeros(sac.policy.noise_shape(64)), sac.alpha)
    for step in range(3):
        sac.update(_batch(seed=step))
    check(_batch(seed=10))
    assert (sac.td_target(_batch(seed=10), torch.zeros(sac.policy.noise_shape(64)), sac.alpha) - first).abs().max() > 0
    check(_batch(n=17, seed=11))


class _PerFieldBuffer:
    """The replay buffer as it was: a tensor per field, written and gathered field by field."""

    def __init__(self, capacity, obs_dim, act_dim):
        self.capacity, self.pos, self.size = capacity, 0, 0
        self.obs, self.next_obs = torch.zeros(capacity, obs_dim), torch.zeros(capacity, obs_dim)
        self.actions, self.rewards, self.terminated = torch.zeros(capacity, act_dim), torch.zeros(capacity), \
            torch.zeros(capacity)

    def add(self, obs, action, reward, next_obs, terminated):
        i = self.pos
        self.obs[i] = torch.from_numpy(np.asarray(obs, dtype=np.float32))
        self.next_obs[i] = torch.from_numpy(np.asarray(next_obs, dtype=np.float32))
        self.actions[i] = torch.from_numpy(np.asarray(action, dtype=np.float32))
        self.rewards[i], self.terminated[i] = float(reward), float(terminated)
        self.pos, self.size = (self.pos + 1) % self.capacity, min(self.size + 1, self.capacity)

    def sample(self, batch_size, generator):
        idx = torch.randint(0, self.size, (batch_size,), generator=generator)
        return Batch(*(t[idx] for t in (self.obs, self.actions, self.rewards, self.next_obs, self.terminated)))


def test_replay_rows_store_and_sample_what_a_tensor_per_field_did():
    rng = np.random.default_rng(0)
    rows, fields = ReplayBuffer(50, 4, 2), _PerFieldBuffer(50, 4, 2)
    for _ in range(70):  # past the capacity: the ring wraps
        transition = (rng.normal(size=4), rng.uniform(-1, 1, 2).astype(np.float32), float(rng.normal()),
                      rng.normal(size=4), bool(rng.random() < 0.1))
        rows.add(*transition)
        fields.add(*transition)
    assert (rows.pos, rows.size) == (fields.pos, fields.size)
    for got, expected in zip(rows.sample(32, torch.Generator().manual_seed(1)),
                             fields.sample(32, torch.Generator().manual_seed(1))):
        assert torch.equal(got, expected)
    restored = ReplayBuffer(50, 4, 2)
    restored.load_state_dict(rows.state_dict())
    for name in Batch._fields:
        assert torch.equal(getattr(restored, name), getattr(fields, name)), name
