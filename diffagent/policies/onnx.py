"""The ONNX acting backend: a policy's chain run by onnxruntime, for acting at small batches on a CPU.

Torch dispatches each of the chain's small ops separately, which dominates at batch 1 to a few
dozen; onnxruntime runs the traced chain several times faster there (benchmarks/acting_latency.py).
`LiveOnnxPolicy` reads the policy's parameters in place, so it always acts with the current policy.
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


def trace_to_onnx(policy: nn.Module, example: tuple[torch.Tensor, torch.Tensor], **options: Any) -> onnx.ModelProto:
    """A policy's forward(obs, noise) -> action (or its `SquashedAction`'s) as an ONNX graph, by the TorchScript
    exporter."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter's deprecation notice is for us, not the user
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export")
        warnings.filterwarnings("ignore", message="The feature will be removed")
        torch.onnx.export(policy, example, buffer, dynamo=False, opset_version=OPSET, input_names=INPUTS,
                          output_names=[OUTPUT], **options)
    return onnx.load_from_string(buffer.getvalue())


class SquashedAction(nn.Module):
    """A policy's action in [-1, 1] as a module's forward(obs, noise): what off-policy training stores."""

    def __init__(self, policy: Policy):
        super().__init__()
        self.policy = policy

    def forward(self, obs: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.policy.squashed_action(obs, noise)


class LiveOnnxPolicy:
    """A policy's forward(obs, noise) run by onnxruntime on the policy's own parameter memory.

    On-policy training acts once per env step on a batch of num_envs observations, off-policy training
    and evaluation on one: there torch's per-op dispatch dominates, as the chain is ~150 tiny ops at K = 8, and
    onnxruntime runs it several times faster than a torch.jit trace (benchmarks/acting_latency.py
    measures both; benchmarks/throughput.py times the whole loop). The graph
    takes every parameter and buffer as an input (exported without parameters or constant
    folding), and `bind` points those inputs at the tensors' memory: optimizer steps and statistics
    updates happen in place, so the session always acts with the current policy and nothing is
    exported again. CPU only; the batch is fixed, which lets onnxruntime fold shapes.
    `squashed=True` runs `policy.squashed_action` instead: the action in [-1, 1], before the env's box,
    which SAC and WPO act with and store.
    """

    def __init__(self, policy: Policy, batch: int, threads: int = 1, squashed: bool = False):
        if policy.action_low.device.type != "cpu":
            raise ConfigError("LiveOnnxPolicy runs on CPU tensors; act with torch on other devices.")
        self.policy = policy
        self.module: nn.Module = SquashedAction(policy) if squashed else policy  # the traced function; its tensors
        example = (torch.zeros(batch, policy.obs_dim), torch.zeros(policy.noise_shape(batch)))
        model = trace_to_onnx(self.module, example, export_params=False, do_constant_folding=False)
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

        In-place updates need no new bind; it costs about as much as a call, so callers bind once per rollout
        or evaluation. The
        bound tensors are kept referenced, so a parameter replaced after binding (`module.to`,
        `load_state_dict(assign=True)`) leaves the session reading the old values until the next
        `bind`, never freed memory.
        """
        tensors = {**dict(self.module.named_parameters()), **dict(self.module.named_buffers())}
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
        raise InputError(f"{name}: onnxruntime reads contiguous float32 CPU tensors in place, got a "
                         f"{'' if tensor.is_contiguous() else 'non-contiguous '}{tensor.dtype} tensor on "
                         f"{tensor.device}; pass tensor.contiguous().float().cpu()")
    bind = binding.bind_output if output else binding.bind_input
    bind(name, "cpu", 0, np.float32, list(tensor.shape), tensor.data_ptr())
