"""ONNX export of a policy's pure function f(obs, noise) -> action, and its check against PyTorch.

    export_onnx(agent, "runs/pendulum/policy.onnx")          # or: diffagent export runs/pendulum

The graph unrolls the whole K-step chain, with observation normalisation in and rescaling to the
action box out, so a robot feeds raw observations and gets actions in the env's units:

    inputs   obs    float32 [batch, obs_dim]       raw observations
             noise  float32 [batch, K+1, act_dim]  standard normal; zeros give the deterministic action
    output   action float32 [batch, act_dim]       inside the action box

A Dict observation (a Dict of 1-D Boxes) is one `obs` row: its keys' values concatenated in the order
the metadata's observation_space lists them, Gymnasium's Dict order (serve/contract.py; serve's
runtime and client take the mapping and lay it out so).

The second form (`sample_noise=True`) has `obs` as its only input and draws the noise inside the
graph with RandomNormalLike, for callers with no noise to give. Each call draws afresh from a generator
that onnxruntime seeds, when the session is created, with its process-wide seed (random per process,
fixed by `onnxruntime.set_seed`): two sessions made in one process draw the same sequence unless
`onnxruntime.set_seed` is given distinct values before each. The deterministic action is the first
form's with zero noise.
The model's metadata_props say what the graph is; their keys and format are serve's (serve/contract.py),
so every runtime reads what this module writes.

Why the TorchScript exporter (`dynamo=False`): on DiffSAC's K = 8 chain it exported in a fraction of
a second against several seconds for the torch.export-based one, and once onnxruntime has optimised
them the two graphs were about the same size and equally fast at batch 1. It is
deprecated: if torch removes it, switch to `dynamo=True` with `dynamic_shapes`; the parity tests
catch any difference. Opset 17 runs on onnxruntime >= 1.13 and on every current runtime. The file
holds the exporter's graph, not onnxruntime's optimised one: onnxruntime optimises again when it
loads a model, and its ORT_ENABLE_ALL graph holds contrib ops (BiasGelu) and CPU-specific layouts
that other runtimes lack.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import onnx
import onnxruntime as ort
import torch
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper

from diffagent import __version__
from diffagent.envs import space_to_dict
from diffagent.errors import ArtifactError
from diffagent.io import atomic_write
from diffagent.policies import Policy
from diffagent.policies.onnx import INPUTS, OUTPUT, trace_to_onnx
from serve.contract import FORMAT_VERSION, ONNX_FILE, ModelLoadError, PolicyMetadata, observation_layout

if TYPE_CHECKING:
    from diffagent.agent import Agent

# max |onnxruntime - torch| allowed, in units of half the action box's widest side. Batched matmuls sum
# in a different order in each runtime, and a trained chain can amplify that: a K = 8 DiffSAC policy
# with four sharp modes (zoo/models/diffsac-FourPeaks-v0) measured 2.4e-5 at batch 1024, 2.4e-7 at batch 1.
PARITY_TOLERANCE = 1e-4
_SAMPLER = "sample_noise/"  # name prefix of the nodes that draw the noise in the second form


def export_onnx(agent: Agent, path: str | Path, *, sample_noise: bool = False, verify: bool = True) -> Path:
    """Write the agent's policy as an ONNX graph to `path` (atomically) and return the path.

    `sample_noise` exports the form whose only input is obs (the noise is drawn in the graph).
    `verify` checks onnxruntime against PyTorch and raises an ArtifactError if they differ by more than
    PARITY_TOLERANCE of the action range.
    """
    policy = agent.policy
    device = policy.action_low.device
    example = (torch.zeros(2, policy.obs_dim, device=device), torch.zeros(policy.noise_shape(2), device=device))
    model = trace_to_onnx(policy, example, dynamic_axes={name: {0: "batch"} for name in (*INPUTS, OUTPUT)})
    # The tracer's shape inference can leave act_dim symbolic; the contract is [batch, act_dim].
    action_dims = model.graph.output[0].type.tensor_type.shape.dim
    action_dims[1].dim_value = policy.act_dim
    if sample_noise:
        _add_noise_sampler(model, policy.num_steps, policy.act_dim)
    inputs = "obs [batch, obs_dim]" if sample_noise else "obs [batch, obs_dim], noise [batch, K+1, act_dim]"
    model.doc_string = f"diffagent {agent.algo} policy for {agent.env_id}: {inputs} -> action in the action box"
    metadata = PolicyMetadata(
        format_version=FORMAT_VERSION, algo=agent.algo, policy=agent.spec.policy.family, env_id=agent.env_id,
        num_steps=policy.num_steps, obs_dim=policy.obs_dim, act_dim=policy.act_dim,
        observation_space=space_to_dict(agent.observation_space), action_space=space_to_dict(agent.action_space),
        library_version=__version__, noise_input=not sample_noise)
    helper.set_model_props(model, metadata.to_props())
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    atomic_write(path, lambda tmp: onnx.save(model, tmp))
    if verify:
        verify_onnx(policy, path)
    return path


def _add_noise_sampler(model: onnx.ModelProto, num_steps: int, act_dim: int) -> None:
    """Replace the `noise` input by standard normal draws of shape (batch, K+1, act_dim) made in the graph."""
    graph = model.graph
    graph.input.remove(next(i for i in graph.input if i.name == "noise"))
    tail = helper.make_tensor(_SAMPLER + "tail", TensorProto.INT64, [2], [num_steps + 1, act_dim])
    batch, shape, zeros = _SAMPLER + "batch", _SAMPLER + "shape", _SAMPLER + "zeros"
    sampler = [helper.make_node("Shape", ["obs"], [batch], name=batch, start=0, end=1),
               helper.make_node("Constant", [], [tail.name], name=tail.name, value=tail),
               helper.make_node("Concat", [batch, tail.name], [shape], name=shape, axis=0),
               helper.make_node("ConstantOfShape", [shape], [zeros], name=zeros),  # float32 zeros by default
               helper.make_node("RandomNormalLike", [zeros], ["noise"], name=_SAMPLER + "noise")]
    nodes = sampler + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)


def _without_noise_sampler(model: onnx.ModelProto) -> onnx.ModelProto:
    """The (obs, noise) graph inside a sample-noise model, so it can be checked with given noise."""
    inner = onnx.ModelProto()
    inner.CopyFrom(model)
    kept = [node for node in inner.graph.node if not node.name.startswith(_SAMPLER)]
    del inner.graph.node[:]
    inner.graph.node.extend(kept)
    meta = load_onnx_metadata(model)
    inner.graph.input.append(helper.make_tensor_value_info(
        "noise", TensorProto.FLOAT, ["batch", meta.num_steps + 1, meta.act_dim]))
    return inner


def load_onnx_metadata(model: str | Path | onnx.ModelProto) -> PolicyMetadata:
    """The diffagent metadata of an exported model, parsed by serve's contract."""
    source = "the ONNX model" if isinstance(model, onnx.ModelProto) else str(model)
    if not isinstance(model, onnx.ModelProto):
        model = _load_model(Path(model))
    try:
        return PolicyMetadata.from_props({p.key: p.value for p in model.metadata_props}, source)
    except ModelLoadError as err:
        raise ArtifactError(str(err)) from None


