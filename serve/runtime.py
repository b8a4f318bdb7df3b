"""Run an exported diffagent policy in-process with onnxruntime: numpy in, actions out, no torch.

    policy = serve.load_policy("runs/hopper")          # artifact dir, a .onnx file or a Hub id
    action = policy.act(obs)                           # one observation -> one action
    actions = policy.act(obs_batch, deterministic=True)

The graph follows the ONNX contract of serve/contract.py, which `diffagent export` writes through:
inputs `obs` float32 [B, obs_dim] and (unless exported with sample_noise) `noise` float32
[B, K+1, act_dim], output `action` float32 [B, act_dim] already in the environment's action
bounds. Everything the runtime needs to check inputs (spaces, K, dims) travels in the metadata.
A policy for a Dict observation space also takes a mapping of its keys to their values, which it
concatenates in the order the metadata lists them (serve/contract.py).
"""

from __future__ import annotations

import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import onnxruntime as ort

from serve.contract import ONNX_FILE, ModelLoadError, PolicyMetadata, flatten_observation, observation_layout
from serve.hub import download, is_local_path, repo_id_problem
from serve.protocol import ErrorCode

# Only inert files: the graph and its description, never weights (serve reads none) or code.
_HUB_PATTERNS = ["*.json", "*.onnx", "*.md"]
_PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider"}
_WARMUP_RUNS = 5
# Chain noise is drawn from the generator in blocks of this many float32 values (64 KiB): one
# generator call costs a few microseconds whatever its size, which is a lot per control tick.
NOISE_POOL_SIZE = 1 << 14


class InputError(ValueError):
    """An observation or noise array that does not fit the policy; `code` is the matching wire error code."""

    def __init__(self, code: ErrorCode, message: str):
        super().__init__(message)
        self.code = code


def resolve_model(model: str | Path) -> Path:
    """The .onnx file behind MODEL: an artifact directory, a .onnx file, or a Hub id `org/name`.

    A Hub id is downloaded (JSON, ONNX and Markdown files only: nothing that could run code) and
    resolved like a directory; a name that looks like a local path is never looked up there.
    """
    path = Path(model).expanduser()
    if path.is_dir():
        onnx_path = path / ONNX_FILE
        if not onnx_path.is_file():
            raise ModelLoadError(f"{path} holds no {ONNX_FILE}; export it first: `diffagent export {path}`.")
        # An artifact is read from inside its directory only (a Hub snapshot's files link into its repo's cache)
        root = path.parents[1] if path.parent.name == "snapshots" else path
        if not onnx_path.resolve().is_relative_to(root.resolve()):
            raise ModelLoadError(f"{onnx_path} links outside {root} (to {onnx_path.resolve()}); an artifact's files "
                                 "must lie inside its directory: replace the link with the file, or pass the .onnx path.")
        return onnx_path
    if path.is_file():
        return path
    if isinstance(model, str) and not is_local_path(model) and repo_id_problem(model) is None:
        return resolve_model(download(model, _HUB_PATTERNS))
    raise ModelLoadError(f"model {str(model)!r} not found: give an artifact directory holding {ONNX_FILE}, "
                         "a .onnx file, or a Hugging Face Hub id such as org/diffsac-Hopper-v4.")


def _providers(provider: str | None) -> list[str]:
    available = ort.get_available_providers()
    if provider is None:
        # onnxruntime-gpu lists CUDA even on a machine without a GPU; onnxruntime then falls back to
        # the CPU provider at session creation, which is what we want.
        return ["CUDAExecutionProvider", "CPUExecutionProvider"] if "CUDAExecutionProvider" in available \
            else ["CPUExecutionProvider"]
    name = _PROVIDERS.get(provider.lower(), provider)
    if name not in available:
        hint = " Install the GPU build: `pip install onnxruntime-gpu`." if name == "CUDAExecutionProvider" else ""
        raise ModelLoadError(f"execution provider {provider!r} is not available in this onnxruntime "
                             f"(available: {', '.join(available)}).{hint}")
    return [name] if name == "CPUExecutionProvider" else [name, "CPUExecutionProvider"]


