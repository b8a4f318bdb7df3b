"""The multimodal benchmark task: the four-peak bandits, their Boltzmann targets, the coverage metric, the plot."""

import importlib
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

import diffagent
from diffagent import Agent
from diffagent.bench import load_hyperparameters
from diffagent.multimodal import (BANDITS, COVERAGE_THRESHOLD, ENV_ID, MODE_RADIUS, UNEQUAL_ENV_ID, UNEQUAL_HEIGHTS,
                                  FourPeaksBandit, ModeCoverage, agent_bandit, agent_temperature, boltzmann_targets,
                                  make_bandit, mode_coverage, plot_samples, sample_actions)

pytestmark = pytest.mark.math

TINY = dict(policy_hidden_sizes=(16, 16), critic_hidden_sizes=(16, 16), learning_starts=50, batch_size=32)
CHAIN = dict(TINY, diffusion_steps=2)
UNEQUAL_ALPHA = 0.1  # the fixed temperature of UnequalPeaks-v0's grid, at which its heights were chosen
UNEQUAL_MASSES = [0.502, 0.249, 0.148, 0.097]  # the intended Boltzmann masses of its peaks at that temperature
ZOO_HYPERPARAMS = Path(__file__).resolve().parent.parent / "zoo" / "hyperparams"


class FakeAgent:
    """Acts like an Agent on the bandit: the sign of noise[:, 0] picks a quadrant's peak (or always the
    first peak with `one_peak`), noise[:, 1] jitters the action around it."""

    def __init__(self, one_peak: bool = False, jitter: float = 0.05):
        self.one_peak, self.jitter = one_peak, jitter
        self.policy = SimpleNamespace(noise_shape=lambda batch: (batch, 2, 2))

    def act(self, obs, deterministic=False, noise=None):
        noise = np.zeros((len(obs), 2, 2)) if deterministic else noise
        peak = np.full((len(obs), 2), 0.5) if self.one_peak else np.where(noise[:, 0] >= 0, 0.5, -0.5)
        return np.clip(peak + self.jitter * noise[:, 1], -1.0, 1.0).astype(np.float32)


class BoltzmannSampler:
    """Acts like an Agent whose policy is exactly exp(r / alpha) on the bandit: it draws by rejection from
    uniform proposals over the box, so its shares do not come from the grid the targets are integrated on."""

    def __init__(self, bandit: FourPeaksBandit, alpha: float, seed: int = 0):
        self.bandit, self.alpha, self.rng = bandit, alpha, np.random.default_rng(seed)
        self.policy = SimpleNamespace(noise_shape=lambda batch: (batch, 1, 2))
        self.peak_reward = bandit.reward(bandit.centres).max()  # the maximum, up to the other peaks' e^-22 tails

    def act(self, obs, deterministic=False, noise=None):
        if deterministic:
            return np.repeat(self.bandit.centres[[self.bandit.heights.argmax()]], len(obs), axis=0)
        accepted = []
        while sum(map(len, accepted)) < len(obs):
            proposals = self.rng.uniform(-1.0, 1.0, size=(500_000, 2))
            acceptance = np.exp((self.bandit.reward(proposals) - self.peak_reward) / self.alpha)
            keep = self.rng.random(len(proposals)) < acceptance
            accepted.append(proposals[keep])
        return np.concatenate(accepted)[: len(obs)]


# --- the environment ---------------------------------------------------------------------------------
def test_bandit_spaces_reward_and_one_step_episodes():
    env = FourPeaksBandit()
    assert env.observation_space.shape == (1,) and env.action_space.shape == (2,)
    assert np.all(env.action_space.low == -1) and np.all(env.action_space.high == 1)
    obs, info = env.reset(seed=3)
    assert obs.dtype == np.float32 and np.array_equal(obs, [0.0]) and info == {}
    for centre in FourPeaksBandit.CENTRES:
        obs, reward, terminated, truncated, _ = env.step(np.array(centre, dtype=np.float32))
        assert reward == pytest.approx(1.0, abs=1e-6) and terminated and not truncated
        assert np.array_equal(obs, [0.0])
    assert env.step(np.zeros(2, dtype=np.float32))[1] == pytest.approx(0.0, abs=1e-4)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3))


def test_bandit_geometry_is_configurable_and_checked():
    env = FourPeaksBandit(centres=[(0.0, 0.0)], width=0.3)
    assert env.reward(np.zeros(2)) == pytest.approx(1.0)
    assert FourPeaksBandit(centres=[(0.0, 0.0)], heights=[0.7]).reward(np.zeros(2)) == pytest.approx(0.7)
    with pytest.raises(ValueError, match="box"):
        FourPeaksBandit(centres=[(2.0, 0.0)])
    with pytest.raises(ValueError, match="width"):
        FourPeaksBandit(width=0.0)
    for heights in ([1.0, 1.0], [1.0, 1.0, 1.0, 0.0]):
        with pytest.raises(ValueError, match="heights"):
            FourPeaksBandit(heights=heights)


