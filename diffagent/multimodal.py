"""The multimodal tasks of the benchmark: where the soft-optimal policy, a Boltzmann density
(docs/algorithms.md, section 1), has several modes.

A one-step bandit over a 2-D action whose reward has four well separated peaks. Its soft-optimal
policy is the Boltzmann density pi*(a) ~ exp(r(a) / alpha) over the action box, so a trained policy
can be scored against it directly:

    agent = Agent("diffsac", "diffagent/FourPeaks-v0", learning_starts=500)
    agent.learn(3000, eval_every=0)
    coverage = mode_coverage(agent)          # shares per mode against the Boltzmann targets
    plot_samples({"diffsac": coverage}, "four_peaks.png")

A Gaussian policy can cover at most one peak; a diffusion policy can cover all four. Two bandits are
registered: `diffagent/FourPeaks-v0`, four equal peaks (an even share on each), and
`diffagent/UnequalPeaks-v0`, four peaks of unequal height whose Boltzmann masses at alpha 0.1 are
about 50 / 25 / 15 / 10 %: there the policy must match each mode's mass, not just find every mode.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import gymnasium as gym
import numpy as np

from diffagent.errors import ConfigError, InputError

ENV_ID = "diffagent/FourPeaks-v0"
UNEQUAL_ENV_ID = "diffagent/UnequalPeaks-v0"
UNEQUAL_HEIGHTS = (1.0, 0.92, 0.86, 0.81)
"""Peak heights of UnequalPeaks-v0, in the order of the centres. At alpha 0.1, the temperature its grid fixes,
exp(r / alpha) puts 50.2 / 24.9 / 14.8 / 9.7 % of its mass on the peaks and 0.4% between them. Found by solving
`boltzmann_targets` for those masses; roughly, peak i holds exp(h_i / alpha) * 2 pi width^2 alpha / h_i, so
halving a mode lowers its peak by a little more than alpha ln 2."""
BANDITS: dict[str, dict[str, Any]] = {ENV_ID: {}, UNEQUAL_ENV_ID: {"heights": UNEQUAL_HEIGHTS}}
"""The registered bandits: Gymnasium id -> FourPeaksBandit arguments."""
MODE_RADIUS = 0.35
"""A sampled action belongs to mode i when it lies within this distance of peak i (else it is off-mode)."""
COVERAGE_THRESHOLD = 0.05
"""A mode counts as covered when at least this share of all samples falls in it."""
GRID_SIZE = 801
"""Cells per axis of the midpoint grid on which the Boltzmann targets are integrated."""
_SAMPLE_CHUNK = 10_000  # actions per agent.act call: bounds the memory of the chain's activations


class FourPeaksBandit(gym.Env):
    """One-step bandit: act once with a in [-1, 1]^2, get r(a), and the episode ends.

    r(a) = sum_i h_i exp(-|a - mu_i|^2 / (2 width^2)) over the peaks mu_i (default (+-0.5, +-0.5),
    width 0.15) of heights h_i (default 1 each), so peak i is worth about h_i and the centre of the
    box about 0. The observation is always [0.0]: the task has a single state.
    """

    metadata = {"render_modes": []}
    CENTRES: tuple[tuple[float, float], ...] = ((0.5, 0.5), (-0.5, 0.5), (-0.5, -0.5), (0.5, -0.5))
    WIDTH: float = 0.15

    def __init__(self, centres: Sequence[Sequence[float]] = CENTRES, width: float = WIDTH,
                 heights: Sequence[float] | None = None):
        self.centres = np.array(centres, dtype=np.float64)
        if self.centres.ndim != 2 or self.centres.shape[1] != 2 or len(self.centres) == 0:
            raise ConfigError(f"centres must be a list of (x, y) pairs, got shape {self.centres.shape}")
        if np.any(np.abs(self.centres) > 1.0):
            raise ConfigError(f"every centre must lie in the action box [-1, 1]^2, got {self.centres.tolist()}")
        if not width > 0:
            raise ConfigError(f"width must be positive, got {width}")
        self.width = float(width)
        self.heights = np.ones(len(self.centres)) if heights is None else np.array(heights, dtype=np.float64)
        if self.heights.shape != (len(self.centres),) or not np.all(self.heights > 0):
            raise ConfigError(f"heights must be one positive number per centre ({len(self.centres)}), "
                             f"got {np.asarray(heights).tolist()}")
        # low == high would be exact but makes gymnasium's env checker warn; the obs is always 0 all the same
        self.observation_space = gym.spaces.Box(-1.0, 1.0, shape=(1,), dtype=np.float32)
        self.action_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)

    def reward(self, actions: np.ndarray) -> np.ndarray:
        """r(a) of actions of shape (..., 2); returns shape (...)."""
        actions = np.asarray(actions, dtype=np.float64)
        squared = np.sum((actions[..., None, :] - self.centres) ** 2, axis=-1)
        return (self.heights * np.exp(-squared / (2.0 * self.width**2))).sum(-1)

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        return np.zeros(1, dtype=np.float32), {}

    def step(self, action: np.ndarray) -> tuple[np.ndarray, float, bool, bool, dict]:
        action = np.asarray(action, dtype=np.float64)
        if action.shape != (2,):
            raise InputError(f"FourPeaksBandit takes one action of shape (2,), got shape {action.shape}")
        # the reward landscape is defined on the box only, as the action space says
        reward = float(self.reward(np.clip(action, -1.0, 1.0)))
        return np.zeros(1, dtype=np.float32), reward, True, False, {}


def _register_bandits() -> None:
    """Register every bandit of BANDITS with Gymnasium, so gym.make and Agent take its id.

    Ids already registered are skipped, as gymnasium warns on registering one twice.
    """
    for env_id, kwargs in BANDITS.items():
        if env_id not in gym.registry:
            gym.register(id=env_id, entry_point="diffagent.multimodal:FourPeaksBandit", kwargs=kwargs)


_register_bandits()  # on import, which `import diffagent` does


def make_bandit(env_id: str) -> FourPeaksBandit:
    """A fresh bandit of a registered id of BANDITS, e.g. to score or plot agents trained on it."""
    if env_id not in BANDITS:
        raise ConfigError(f"{env_id!r} is not one of the multimodal bandits {list(BANDITS)}; for a bandit of your "
                         "own, pass bandit=FourPeaksBandit(...)")
    return FourPeaksBandit(**BANDITS[env_id])


class _NoiseShaped(Protocol):
    def noise_shape(self, batch: int) -> tuple[int, int, int]: ...


class ActingAgent(Protocol):
    """What the metric needs of an agent: `diffagent.Agent`, or any object that acts like one.

    An `env_id` attribute, as an Agent has, names the bandit the agent was trained on (`agent_bandit`).
    """

    policy: _NoiseShaped

    def act(self, obs: np.ndarray, deterministic: bool = False, noise: np.ndarray | None = None) -> np.ndarray: ...


@dataclass
class ModeCoverage:
    """How a policy's samples spread over the peaks, against the Boltzmann policy exp(r / alpha).

    Shares and targets are fractions of all samples (of all Boltzmann mass), one per peak in the
    order of the bandit's centres; with the off-mode share they sum to 1.
    """

    shares: list[float]
    targets: list[float]
    off_mode_share: float
    off_mode_target: float
    modes_covered: int
    num_modes: int
    max_abs_error_points: float
    """max over peaks of |share - target|, in percentage points."""
    total_variation: float
    """Total-variation distance between the shares and the targets, off-mode included (0 = exact, 1 = disjoint):
    unlike the per-peak count it also charges mass spread between the peaks."""
    mean_reward: float
    """Mean reward of the stochastic samples: the policy's return."""
    deterministic_reward: float
    """Reward of the deterministic action (zero noise)."""
    alpha: float
    num_samples: int
    samples: np.ndarray | None = field(default=None, repr=False, compare=False)
    """The sampled actions (num_samples, 2), for `plot_samples`; left out of `to_dict`."""

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, without the samples."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.name != "samples"}