def session_options(threads: int = 1, spin: bool = False) -> ort.SessionOptions:
    """SessionOptions tuned for small-batch, latency-bound inference.

    - intra_op_num_threads=threads (1 by default): at batch 1 the chain's matmuls are too small to
      split across threads, and every extra thread costs a wake-up on each call and takes a core
      from the simulator or controller running beside the policy. 0 lets onnxruntime use all cores
      (worth it for batches of hundreds).
    - sequential execution, one inter-op thread: the chain is a strict sequence of K steps, so
      there is no branch parallelism to exploit.
    - all graph optimisations (constant folding, GEMM/activation fusion).
    - spinning off by default: with threads > 1 onnxruntime's pool busy-waits after each run, which
      shaves microseconds only when calls come back-to-back and burns whole cores between control
      ticks. Set spin=True on a dedicated machine serving batched load.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
    options.log_severity_level = 3  # errors only: the provider fallback warning is expected on CPU-only hosts
    return options


class OnnxPolicy:
    """An exported diffagent policy in an onnxruntime session.

    Not thread-safe for `act` with drawn noise (the generator is shared); give each thread its own
    policy or pass `noise` explicitly. Build one with `load_policy`.
    """

    def __init__(self, session: ort.InferenceSession, metadata: PolicyMetadata, *, seed: int | None = None,
                 source: str = "", single: ort.InferenceSession | None = None):
        self.session = session
        # Optional second session of the same graph with the batch dimension fixed to 1: with static
        # shapes onnxruntime folds the chain's per-step shape plumbing (Shape/Expand/Exp), 146 -> 115
        # nodes on the K = 8 Hopper chain and about 8% faster at batch 1, the control-loop case.
        self.single = single
        self.metadata = metadata
        self.source = source
        self.rng = np.random.default_rng(seed)
        self._pool = np.empty(0, dtype=np.float32)
        self._pool_pos = 0
        self._check_graph()
        try:
            self.observation_layout = observation_layout(metadata.observation_space)
        except ValueError as err:
            raise ModelLoadError(f"{source}: malformed observation_space in the metadata ({err}); "
                                 "re-export it.") from None
        if self.observation_layout is not None and sum(size for _, size in self.observation_layout) != self.obs_dim:
            raise ModelLoadError(f"{source}: the observation_space's keys do not add up to obs_dim={self.obs_dim}; "
                                 "the file is inconsistent, re-export it.")
        self._outputs = ["action"]
        # One zero-noise buffer, grown on demand: deterministic calls reuse it instead of allocating.
        self._zeros = np.zeros(self.noise_shape(1), dtype=np.float32)
        self._bind_batch_of_one()

    def _bind_batch_of_one(self) -> None:
        """Bind batch 1, the control loop's case, to buffers allocated once (see `run`).

        session.run checks its feed in Python, converts it to onnxruntime values and allocates the
        output on every call; through an IOBinding on fixed buffers a batch-1 call costs two small
        copies instead: 4 to 11 us less on the K = 8 Hopper chain, which takes 90 to 140 on a loaded
        2-core AMD EPYC VM (docs/serve_latency.md). One binding serves every caller, so calls take
        turns on a lock.
        """
        self._one_session = self.single if self.single is not None else self.session
        self._one_obs = np.empty((1, self.obs_dim), dtype=np.float32)
        self._one_action = np.empty((1, self.act_dim), dtype=np.float32)
        self._one_binding = self._one_session.io_binding()
        self._one_binding.bind_cpu_input("obs", self._one_obs)
        if self.metadata.noise_input:
            self._one_noise = np.empty(self.noise_shape(1), dtype=np.float32)
            self._one_binding.bind_cpu_input("noise", self._one_noise)
        self._one_binding.bind_output("action", "cpu", 0, np.float32, list(self._one_action.shape),
                                      self._one_action.ctypes.data)
        self._one_lock = threading.Lock()

    # --- shape facts ------------------------------------------------------------------------------
    @property
    def obs_dim(self) -> int:
        return self.metadata.obs_dim

    @property
    def act_dim(self) -> int:
        return self.metadata.act_dim

    @property
    def num_steps(self) -> int:
        """K, the number of denoising steps; the noise has K + 1 rows (the prior sample and one per step)."""
        return self.metadata.num_steps

    @property
    def provider(self) -> str:
        """The execution provider that runs the graph (after any fallback)."""
        return self.session.get_providers()[0]

    def noise_shape(self, batch: int) -> tuple[int, int, int]:
        return batch, self.num_steps + 1, self.act_dim

    def _check_graph(self) -> None:
        inputs = {i.name: i for i in self.session.get_inputs()}
        expected = {"obs", "noise"} if self.metadata.noise_input else {"obs"}
        outputs = [o.name for o in self.session.get_outputs()]
        if set(inputs) != expected or "action" not in outputs:
            raise ModelLoadError(f"{self.source}: graph inputs {sorted(inputs)} and outputs {outputs} do not match "
                                 f"the diffagent contract (inputs {sorted(expected)}, output 'action'); re-export "
                                 "the policy with `diffagent export MODEL_DIR`.")
        # Every static dimension must agree with the metadata the server and clients size their arrays by.
        declared = {"obs": (inputs["obs"].shape, [None, self.obs_dim]),
                    "action": (self.session.get_outputs()[outputs.index("action")].shape, [None, self.act_dim])}
        if self.metadata.noise_input:
            declared["noise"] = (inputs["noise"].shape, [None, self.num_steps + 1, self.act_dim])
        for name, (shape, expected_shape) in declared.items():
            if len(shape) != len(expected_shape) or any(isinstance(have, int) and want is not None and have != want
                                                        for have, want in zip(shape, expected_shape)):
                raise ModelLoadError(f"{self.source}: graph {name} has shape {shape}, but the metadata says "
                                     f"{['batch', *expected_shape[1:]]} (num_steps={self.num_steps}, "
                                     f"obs_dim={self.obs_dim}, act_dim={self.act_dim}); the file is inconsistent, "
                                     "re-export it.")

    # --- acting -------------------------------------------------------------------------------------
    def act(self, obs: Any, noise: Any = None, deterministic: bool = False) -> np.ndarray:
        """Actions for one observation (obs_dim,) -> (act_dim,) or a batch (B, obs_dim) -> (B, act_dim).

        For a Dict observation space, `obs` may be a mapping of its keys to (size,) or (B, size) arrays.
        `noise` (K+1, act_dim) or (B, K+1, act_dim) fixes the chain's randomness; without it the noise
        is drawn from this policy's seeded generator, or is zero when `deterministic`. Inputs of any
        real numeric dtype are converted to float32; NaN or inf is refused (InputError).
        """
        batch, single = self.check_obs(obs)
        noise_array = self.check_noise(noise, batch.shape[0], single, deterministic)
        action = self.run(batch, noise_array)
        return action[0] if single else action

    def check_obs(self, obs: Any) -> tuple[np.ndarray, bool]:
        """`obs` as a float32 [B, obs_dim] array, and whether it was a single observation."""
        if isinstance(obs, Mapping):
            if self.observation_layout is None:
                raise InputError(ErrorCode.BAD_SHAPE, "this policy's observation is a Box: pass an array, "
                                                      "not a mapping")
            try:
                obs = flatten_observation(obs, self.observation_layout)
            except ValueError as err:
                raise InputError(ErrorCode.BAD_SHAPE, str(err)) from None
        array = _as_float32(obs, "observation")
        single = array.ndim == 1
        if array.ndim not in (1, 2) or array.shape[-1] != self.obs_dim or array.shape[0] == 0:
            raise InputError(ErrorCode.BAD_SHAPE, f"expected an observation of shape ({self.obs_dim},) or a batch "
                                                  f"(B, {self.obs_dim}) with B >= 1, got shape {array.shape}")
        check_finite(array, "observation")
        return (array[None] if single else array), single

    def check_noise(self, noise: Any, batch: int, single: bool = False,
                    deterministic: bool = False) -> np.ndarray | None:
        """The float32 noise to feed for a batch of `batch` rows (None for a graph that draws its own)."""
        if not self.metadata.noise_input:
            if noise is not None or deterministic:
                raise InputError(ErrorCode.BAD_FLAGS, "this graph draws its own noise (exported with sample_noise), "
                                                      "so it takes neither noise nor deterministic; re-export it "
                                                      "with the noise input for that.")
            return None
        shape = self.noise_shape(batch)
        if noise is None:
            if deterministic:
                return self.zeros(batch)
            return self.draw_noise(batch)
        if deterministic:
            raise InputError(ErrorCode.BAD_FLAGS, "pass either noise or deterministic=True, not both "
                                                  "(deterministic means zero noise)")
        array = _as_float32(noise, "noise")
        if single and array.ndim == 2:
            array = array[None]
        if array.shape != shape:
            raise InputError(ErrorCode.BAD_SHAPE, f"noise must have shape {shape} (batch, K+1, act_dim) or "
                                                  f"{shape[1:]} for one observation, got {np.shape(noise)}")
        check_finite(array, "noise")
        return array

    def draw_noise(self, batch: int) -> np.ndarray:
        """Standard normal chain noise [batch, K+1, act_dim] from the seeded generator.

        Small draws are views into a block drawn in advance (see `refill_noise`); a draw larger than
        the block goes to the generator directly.
        """
        shape = self.noise_shape(batch)
        size = shape[0] * shape[1] * shape[2]
        if size > self._pool.size - self._pool_pos:
            if size > NOISE_POOL_SIZE:
                return self.rng.standard_normal(shape, dtype=np.float32)
            self.refill_noise()
        start = self._pool_pos
        self._pool_pos = start + size
        return self._pool[start:start + size].reshape(shape)

    def refill_noise(self, low_water: int | None = None) -> None:
        """Draw a fresh noise block, or only when fewer than `low_water` values remain in the current one.

        The server calls this after sending its replies, so the draw stays off the request path.
        A new array replaces the old, so views handed out earlier stay valid.
        """
        if low_water is None or self._pool.size - self._pool_pos < low_water:
            self._pool = self.rng.standard_normal(NOISE_POOL_SIZE, dtype=np.float32)
            self._pool_pos = 0

    def zeros(self, batch: int) -> np.ndarray:
        """A read-only view of `batch` rows of zero noise (the deterministic chain)."""
        if self._zeros.shape[0] < batch:
            self._zeros = np.zeros(self.noise_shape(batch), dtype=np.float32)
        return self._zeros[:batch]

    def run(self, obs: np.ndarray, noise: np.ndarray | None) -> np.ndarray:
        """The unchecked hot path: float32 obs [B, obs_dim] and noise [B, K+1, act_dim] -> actions [B, act_dim].

        Callers must have validated the arrays (`check_obs`, `check_noise`); the server does so
        per request before batching. Thread-safe; the actions are a new array.
        """
        if obs.shape[0] == 1:
            with self._one_lock:
                self._one_obs[...] = obs
                if self.metadata.noise_input:  # never a previous call's noise (and None would write NaN)
                    if noise is None:
                        raise ValueError("this model's graph takes noise: pass zeros for the deterministic action")
                    self._one_noise[...] = noise
                self._one_session.run_with_iobinding(self._one_binding)
                return self._one_action.copy()
        feed = {"obs": obs} if noise is None else {"obs": obs, "noise": noise}
        return self.session.run(self._outputs, feed)[0]

    def warm_up(self, batch_sizes: Sequence[int] = (1, 2)) -> None:
        """Run the graph a few times so the first real call does not pay for allocation and kernel setup."""
        for batch in batch_sizes:
            obs = np.zeros((batch, self.obs_dim), dtype=np.float32)
            noise = self.zeros(batch) if self.metadata.noise_input else None
            for _ in range(_WARMUP_RUNS):
                try:
                    action = self.run(obs, noise)
                except Exception as err:  # onnxruntime's own error types: the graph disagrees with its metadata
                    raise ModelLoadError(f"{self.source}: the graph fails on inputs shaped as its metadata says "
                                         f"({type(err).__name__}: {str(err).strip()[:300]}); the file is "
                                         "inconsistent, re-export it.") from None
                if action.shape != (batch, self.act_dim):
                    raise ModelLoadError(f"{self.source}: the graph returns actions of shape {action.shape}, but its "
                                         f"metadata says ({batch}, {self.act_dim}); re-export it.")

    def __repr__(self) -> str:
        m = self.metadata
        return (f"OnnxPolicy({m.algo} on {m.env_id}, K={m.num_steps}, obs_dim={m.obs_dim}, act_dim={m.act_dim}, "
                f"provider={self.provider}, source={self.source!r})")


def _as_float32(value: Any, what: str) -> np.ndarray:
    """Coerce to float32: real numbers (ints, float16/32/64) convert; bool, complex, strings and objects do not."""
    array = np.asarray(value)
    if array.dtype == np.float32:
        return array
    if array.dtype.kind not in "iuf":
        raise InputError(ErrorCode.BAD_DTYPE, f"{what} must be real numbers (float32 preferred), got dtype "
                                              f"{array.dtype}")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, which check_finite reports
        return array.astype(np.float32)


def all_finite(array: np.ndarray) -> bool:
    """Whether `array` holds no NaN and no infinity.

    Counting the finite values is half the cost of `np.isfinite(array).all()` on a request's few dozen,
    whose `.all()` goes through a Python-level wrapper.
    """
    return np.count_nonzero(np.isfinite(array)) == array.size


def check_finite(array: np.ndarray, what: str) -> None:
    """Refuse NaN and inf in `array` (the `what` of a request: "observation" or "noise") with NON_FINITE.

    The one check behind `OnnxPolicy.act` and the server's ACT, so both say the same thing.
    """
    if not all_finite(array):
        raise InputError(ErrorCode.NON_FINITE, f"{what} holds NaN or inf (or values beyond float32's range, "
                                               f"+-3.4e38); an action needs finite inputs: fix or drop this {what}")


def load_policy(model: str | Path, provider: str | None = None, threads: int = 1, seed: int | None = None, *,
                spin: bool = False) -> OnnxPolicy:
    """Load an exported policy and warm it up.

    Args:
        model: an artifact directory holding policy.onnx, a .onnx file, or a Hub id `org/name`.
        provider: 'cpu', 'cuda' or an onnxruntime provider name; default CUDA when onnxruntime-gpu
            and a GPU are present, else CPU.
        threads: onnxruntime intra-op threads (1 is fastest at batch 1; 0 means all cores).
        seed: seed of the generator that draws the chain noise when `act` is not given any. For a
            graph that draws its own noise (exported with sample_noise) it seeds onnxruntime's
            generator instead, through `onnxruntime.set_seed`, which is global to the process.
        spin: let onnxruntime's thread pool busy-wait between calls (see `session_options`).
    """
    if threads < 0:
        raise ValueError(f"threads must be >= 0 (0 means all cores), got {threads}")
    path = resolve_model(model)
    if seed is not None:
        ort.set_seed(seed)  # only the sample-noise graph's RandomNormalLike reads it
    providers = _providers(provider)
    session = _session(path, session_options(threads, spin), providers)
    metadata = PolicyMetadata.from_props(session.get_modelmeta().custom_metadata_map, str(path))
    single = None
    batch_dim = session.get_inputs()[0].shape[0]
    if isinstance(batch_dim, str):  # a named dynamic axis: build the batch-1 specialisation (see OnnxPolicy)
        options = session_options(threads, spin)
        options.add_free_dimension_override_by_name(batch_dim, 1)
        single = _session(path, options, providers)
    policy = OnnxPolicy(session, metadata, seed=seed, source=str(path), single=single)
    policy.warm_up()
    return policy


def _session(path: Path, options: ort.SessionOptions, providers: list[str]) -> ort.InferenceSession:
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as err:  # onnxruntime raises its own Fail/InvalidProtobuf/... types; all mean a bad file
        raise ModelLoadError(f"onnxruntime cannot load {path} ({type(err).__name__}: {str(err).strip()[:300]}); "
                             "the file is corrupted or not an ONNX model: re-export it.") from None


__all__ = ["OnnxPolicy", "InputError", "load_policy", "resolve_model", "session_options", "all_finite", "check_finite"]