@pytest.mark.parametrize("env_id", list(BANDITS))
def test_registered_ids_pass_the_env_checkers_without_warnings(env_id):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        importlib.reload(diffagent)  # the registration guard: importing twice must not re-register
        env = gym.make(env_id)
        check_env(env.unwrapped)
        env.reset(seed=0)
        assert env.step(env.action_space.sample())[2]


def test_the_unequal_bandit_peaks_at_its_heights():
    rewards = gym.make(UNEQUAL_ENV_ID).unwrapped.reward(np.array(FourPeaksBandit.CENTRES))
    np.testing.assert_allclose(rewards, UNEQUAL_HEIGHTS, atol=1e-6)
    assert make_bandit(UNEQUAL_ENV_ID).heights.tolist() == list(UNEQUAL_HEIGHTS)
    with pytest.raises(ValueError, match="multimodal bandits"):
        make_bandit("Pendulum-v1")


# --- the Boltzmann targets -------------------------------------------------------------------------
@pytest.mark.parametrize("alpha", [0.05, 0.3, 1.0])
def test_targets_are_equal_over_the_peaks_and_sum_to_one(alpha):
    targets = boltzmann_targets(alpha)
    assert targets.shape == (5,) and targets.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(targets[:4], targets[0], rtol=1e-9)


@pytest.mark.parametrize("alpha", [0.0, 1e-3])
def test_a_cold_target_puts_a_quarter_on_each_peak(alpha):
    targets = boltzmann_targets(alpha)
    np.testing.assert_allclose(targets[:4], 0.25, atol=1e-6)
    assert targets[4] < 1e-6


def test_the_unequal_targets_are_the_intended_masses():
    targets = boltzmann_targets(UNEQUAL_ALPHA, make_bandit(UNEQUAL_ENV_ID))
    assert targets.sum() == pytest.approx(1.0)
    np.testing.assert_allclose(targets[:4], UNEQUAL_MASSES, atol=0.001)
    assert np.all(np.diff(targets[:4]) < -0.04)  # ordered, each at least 4 points below the one before
    assert targets[4] < 0.01  # the peaks are far enough apart that little mass lies between them


def test_the_unequal_targets_follow_the_temperature():
    bandit = make_bandit(UNEQUAL_ENV_ID)
    assert boltzmann_targets(0.0, bandit)[0] == pytest.approx(1.0)  # the hard max: all on the tallest peak
    assert boltzmann_targets(0.05, bandit)[0] > boltzmann_targets(UNEQUAL_ALPHA, bandit)[0] > \
        boltzmann_targets(0.2, bandit)[0]


def test_the_unequal_grid_trains_at_the_temperature_of_its_targets():
    for algo in ("sac", "diffsac"):
        table = load_hyperparameters(ZOO_HYPERPARAMS / "diffagent-UnequalPeaks-v0.toml", algo)
        assert table["autotune_alpha"] is False and table["alpha_init"] == UNEQUAL_ALPHA


def test_a_hot_target_is_the_area_of_each_region():
    targets = boltzmann_targets(1e9)
    np.testing.assert_allclose(targets[:4], np.pi * MODE_RADIUS**2 / 4, atol=1e-3)


def test_a_negative_temperature_is_refused():
    with pytest.raises(ValueError, match="alpha"):
        boltzmann_targets(-0.1)


# --- the metric on constructed samples ----------------------------------------------------------------
def test_samples_at_one_peak_cover_one_mode():
    coverage = mode_coverage(FakeAgent(one_peak=True), samples=2_000, alpha=0.1)
    assert coverage.modes_covered == 1 and coverage.num_modes == 4
    assert coverage.shares == [1.0, 0.0, 0.0, 0.0] and coverage.off_mode_share == 0.0
    assert coverage.max_abs_error_points == pytest.approx(100 * (1 - coverage.targets[0]))
    assert coverage.total_variation == pytest.approx(1 - coverage.targets[0])
    assert coverage.deterministic_reward == pytest.approx(1.0, abs=1e-6)
    assert 0.8 < coverage.mean_reward < 1.0  # the jitter costs a little reward
    record = coverage.to_dict()
    assert "samples" not in record and record["alpha"] == 0.1
    json.dumps(record)
    assert coverage.samples.shape == (2_000, 2)


def test_an_even_mixture_covers_every_mode_at_its_target():
    coverage = mode_coverage(FakeAgent(), samples=10_000, alpha=0.05)
    assert coverage.modes_covered == 4
    assert min(coverage.shares) >= COVERAGE_THRESHOLD
    assert coverage.max_abs_error_points < 2.0 and coverage.total_variation < 0.03
    assert sum(coverage.shares) + coverage.off_mode_share == pytest.approx(1.0)


