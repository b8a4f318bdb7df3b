"""ONNX export of a policy's pure function f(obs, noise) -> action, and its check against PyTorch.

    agent.export_onnx("runs/pendulum/policy.onnx")          # or: diffagent export runs/pendulum

The graph unrolls the whole K-step chain, with observation normalisation in and rescaling to the
action box out, so a robot feeds raw observations and gets actions in the env's units:

    inputs   obs    float32 [batch, obs_dim]       raw observations
             noise  float32 [batch, K+1, act_dim]  standard normal; zeros give the deterministic action
    output   action float32 [batch, act_dim]       inside the action box

The second form (`sample_noise=True`) has `obs` as its only input and draws the noise inside the
graph with RandomNormalLike, for callers with no noise to give. Each call draws afresh from a generator
that onnxruntime seeds, when the session is created, with its process-wide seed (random per process,
fixed by `onnxruntime.set_seed`): two sessions made in one process draw the same sequence unless
`onnxruntime.set_seed` is given distinct values before each. The deterministic action is the first
form's with zero noise.
The model's metadata_props (all strings; `load_onnx_metadata` parses them back) say what the graph is.

Why the TorchScript exporter (`dynamo=False`): on DiffSAC's K = 8, 256x256 chain it exports in 0.3 s
against 6-9 s for the torch.export-based one, and once onnxruntime has optimised them the two graphs
are the same size (146 and 141 nodes) and equally fast (about 145 us at batch 1 on one thread). It is
deprecated: if torch removes it, switch to `dynamo=True` with `dynamic_shapes`; the parity tests
catch any difference. Opset 17 runs on onnxruntime >= 1.13 and on every current runtime. The file
holds the exporter's graph, not onnxruntime's optimised one: onnxruntime optimises again when it
loads a model, and its ORT_ENABLE_ALL graph holds contrib ops (BiasGelu) and CPU-specific layouts
that other runtimes lack.
"""

from __future__ import annotations

import io
import json
import threading
import warnings
from pathlib import Path
from typing import Any, Sequence

import click
import numpy as np
import onnx
import onnxruntime as ort
import torch
from google.protobuf.message import DecodeError
from onnx import TensorProto, helper

from diffagent.errors import ArtifactError
from diffagent.io import FORMAT_VERSION, ONNX_FILE, atomic_write
from diffagent.policies import Policy
from serve.runtime import session_options

OPSET = 17
# max |onnxruntime - torch| allowed, in units of half the action box's widest side. Batched matmuls sum
# in a different order in each runtime, and a trained chain can amplify that: a K = 8 DiffSAC policy
# with four sharp modes (zoo/models/diffsac-FourPeaks-v0) measured 2.4e-5 at batch 1024, 2.4e-7 at batch 1.
PARITY_TOLERANCE = 1e-4
_SAMPLER = "sample_noise/"  # name prefix of the nodes that draw the noise in the second form
_INT_KEYS = ("diffagent_format_version", "num_steps", "obs_dim", "act_dim")
_JSON_KEYS = ("observation_space", "action_space")


def export_onnx(policy: Policy, meta: dict[str, Any], path: str | Path, *, sample_noise: bool = False) -> Path:
    """Write `policy` as an ONNX graph to `path` (atomically) and return the path.

    `meta` is `Agent._meta()`: algo, policy, env_id, observation_space, action_space, library_version.
    """
    device = policy.action_low.device
    example = (torch.zeros(2, policy.obs_dim, device=device), torch.zeros(policy.noise_shape(2), device=device))
    model = _trace_to_onnx(policy, example,
                           dynamic_axes={"obs": {0: "batch"}, "noise": {0: "batch"}, "action": {0: "batch"}})
    # The tracer's shape inference can leave act_dim symbolic; the contract is [batch, act_dim].
    action_dims = model.graph.output[0].type.tensor_type.shape.dim
    action_dims[1].dim_value = policy.act_dim
    if sample_noise:
        _add_noise_sampler(model, policy.num_steps, policy.act_dim)
    inputs = "obs [batch, obs_dim]" if sample_noise else "obs [batch, obs_dim], noise [batch, K+1, act_dim]"
    model.doc_string = f"diffagent {meta['algo']} policy for {meta['env_id']}: {inputs} -> action in the action box"
    helper.set_model_props(model, {
        "diffagent_format_version": str(FORMAT_VERSION), "algo": meta["algo"], "policy": meta["policy"],
        "env_id": meta["env_id"], "num_steps": str(policy.num_steps), "obs_dim": str(policy.obs_dim),
        "act_dim": str(policy.act_dim), "observation_space": json.dumps(meta["observation_space"]),
        "action_space": json.dumps(meta["action_space"]), "library_version": meta["library_version"],
        "noise_input": "false" if sample_noise else "true"})
    onnx.checker.check_model(model, full_check=True)
    path = Path(path)
    atomic_write(path, lambda tmp: onnx.save(model, tmp))
    return path


