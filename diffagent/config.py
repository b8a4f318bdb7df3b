"""Typed configs, composed of three parts, and the registry of algorithm names.

An algorithm's config is a run part (the seed), a policy-family part (Gaussian or diffusion) and an
algorithm part (SAC, PPO or WPO), so it holds only the fields its algorithm uses:

    config = make_config("diffsac", {"diffusion_steps": 4})
    config.run.seed, config.policy.diffusion_steps, config.algorithm.batch_size

Each field is declared once, with its default, its help text and its check (`hyperparameter`). A
policy family's defaults differ between on- and off-policy training; the family's class returns
them (`PolicyConfig.preset`). Hyperparameters are set by their flat names (`--set batch_size=512`,
`Agent(..., batch_size=512)`, config.json), which are unique across the parts; a name that belongs to
another algorithm is an error that says which algorithms use it. `make_config` is the one place
values are parsed and validated.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable, Iterator

from diffagent.errors import ConfigError

Check = Callable[[str, Any], "str | None"]  # (name, value) -> what is wrong with it, or None

# Sizes a config may ask for. They bound what building an agent allocates, so a hostile or mistyped
# value (an artifact's diffusion_steps = 1e7, --set batch_size=1e20) is refused with a message rather
# than dying in an allocation; each is far beyond any setting this project or the paper uses.
MAX_WIDTH = 8192
MAX_LAYERS = 16
MAX_ROLLOUT = 10_000_000
ACTIVATIONS = ("relu", "gelu", "tanh", "silu", "mish")


def hyperparameter(default: Any, help: str, check: Check | None = None) -> Any:
    """A config field: its default, the help that --list-params and the model card show, and its check."""
    return dataclasses.field(default=default, metadata={"help": help, "check": check})


# --- checks, one per kind of bound ----------------------------------------------------------------------
def between(low: int, high: int) -> Check:
    return lambda name, value: None if low <= value <= high else f"{name} must lie in [{low:,}, {high:,}], got {value:,}"


def positive(name: str, value: float) -> str | None:
    return None if value > 0 else f"{name} must be positive, got {value}"


def non_negative(name: str, value: float) -> str | None:
    return None if value >= 0 else f"{name} must be 0 or more, got {value}"


def fraction(name: str, value: float) -> str | None:
    return None if 0.0 <= value <= 1.0 else f"{name} must lie in [0, 1], got {value}"


def rate(name: str, value: float) -> str | None:
    return None if 0.0 < value <= 1.0 else f"{name} must lie in (0, 1], got {value}"


def one_of(*choices: str) -> Check:
    return lambda name, value: None if value in choices else f"{name}={value!r} must be one of {', '.join(choices)}"


def widths(name: str, value: tuple[int, ...]) -> str | None:
    if value and all(1 <= width <= MAX_WIDTH for width in value):
        return None
    return f"{name} must be 1 to {MAX_LAYERS} widths, each in [1, {MAX_WIDTH:,}], got {value}"


# --- the parts ------------------------------------------------------------------------------------------
class Part:
    """A dataclass of hyperparameters that checks its own fields (`problems`)."""

    def problems(self) -> list[str]:
        """What is wrong with the values: each field's check, then rules across fields (subclasses add them)."""
        found = []
        for spec in dataclasses.fields(self):
            check = spec.metadata["check"]
            problem = check(spec.name, getattr(self, spec.name)) if check else None
            if problem:
                found.append(problem)
        return found


@dataclass
class RunConfig(Part):
    """What every run has, whatever it trains."""

    seed: int = hyperparameter(0, "Seed of torch, numpy and the environments.", between(0, 2**32 - 1))


@dataclass
class AlgorithmConfig(Part):
    """What every algorithm shares."""

    on_policy: ClassVar[bool] = False
    """Whether it learns from rollouts of the current policy (PPO), not from a replay buffer."""

    gamma: float = hyperparameter(0.99, "Discount factor.", fraction)

    @property
    def fixed_temperature(self) -> float | None:
        """The temperature alpha when the config fixes it, None when training tunes it."""
        raise NotImplementedError


