"""Making environments again and again, and the checks that every env must pass (a Box action space).

An env is made from an `EnvRecipe`: a registered id, the keyword arguments of `gym.make` and the
wrappers applied on top, in order. The recipe is what an artifact records (config.json), so a loaded
agent makes the same env; reading it back imports nothing (docs/security.md): the id must be
registered and each wrapper's module imported already, by the user's code or `--gym-packages`.
A user's own module is imported only when the user names it: `module:Env-v0` (Gymnasium's form) or
`--gym-packages module` on the command line, `import_packages` here.
"""

from __future__ import annotations

import importlib
import json
import re
import sys
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Union

import gymnasium as gym
import numpy as np

from diffagent.errors import ConfigError
from serve.contract import DICT_SPACE, observation_layout

EnvSource = Union[str, gym.Env, Callable[[], gym.Env]]

# A registered id as an artifact may name it: [namespace/]name[-vN], with no `module:` prefix (which
# would make gym.make import that module: loading an artifact must never run code).
_PLAIN_ENV_ID = re.compile(r"^(?:[A-Za-z0-9_-]{1,100}/)?[A-Za-z0-9_.-]{1,100}$")
_MODULE_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*$")
MAX_SPACE_SIZE = 1_000_000  # entries of a saved observation or action space: bounds what a description allocates
MAX_WRAPPERS = 32


def registered_env_id(env_id: Any) -> str | None:
    """`env_id` if it is a plain id registered with Gymnasium now, None if it is plain but unregistered.

    For ids read from an artifact: nothing is imported, so a `module:Env` id is refused (ArtifactError
    from the caller) instead of importing `module`.
    """
    if not isinstance(env_id, str) or not _PLAIN_ENV_ID.match(env_id):
        raise ValueError(f"env_id {str(env_id)[:120]!r} is not a plain Gymnasium id ([namespace/]name-vN); "
                         "an artifact never names a module to import. Pass env= to load it with your own env")
    return env_id if env_id in gym.registry else None


def import_packages(packages: Iterable[str]) -> None:
    """Import the modules the user named (`--gym-packages`, the module of `module:Env-v0`): importing one
    registers its envs and defines its wrappers. Never called with a name read from an artifact."""
    for package in packages:
        if not isinstance(package, str) or not _MODULE_NAME.match(package):
            raise ConfigError(f"{str(package)[:120]!r} is not a Python module name (like my_envs or pkg.envs)")
        try:
            importlib.import_module(package)
        except ModuleNotFoundError as err:
            if err.name is None or not package.startswith(err.name):
                raise  # the module was found, and one it imports is missing: its own traceback says which
            raise ConfigError(f"cannot import {package!r}: no such module here. Install its package, or run from "
                              "the folder that holds it (or put that folder on PYTHONPATH).") from None


def parse_env_kwargs(pairs: Iterable[str]) -> dict[str, Any]:
    """['key=value', ...] (`--env-kwargs`) -> {'key': value}: a value is read as JSON (9.81, true, [1, 2],
    "text"), and kept as the text when it is not JSON (hard)."""
    kwargs = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise ConfigError(f"env kwarg {pair!r} is not of the form name=value (e.g. --env-kwargs g=9.81)")
        try:
            kwargs[key.strip()] = json.loads(text)
        except json.JSONDecodeError:
            kwargs[key.strip()] = text
    return kwargs


def split_env_id(env: str) -> tuple[str | None, str]:
    """Gymnasium's `module:Env-v0` as (module, Env-v0); (None, id) for a plain id."""
    module, sep, env_id = env.rpartition(":")
    return (module, env_id) if sep else (None, env)


@dataclass(frozen=True)
class WrapperSpec:
    """A `gym.Wrapper` subclass by its import path, `module:Class`, and the keyword arguments it is made with."""

    entry_point: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def parse(cls, entry: Any) -> "WrapperSpec":
        """One wrapper as a hyperparameter file or the API names it: a class, "module:Class" or "module.Class"
        (rl-zoo3's env_wrapper form), or a one-entry mapping {that: {kwargs}}."""
        kwargs: Any = {}
        if isinstance(entry, Mapping):
            if len(entry) != 1:
                raise ConfigError(f"a wrapper given as a table names one wrapper with its arguments, e.g. "
                                  f'{{"gymnasium.wrappers.TimeLimit" = {{ max_episode_steps = 100 }}}}; got {entry!r}')
            ((entry, kwargs),) = entry.items()
        if isinstance(entry, type):
            entry = f"{entry.__module__}:{entry.__qualname__}"
        if not isinstance(entry, str) or not isinstance(kwargs, Mapping):
            raise ConfigError(f"a wrapper is a class, a 'module:Class' string or a table {{name = {{kwargs}}}}, got "
                              f"{entry!r}")
        module, sep, name = entry.rpartition(":") if ":" in entry else entry.rpartition(".")
        if not sep or not _MODULE_NAME.match(module) or not _MODULE_NAME.match(name):
            raise ConfigError(f"wrapper {entry[:120]!r} is not an import path like gymnasium.wrappers.TimeLimit or "
                              "my_module:MyWrapper")
        return cls(f"{module}:{name}", dict(kwargs))

    def resolve(self, may_import: bool) -> type[gym.Wrapper]:
        """The wrapper class. `may_import`: the user named it, so its module may be imported; from an
        artifact it is looked up among the modules imported already, and a ConfigError says what to import."""
        module_name, name = self.entry_point.split(":")
        if may_import:
            import_packages([module_name])
        module = sys.modules.get(module_name)
        if module is None:
            raise ConfigError(f"the wrapper {self.entry_point} is in {module_name}, which is not imported here; "
                              f"import it first (`--gym-packages {module_name}` on the command line)")
        wrapper = module
        for part in name.split("."):
            wrapper = getattr(wrapper, part, None)
        if not (isinstance(wrapper, type) and issubclass(wrapper, gym.Wrapper)):
            raise ConfigError(f"{self.entry_point} is not a gymnasium.Wrapper subclass; name the wrapper class")
        return wrapper

    def to_dict(self) -> dict[str, Any]:
        return {"entry_point": self.entry_point, "kwargs": self.kwargs}