def _trace_to_onnx(policy: Policy, example: tuple[torch.Tensor, torch.Tensor], **options: Any) -> onnx.ModelProto:
    """The policy's forward(obs, noise) -> action as an ONNX graph, by the TorchScript exporter."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice is for us, not the user
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed")
        torch.onnx.export(policy, example, buffer, dynamo=False, opset_version=OPSET, input_names=["obs", "noise"],
                          output_names=["action"], **options)
    return onnx.load_from_string(buffer.getvalue())


class LiveOnnxPolicy:
    """A policy's forward(obs, noise) run by onnxruntime on the policy's own parameter memory.

    On-policy training acts once per env step on a batch of num_envs observations, where torch's
    per-op dispatch dominates: at K = 8 the chain is ~150 tiny ops, 576 us per action traced by
    torch.jit against 153 us in onnxruntime (DiffPPO on Hopper, batch 1, one thread:
    benchmarks/acting_latency.py; benchmarks/ppo_throughput.py times the whole loop). The graph
    takes every parameter and buffer as an input (exported without parameters or constant
    folding), and `bind` points those inputs at the tensors' memory: optimizer steps and statistics
    updates happen in place, so the session always acts with the current policy and nothing is
    exported again. CPU only; the batch is fixed, which lets onnxruntime fold shapes.
    """

    def __init__(self, policy: Policy, batch: int, threads: int = 1):
        if policy.action_low.device.type != "cpu":
            raise ValueError("LiveOnnxPolicy runs on CPU tensors; act with torch on other devices.")
        self.policy = policy
        example = (torch.zeros(batch, policy.obs_dim), torch.zeros(policy.noise_shape(batch)))
        model = _trace_to_onnx(policy, example, export_params=False, do_constant_folding=False)
        self.session = ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                            providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self.session.get_inputs() if i.name not in ("obs", "noise")]
        self.action = torch.empty(batch, policy.act_dim)
        self.binding = self.session.io_binding()
        _bind(self.binding, "action", self.action, output=True)
        self._lock = threading.Lock()  # one binding is shared by every call
        self.bind()

    def bind(self) -> None:
        """Point the graph's parameter inputs at the policy's tensors (again, should any have been replaced).

        In-place updates need no new bind; it costs ~120 us, so callers bind once per rollout. The
        bound tensors are kept referenced, so a parameter replaced after binding (`module.to`,
        `load_state_dict(assign=True)`) leaves the session reading the old values until the next
        `bind`, never freed memory.
        """
        tensors = {**dict(self.policy.named_parameters()), **dict(self.policy.named_buffers())}
        unknown = [name for name in self._inputs if name not in tensors]
        if unknown:
            raise RuntimeError(f"the exported chain takes inputs that are not tensors of the policy: {unknown}")
        self._bound = [tensors[name].detach() for name in self._inputs]
        for name, tensor in zip(self._inputs, self._bound):
            _bind(self.binding, name, tensor)

    def __call__(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """Actions (batch, act_dim) in the env's units, a new tensor, for float32 CPU obs (batch, obs_dim)
        and noise (batch, K+1, A). Thread-safe: calls share one binding and take turns."""
        with self._lock:
            _bind(self.binding, "obs", obs)
            _bind(self.binding, "noise", noise)
            self.session.run_with_iobinding(self.binding)
            return self.action.clone()


def _bind(binding: ort.IOBinding, name: str, tensor: torch.Tensor, output: bool = False) -> None:
    if tensor.dtype != torch.float32 or not tensor.is_contiguous() or tensor.device.type != "cpu":
        raise ValueError(f"{name}: onnxruntime reads contiguous float32 CPU tensors in place, got a "
                         f"{'' if tensor.is_contiguous() else 'non-contiguous '}{tensor.dtype} tensor on "
                         f"{tensor.device}; pass tensor.contiguous().float().cpu()")
    bind = binding.bind_output if output else binding.bind_input
    bind(name, "cpu", 0, np.float32, list(tensor.shape), tensor.data_ptr())


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
        "noise", TensorProto.FLOAT, ["batch", meta["num_steps"] + 1, meta["act_dim"]]))
    return inner


def load_onnx_metadata(model: str | Path | onnx.ModelProto) -> dict[str, Any]:
    """The diffagent metadata of an exported model: ints as ints, spaces as dicts, noise_input as a bool."""
    if not isinstance(model, onnx.ModelProto):
        model = _load_model(Path(model))
    props = {p.key: p.value for p in model.metadata_props}
    if "diffagent_format_version" not in props:
        raise ArtifactError("this ONNX model has no diffagent metadata; export it with `diffagent export MODEL_DIR`.")
    meta: dict[str, Any] = dict(props)
    try:
        meta.update({key: int(props[key]) for key in _INT_KEYS})
        meta.update({key: json.loads(props[key]) for key in _JSON_KEYS})
        meta["noise_input"] = {"true": True, "false": False}[props["noise_input"]]
    except (KeyError, ValueError) as err:
        raise ArtifactError(f"the ONNX model's diffagent metadata is incomplete or corrupted ({err!r}); "
                            "export it again with `diffagent export MODEL_DIR`.") from None
    if meta["diffagent_format_version"] > FORMAT_VERSION:
        raise ArtifactError(f"the ONNX model has format version {meta['diffagent_format_version']}, newer than this "
                            f"diffagent understands ({FORMAT_VERSION}). Upgrade diffagent: pip install -U diffagent")
    return meta


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
    if not meta["noise_input"]:
        model = _without_noise_sampler(model)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(seed)
    device = policy.action_low.device
    errors = {}
    for batch in batch_sizes:
        obs = _sample_obs(policy, meta["observation_space"], batch, rng)
        noise = rng.standard_normal(policy.noise_shape(batch)).astype(np.float32)
        (ours,) = session.run(None, {"obs": obs, "noise": noise})
        with torch.inference_mode():
            reference = policy(torch.from_numpy(obs).to(device), torch.from_numpy(noise).to(device)).cpu().numpy()
        errors[batch] = float(np.abs(ours - reference).max())
    if tolerance is not None:
        allowed = tolerance * max(1.0, float((policy.action_high - policy.action_low).max()) / 2)
        if max(errors.values()) > allowed:
            raise ArtifactError(f"{path} disagrees with PyTorch: max |onnxruntime - torch| = {_format(errors)} "
                                f"(tolerance {allowed:g}). Please report it with the model directory.")
    return errors


def _sample_obs(policy: Policy, space: dict, batch: int, rng: np.random.Generator) -> np.ndarray:
    norm = policy.obs_normalizer
    if norm.enabled and norm.count > 0:
        center, scale = norm.mean.cpu().numpy(), norm.var.sqrt().cpu().numpy()
    else:  # across the box; unit scale on unbounded sides
        low, high = (np.array([np.nan if v is None else v for v in space[k]], np.float64) for k in ("low", "high"))
        bounded = np.isfinite(low) & np.isfinite(high)
        center = np.where(bounded, (low + high) / 2, 0.0)
        scale = np.where(bounded, (high - low) / 2, 1.0)
    return (center + scale * rng.standard_normal((batch, policy.obs_dim))).astype(np.float32)


def _format(errors: dict[int, float]) -> str:
    return ", ".join(f"{error:.2e} at batch {batch}" for batch, error in errors.items())


@click.command("export")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help=f"Output file [default: MODEL_DIR/{ONNX_FILE}].")
@click.option("--sample-noise", is_flag=True, help="Export the form that draws its own noise (input: obs only).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help=f"Compare onnxruntime against PyTorch at batch 1 and 1024 (fails above {PARITY_TOLERANCE:g} of the "
                   "action range).")
def export_command(model_dir: str, out: str | None, sample_noise: bool, verify: bool) -> None:
    """Export a saved agent's policy to ONNX: the whole chain, normalisation and action rescaling inside."""
    from diffagent.cli import friendly_errors  # here, not at the top: diffagent.cli imports this module

    friendly_errors(_export)(model_dir, out, sample_noise, verify)


def _export(model_dir: str, out: str | None, sample_noise: bool, verify: bool) -> None:
    from diffagent import Agent

    agent = Agent.from_pretrained(model_dir)
    path = agent.export_onnx(out or Path(model_dir) / ONNX_FILE, sample_noise=sample_noise, verify=False)
    form = "obs -> action, noise drawn inside" if sample_noise else "(obs, noise) -> action"
    click.echo(f"wrote {path}: {agent.algo} on {agent.env_id}, K = {agent.policy.num_steps}, {form}")
    if verify:
        click.echo(f"verified: max |onnxruntime - torch| = {_format(verify_onnx(agent.policy, path))}")
