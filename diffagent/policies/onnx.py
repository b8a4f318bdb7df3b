"""The ONNX backend: a policy's chain run by onnxruntime, for acting at small batches on a CPU, and for
off-policy training's gradient-free soft target.

Torch dispatches each of the chain's small ops separately, which dominates at batch 1 to a few
dozen; onnxruntime runs the traced chain several times faster there (benchmarks/acting_latency.py),
and about twice as fast at a batch of 256. `LiveOnnxModule` reads a module's parameters in place, so
it always computes with the current ones; `LiveOnnxPolicy` is a policy's acting function.
The exporter (diffagent/export.py) traces through the same function, `trace_to_onnx`.
"""

from __future__ import annotations

import io
import threading
import warnings
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from diffagent.errors import ConfigError, InputError
from diffagent.policies.base import Policy
from serve.runtime import session_options

OPSET = 17
INPUTS, OUTPUT = ["obs", "noise"], "action"


def trace_to_onnx(module: nn.Module, example: tuple[torch.Tensor, ...], input_names: list[str] = INPUTS,
                  output_name: str = OUTPUT, **options: Any) -> onnx.ModelProto:
    """A module's forward (a policy's: (obs, noise) -> action) as an ONNX graph, by the TorchScript exporter."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice is for us, not the user
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed")
        torch.onnx.export(module, example, buffer, dynamo=False, opset_version=OPSET, input_names=input_names,
                          output_names=[output_name], **options)
    return onnx.load_from_string(buffer.getvalue())


class SquashedAction(nn.Module):
    """A policy's action in [-1, 1] as a module's forward(obs, noise): what off-policy training stores."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.policy = policy

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.policy.squashed_action(obs, noise)


class LiveOnnxModule:
    """A module's forward(*inputs) -> one tensor, run by onnxruntime on the module's own parameter memory.

    The graph takes every parameter and buffer as an input (exported without parameters or constant
    folding), and `bind` points those inputs at the tensors' memory: optimizer steps, Polyak averages
    and statistics updates happen in place, so the session always computes with the current values
    and nothing is exported again. CPU only; the shapes are the example's, fixed, which lets
    onnxruntime fold them.
    """

    def __init__(self, module: nn.Module, example: tuple[torch.Tensor, ...], input_names: list[str],
                 output_name: str, threads: int = 1):
        if any(t.device.type != "cpu" for t in (*module.parameters(), *module.buffers())):
            raise ConfigError(f"{type(self).__name__} runs on CPU tensors; use torch on other devices.")
        self.module, self.input_names = module, input_names
        model = trace_to_onnx(module, example, input_names, output_name, export_params=False,
                              do_constant_folding=False)
        self.session = ort.InferenceSession(model.SerializeToString(), session_options(threads),
                                            providers=["CPUExecutionProvider"])
        self._inputs = [i.name for i in self.session.get_inputs() if i.name not in input_names]
        self.output = torch.empty(self.session.get_outputs()[0].shape)
        self.binding = self.session.io_binding()
        _bind(self.binding, output_name, self.output, output=True)
        self._lock = threading.Lock()  # one binding is shared by every call
        self.bind()

    def bind(self) -> None:
        """Point the graph's parameter inputs at the module's tensors (again, should any have been replaced).

        In-place updates need no new bind; it costs about as much as a call, so callers bind once per rollout
        or evaluation. The
        bound tensors are kept referenced, so a parameter replaced after binding (`module.to`,
        `load_state_dict(assign=True)`) leaves the session reading the old values until the next
        `bind`, never freed memory.
        """
        tensors = {**dict(self.module.named_parameters()), **dict(self.module.named_buffers())}
        unknown = [name for name in self._inputs if name not in tensors]
        if unknown:
            raise RuntimeError(f"the exported graph takes inputs that are not tensors of the module: {unknown}")
        self._bound = [tensors[name].detach() for name in self._inputs]
        for name, tensor in zip(self._inputs, self._bound):
            _bind(self.binding, name, tensor)

    def __call__(self, *inputs: torch.Tensor) -> torch.Tensor:
        """The output, a new tensor, for contiguous float32 CPU inputs of the example's shapes. Thread-safe:
        calls share one binding and take turns."""
        with self._lock:
            for name, tensor in zip(self.input_names, inputs):
                _bind(self.binding, name, tensor)
            self.session.run_with_iobinding(self.binding)
            return self.output.clone()


class LiveOnnxPolicy(LiveOnnxModule):
    """A policy's forward(obs, noise) -> actions (batch, act_dim) in the env's units, run by onnxruntime.

    On-policy training acts once per env step on a batch of num_envs observations, off-policy training
    and evaluation on one: there torch's per-op dispatch dominates, as the chain is ~150 tiny ops at K = 8, and
    onnxruntime runs it several times faster than a torch.jit trace (benchmarks/acting_latency.py
    measures both; benchmarks/throughput.py times the whole loop). Inputs: float32 CPU obs
    (batch, obs_dim) and noise (batch, K+1, A).
    `squashed=True` runs `policy.squashed_action` instead: the action in [-1, 1], before the env's box,
    which SAC and WPO act with and store.
    """

    def __init__(self, policy: Policy, batch: int, threads: int = 1, squashed: bool = False):
        if policy.action_low.device.type != "cpu":
            raise ConfigError("LiveOnnxPolicy runs on CPU tensors; act with torch on other devices.")
        self.policy = policy
        example = (torch.zeros(batch, policy.obs_dim), torch.zeros(policy.noise_shape(batch)))
        super().__init__(SquashedAction(policy) if squashed else policy, example, INPUTS, OUTPUT, threads)


def _bind(binding: ort.IOBinding, name: str, tensor: torch.Tensor, output: bool = False) -> None:
    if tensor.dtype != torch.float32 or not tensor.is_contiguous() or tensor.device.type != "cpu":
        raise InputError(f"{name}: onnxruntime reads contiguous float32 CPU tensors in place, got a "
                         f"{'' if tensor.is_contiguous() else 'non-contiguous '}{tensor.dtype} tensor on "
                         f"{tensor.device}; pass tensor.contiguous().float().cpu()")
    bind = binding.bind_output if output else binding.bind_input
    bind(name, "cpu", 0, np.float32, list(tensor.shape), tensor.data_ptr())