@dataclass(frozen=True)
class EnvRecipe:
    """What makes the env again: its id, `gym.make`'s keyword arguments and the wrappers on top, in order.

    `module` is the module a `module:Env-v0` id named; an artifact keeps it to say what to import, and
    nothing imports it when loading.
    """

    env_id: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    wrappers: tuple[WrapperSpec, ...] = ()
    module: str | None = None

    def make(self, may_import: bool = True, **make_kwargs: Any) -> gym.Env:
        """A new env; `make_kwargs` (render_mode, ...) add to the recipe's own."""
        wrappers = [wrapper.resolve(may_import) for wrapper in self.wrappers]
        env = gym.make(self.env_id, **self.kwargs, **make_kwargs)
        for wrapper, spec in zip(wrappers, self.wrappers):
            env = wrapper(env, **spec.kwargs)
        return env

    def to_meta(self) -> dict[str, Any]:
        """config.json's env fields: env_id, and env_module, env_kwargs and env_wrappers when set."""
        meta: dict[str, Any] = {"env_id": self.env_id}
        if self.module:
            meta["env_module"] = self.module
        if self.kwargs:
            meta["env_kwargs"] = self.kwargs
        if self.wrappers:
            meta["env_wrappers"] = [wrapper.to_dict() for wrapper in self.wrappers]
        return meta

    @classmethod
    def from_meta(cls, meta: dict) -> "EnvRecipe":
        """The recipe config.json records, checked (it may come from an untrusted artifact); a ValueError
        says what is wrong. Nothing is imported."""
        env_id, module = meta.get("env_id"), meta.get("env_module")
        registered_env_id(env_id)  # a plain id, or a ValueError
        if module is not None and (not isinstance(module, str) or not _MODULE_NAME.match(module)):
            raise ValueError(f"env_module {str(module)[:120]!r} is not a module name")
        kwargs = meta.get("env_kwargs", {})
        if not isinstance(kwargs, dict):
            raise ValueError("env_kwargs must be an object of keyword arguments")
        wrappers = meta.get("env_wrappers", [])
        if not isinstance(wrappers, list) or len(wrappers) > MAX_WRAPPERS or not all(
                isinstance(w, dict) and set(w) == {"entry_point", "kwargs"} for w in wrappers):
            raise ValueError(f"env_wrappers must list at most {MAX_WRAPPERS} objects with an entry_point and kwargs")
        try:
            specs = tuple(WrapperSpec.parse({w["entry_point"]: w["kwargs"]}) for w in wrappers)
        except ConfigError as err:
            raise ValueError(str(err)) from None
        return cls(env_id, kwargs, specs, module)

    def cli_options(self) -> list[str]:
        """The `diffagent train` options that make this env: --env (module:id) and --env-kwargs."""
        env = f"{self.module}:{self.env_id}" if self.module else self.env_id
        return ["--env", env, *(f"--env-kwargs={key}={json.dumps(value)}" for key, value in self.kwargs.items())]