@dataclass
class OffPolicyConfig(AlgorithmConfig):
    """SAC's replay buffer, twin critics and tuned temperature, which WPO shares."""

    buffer_size: int = hyperparameter(1_000_000, "Replay buffer capacity in transitions.", between(1, 100_000_000))
    learning_starts: int = hyperparameter(5000, "Environment steps of uniform random actions before learning starts.",
                                          between(0, 100_000_000))
    batch_size: int = hyperparameter(256, "Transitions per gradient step.", between(1, 1_000_000))
    gradient_steps: int = hyperparameter(1, "Gradient steps per environment step (update-to-data ratio).",
                                         between(1, 1000))
    actor_steps: int = hyperparameter(1, "Actor updates per critic update, each on fresh chains at the batch's "
                                         "states (docs/algorithms.md, section 8: three did not lift DiffSAC on "
                                         "Hopper).", between(1, 100))
    actor_lr: float = hyperparameter(3e-4, "Adam learning rate of the policy.", positive)
    critic_lr: float = hyperparameter(3e-4, "Adam learning rate of the critics.", positive)
    alpha_lr: float = hyperparameter(3e-4, "Adam learning rate of the temperature.", positive)
    anneal_lr: bool = hyperparameter(False, "Decay the actor's, critics' and temperature's learning rates linearly "
                                            "to 0 over the step budget of `learn`, as PPO's anneal_lr does.")
    tau: float = hyperparameter(0.005, "Polyak rate of the target critics.", rate)
    num_critics: int = hyperparameter(2, "Critics in the ensemble; targets and the actor use their minimum.",
                                      between(1, 100))
    critic_hidden_sizes: tuple[int, ...] = hyperparameter((256, 256), "Widths of each critic.", widths)
    critic_layer_norm: bool = hyperparameter(False, "LayerNorm after each critic hidden layer.")
    alpha_init: float = hyperparameter(1.0, "Initial temperature alpha.", positive)
    autotune_alpha: bool = hyperparameter(True, "Tune alpha so that the entropy estimate -E[L] tracks the target "
                                                "entropy.")
    target_entropy_scale: float = hyperparameter(1.0, "Target entropy is -target_entropy_scale * dim(A).")
    calibrate_entropy: bool = hyperparameter(True, "Tune alpha on the policy's entropy, -E[L] plus its measured gap "
                                                   "to it (a chain's -E[L] is a lower bound), not on -E[L].")
    forward_kl_weight: float = hyperparameter(
        0.0, "Weight w of a mass-covering term added to the actor loss, w * alpha * (the policy's negative "
             "log-likelihood of exp(Q/alpha)'s own actions): uniform proposals over the action box weighted by "
             "softmax(Q/alpha), so for low-dimensional actions only; 0 turns it off (docs/algorithms.md, section 10).",
        non_negative)
    forward_kl_states: int = hyperparameter(1, "Forward-KL term: states per update it is fitted at (the batch's "
                                               "first).", between(1, 65_536))
    forward_kl_proposals: int = hyperparameter(1024, "Forward-KL term: uniform actions per state whose weights "
                                                     "softmax(Q/alpha) stand for exp(Q/alpha).", between(2, 1_000_000))
    forward_kl_fade_start: int = hyperparameter(0, "Forward-KL term: environment step at which its weight starts "
                                                   "falling linearly to 0.", between(0, 100_000_000))
    forward_kl_fade_end: int = hyperparameter(0, "Forward-KL term: environment step by which its weight reaches 0, "
                                                 "so that the actor loss alone finishes the fit; 0 keeps it on (held, "
                                                 "it kept DiffSAC near the unequal bandit's masses where faded out "
                                                 "it did not: docs/algorithms.md, section 10).",
                                              between(0, 100_000_000))

    @property
    def fixed_temperature(self) -> float | None:
        return None if self.autotune_alpha else self.alpha_init

    def problems(self) -> list[str]:
        found = super().problems()
        unused = [spec.name for spec in dataclasses.fields(self) if spec.name.startswith("forward_kl_")
                  and spec.name != "forward_kl_weight" and getattr(self, spec.name) != spec.default]
        if not self.forward_kl_weight and unused:
            found.append(f"{', '.join(unused)} set while forward_kl_weight=0 turns the forward-KL term off: set "
                         "forward_kl_weight > 0 or drop them")
        if self.forward_kl_fade_end and self.forward_kl_fade_end <= self.forward_kl_fade_start:
            found.append(f"forward_kl_fade_end={self.forward_kl_fade_end:,} must come after forward_kl_fade_start="
                         f"{self.forward_kl_fade_start:,}")
        elif self.forward_kl_fade_start and not self.forward_kl_fade_end:
            found.append("forward_kl_fade_start needs forward_kl_fade_end, the step by which the weight reaches 0")
        chains = self.forward_kl_states * self.forward_kl_proposals
        if chains > MAX_ROLLOUT:
            found.append(f"the forward-KL term would draw forward_kl_states * forward_kl_proposals = {chains:,} paths "
                         f"per update, over {MAX_ROLLOUT:,}; lower one of them")
        if self.forward_kl_states > self.batch_size:
            found.append(f"forward_kl_states={self.forward_kl_states} exceeds batch_size={self.batch_size}: the term "
                         "is fitted at the batch's states")
        return found


