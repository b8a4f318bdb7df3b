"""Configs: composed of parts, each algorithm's holding only the fields it uses; fair pairs; defaults in one place."""

import dataclasses

import pytest

from diffagent import ConfigError
from diffagent.config import ALGORITHMS, make_config

pytestmark = pytest.mark.math

DIFFUSION_ALGORITHMS = [algo for algo, spec in ALGORITHMS.items() if algo != spec.family]


@pytest.mark.parametrize("diffusion", DIFFUSION_ALGORITHMS)
def test_a_diffusion_algorithm_differs_from_its_base_in_the_policy_only(diffusion):
    ours, theirs = make_config(diffusion), make_config(ALGORITHMS[diffusion].family)
    assert ours.run == theirs.run and ours.algorithm == theirs.algorithm
    assert type(ours.policy) is not type(theirs.policy)


@pytest.mark.parametrize("algo, name", [("sac", "diffusion_steps"), ("wpo", "actor_gradient"),
                                        ("diffsac", "state_dependent_std"), ("ppo", "batch_size"),
                                        ("diffppo", "kl_bound")])
def test_a_hyperparameter_the_algorithm_does_not_use_is_an_error_that_says_so(algo, name):
    with pytest.raises(ConfigError, match=f"{algo} does not use '{name}': it is a hyperparameter of"):
        make_config(algo, {name: 1})


@pytest.mark.parametrize("algo", list(ALGORITHMS))
def test_every_field_has_help_and_the_dict_holds_only_the_algorithms_fields(algo):
    config = make_config(algo)
    assert all(spec.metadata["help"] for spec, _ in config.items())
    parts = (config.run, config.policy, config.algorithm)
    assert list(config.to_dict()) == [f.name for part in parts for f in dataclasses.fields(part)]


def test_defaults_live_in_the_classes():
    """A part's bare constructor is the default of every algorithm that uses it off-policy; PPO's policy
    defaults are its family's on-policy preset."""
    for algo, spec in ALGORITHMS.items():
        config = make_config(algo)
        assert config.algorithm == spec.algorithm()
        assert config.policy == spec.policy.preset(spec.algorithm)
        if not spec.algorithm.on_policy:
            assert config.policy == spec.policy()


@pytest.mark.parametrize("overrides, message", [
    ({"forward_kl_fade_end": 8000}, "forward_kl_fade_end set while forward_kl_weight=0 turns the forward-KL term off"),
    ({"forward_kl_weight": 1.0, "forward_kl_fade_start": 8000, "forward_kl_fade_end": 8000},
     "forward_kl_fade_end=8,000 must come after forward_kl_fade_start=8,000"),
    ({"forward_kl_weight": 1.0, "forward_kl_fade_start": 8000}, "forward_kl_fade_start needs forward_kl_fade_end"),
    ({"forward_kl_weight": 1.0, "forward_kl_states": 512}, "forward_kl_states=512 exceeds batch_size=256"),
    ({"forward_kl_weight": 1.0, "forward_kl_states": 256, "forward_kl_proposals": 1_000_000},
     "would draw forward_kl_states \\* forward_kl_proposals = 256,000,000 paths per update"),
])
def test_a_forward_kl_setting_that_would_do_nothing_or_cannot_work_is_refused(overrides, message):
    for algo in ("sac", "diffsac", "wpo", "diffwpo"):  # an algorithm field: a Gaussian base takes it as its diffusion arm
        with pytest.raises(ConfigError, match=message):
            make_config(algo, overrides)
    assert make_config("diffsac", {"forward_kl_weight": 1.0, "forward_kl_fade_start": 8000,
                                   "forward_kl_fade_end": 16000}).algorithm.forward_kl_fade_end == 16000