def test_wide_samples_fall_off_mode():
    coverage = mode_coverage(FakeAgent(jitter=1.0), samples=5_000, alpha=0.05)
    assert coverage.off_mode_share > 0.5 and coverage.max_abs_error_points > 10
    assert coverage.total_variation == pytest.approx(coverage.off_mode_share - coverage.off_mode_target)


def test_the_unequal_task_tells_the_boltzmann_policy_from_an_even_share():
    bandit = make_bandit(UNEQUAL_ENV_ID)
    exact = mode_coverage(BoltzmannSampler(bandit, UNEQUAL_ALPHA), alpha=UNEQUAL_ALPHA, bandit=bandit)
    assert exact.max_abs_error_points < 1.5 and exact.total_variation < 0.02
    assert exact.deterministic_reward == pytest.approx(1.0, abs=1e-6)
    even = mode_coverage(FakeAgent(), alpha=UNEQUAL_ALPHA, bandit=bandit)  # a quarter on each peak
    assert even.modes_covered == 4  # every mode found, so the count alone would pass it ...
    assert even.max_abs_error_points > 20 and even.total_variation > 0.2  # ... but the masses are far off


def test_sampling_is_seeded():
    agent = FakeAgent()
    assert np.array_equal(sample_actions(agent, 500, seed=1), sample_actions(agent, 500, seed=1))
    assert not np.array_equal(sample_actions(agent, 500, seed=1), sample_actions(agent, 500, seed=2))


# --- the metric on real agents ---------------------------------------------------------------------------
def test_an_untrained_diffusion_agent_is_scored_at_its_temperature():
    agent = Agent("diffsac", ENV_ID, **CHAIN)
    with pytest.raises(ValueError, match="alpha="):
        mode_coverage(agent, samples=100)
    agent.algorithm  # built: the agent now has a temperature, its alpha_init
    coverage = mode_coverage(agent, samples=2_000)
    assert coverage.alpha == pytest.approx(1.0)
    assert sum(coverage.shares) + coverage.off_mode_share == pytest.approx(1.0)
    assert sum(coverage.targets) + coverage.off_mode_target == pytest.approx(1.0)
    assert coverage.samples.shape == (2_000, 2) and np.all(np.abs(coverage.samples) <= 1.0)
    again = mode_coverage(agent, samples=2_000)
    assert np.array_equal(coverage.samples, again.samples)


def test_a_trained_agent_reports_its_learned_temperature():
    agent = Agent("sac", ENV_ID, **TINY)
    agent.learn(80, eval_every=0, progress=False)
    assert agent.evaluate(episodes=2).lengths == [1, 1]
    coverage = mode_coverage(agent, samples=500)
    assert coverage.alpha == pytest.approx(float(agent.algorithm.alpha)) and coverage.alpha != 1.0


def test_an_agent_is_scored_on_the_bandit_it_was_trained_on():
    agent = Agent("diffsac", UNEQUAL_ENV_ID, autotune_alpha=False, alpha_init=UNEQUAL_ALPHA, **CHAIN)
    assert agent_bandit(agent).heights.tolist() == list(UNEQUAL_HEIGHTS)
    np.testing.assert_allclose(mode_coverage(agent, samples=500).targets, UNEQUAL_MASSES, atol=0.001)
    assert agent_bandit(FakeAgent()).heights.tolist() == [1.0] * 4  # no env_id: the four equal peaks
    with pytest.raises(ValueError, match="multimodal bandits"):
        agent_bandit(Agent("sac", "Pendulum-v1", **TINY))


def test_fixed_temperatures_are_read_from_the_config():
    assert agent_temperature(Agent("diffsac", ENV_ID, autotune_alpha=False, alpha_init=0.2, **CHAIN)) == \
        pytest.approx(0.2)
    assert agent_temperature(Agent("diffppo", ENV_ID, alpha=0.01)) == pytest.approx(0.01)
    assert agent_temperature(Agent("ppo", ENV_ID, alpha=0.0)) == 0.0  # zero is a temperature, not a missing one


# --- the plot --------------------------------------------------------------------------------------
def test_plot_writes_an_image(tmp_path):
    pytest.importorskip("matplotlib")
    results = {"one peak": mode_coverage(FakeAgent(one_peak=True), samples=1_500, alpha=0.1),
               "mixture": mode_coverage(FakeAgent(), samples=1_500, alpha=0.1)}
    path = plot_samples(results, tmp_path / "plots" / "four_peaks.png")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bare = ModeCoverage(**results["mixture"].to_dict())  # as read back from JSON: no samples
    with pytest.raises(ValueError, match="samples"):
        plot_samples({"bare": bare}, tmp_path / "bare.png")
