"""A policy as a model of NVIDIA Triton Inference Server: `diffagent export MODEL_DIR --triton REPO`.

    REPO/NAME/config.pbtxt     Triton's model configuration (model_config.proto, protobuf text format)
    REPO/NAME/1/model.onnx     the policy graph of diffagent.export (serve/contract.py's ONNX contract), version 1

Triton runs the graph with its ONNX Runtime backend and batches the requests of many clients into one
call itself (dynamic batching); it adds model versions, metrics and the KServe v2 HTTP/gRPC protocol,
which is what serving many models or many robots on GPUs takes. A request carries `obs` [B, obs_dim]
and `noise` [B, K+1, act_dim] (zeros: the deterministic action) and gets `action` [B, act_dim]; the
sample-noise form takes `obs` alone.

The configuration's inputs and output are read back from the exported graph, less its batch
dimension, so the two cannot disagree. Triton's schema is not needed to write it (tritonclient is an
optional dependency); tests/test_triton.py parses every file written with it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING

import onnx
from onnx import TensorProto

from diffagent.errors import ArtifactError, ConfigError
from diffagent.export import export_onnx
from diffagent.io import atomic_write

if TYPE_CHECKING:
    from diffagent.agent import Agent

CONFIG_FILE = "config.pbtxt"
MODEL_FILE = "model.onnx"  # the file Triton's ONNX Runtime backend loads from a version directory by default
PLATFORM = "onnxruntime_onnx"
VERSION = 1
DEFAULT_MAX_BATCH = 1024  # as serve's --max-batch
# Where Triton places each model instance: KIND_AUTO takes a GPU when the server has one, else the CPU.
INSTANCE_KINDS = {"auto": "KIND_AUTO", "gpu": "KIND_GPU", "cpu": "KIND_CPU"}
# Triton's data types (model_config.proto's DataType) of the ONNX element types a policy graph uses.
DATA_TYPES = {TensorProto.FLOAT: "TYPE_FP32"}
_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


def default_model_name(algo: str, env_id: str) -> str:
    """`algo-env_id` with every character a directory name may not hold (the `/` of `ns/Env-v0`) made a `-`."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", f"{algo}-{env_id}")


def export_triton(agent: Agent, repository: str | Path, *, name: str | None = None,
                  max_batch_size: int = DEFAULT_MAX_BATCH, instances: int = 1, kind: str = "auto",
                  max_queue_delay_us: int = 0, sample_noise: bool = False, verify: bool = True) -> Path:
    """Write the agent's policy into the Triton model repository `repository`; returns REPO/NAME.

    `name` defaults to `default_model_name`. `max_batch_size` is the most rows Triton puts in one call;
    `instances` copies of the model run on `kind` ("auto", "gpu" or "cpu"). Dynamic batching waits up to
    `max_queue_delay_us` for more requests before a call: 0, as serve does, batches what is queued when an
    instance is free and adds no wait at low load. `sample_noise` and `verify` are export_onnx's. An
    existing version 1 and configuration of NAME are replaced.
    """
    name = default_model_name(agent.algo, agent.env_id) if name is None else name
    if not _NAME.fullmatch(name):
        raise ConfigError(f"Triton model name {name!r} must be a directory name of letters, digits, '_', '.' and "
                          "'-', not starting with '.' or '-'; pick another name")
    for setting, value, least in (("max_batch_size", max_batch_size, 1), ("instances", instances, 1),
                                  ("max_queue_delay_us", max_queue_delay_us, 0)):
        if not isinstance(value, int) or value < least:
            raise ConfigError(f"Triton {setting} must be an integer >= {least}, got {value!r}")
    if kind not in INSTANCE_KINDS:
        raise ConfigError(f"Triton instance kind {kind!r} is unknown; use one of {', '.join(INSTANCE_KINDS)}")
    model_dir = Path(repository) / name
    graph_path = export_onnx(agent, model_dir / str(VERSION) / MODEL_FILE, sample_noise=sample_noise, verify=verify)
    header = (f"# diffagent {agent.algo} policy for {agent.env_id}, K = {agent.policy.num_steps}, written by "
              "`diffagent export --triton`.\n# Inputs and output are the ONNX graph's, less the batch dimension.\n")
    config = header + triton_config(onnx.load(str(graph_path)), name, max_batch_size=max_batch_size,
                                    instances=instances, kind=kind, max_queue_delay_us=max_queue_delay_us)
    atomic_write(model_dir / CONFIG_FILE, lambda tmp: Path(tmp).write_text(config, encoding="utf-8"))
    return model_dir


def triton_config(model: onnx.ModelProto, name: str, *, max_batch_size: int, instances: int, kind: str,
                  max_queue_delay_us: int) -> str:
    """The config.pbtxt text of `model`: its inputs and outputs, batched by Triton up to max_batch_size."""
    inputs = ",\n".join(_tensor_config(value) for value in model.graph.input)
    outputs = ",\n".join(_tensor_config(value) for value in model.graph.output)
    return (f'name: "{name}"\nplatform: "{PLATFORM}"\nmax_batch_size: {max_batch_size}\n'
            f"input [\n{inputs}\n]\noutput [\n{outputs}\n]\n"
            f"dynamic_batching {{\n  max_queue_delay_microseconds: {max_queue_delay_us}\n}}\n"
            f"instance_group [\n  {{\n    count: {instances}\n    kind: {INSTANCE_KINDS[kind]}\n  }}\n]\n")


def _tensor_config(value: onnx.ValueInfoProto) -> str:
    """One entry of config.pbtxt's input or output list; Triton's dims leave out the batch dimension."""
    tensor = value.type.tensor_type
    dims = tensor.shape.dim[1:]
    if tensor.elem_type not in DATA_TYPES or not all(dim.HasField("dim_value") and dim.dim_value > 0 for dim in dims):
        raise ArtifactError(f"the exported graph's {value.name!r} is not a float32 tensor of fixed size after its "
                            "batch dimension, which the ONNX contract promises; please report it with the model "
                            "directory")
    shape = ", ".join(str(dim.dim_value) for dim in dims)
    return (f'  {{\n    name: "{value.name}"\n    data_type: {DATA_TYPES[tensor.elem_type]}\n'
            f"    dims: [ {shape} ]\n  }}")


__all__ = ["export_triton", "triton_config", "default_model_name", "CONFIG_FILE", "MODEL_FILE", "PLATFORM",
           "VERSION", "DEFAULT_MAX_BATCH", "INSTANCE_KINDS"]