def mode_index(actions: np.ndarray, centres: np.ndarray, radius: float = MODE_RADIUS) -> np.ndarray:
    """For actions (N, 2): the index of the nearest peak when within `radius` of it, else len(centres) (off-mode)."""
    distances = np.linalg.norm(np.asarray(actions, dtype=np.float64)[:, None, :] - centres, axis=-1)
    nearest = distances.argmin(-1)
    return np.where(distances[np.arange(len(nearest)), nearest] <= radius, nearest, len(centres))


def boltzmann_targets(alpha: float, bandit: FourPeaksBandit | None = None, radius: float = MODE_RADIUS,
                      grid_size: int = GRID_SIZE) -> np.ndarray:
    """Mass of pi*(a) ~ exp(r(a) / alpha) over the action box in each mode region, then off-mode.

    Integrated with the midpoint rule on a grid_size x grid_size grid. alpha = 0 is the hard max:
    all mass spread evenly over the grid points where r is maximal (with equal peaks, equal shares;
    with unequal ones, all on the tallest).
    Returns an array of len(centres) + 1 that sums to 1.
    """
    if not alpha >= 0:
        raise ConfigError(f"alpha must be >= 0, got {alpha}")
    bandit = FourPeaksBandit() if bandit is None else bandit
    low, high = bandit.action_space.low.astype(np.float64), bandit.action_space.high.astype(np.float64)
    axes = [lo + (hi - lo) * (np.arange(grid_size) + 0.5) / grid_size for lo, hi in zip(low, high)]
    points = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, 2)
    reward = bandit.reward(points)
    if alpha == 0:
        # the peaks are equal only up to rounding, so "maximal" needs a tolerance
        weights = (reward >= reward.max() - 1e-9 * max(1.0, abs(reward.max()))).astype(np.float64)
    else:
        weights = np.exp((reward - reward.max()) / alpha)  # max-subtracted: no overflow at small alpha
    mass = np.bincount(mode_index(points, bandit.centres, radius), weights=weights, minlength=len(bandit.centres) + 1)
    return mass / mass.sum()