@dataclass
class SACConfig(OffPolicyConfig):
    """SAC, and DiffSAC when the policy is a diffusion chain (docs/algorithms.md, section 4)."""

    actor_gradient: str = hyperparameter("pathwise", "Actor gradient estimator: 'pathwise' (backprop through the "
                                         "chain) or 'lv' (log-variance, past terms cancelled).",
                                         one_of("pathwise", "lv"))
    lv_chains: int = hyperparameter(8, "'lv' estimator: chains sampled per state for the leave-one-out baseline.",
                                    between(1, 65_536))

    def problems(self) -> list[str]:
        found = super().problems()
        if self.actor_gradient == "lv" and self.lv_chains < 2:
            found.append("actor_gradient='lv' needs lv_chains >= 2 for its leave-one-out baseline")
        return found


@dataclass
class WPOConfig(OffPolicyConfig):
    """WPO, and DiffWPO when the policy is a diffusion chain (docs/algorithms.md, section 4).

    SAC's replay buffer, critics, temperature and loop with the Wasserstein policy update as the actor loss.
    """

    kl_bound: float = hyperparameter(0.1, "Trust region: KL(old || new) per state and denoising step; an adaptive "
                                          "penalty acts while the path's KL exceeds K times it (the Gaussian's, K = 1: "
                                          "its action's).", positive)
    kl_penalty_init: float = hyperparameter(1.0, "Initial weight of the KL penalty; a dual variable tunes it to hold "
                                                 "the path's KL near K * kl_bound.", positive)
    kl_penalty_lr: float = hyperparameter(1e-2, "Adam learning rate of the log of the KL penalty weight.", positive)
    target_policy_tau: float = hyperparameter(0.005, "Polyak rate of the old policy that the KL is measured against.",
                                              rate)
    fisher_preconditioning: bool = hyperparameter(
        True, "Natural gradient as in the WPO paper and acme: each kernel's mean gradient times sigma^2, its log "
              "std's times sigma^2/2 (docs/algorithms.md, \"WPO's preconditioning\").")


