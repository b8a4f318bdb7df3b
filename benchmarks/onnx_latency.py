"""Action latency of the exported K = 8 DiffSAC chain: onnxruntime against PyTorch `Agent.act`, one thread.

The policy is `Agent("diffsac", "Hopper-v4")` with its default config (256x256 GELU network,
K = 8), untrained: latency does not depend on the weights. Each call is timed alone, after a
warm-up, with fresh noise drawn every call (numpy for the (obs, noise) graph, inside the graph for
the sample-noise form, torch.randn inside `Agent.act`):

    python benchmarks/onnx_latency.py --calls 10000 --out benchmarks/results/onnx_latency.json
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable

import numpy as np

from common import markdown_table, write_results

warnings.filterwarnings("ignore", category=DeprecationWarning)


def percentiles(call: Callable[[], object], calls: int, warmup: int) -> dict[str, float]:
    for _ in range(warmup):
        call()
    times = np.empty(calls)
    for i in range(calls):
        start = time.perf_counter_ns()
        call()
        times[i] = time.perf_counter_ns() - start
    times /= 1e3  # microseconds
    return {"p50_us": float(np.percentile(times, 50)), "p90_us": float(np.percentile(times, 90)),
            "p99_us": float(np.percentile(times, 99)), "max_us": float(times.max()), "calls": calls}


def session(path: Path, threads: int):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")  # do not burn a core between calls
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="Hopper-v4")
    parser.add_argument("--calls", type=int, default=10_000, help="timed calls at batch 1")
    parser.add_argument("--batch-calls", type=int, default=200, help="timed calls at batch 1024")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", default="benchmarks/results/onnx_latency.json")
    args = parser.parse_args()

    import torch

    from diffagent import Agent
    from diffagent.export import export_onnx

    torch.set_num_threads(args.threads)
    agent = Agent("diffsac", args.env)
    policy = agent.policy
    load_before = os.getloadavg()
    rng = np.random.default_rng(0)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        given = session(export_onnx(agent, Path(tmp) / "policy.onnx"), args.threads)
        drawn = session(export_onnx(agent, Path(tmp) / "sampling.onnx", sample_noise=True), args.threads)
        for batch, calls in ((1, args.calls), (1024, args.batch_calls)):
            obs = rng.standard_normal((batch, policy.obs_dim)).astype(np.float32)
            shape = policy.noise_shape(batch)
            runs = {
                "torch Agent.act": lambda: agent.act(obs),
                "onnxruntime (obs, noise)": lambda: given.run(
                    None, {"obs": obs, "noise": rng.standard_normal(shape, dtype=np.float32)}),
                "onnxruntime (obs), noise in graph": lambda: drawn.run(None, {"obs": obs}),
            }
            for name, call in runs.items():
                rows.append({"runtime": name, "batch": batch, **percentiles(call, calls, min(args.warmup, calls))})
                print(f"{name:36s} batch {batch:5d}: p50 {rows[-1]['p50_us']:8.1f} us", flush=True)
    print(markdown_table(rows, ["runtime", "batch", "p50_us", "p90_us", "p99_us", "max_us", "calls"]))
    write_results(args.out, {"env_id": args.env, "algo": "diffsac", "num_steps": policy.num_steps,
                             "hidden_sizes": list(agent.config.policy.policy_hidden_sizes), "threads": args.threads,
                             "load_average_before": load_before, "latency": rows})


if __name__ == "__main__":
    main()
