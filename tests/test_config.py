"""Configs: every diffusion algorithm differs from its Gaussian base in the policy only."""

import dataclasses

import pytest

from diffagent.config import BASE_ALGORITHM, POLICY_FIELDS, make_config


@pytest.mark.parametrize("diffusion, base", sorted(BASE_ALGORITHM.items()))
def test_a_diffusion_algorithm_differs_from_its_base_in_the_policy_only(diffusion, base):
    ours, theirs = dataclasses.asdict(make_config(diffusion)), dataclasses.asdict(make_config(base))
    assert ours.keys() == theirs.keys()
    differing = {name for name in ours if ours[name] != theirs[name]}
    assert differing <= POLICY_FIELDS, f"{diffusion} and {base} differ beyond the policy: {differing - POLICY_FIELDS}"