@dataclass
class PPOConfig(AlgorithmConfig):
    """PPO, and DiffPPO when the policy is a diffusion chain (docs/algorithms.md, section 4).

    Defaults follow CleanRL's and SB3's PPO for MuJoCo.
    """

    on_policy: ClassVar[bool] = True

    num_envs: int = hyperparameter(1, "Environments stepped in lockstep (a gymnasium SyncVectorEnv).",
                                   between(1, 1024))
    rollout_steps: int = hyperparameter(2048, "Steps per environment in one rollout; each update sees rollout_steps "
                                              "* num_envs transitions.", between(1, 1_000_000))
    num_epochs: int = hyperparameter(10, "Passes over each rollout.", between(1, 1000))
    num_minibatches: int = hyperparameter(32, "Minibatches per epoch.", between(1, 1_000_000))
    learning_rate: float = hyperparameter(3e-4, "Adam learning rate of the policy and the value network.", positive)
    anneal_lr: bool = hyperparameter(True, "Decay the learning rate linearly to 0 over the step budget of `learn`.")
    gae_lambda: float = hyperparameter(0.95, "lambda of generalised advantage estimation.", fraction)
    clip_range: float = hyperparameter(0.2, "Clip every per-step ratio q_theta / q_old to [1 - clip_range, 1 + "
                                            "clip_range].", positive)
    value_clip_range: float = hyperparameter(0.0, "Clip new value predictions to within this of the rollout's; 0 "
                                                  "turns value clipping off.", non_negative)
    normalize_advantages: bool = hyperparameter(True, "Normalise the per-step advantages of each minibatch to zero "
                                                      "mean and unit std.")
    value_coef: float = hyperparameter(0.5, "Weight of the value loss in the joint loss.", non_negative)
    max_grad_norm: float = hyperparameter(0.5, "Clip the global gradient norm of policy and value network to this.",
                                          positive)
    alpha: float = hyperparameter(2e-4, "Fixed temperature: rollouts are scored on the soft reward r - alpha * L (the "
                                        "authors' DiffPPO value).", non_negative)
    cancel_past: bool = hyperparameter(False, "Weight denoising step k by A_t + alpha (log p_0(x_0) + sum_{j<k} l_j), "
                                              "not A_t; off: it raised variance.")
    per_step_baseline: bool = hyperparameter(False, "Baseline denoising step k by a critic V(s, x_k, k): GAE over the "
                                                    "chain's sub-steps (diffagent/algos/ppo.py); cancels the "
                                                    "past. Off: it tied the shared V(s) on Hopper over 5 seeds "
                                                    "(docs/algorithms.md, section 7).")
    scale_rewards: bool = hyperparameter(True, "Divide rewards by the running std of the discounted return; its "
                                               "statistics are checkpointed.")
    value_hidden_sizes: tuple[int, ...] = hyperparameter((64, 64), "Widths of the value network V(s).", widths)
    value_activation: str = hyperparameter("tanh", "Activation of the value network (its own: PPO and DiffPPO share "
                                                   "it while their policies differ).", one_of(*ACTIVATIONS))

    @property
    def fixed_temperature(self) -> float | None:
        return self.alpha

    def problems(self) -> list[str]:
        found = super().problems()
        transitions = self.rollout_steps * self.num_envs
        if transitions > MAX_ROLLOUT:
            found.append(f"a rollout of rollout_steps * num_envs = {transitions:,} transitions exceeds "
                         f"{MAX_ROLLOUT:,}; lower one of them")
        elif self.num_minibatches > transitions:
            found.append(f"num_minibatches={self.num_minibatches} exceeds the rollout's {transitions} transitions; "
                         "lower it or raise rollout_steps")
        return found


@dataclass
class PolicyConfig(Part):
    """What every policy family shares. A family's defaults suit off-policy training; `preset` gives them for
    an algorithm, with the family's ON_POLICY changes for PPO."""

    family: ClassVar[str]
    """The family's name in config.json and the ONNX metadata."""
    ON_POLICY: ClassVar[dict[str, Any]]

    normalize_obs: bool = hyperparameter(False, "Normalise observations by running mean/std; the statistics are "
                                                "saved and exported with the policy.")

    @classmethod
    def preset(cls, algorithm: type[AlgorithmConfig]) -> PolicyConfig:
        """This family's defaults for `algorithm`."""
        return cls(**cls.ON_POLICY) if algorithm.on_policy else cls()


@dataclass
class GaussianPolicyConfig(PolicyConfig):
    """The tanh-Gaussian policy: SAC's, PPO's and WPO's."""

    family: ClassVar[str] = "gaussian"
    # CleanRL's and SB3's PPO for MuJoCo: a small tanh network, one free log std, normalised observations
    ON_POLICY: ClassVar[dict[str, Any]] = {"policy_hidden_sizes": (64, 64), "policy_activation": "tanh",
                                           "normalize_obs": True, "state_dependent_std": False}

    policy_hidden_sizes: tuple[int, ...] = hyperparameter((256, 256), "Widths of the policy network (mean and std heads).", widths)
    policy_activation: str = hyperparameter("relu", "Activation of the policy network.", one_of(*ACTIVATIONS))
    log_std_init: float = hyperparameter(0.0, "Gaussian policy: initial log standard deviation.")
    state_dependent_std: bool = hyperparameter(True, "Gaussian policy: std from a network head (SAC) rather than one "
                                                     "free parameter (PPO).")


