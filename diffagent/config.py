"""Typed configs, one dataclass per algorithm family, and the registry of algorithm names.

A config is the single source of truth: CLI overrides, `config.json`, the model card and resume
all read and write it. `make_config` is the one place values are parsed and validated.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import typing
from dataclasses import dataclass, field
from typing import Any, Iterable

from diffagent.errors import ConfigError


@dataclass
class PolicyConfig:
    """Fields every algorithm shares: the policy it trains and the run's basics."""

    seed: int = 0
    """Seed of torch, numpy and the environments."""
    gamma: float = 0.99
    """Discount factor."""
    policy_hidden_sizes: tuple[int, ...] = (256, 256)
    """Widths of the policy network (of f_theta for the diffusion chain)."""
    policy_activation: str = "relu"
    """Activation of the policy network: relu, gelu, tanh, silu or mish."""
    normalize_obs: bool = False
    """Normalise observations by running mean/std; the statistics are saved and exported with the policy."""
    log_std_init: float = 0.0
    """Gaussian policy: initial log standard deviation."""
    state_dependent_std: bool = True
    """Gaussian policy: std from a network head (SAC) rather than one free parameter (PPO)."""
    diffusion_steps: int = 8
    """Diffusion policy: number of denoising steps K."""
    prior_std: float = 1.0
    """Diffusion policy: standard deviation sigma_0 of the prior N(0, sigma_0^2)."""
    step_size_max: float = 0.1
    """Diffusion policy: step size eta of the first denoising step (linear schedule)."""
    step_size_min: float = 0.01
    """Diffusion policy: step size eta of the last denoising step."""
    learn_step_size: bool = True
    """Diffusion policy: learn eta per step and action dimension."""


@dataclass
class SACConfig(PolicyConfig):
    """SAC, and DiffSAC when the policy is a diffusion chain (docs/algorithms.md, section 4)."""

    buffer_size: int = 1_000_000
    """Replay buffer capacity in transitions."""
    learning_starts: int = 5000
    """Environment steps of uniform random actions before learning starts."""
    batch_size: int = 256
    """Transitions per gradient step."""
    gradient_steps: int = 1
    """Gradient steps per environment step (update-to-data ratio)."""
    actor_lr: float = 3e-4
    """Adam learning rate of the policy."""
    critic_lr: float = 3e-4
    """Adam learning rate of the critics."""
    alpha_lr: float = 3e-4
    """Adam learning rate of the temperature."""
    tau: float = 0.005
    """Polyak rate of the target critics."""
    num_critics: int = 2
    """Critics in the ensemble; targets and the actor use their minimum."""
    critic_hidden_sizes: tuple[int, ...] = (256, 256)
    """Widths of each critic."""
    critic_layer_norm: bool = False
    """LayerNorm after each critic hidden layer."""
    alpha_init: float = 1.0
    """Initial temperature alpha."""
    autotune_alpha: bool = True
    """Tune alpha so that the entropy estimate -E[L] tracks the target entropy."""
    target_entropy_scale: float = 1.0
    """Target entropy is -target_entropy_scale * dim(A)."""
    calibrate_entropy: bool = True
    """Tune alpha on the policy's entropy, -E[L] plus its measured gap to it (a chain's -E[L] is a lower bound), not on -E[L]."""
    actor_gradient: str = "pathwise"
    """Actor gradient estimator: 'pathwise' (backprop through the chain) or 'lv' (log-variance, past terms cancelled)."""
    lv_chains: int = 8
    """'lv' estimator: chains sampled per state for the leave-one-out baseline."""