def sample_actions(agent: ActingAgent, samples: int = 10_000, seed: int = 0,
                   bandit: FourPeaksBandit | None = None) -> np.ndarray:
    """`samples` stochastic actions (samples, 2) of the agent in the bandit's single state.

    The chain's noise comes from np.random.default_rng(seed), so the same agent and seed give the
    same actions.
    """
    if samples < 1:
        raise ConfigError(f"samples must be positive, got {samples}")
    bandit = FourPeaksBandit() if bandit is None else bandit
    noise = np.random.default_rng(seed).standard_normal(agent.policy.noise_shape(samples), dtype=np.float32)
    obs = np.zeros((min(samples, _SAMPLE_CHUNK),) + bandit.observation_space.shape, dtype=np.float32)
    chunks = [agent.act(obs[: min(_SAMPLE_CHUNK, samples - start)], noise=noise[start:start + _SAMPLE_CHUNK])
              for start in range(0, samples, _SAMPLE_CHUNK)]
    actions = np.concatenate(chunks).astype(np.float64)
    if actions.shape != (samples, 2):
        raise ConfigError(f"the agent's actions have shape {actions.shape[1:]}, but FourPeaksBandit needs (2,): "
                         f"score an agent trained on one of {list(BANDITS)}")
    return actions


def agent_temperature(agent: Any) -> float:
    """The temperature alpha the agent was trained with (`Agent.temperature`): SAC/WPO-family agents' learned
    alpha once their algorithm is built (or alpha_init when autotune_alpha is off), PPO-family agents' fixed one."""
    temperature = getattr(agent, "temperature", None)
    if temperature is None:
        raise ConfigError("this agent carries no learned temperature (it has not trained, or was loaded with "
                          "from_pretrained, which keeps only the policy); pass alpha= to mode_coverage, e.g. the last "
                          "'alpha' in the run's metrics.jsonl")
    return float(temperature)


def agent_bandit(agent: Any) -> FourPeaksBandit:
    """The bandit the agent was trained on, named by its `env_id`; the four equal peaks when it names none.

    An agent trained on another env (or on a FourPeaksBandit instance of its own) is refused: scored
    against the wrong reward, its shares would be compared with the wrong targets.
    """
    env_id = getattr(agent, "env_id", None)
    return FourPeaksBandit() if env_id is None else make_bandit(env_id)