@dataclass
class DiffusionPolicyConfig(PolicyConfig):
    """The diffusion chain: DiffSAC's, DiffPPO's and DiffWPO's (docs/algorithms.md, section 2)."""

    family: ClassVar[str] = "diffusion"
    # PPO's network width, as its Gaussian's, and normalised observations
    ON_POLICY: ClassVar[dict[str, Any]] = {"policy_hidden_sizes": (64, 64), "normalize_obs": True}

    # f_theta runs K times per action, so its width sets the chain's cost: at (128, 128) and K = 8 a
    # DiffSAC update costs about what SAC's does at (256, 256) on a CPU (README, "Measured here").
    policy_hidden_sizes: tuple[int, ...] = hyperparameter((128, 128), "Diffusion policy: widths of f_theta, the drift "
                                                                      "network each denoising step runs.", widths)
    policy_activation: str = hyperparameter("gelu", "Diffusion policy: activation of f_theta.",
                                            one_of(*ACTIVATIONS))
    diffusion_steps: int = hyperparameter(8, "Diffusion policy: number of denoising steps K.", between(1, 1000))
    prior_std: float = hyperparameter(1.0, "Diffusion policy: standard deviation sigma_0 of the prior N(0, "
                                                  "sigma_0^2).", positive)
    step_size_max: float = hyperparameter(0.1, "Diffusion policy: step size eta of the first denoising step (linear "
                                                      "schedule).", positive)
    step_size_min: float = hyperparameter(0.01, "Diffusion policy: step size eta of the last denoising step.",
                                          positive)
    learn_step_size: bool = hyperparameter(True, "Diffusion policy: learn eta per step and action dimension.")
    learn_backward_kernel: bool = hyperparameter(False, "Diffusion policy: give the backward kernel a network of its "
                                                        "own (a drift and a scale), trained on the same objective, so "
                                                        "that -E[L] closes in on the entropy "
                                                        "(docs/algorithms.md, section 2).")


@dataclass
class Config:
    """One algorithm's hyperparameters: the run's, its policy family's and its update's."""

    run: RunConfig
    policy: PolicyConfig
    algorithm: AlgorithmConfig

    def items(self) -> Iterator[tuple[dataclasses.Field, Any]]:
        """(field, value) of every hyperparameter, part by part."""
        for part in (self.run, self.policy, self.algorithm):
            for spec in dataclasses.fields(part):
                yield spec, getattr(part, spec.name)

    def to_dict(self) -> dict[str, Any]:
        """Flat name -> value, JSON-ready (tuples become lists): what config.json holds."""
        return {spec.name: list(value) if isinstance(value, tuple) else value for spec, value in self.items()}


# --- the registry ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class AlgoSpec:
    """An algorithm name: its family, which update and which policy it trains."""

    family: str
    """The Gaussian algorithm of its family: the baseline a diffusion algorithm is compared with, whose
    published results the benchmark shows beside it."""
    algorithm: type[AlgorithmConfig]
    policy: type[PolicyConfig]
    description: str


ALGORITHMS: dict[str, AlgoSpec] = {
    "sac": AlgoSpec("sac", SACConfig, GaussianPolicyConfig, "Soft Actor-Critic with a tanh-Gaussian policy"),
    "diffsac": AlgoSpec("sac", SACConfig, DiffusionPolicyConfig,
                        "SAC with a diffusion-chain policy, log pi replaced by the path log-ratio L"),
    "ppo": AlgoSpec("ppo", PPOConfig, GaussianPolicyConfig,
                    "PPO-clip with GAE and a tanh-Gaussian policy with a state-independent std"),
    "diffppo": AlgoSpec("ppo", PPOConfig, DiffusionPolicyConfig,
                        "PPO with a diffusion-chain policy: per-step clipped ratios, soft reward r - alpha L"),
    "wpo": AlgoSpec("wpo", WPOConfig, GaussianPolicyConfig,
                    "Wasserstein Policy Optimisation on SAC's critics, with a KL trust region"),
    "diffwpo": AlgoSpec("wpo", WPOConfig, DiffusionPolicyConfig,
                        "WPO with a diffusion-chain policy: per-step Wasserstein signals of the soft value"),
}


def algo_spec(algo: str) -> AlgoSpec:
    """The registry entry of `algo`, or a ConfigError that lists the known names."""
    try:
        return ALGORITHMS[algo.lower()]
    except KeyError:
        raise ConfigError(f"unknown algorithm {algo!r}; choose one of: {', '.join(ALGORITHMS)}") from None


def _field_types(spec: AlgoSpec) -> dict[str, tuple[type[Part], Any]]:
    """Name -> (the part that owns it, its type) of every hyperparameter of an algorithm."""
    owners = {}
    for part in (RunConfig, spec.policy, spec.algorithm):
        hints = typing.get_type_hints(part)
        owners.update({f.name: (part, hints[f.name]) for f in dataclasses.fields(part)})
    return owners