@dataclass
class PPOConfig(PolicyConfig):
    """PPO, and DiffPPO when the policy is a diffusion chain (docs/algorithms.md, section 4).

    Defaults follow CleanRL's and SB3's PPO for MuJoCo.
    """

    num_envs: int = 1
    """Environments stepped in lockstep (a gymnasium SyncVectorEnv)."""
    rollout_steps: int = 2048
    """Steps per environment in one rollout; each update sees rollout_steps * num_envs transitions."""
    num_epochs: int = 10
    """Passes over each rollout."""
    num_minibatches: int = 32
    """Minibatches per epoch."""
    learning_rate: float = 3e-4
    """Adam learning rate of the policy and the value network."""
    anneal_lr: bool = True
    """Decay the learning rate linearly to 0 over the step budget of `learn`."""
    gae_lambda: float = 0.95
    """lambda of generalised advantage estimation."""
    clip_range: float = 0.2
    """Clip every per-step ratio q_theta / q_old to [1 - clip_range, 1 + clip_range]."""
    value_clip_range: float = 0.0
    """Clip new value predictions to within this of the rollout's; 0 turns value clipping off."""
    normalize_advantages: bool = True
    """Normalise the per-step advantages of each minibatch to zero mean and unit std."""
    value_coef: float = 0.5
    """Weight of the value loss in the joint loss."""
    max_grad_norm: float = 0.5
    """Clip the global gradient norm of policy and value network to this."""
    alpha: float = 2e-4
    """Fixed temperature: rollouts are scored on the soft reward r - alpha * L (the authors' DiffPPO value)."""
    cancel_past: bool = False
    """Weight denoising step k by A_t + alpha (log p_0(x_0) + sum_{j<k} l_j), not A_t; off: it raised variance."""
    per_step_baseline: bool = False
    """Baseline denoising step k by a critic V(s, x_k, k): GAE over the chain's sub-steps (ppo.py); cancels the past."""
    scale_rewards: bool = True
    """Divide rewards by the running std of the discounted return; its statistics are checkpointed."""
    value_hidden_sizes: tuple[int, ...] = (64, 64)
    """Widths of the value network V(s)."""
    value_activation: str = "tanh"
    """Activation of the value network (its own: PPO and DiffPPO share it while their policies differ)."""


@dataclass
class WPOConfig(SACConfig):
    """WPO, and DiffWPO when the policy is a diffusion chain (docs/algorithms.md, section 4).

    SAC's replay buffer, critics, temperature and loop with the Wasserstein policy update as the
    actor loss (SAC's actor_gradient and lv_chains are unused).
    """

    kl_bound: float = 0.1
    """Trust region: KL(old || new) of the denoising path per state, above which an adaptive penalty acts."""
    kl_penalty_init: float = 1.0
    """Initial weight of the KL penalty; a dual variable tunes it toward kl_bound."""
    kl_penalty_lr: float = 1e-2
    """Adam learning rate of the log of the KL penalty weight."""
    target_policy_tau: float = 0.005
    """Polyak rate of the old policy that the KL is measured against."""
    fisher_preconditioning: bool = True
    """Natural gradient as in the WPO paper and acme: each kernel's mean gradient times sigma^2, its log std's times
    sigma^2/2 (docs/algorithms.md, "WPO's preconditioning")."""


# What a diffusion algorithm may set differently from its Gaussian base: the policy and nothing else.
# tests/test_config.py holds every Diff* config to it, so a comparison changes the policy only.
POLICY_FIELDS = frozenset({"policy_hidden_sizes", "policy_activation", "log_std_init", "state_dependent_std",
                           "diffusion_steps", "prior_std", "step_size_max", "step_size_min", "learn_step_size"})
BASE_ALGORITHM = {"diffsac": "sac", "diffppo": "ppo", "diffwpo": "wpo"}


@dataclass(frozen=True)
class AlgoSpec:
    """An algorithm name: which config and update it uses, and which policy it trains."""

    config_class: type[PolicyConfig]
    policy: str
    defaults: dict[str, Any] = field(default_factory=dict)
    description: str = ""


# f_theta runs K times per action, so its width sets the cost of a diffusion policy: at (128, 128)
# and K = 8 a DiffSAC update costs about what SAC's does at (256, 256) on a CPU (README, "Throughput").
DIFFUSION_DEFAULTS = {"policy_activation": "gelu", "policy_hidden_sizes": (128, 128)}