def env_factory(env: EnvSource, kwargs: Mapping[str, Any] | None = None,
                wrappers: Iterable[Any] = ()) -> tuple[Callable[[], gym.Env], EnvRecipe]:
    """A factory that makes fresh copies of `env`, and the recipe that config.json records.

    `env` is a Gymnasium id (`module:Env-v0` imports `module` first, as `gym.make` does), an env
    instance (used as the first copy; later copies are made from its spec when it has one), or a
    zero-argument factory. `kwargs` (for `gym.make`) and `wrappers` (each a class, "module:Class" or
    {"module:Class": {kwargs}}) apply to an id.
    """
    kwargs, wrapper_specs = dict(kwargs or {}), tuple(WrapperSpec.parse(w) for w in wrappers)
    if isinstance(env, str):
        module, env_id = split_env_id(env)
        if module is not None:
            import_packages([module])
        try:
            gym.spec(env_id)
        except gym.error.Error as err:
            raise ConfigError(f"unknown environment id {env!r} ({err}). Check the spelling and that its package "
                              "(e.g. gymnasium[mujoco]) is installed; `python -c 'import gymnasium; "
                              "gymnasium.pprint_registry()'` lists the registered ids. An env of your own: "
                              "my_module:MyEnv-v0, where importing my_module registers MyEnv-v0.") from None
        recipe = EnvRecipe(env_id, kwargs, wrapper_specs, module)
        first = [recipe.make()]  # imports and checks every wrapper now, not in the middle of training
        return (lambda: first.pop() if first else recipe.make()), recipe
    if kwargs or wrapper_specs:
        raise ConfigError("env_kwargs and wrappers apply to an env id; an env or factory of your own is made as you "
                          "make it: pass the arguments and wrappers there")
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
        return factory, EnvRecipe(spec.id if spec is not None else type(env.unwrapped).__name__)
    if callable(env):
        probe = env()
        first = [probe]
        env_id = probe.spec.id if probe.spec else type(probe.unwrapped).__name__
        return (lambda: first.pop() if first else env()), EnvRecipe(env_id)
    raise ConfigError(f"env must be a Gymnasium id, an env or a factory, got {type(env).__name__}")


def check_spaces(env: gym.Env, env_id: str) -> tuple[gym.spaces.Box | gym.spaces.Dict, gym.spaces.Box]:
    """The env's observation and action spaces, or a ConfigError saying why diffagent can't use them.

    Observations are a 1-D Box, or a Dict of 1-D Boxes (goal-conditioned tasks, robot state dicts),
    whose values the policy sees concatenated in the Dict's key order (`flat_observations`).
    """
    obs_space, act_space = env.observation_space, env.action_space
    if not isinstance(act_space, gym.spaces.Box):
        raise ConfigError(f"{env_id} has a {type(act_space).__name__} action space; diffagent's policies need a "
                          "continuous Box action space. Pick a continuous-control env (e.g. Pendulum-v1, Hopper-v4).")
    if len(act_space.shape) != 1 or not (np.all(np.isfinite(act_space.low)) and np.all(np.isfinite(act_space.high))):
        raise ConfigError(f"{env_id}'s action space {act_space} must be 1-D with finite bounds: the policy squashes "
                          "its actions into that box. Wrap the env (e.g. gymnasium.wrappers.RescaleAction).")
    boxes = obs_space.spaces.values() if isinstance(obs_space, gym.spaces.Dict) else [obs_space]
    if not boxes or not all(isinstance(box, gym.spaces.Box) and len(box.shape) == 1 for box in boxes):
        raise ConfigError(f"{env_id}'s observation space {obs_space} is neither a 1-D Box nor a Dict of 1-D Boxes. "
                          "Image observations are not supported yet (they are planned); flatten other spaces first "
                          "(gymnasium.wrappers.FlattenObservation).")
    return obs_space, act_space


def flat_observations(env: gym.Env) -> gym.Env:
    """`env` with a Dict observation turned into the concatenation of its values in key order (the
    layout config.json and the ONNX metadata record); a Box observation passes unchanged."""
    if isinstance(env.observation_space, gym.spaces.Dict):
        return gym.wrappers.FlattenObservation(env)
    return env


def space_to_dict(space: gym.spaces.Box | gym.spaces.Dict) -> dict:
    """A JSON description of a Box (saved in config.json and the ONNX metadata); null marks an unbounded side.

    A Dict of Boxes is {"type": "dict", "spaces": [{"key": ..., <its Box>}, ...]}, in key order: the
    order in which its values are concatenated into the policy's input.
    """
    if isinstance(space, gym.spaces.Dict):
        return {"type": DICT_SPACE, "spaces": [{"key": key, **space_to_dict(box)} for key, box in space.spaces.items()]}

    def bounds(values: np.ndarray) -> list:
        return [float(v) if np.isfinite(v) else None for v in values.ravel()]
    return {"shape": list(space.shape), "low": bounds(space.low), "high": bounds(space.high), "dtype": str(space.dtype)}


def space_from_dict(description: Any) -> gym.spaces.Box | gym.spaces.Dict:
    """Inverse of `space_to_dict`, checked entry by entry (it may come from an untrusted artifact): a
    ValueError says what is wrong."""
    if not isinstance(description, dict):
        raise ValueError(f"a space description must be an object, got {type(description).__name__}")
    if observation_layout(description) is not None:  # checks the keys and their order
        return gym.spaces.Dict([(entry["key"], space_from_dict({k: v for k, v in entry.items() if k != "key"}))
                                for entry in description["spaces"]])
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

    def __init__(self, env_id: str, observation_space: gym.spaces.Space, action_space: gym.spaces.Box, reason: str):
        self.observation_space, self.action_space = observation_space, action_space
        self.spec = gym.envs.registration.EnvSpec(env_id)  # so the agent keeps the saved id, not this class's name
        self._message = (f"{env_id} cannot be made on this machine ({reason}). The agent can still act; to "
                         f"evaluate or train it, install the env's package or pass env= to from_pretrained.")

    def reset(self, *, seed=None, options=None):
        raise ConfigError(self._message)

    def step(self, action):
        raise ConfigError(self._message)