def _load_model(path: Path) -> onnx.ModelProto:
    if not path.is_file():
        raise ArtifactError(f"no ONNX model at {path}; write one with `diffagent export MODEL_DIR`.")
    try:
        return onnx.load(str(path))
    except (DecodeError, OSError, ValueError) as err:
        raise ArtifactError(f"{path} is not a readable ONNX model ({err}); export it again.") from None


def verify_onnx(policy: Policy, path: str | Path, batch_sizes: Sequence[int] = (1, 1024), seed: int = 0,
                tolerance: float | None = PARITY_TOLERANCE) -> dict[int, float]:
    """max |onnxruntime - PyTorch| over the actions of each batch size, with the same obs and noise.

    Observations are drawn on the scale of real ones (around the normaliser's statistics, or across
    the observation box). A sample-noise model is checked through the (obs, noise) graph inside it.
    Raises an ArtifactError if an error exceeds `tolerance` times half the widest side of the action
    box (at least 1), i.e. a relative error in the env's units (None: never).
    """
    model = _load_model(Path(path))
    meta = load_onnx_metadata(model)
    if not meta.noise_input:
        model = _without_noise_sampler(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    device = policy.action_low.device
    errors = {}
    for batch in batch_sizes:
        obs = _sample_obs(policy, meta.observation_space, batch, rng)
        noise = rng.standard_normal(policy.noise_shape(batch)).astype(np.float32)
        (ours,) = session.run(None, {"obs": obs, "noise": noise})
        with torch.inference_mode():
            reference = policy(torch.from_numpy(obs).to(device), torch.from_numpy(noise).to(device)).cpu().numpy()
        errors[batch] = float(np.abs(ours - reference).max())
    if tolerance is not None:
        allowed = tolerance * max(1.0, float((policy.action_high - policy.action_low).max()) / 2)
        if max(errors.values()) > allowed:
            raise ArtifactError(f"{path} disagrees with PyTorch: max |onnxruntime - torch| = {format_parity(errors)} "
                                f"(tolerance {allowed:g}). Please report it with the model directory.")
    return errors


def _sample_obs(policy: Policy, space: dict, batch: int, rng: np.random.Generator) -> np.ndarray:
    norm = policy.obs_normalizer
    if norm.enabled and norm.count > 0:
        center, scale = norm.mean.cpu().numpy(), norm.var.sqrt().cpu().numpy()
    else:  # across the box (every key's, for a Dict); unit scale on unbounded sides
        boxes = space["spaces"] if observation_layout(space) is not None else [space]
        low, high = (np.array([np.nan if v is None else v for box in boxes for v in box[k]], np.float64)
                     for k in ("low", "high"))
        bounded = np.isfinite(low) & np.isfinite(high)
        center = np.where(bounded, (low + high) / 2, 0.0)
        scale = np.where(bounded, (high - low) / 2, 1.0)
    return (center + scale * rng.standard_normal((batch, policy.obs_dim))).astype(np.float32)


def format_parity(errors: dict[int, float]) -> str:
    """`verify_onnx`'s errors on one line."""
    return ", ".join(f"{error:.2e} at batch {batch}" for batch, error in errors.items())


__all__ = ["export_onnx", "verify_onnx", "format_parity", "load_onnx_metadata", "PARITY_TOLERANCE", "ONNX_FILE"]