ALGORITHMS: dict[str, AlgoSpec] = {
    "sac": AlgoSpec(SACConfig, "gaussian", {}, "Soft Actor-Critic with a tanh-Gaussian policy"),
    "diffsac": AlgoSpec(SACConfig, "diffusion", DIFFUSION_DEFAULTS,
                        "SAC with a diffusion-chain policy, log pi replaced by the path log-ratio L"),
    "ppo": AlgoSpec(PPOConfig, "gaussian", {"policy_hidden_sizes": (64, 64), "policy_activation": "tanh",
                                            "normalize_obs": True, "state_dependent_std": False},
                    "PPO-clip with GAE and a tanh-Gaussian policy with a state-independent std"),
    "diffppo": AlgoSpec(PPOConfig, "diffusion", {"policy_hidden_sizes": (64, 64), "policy_activation": "gelu",
                                                 "normalize_obs": True},
                        "PPO with a diffusion-chain policy: per-step clipped ratios, soft reward r - alpha L"),
    "wpo": AlgoSpec(WPOConfig, "gaussian", {},
                    "Wasserstein Policy Optimisation on SAC's critics, with a KL trust region"),
    "diffwpo": AlgoSpec(WPOConfig, "diffusion", DIFFUSION_DEFAULTS,
                        "WPO with a diffusion-chain policy: per-step Wasserstein signals of the soft value"),
}

CHOICES = {
    "policy_activation": ("relu", "gelu", "tanh", "silu", "mish"),
    "value_activation": ("relu", "gelu", "tanh", "silu", "mish"),
    "actor_gradient": ("pathwise", "lv"),
}


def algo_spec(algo: str) -> AlgoSpec:
    """The registry entry of `algo`, or a ConfigError that lists the known names."""
    try:
        return ALGORITHMS[algo.lower()]
    except KeyError:
        raise ConfigError(f"unknown algorithm {algo!r}; choose one of: {', '.join(ALGORITHMS)}") from None


def config_fields(config_class: type[PolicyConfig]) -> dict[str, type]:
    """Name -> type of every field of a config class."""
    hints = typing.get_type_hints(config_class)
    return {f.name: hints[f.name] for f in dataclasses.fields(config_class)}


def field_docs(config_class: type[PolicyConfig]) -> dict[str, str]:
    """Name -> the docstring under each field (for --help, the model card and error messages)."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    for cls in reversed(config_class.__mro__):
        if not dataclasses.is_dataclass(cls) or cls is AlgoSpec:
            continue
        body = ast.parse(inspect.getsource(cls)).body[0].body
        for node, nxt in zip(body, body[1:]):
            if isinstance(node, ast.AnnAssign) and isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant):
                docs[node.target.id] = str(nxt.value.value)
    return docs


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


def make_config(algo: str, overrides: dict[str, Any] | None = None) -> PolicyConfig:
    """The validated config of `algo` with the registry's defaults and `overrides` applied."""
    spec = algo_spec(algo)
    fields = config_fields(spec.config_class)
    values = dict(spec.defaults)
    for name, raw in (overrides or {}).items():
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=3)
            hint = f" Did you mean: {', '.join(close)}?" if close else f" Valid names: {', '.join(fields)}."
            raise ConfigError(f"{algo} has no hyperparameter {name!r}.{hint}")
        values[name] = parse_value(name, fields[name], raw)
    config = spec.config_class(**values)
    validate(config)
    return config


def parse_overrides(pairs: Iterable[str]) -> dict[str, str]:
    """['key=value', ...] -> {'key': 'value'}; the values are parsed by `make_config`."""
    overrides = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} is not of the form key=value (e.g. --set batch_size=512)")
        overrides[key.strip()] = value.strip()
    return overrides