def mode_coverage(agent: ActingAgent, samples: int = 10_000, alpha: float | None = None, seed: int = 0,
                  bandit: FourPeaksBandit | None = None) -> ModeCoverage:
    """Score an agent trained on a FourPeaksBandit: how its samples spread over the peaks.

    Draws `samples` stochastic actions (seeded by `seed`), assigns each to the peak within
    MODE_RADIUS or to off-mode, and compares the shares with the Boltzmann policy exp(r / alpha).
    `alpha` defaults to the agent's own temperature (see `agent_temperature`), `bandit` to the one
    the agent was trained on (see `agent_bandit`). Any object with `act(obs, deterministic=False,
    noise=None)` and `policy.noise_shape(batch)` can be scored.
    """
    bandit = agent_bandit(agent) if bandit is None else bandit
    alpha = agent_temperature(agent) if alpha is None else float(alpha)
    targets = boltzmann_targets(alpha, bandit)
    actions = sample_actions(agent, samples, seed, bandit)
    num_modes = len(bandit.centres)
    shares = np.bincount(mode_index(actions, bandit.centres), minlength=num_modes + 1) / samples
    obs = np.zeros((1,) + bandit.observation_space.shape, dtype=np.float32)
    deterministic = np.asarray(agent.act(obs, deterministic=True), dtype=np.float64).reshape(2)
    return ModeCoverage(
        shares=shares[:num_modes].tolist(), targets=targets[:num_modes].tolist(),
        off_mode_share=float(shares[num_modes]), off_mode_target=float(targets[num_modes]),
        modes_covered=int(np.sum(shares[:num_modes] >= COVERAGE_THRESHOLD)), num_modes=num_modes,
        max_abs_error_points=float(np.max(np.abs(shares[:num_modes] - targets[:num_modes])) * 100),
        total_variation=float(0.5 * np.abs(shares - targets).sum()),
        mean_reward=float(bandit.reward(actions).mean()), deterministic_reward=float(bandit.reward(deterministic)),
        alpha=alpha, num_samples=samples, samples=actions)


def plot_samples(results: Mapping[str, ModeCoverage], path: str | Path, bandit: FourPeaksBandit | None = None,
                 max_points: int = 1_000) -> Path:
    """One panel per algorithm: its first `max_points` sampled actions over the reward landscape.

    `bandit` draws the landscape: pass the one the agents were scored on (`make_bandit(env_id)`); by
    default, the four equal peaks. Each title gives the modes covered and, per peak, share / target
    in percent. Needs matplotlib (`pip install matplotlib`); draws with the Agg backend, without
    touching pyplot's state. Returns the path of the written image (its format follows the suffix,
    e.g. .png).
    """
    try:
        from matplotlib.figure import Figure
        from matplotlib.patches import Circle
    except ImportError:
        raise ImportError("plot_samples needs matplotlib: pip install matplotlib") from None
    if not results:
        raise ConfigError("results is empty: pass {algorithm name: mode_coverage(agent)}")
    missing = [name for name, coverage in results.items() if coverage.samples is None]
    if missing:
        raise ConfigError(f"no samples to plot for {missing}: pass the ModeCoverage that mode_coverage returned")
    bandit = FourPeaksBandit() if bandit is None else bandit
    grid = np.linspace(-1.0, 1.0, 201)
    xs, ys = np.meshgrid(grid, grid)
    landscape = bandit.reward(np.stack([xs, ys], -1))

    figure = Figure(figsize=(4.2 * len(results), 4.8), layout="constrained")
    axes = figure.subplots(1, len(results), squeeze=False)[0]
    for ax, (name, coverage) in zip(axes, results.items()):
        filled = ax.contourf(xs, ys, landscape, levels=20, cmap="viridis")
        points = coverage.samples[:max_points]
        ax.scatter(points[:, 0], points[:, 1], s=2, c="tab:red", alpha=0.6, linewidths=0)
        for centre in bandit.centres:
            ax.add_patch(Circle(centre, MODE_RADIUS, fill=False, linestyle="--", edgecolor="white", linewidth=0.8))
        per_mode = "  ".join(f"{100 * s:.0f}/{100 * t:.0f}" for s, t in zip(coverage.shares, coverage.targets))
        ax.set_title(f"{name}: {coverage.modes_covered}/{coverage.num_modes} modes (alpha {coverage.alpha:.3g})\n"
                     f"share/target %: {per_mode}\noff-mode {100 * coverage.off_mode_share:.0f}/"
                     f"{100 * coverage.off_mode_target:.0f}", fontsize=9)
        ax.set_xlim(-1, 1)
        ax.set_ylim(-1, 1)
        ax.set_aspect("equal")
    figure.colorbar(filled, ax=list(axes), label="reward", shrink=0.8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=120)
    return path


__all__ = ["BANDITS", "ENV_ID", "UNEQUAL_ENV_ID", "UNEQUAL_HEIGHTS", "MODE_RADIUS", "COVERAGE_THRESHOLD",
           "FourPeaksBandit", "ModeCoverage", "agent_bandit", "agent_temperature", "boltzmann_targets", "make_bandit",
           "mode_coverage", "mode_index", "plot_samples", "sample_actions"]
