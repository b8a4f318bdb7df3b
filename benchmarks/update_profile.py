"""Where the time of one SAC / DiffSAC training step goes: one update and one act + env step, per op class.

torch.profiler times every op of `updates` gradient steps (batch 256, after a random warm-up that
fills the buffer) and of `acts` environment steps, one thread. Ops are summed into classes by name;
"Python and dispatch" is the wall time no op accounts for (the interpreter, module calls, autograd's
bookkeeping, and in "act + env step" the env's step, which is also timed alone). Acting leaves out
DiffSAC's entropy-gap refresh (every 1,000 steps, about four updates' work).

`--compile` also times the update with torch.compile'd chain sampling and critics (inductor, its RNG
falling back to torch's so the math is the same) against the eager one, in alternating blocks of
updates, per second of CPU time, and the compilation, which inductor's on-disk cache shortens on a
second run.

    python benchmarks/update_profile.py --env Hopper-v4 --algos sac,diffsac --k 8
    python benchmarks/update_profile.py --algos diffsac --compile
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections import defaultdict
from typing import Callable

import torch
from torch.profiler import ProfilerActivity, profile

from common import markdown_table, write_results

warnings.filterwarnings("ignore", category=DeprecationWarning)

# Op name fragments -> class, first match wins (autograd's backward ops carry their forward's name).
OP_CLASSES = [
    ("matmul", ("mm", "addmm", "bmm", "baddbmm", "linear", "matmul")),
    ("activation", ("relu", "gelu", "tanh", "silu", "softplus", "threshold")),
    ("optimizer", ("adam", "_foreach", "lerp")),
    ("random", ("randn", "normal", "randint", "uniform")),
    ("index and copy", ("index", "gather", "scatter", "copy", "cat", "stack", "clone", "contiguous", "to", "flip",
                        "expand", "view", "slice", "select", "unsqueeze", "squeeze", "reshape", "narrow",
                        "as_strided", "transpose", "permute", "t", "empty", "zeros", "ones", "fill", "detach",
                        "cumsum")),
    ("reduction", ("sum", "mean", "min", "max", "mse", "norm")),
]


def op_class(name: str) -> str:
    name = name.removeprefix("aten::").lower()
    words = name.replace("backward", "").strip("_").split("_")
    for cls, fragments in OP_CLASSES:
        if name in fragments or any(f in words or name.startswith(f) for f in fragments):
            return cls
    return "elementwise"


def wall_ms(run: Callable[[], None], repeats: int) -> float:
    """Milliseconds per call of `run`, after a warm-up, without the profiler."""
    for _ in range(3):
        run()
    start = time.perf_counter()
    for _ in range(repeats):
        run()
    return (time.perf_counter() - start) * 1e3 / repeats


def profile_ms(run: Callable[[], None], repeats: int) -> dict[str, float]:
    """Milliseconds per call of `run`: unprofiled, profiled, the ops' own time by class, and the rest."""
    wall = wall_ms(run, repeats)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        profiled = wall_ms(run, repeats)
    by_class: dict[str, float] = defaultdict(float)
    for event in prof.key_averages():
        if event.key.startswith("aten::"):  # ops' self time: a kernel and its dispatch, nothing nested
            by_class[op_class(event.key)] += event.self_cpu_time_total / 1e3 / (repeats + 3)
    ops = sum(by_class.values())
    return {"wall": wall, "profiled": profiled, **dict(sorted(by_class.items(), key=lambda kv: -kv[1])),
            "Python and dispatch": profiled - ops}


