"""The ONNX contract: what `diffagent.export` writes and every runtime reads, in one place.

A policy graph takes `obs` float32 [B, obs_dim] and, unless it draws its own noise, `noise` float32
[B, K+1, act_dim]; it returns `action` float32 [B, act_dim] inside the environment's bounds. What a
runtime needs to check its inputs travels in the model's metadata_props, as `PolicyMetadata` lists
it. serve sits under diffagent (it never imports it), so the exporter writes through this module.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

ONNX_FILE = "policy.onnx"
"""The graph's file name inside an artifact directory (and a Hub repository)."""
FORMAT_VERSION = 1
"""Version of this contract; a runtime refuses a graph written in a newer one."""
_VERSION_KEY = "diffagent_format_version"  # the metadata key, prefixed: metadata_props is shared with other tools
_INT_KEYS = ("num_steps", "obs_dim", "act_dim")
_JSON_KEYS = ("observation_space", "action_space")
_TEXT_KEYS = ("algo", "policy", "env_id", "library_version")


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


__all__ = ["ONNX_FILE", "FORMAT_VERSION", "ModelLoadError", "PolicyMetadata"]
