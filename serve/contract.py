"""The ONNX contract: what `diffagent.export` writes and every runtime reads, in one place.

A policy graph takes `obs` float32 [B, obs_dim] and, unless it draws its own noise, `noise` float32
[B, K+1, act_dim]; it returns `action` float32 [B, act_dim] inside the environment's bounds. What a
runtime needs to check its inputs travels in the model's metadata_props, as `PolicyMetadata` lists
it. serve sits under diffagent (it never imports it), so the exporter writes through this module.

A Dict observation (a Dict of 1-D Boxes) enters the graph as one `obs` row: the values of its keys
concatenated in the order `observation_space["spaces"]` lists them (`observation_layout`), which is
the order Gymnasium's Dict space keeps them in (sorted by key). `flatten_observation` does that for
every runtime, and a caller in another language does the same by reading the metadata.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Mapping

import numpy as np

ONNX_FILE = "policy.onnx"
"""The graph's file name inside an artifact directory (and a Hub repository)."""
FORMAT_VERSION = 1
"""Version of this contract; a runtime refuses a graph written in a newer one."""
_VERSION_KEY = "diffagent_format_version"  # the metadata key, prefixed: metadata_props is shared with other tools
_INT_KEYS = ("num_steps", "obs_dim", "act_dim")
_JSON_KEYS = ("observation_space", "action_space")
_TEXT_KEYS = ("algo", "policy", "env_id", "library_version")


DICT_SPACE = "dict"
"""The `type` of a Dict observation space's description: {"type": "dict", "spaces": [{"key": ..., "shape": [n],
"low": [...], "high": [...], "dtype": ...}, ...]}; a Box's description has no type."""
MAX_KEYS = 64


def observation_layout(space: Any) -> list[tuple[str, int]] | None:
    """The (key, size) of each value of a Dict observation space's description, in the order the values are
    concatenated into `obs`; None for a Box's. A ValueError says what is malformed."""
    if not isinstance(space, dict) or space.get("type") != DICT_SPACE:
        return None
    entries = space.get("spaces")
    if not isinstance(entries, list) or not 1 <= len(entries) <= MAX_KEYS:
        raise ValueError(f"a Dict space's 'spaces' must list 1 to {MAX_KEYS} entries")
    layout = []
    for entry in entries:
        key = entry.get("key") if isinstance(entry, dict) else None
        shape = entry.get("shape") if isinstance(entry, dict) else None
        if (not isinstance(key, str) or not key or len(key) > 200 or not isinstance(shape, list) or len(shape) != 1
                or not isinstance(shape[0], int) or isinstance(shape[0], bool) or shape[0] < 1):
            raise ValueError("each entry of a Dict space must have a non-empty string 'key' and a shape [n], n >= 1")
        layout.append((key, shape[0]))
    if len({key for key, _ in layout}) != len(layout):
        raise ValueError("a Dict space names a key twice")
    return layout


def flatten_observation(obs: Mapping[str, Any], layout: list[tuple[str, int]]) -> np.ndarray:
    """A Dict observation as the graph's `obs`: each key's value, (size,) or a batch (B, size), concatenated in
    layout order into (obs_dim,) or (B, obs_dim). A ValueError names a missing, extra or misshapen key."""
    if set(obs) != {key for key, _ in layout}:
        raise ValueError(f"a Dict observation must have exactly the keys {[key for key, _ in layout]}, got "
                         f"{sorted(map(str, obs))[:MAX_KEYS]}")
    values = [np.asarray(obs[key]) for key, _ in layout]
    batch_shape = values[0].shape[:-1]
    for (key, size), value in zip(layout, values):
        if value.ndim not in (1, 2) or value.shape != (*batch_shape, size):
            raise ValueError(f"observation[{key!r}] has shape {value.shape}; expected ({size},) or a batch "
                             f"(B, {size}), with the same B for every key")
    return np.concatenate(values, axis=-1)


class ModelLoadError(RuntimeError):
    """The model could not be found, downloaded, parsed, or is not a diffagent policy graph."""


@dataclass(frozen=True)
class PolicyMetadata:
    """What the exporter writes into the graph's metadata_props, parsed."""

    format_version: int
    algo: str
    policy: str
    env_id: str
    num_steps: int
    """K, the number of denoising steps; the noise has K + 1 rows (the prior sample and one per step)."""
    obs_dim: int
    act_dim: int
    observation_space: dict[str, Any] | None
    action_space: dict[str, Any] | None
    library_version: str
    noise_input: bool
    """False for a graph that draws its own noise (its only input is obs)."""

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (what the server's METADATA reply carries)."""
        return asdict(self)

    def to_props(self) -> dict[str, str]:
        """The metadata_props an exporter writes: every value a string, JSON for the spaces."""
        props = {key: str(getattr(self, key)) for key in (*_TEXT_KEYS, *_INT_KEYS)}
        props.update({key: json.dumps(getattr(self, key)) for key in _JSON_KEYS})
        return {_VERSION_KEY: str(self.format_version), **props, "noise_input": str(self.noise_input).lower()}

    @classmethod
    def from_props(cls, props: dict[str, str], source: str) -> "PolicyMetadata":
        """Parse metadata_props; raise ModelLoadError naming the missing or broken key."""
        missing = [key for key in (_VERSION_KEY, *_TEXT_KEYS, *_INT_KEYS, *_JSON_KEYS, "noise_input")
                   if key not in props]
        if missing:
            raise ModelLoadError(f"{source} is not a diffagent policy graph: its metadata lacks {', '.join(missing)}. "
                                 "Export the policy with `diffagent export MODEL_DIR`.")
        try:
            version = int(props[_VERSION_KEY])
            numbers = {key: int(props[key]) for key in _INT_KEYS}
            spaces = {key: json.loads(props[key]) for key in _JSON_KEYS}
        except (ValueError, TypeError) as err:
            raise ModelLoadError(f"{source}: malformed diffagent metadata ({err}); re-export the policy with "
                                 "`diffagent export MODEL_DIR`.") from None
        if version > FORMAT_VERSION:
            raise ModelLoadError(f"{source} was written in diffagent format version {version}, newer than the "
                                 f"{FORMAT_VERSION} this runtime reads; upgrade diffagent: pip install -U diffagent")
        noise_input = props["noise_input"].strip().lower()
        if noise_input not in ("true", "false"):
            raise ModelLoadError(f"{source}: metadata noise_input is {props['noise_input']!r}, expected 'true' or "
                                 "'false'; re-export the policy.")
        return cls(format_version=version, noise_input=noise_input == "true",
                   **{key: props[key] for key in _TEXT_KEYS}, **numbers, **spaces)


__all__ = ["ONNX_FILE", "FORMAT_VERSION", "ModelLoadError", "PolicyMetadata", "DICT_SPACE", "observation_layout",
           "flatten_observation"]
