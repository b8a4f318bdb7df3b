"""Environment construction and the checks that every env must pass (a Box action space)."""

from __future__ import annotations

import re
from typing import Any, Callable, Union

import gymnasium as gym
import numpy as np

from diffagent.errors import ConfigError

EnvSource = Union[str, gym.Env, Callable[[], gym.Env]]

# A registered id as an artifact may name it: [namespace/]name[-vN], with no `module:` prefix (which
# would make gym.make import that module: loading an artifact must never run code).
_PLAIN_ENV_ID = re.compile(r"^(?:[A-Za-z0-9_-]{1,100}/)?[A-Za-z0-9_.-]{1,100}$")
MAX_SPACE_SIZE = 1_000_000  # entries of a saved observation or action space: bounds what a description allocates


def registered_env_id(env_id: Any) -> str | None:
    """`env_id` if it is a plain id registered with Gymnasium now, None if it is plain but unregistered.

    For ids read from an artifact: nothing is imported, so a `module:Env` id is refused (ArtifactError
    from the caller) instead of importing `module`.
    """
    if not isinstance(env_id, str) or not _PLAIN_ENV_ID.match(env_id):
        raise ValueError(f"env_id {str(env_id)[:120]!r} is not a plain Gymnasium id ([namespace/]name-vN); "
                         "an artifact never names a module to import. Pass env= to load it with your own env")
    return env_id if env_id in gym.registry else None


def env_factory(env: EnvSource, **make_kwargs) -> tuple[Callable[[], gym.Env], str]:
    """A factory that makes fresh copies of `env`, and the env's id for configs and model cards.

    `env` is a Gymnasium id, an env instance (used as the first copy; later copies are made from its
    spec when it has one), or a zero-argument factory.
    """
    if isinstance(env, str):
        try:
            gym.spec(env)
        except gym.error.Error as err:
            raise ConfigError(f"unknown environment id {env!r} ({err}). Check the spelling and that its package "
                              "(e.g. gymnasium[mujoco]) is installed; `python -c 'import gymnasium; "
                              "gymnasium.pprint_registry()'` lists the registered ids.") from None
        factory = lambda: gym.make(env, **make_kwargs)  # noqa: E731
        return factory, env
    if isinstance(env, gym.Env):
        first = [env]
        spec = env.spec

        def factory() -> gym.Env:
            if first:
                return first.pop()
            if spec is None:
                raise ConfigError("this env instance has no spec, so diffagent cannot make a second copy for "
                                  "evaluation; pass a factory (a function returning a new env) instead")
            return gym.make(spec)
        return factory, spec.id if spec is not None else type(env.unwrapped).__name__
    if callable(env):
        probe = env()
        first = [probe]
        return (lambda: first.pop() if first else env()), probe.spec.id if probe.spec else type(probe.unwrapped).__name__
    raise ConfigError(f"env must be a Gymnasium id, an env or a factory, got {type(env).__name__}")


def check_spaces(env: gym.Env, env_id: str) -> tuple[gym.spaces.Box, gym.spaces.Box]:
    """The env's observation and action spaces, or a ConfigError saying why diffagent can't use them."""
    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(act_space, gym.spaces.Box):
        raise ConfigError(f"{env_id} has a {type(act_space).__name__} action space; diffagent's policies need a "
                          "continuous Box action space. Pick a continuous-control env (e.g. Pendulum-v1, Hopper-v4).")
    if len(act_space.shape) != 1 or not (np.all(np.isfinite(act_space.low)) and np.all(np.isfinite(act_space.high))):
        raise ConfigError(f"{env_id}'s action space {act_space} must be 1-D with finite bounds: the policy squashes "
                          "its actions into that box. Wrap the env (e.g. gymnasium.wrappers.RescaleAction).")
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ConfigError(f"{env_id}'s observation space {obs_space} is not a 1-D Box; flatten it first "
                          "(gymnasium.wrappers.FlattenObservation).")
    return obs_space, act_space


def space_to_dict(space: gym.spaces.Box) -> dict:
    """A JSON description of a Box (saved in config.json and the ONNX metadata); null marks an unbounded side."""
    def bounds(values: np.ndarray) -> list:
        return [float(v) if np.isfinite(v) else None for v in values.ravel()]
    return {"shape": list(space.shape), "low": bounds(space.low), "high": bounds(space.high), "dtype": str(space.dtype)}


def space_from_dict(description: Any) -> gym.spaces.Box:
    """Inverse of `space_to_dict`, checked entry by entry (it may come from an untrusted artifact): a
    ValueError says what is wrong."""
    if not isinstance(description, dict):
        raise ValueError(f"a space description must be an object, got {type(description).__name__}")
    shape = description.get("shape")
    if (not isinstance(shape, list) or len(shape) != 1 or isinstance(shape[0], bool) or not isinstance(shape[0], int)
            or not 1 <= shape[0] <= MAX_SPACE_SIZE):
        raise ValueError(f"a space's shape must be [n] with 1 <= n <= {MAX_SPACE_SIZE:,}, got {str(shape)[:80]}")

    def bounds(name: str, fill: float) -> np.ndarray:
        values = description.get(name)
        if not isinstance(values, list) or len(values) != shape[0] or not all(
                v is None or (isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)) for v in values):
            raise ValueError(f"a space's {name!r} must list {shape[0]} finite numbers (null for unbounded)")
        return np.array([fill if v is None else v for v in values], dtype=np.float32)
    low, high = bounds("low", -np.inf), bounds("high", np.inf)
    if not np.all(low <= high):
        raise ValueError("a space's low bound exceeds its high bound")
    return gym.spaces.Box(low, high, tuple(shape), dtype=np.float32)


class UnavailableEnv(gym.Env):
    """Stands in for an env that cannot be made here, so a loaded agent can still act.

    It carries the saved spaces; resetting or stepping it says why the real env is missing.
    """

    def __init__(self, env_id: str, observation_space: gym.spaces.Box, action_space: gym.spaces.Box, reason: str):
        self.observation_space, self.action_space = observation_space, action_space
        self.spec = gym.envs.registration.EnvSpec(env_id)  # so the agent keeps the saved id, not this class's name
        self._message = (f"{env_id} cannot be made on this machine ({reason}). The agent can still act; to "
                         f"evaluate or train it, install the env's package or pass env= to from_pretrained.")

    def reset(self, *, seed=None, options=None):
        raise ConfigError(self._message)

    def step(self, action):
        raise ConfigError(self._message)