def compiled_vs_eager(sac, batches: list, blocks: int) -> dict[str, float]:
    """CPU milliseconds per update, eager and with torch.compile'd `policy.sample` and critic forward."""
    import torch._inductor.config

    torch._inductor.config.fallback_random = True  # torch's random streams: the same chains as eager
    eager = {"sample": sac.policy.sample, "critic": sac.critic.forward}
    compiled = {name: torch.compile(function, dynamic=False) for name, function in eager.items()}

    def use(functions: dict) -> None:
        sac.policy.sample, sac.critic.forward = functions["sample"], functions["critic"]

    start = time.perf_counter()
    use(compiled)
    for batch in batches[:2]:  # the first calls compile (the critic twice: with and without parameter gradients)
        sac.update(batch)
    compile_s = time.perf_counter() - start
    cpu_ms: dict[str, list[float]] = {"eager": [], "compiled": []}
    for _ in range(blocks):
        for name, functions in (("eager", eager), ("compiled", compiled)):
            use(functions)
            start = time.process_time()
            for batch in batches:
                sac.update(batch)
            cpu_ms[name].append((time.process_time() - start) * 1e3 / len(batches))
    use(eager)
    eager_ms, compiled_ms = statistics.median(cpu_ms["eager"]), statistics.median(cpu_ms["compiled"])
    return {"compile_s": compile_s, "eager_cpu_ms": eager_ms, "compiled_cpu_ms": compiled_ms,
            "x_eager": eager_ms / compiled_ms, "blocks": cpu_ms}


def main() -> None:
    from diffagent import Agent

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Hopper-v4")
    parser.add_argument("--algos", default="sac,diffsac")
    parser.add_argument("--k", type=int, default=8, help="denoising steps of DiffSAC")
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--acts", type=int, default=500)
    parser.add_argument("--compile", action="store_true", help="also time torch.compile against eager")
    parser.add_argument("--blocks", type=int, default=12, help="--compile: alternating blocks of 10 updates")
    parser.add_argument("--out", default="benchmarks/results/update_profile.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    results = {}
    load_before = os.getloadavg()
    for algo in args.algos.split(","):
        overrides = {"diffusion_steps": args.k} if algo.startswith("diff") else {}
        agent = Agent(algo, args.env, learning_starts=1000, **overrides)
        agent.learn(1001, eval_every=0, progress=False)  # fills the buffer with random steps, then one update
        sac = agent.algorithm
        batch_size = sac.config.batch_size
        name = f"{algo} K={args.k}" if algo.startswith("diff") else algo
        results[name] = {"update (with its buffer sample)":
                         profile_ms(lambda: sac.update(sac.buffer.sample(batch_size, sac.sampler)), args.updates),
                         "buffer sample": {"wall": wall_ms(lambda: sac.buffer.sample(batch_size, sac.sampler),
                                                           args.updates)}}
        if args.compile:
            batches = [sac.buffer.sample(batch_size, sac.sampler) for _ in range(10)]
            results[name]["torch.compile"] = compiled_vs_eager(sac, batches, args.blocks)
            print(name, {k: v for k, v in results[name]["torch.compile"].items() if k != "blocks"}, flush=True)
        sac.config.gradient_steps = 0  # train_iteration now acts with the policy and steps the env, nothing else
        sac.config.calibrate_entropy = False
        results[name]["act + env step"] = profile_ms(sac.train_iteration, args.acts)
        action = sac.env.action_space.sample()
        results[name]["env step alone"] = {"wall": wall_ms(lambda: sac.env.step(action), args.acts)}
    print(f"\n{args.env}, one thread, load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}\n")
    rows = []
    for name, parts in results.items():
        for part, classes in parts.items():
            if part == "torch.compile":
                continue
            rows.append({"algorithm": name, "part": part, **{k: v for k, v in classes.items()}})
    columns = ["algorithm", "part", "wall"] + sorted({k for r in rows for k in r} - {"algorithm", "part", "wall"})
    for row in rows:
        for c in columns:
            row.setdefault(c, "")
    print(markdown_table(rows, columns))
    write_results(args.out, {"env": args.env, "diffusion_steps": args.k, "load_average_before": load_before,
                             "load_average_after": os.getloadavg(), "ms": results})


if __name__ == "__main__":
    main()