def users(name: str) -> list[str]:
    """The algorithms that have a hyperparameter `name`."""
    return [algo for algo, spec in ALGORITHMS.items() if name in _field_types(spec)]


def make_config(algo: str, overrides: dict[str, Any] | None = None) -> Config:
    """The validated config of `algo`: its parts' defaults with `overrides` (flat names) applied."""
    spec = algo_spec(algo)
    owners = _field_types(spec)
    values: dict[type[Part], dict[str, Any]] = {RunConfig: {}, spec.policy: {}, spec.algorithm: {}}
    for name, raw in (overrides or {}).items():
        if name not in owners:
            raise ConfigError(_not_a_field(algo, name, owners))
        part, kind = owners[name]
        values[part][name] = parse_value(name, kind, raw)
    config = Config(RunConfig(**values[RunConfig]),
                    dataclasses.replace(spec.policy.preset(spec.algorithm), **values[spec.policy]),
                    spec.algorithm(**values[spec.algorithm]))
    problems = [problem for part in (config.run, config.policy, config.algorithm) for problem in part.problems()]
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))
    return config


def _not_a_field(algo: str, name: str, owners: dict[str, Any]) -> str:
    """Why `name` is not a hyperparameter of `algo`: another algorithm's, or a name of none (with a guess)."""
    others = users(name)
    if others:
        return (f"{algo} does not use {name!r}: it is a hyperparameter of {', '.join(others)} only. Remove it, or "
                f"train one of those.")
    close = difflib.get_close_matches(name, owners, n=3)
    hint = f" Did you mean: {', '.join(close)}?" if close else f" Valid names: {', '.join(owners)}."
    return f"{algo} has no hyperparameter {name!r}.{hint}"


def applicable(algo: str, values: dict[str, Any]) -> dict[str, Any]:
    """`values` without the names that only other algorithms use (a name of none is kept, for make_config to
    refuse). Format 1 config.json files listed every field of one flat config, used or not."""
    owners = _field_types(algo_spec(algo))
    return {name: value for name, value in values.items() if name in owners or not users(name)}


def parse_value(name: str, kind: type, raw: Any) -> Any:
    """Coerce `raw` (a CLI string or a JSON value) to the field's type, or raise a ConfigError."""
    try:
        if kind is bool:
            if isinstance(raw, bool):
                return raw
            lowered = str(raw).strip().lower()
            if lowered in ("1", "true", "yes", "on"):
                return True
            if lowered in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if kind is int:
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            value = float(raw) if isinstance(raw, str) and "e" in raw.lower() else raw
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if kind is float:
            if isinstance(raw, bool) or not math.isfinite(value := float(raw)):
                raise ValueError
            return value
        if kind is str:
            if not isinstance(raw, str):
                raise ValueError
            return raw
        if typing.get_origin(kind) is tuple:
            items = json.loads(raw) if isinstance(raw, str) and raw.strip().startswith("[") else raw
            if isinstance(items, str):
                items = [p for p in items.replace(" ", "").split(",") if p]
            if not isinstance(items, (list, tuple)) or len(items) > MAX_LAYERS:
                raise ValueError
            return tuple(parse_value(name, int, item) for item in items)
    except (ValueError, TypeError, OverflowError, RecursionError, json.JSONDecodeError):
        pass
    expected = {int: "int", float: "a finite float", bool: "bool", str: "str"}.get(
        kind, f"a comma-separated list of at most {MAX_LAYERS} integers, e.g. 256,256")
    raise ConfigError(f"{name}={_brief(raw)} is not a valid value: expected {expected}")


def _brief(value: Any) -> str:
    """repr(value), cut to a length an error message can carry."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def cli_value(value: Any) -> str:
    """A config value as `--set` takes it (the inverse of `parse_value`): 256,256 / true / 0.001."""
    if isinstance(value, (list, tuple)):
        return ",".join(str(v) for v in value)
    return str(value).lower() if isinstance(value, bool) else str(value)


def parse_overrides(pairs: Iterable[str]) -> dict[str, str]:
    """['key=value', ...] -> {'key': 'value'}; the values are parsed by `make_config`."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} is not of the form key=value (e.g. --set batch_size=512)")
        overrides[key.strip()] = value.strip()
    return overrides
