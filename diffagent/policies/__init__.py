"""Policies: what is published, exported and served. Algorithms hold everything else."""

from diffagent.config import DiffusionPolicyConfig, GaussianPolicyConfig, PolicyConfig
from diffagent.policies.base import Policy, PolicySample
from diffagent.policies.chain import ChainLogProbs
from diffagent.policies.diffusion import DiffusionPolicy
from diffagent.policies.gaussian import GaussianPolicy

__all__ = ["Policy", "PolicySample", "ChainLogProbs", "GaussianPolicy", "DiffusionPolicy", "make_policy"]


def make_policy(config: PolicyConfig, obs_dim: int, action_low, action_high) -> Policy:
    """Build the policy of a config's policy part (Gaussian or diffusion) for these spaces."""
    common = dict(hidden_sizes=config.policy_hidden_sizes, activation=config.policy_activation,
                  normalize_obs=config.normalize_obs)
    act_dim = len(action_low)
    if isinstance(config, GaussianPolicyConfig):
        return GaussianPolicy(obs_dim, act_dim, action_low, action_high, state_dependent_std=config.state_dependent_std,
                              log_std_init=config.log_std_init, **common)
    assert isinstance(config, DiffusionPolicyConfig), f"no policy for {type(config).__name__}"
    return DiffusionPolicy(obs_dim, act_dim, action_low, action_high, num_steps=config.diffusion_steps,
                           prior_std=config.prior_std, step_size_max=config.step_size_max,
                           step_size_min=config.step_size_min, learn_step_size=config.learn_step_size,
                           learn_backward_kernel=config.learn_backward_kernel, **common)