# Sizes a config may ask for. They bound what building an agent allocates, so a hostile or mistyped
# value (an artifact's diffusion_steps = 1e7, --set batch_size=1e20) is refused with a message rather
# than dying in an allocation; each is far beyond any setting this project or the paper uses.
MAX_WIDTH = 8192
MAX_LAYERS = 16
INT_RANGES = {
    "seed": (0, 2**32 - 1), "diffusion_steps": (1, 1000), "buffer_size": (1, 100_000_000),
    "learning_starts": (0, 100_000_000), "batch_size": (1, 1_000_000), "gradient_steps": (1, 1000),
    "num_critics": (1, 100), "lv_chains": (1, 65_536), "num_envs": (1, 1024), "rollout_steps": (1, 1_000_000),
    "num_epochs": (1, 1000), "num_minibatches": (1, 1_000_000),
}


def validate(config: PolicyConfig) -> None:
    """Range and choice checks, all in one place (every float is already finite: `parse_value`)."""
    problems = []
    for name, choices in CHOICES.items():
        value = getattr(config, name, None)
        if value is not None and value not in choices:
            problems.append(f"{name}={value!r} must be one of {', '.join(choices)}")
    for name, (low, high) in INT_RANGES.items():
        value = getattr(config, name, None)
        if value is not None and not low <= value <= high:
            problems.append(f"{name} must lie in [{low:,}, {high:,}], got {value:,}")
    if not 0.0 <= config.gamma <= 1.0:
        problems.append(f"gamma must lie in [0, 1], got {config.gamma}")
    for name in ("prior_std", "step_size_max", "step_size_min", "actor_lr", "critic_lr", "alpha_lr", "alpha_init"):
        if getattr(config, name, 1.0) <= 0:
            problems.append(f"{name} must be positive, got {getattr(config, name)}")
    if hasattr(config, "tau") and not 0.0 < config.tau <= 1.0:
        problems.append(f"tau must lie in (0, 1], got {config.tau}")
    for name in ("learning_rate", "clip_range", "max_grad_norm", "kl_bound", "kl_penalty_init", "kl_penalty_lr"):
        if getattr(config, name, 1.0) <= 0:
            problems.append(f"{name} must be positive, got {getattr(config, name)}")
    for name in ("alpha", "value_clip_range", "value_coef"):
        if getattr(config, name, 0.0) < 0:
            problems.append(f"{name} must be 0 or more, got {getattr(config, name)}")
    if hasattr(config, "gae_lambda") and not 0.0 <= config.gae_lambda <= 1.0:
        problems.append(f"gae_lambda must lie in [0, 1], got {config.gae_lambda}")
    if hasattr(config, "target_policy_tau") and not 0.0 < config.target_policy_tau <= 1.0:
        problems.append(f"target_policy_tau must lie in (0, 1], got {config.target_policy_tau}")
    if hasattr(config, "rollout_steps") and config.rollout_steps * config.num_envs > 10_000_000:
        problems.append(f"a rollout of rollout_steps * num_envs = {config.rollout_steps * config.num_envs:,} transitions "
                        "exceeds 10,000,000; lower one of them")
    if hasattr(config, "num_minibatches") and config.num_minibatches > config.rollout_steps * config.num_envs:
        problems.append(f"num_minibatches={config.num_minibatches} exceeds the rollout's "
                        f"{config.rollout_steps * config.num_envs} transitions; lower it or raise rollout_steps")
    for name in ("policy_hidden_sizes", "critic_hidden_sizes", "value_hidden_sizes"):
        widths = getattr(config, name, None)
        if widths is not None and (not widths or not all(1 <= w <= MAX_WIDTH for w in widths)):
            problems.append(f"{name} must be 1 to {MAX_LAYERS} widths, each in [1, {MAX_WIDTH:,}], got {widths}")
    if getattr(config, "actor_gradient", None) == "lv" and config.lv_chains < 2:
        problems.append("actor_gradient='lv' needs lv_chains >= 2 for its leave-one-out baseline")
    if problems:
        raise ConfigError("invalid config: " + "; ".join(problems))


def config_to_dict(config: PolicyConfig) -> dict[str, Any]:
    """JSON-ready dict of a config (tuples become lists)."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(config).items()}
