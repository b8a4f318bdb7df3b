"""Where the time of one SAC / DiffSAC training step goes: one update and one act + env step, per op class.

torch.profiler times every op of `updates` gradient steps (batch 256, after a random warm-up that
fills the buffer) and of `acts` environment steps, one thread. Ops are summed into classes by name;
"Python and dispatch" is the wall time no op accounts for (the interpreter, module calls, autograd's
bookkeeping, and in "act + env step" the env's step, which is also timed alone). Acting leaves out
DiffSAC's entropy-gap refresh (every 1,000 steps, about four updates' work).

Comparisons, in alternating blocks of updates, per second of CPU time: `--target` times the update
with its TD target computed by torch against onnxruntime (SAC.td_target); `--compile` with
torch.compile'd chain sampling and critics (inductor, its RNG falling back to torch's so the math is
the same) against eager, and the compilation, which inductor's on-disk cache shortens on a second run;
`--batch-scale N` the update at N times the batch against the batch, an estimate of what N seeds trained in one
process with seed-batched networks could gain per core.

    python benchmarks/update_profile.py --env Hopper-v4 --algos sac,diffsac --k 8 --target
    python benchmarks/update_profile.py --algos diffsac --compile
    python benchmarks/update_profile.py --algos sac,diffsac,diffwpo --batch-scale 5 --acts 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import warnings
from collections import defaultdict
from collections.abc import Callable

import torch
from common import markdown_table, write_results
from torch.profiler import ProfilerActivity, profile

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


def alternating_cpu_ms(sac, batches: list, blocks: int, variants: dict[str, Callable[[], None]]) -> dict[str, float]:
    """Median CPU milliseconds per update under each variant (a function that puts it in place), the variants'
    blocks of updates alternating, so the machine's load hits them alike; then the first variant is restored."""
    cpu_ms: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(blocks):
        for name, put_in_place in variants.items():
            put_in_place()
            start = time.process_time()
            for batch in batches:
                sac.update(batch)
            cpu_ms[name].append((time.process_time() - start) * 1e3 / len(batches))
    next(iter(variants.values()))()
    medians = {f"{name}_cpu_ms": statistics.median(times) for name, times in cpu_ms.items()}
    first, *others = medians.values()
    return {**medians, **{f"x_{name}": first / value for name, value in zip(list(variants)[1:], others)},
            "blocks": cpu_ms}


def compiled_vs_eager(sac, batches: list, blocks: int) -> dict[str, float]:
    """CPU milliseconds per update, eager and with torch.compile'd `policy.sample` and critic forward."""
    import torch._inductor.config

    torch._inductor.config.fallback_random = True  # torch's random streams: the same chains as eager
    eager = {"sample": sac.policy.sample, "critic": sac.critic.forward}
    compiled = {name: torch.compile(function, dynamic=False) for name, function in eager.items()}

    def use(functions: dict) -> Callable[[], None]:
        def put_in_place() -> None:
            sac.policy.sample, sac.critic.forward = functions["sample"], functions["critic"]
        return put_in_place

    start = time.perf_counter()
    use(compiled)()
    for batch in batches[:2]:  # the first calls compile (the critic twice: with and without parameter gradients)
        sac.update(batch)
    compile_s = time.perf_counter() - start
    return {"compile_s": compile_s, **alternating_cpu_ms(sac, batches, blocks, {"eager": use(eager),
                                                                                "compiled": use(compiled)})}


def td_target_backends(sac, batches: list, blocks: int) -> dict[str, float]:
    """CPU milliseconds per update with the TD target in onnxruntime (SAC.td_target on a CPU) and in torch."""
    onnxruntime_target = sac.td_target

    def torch_target(batch, noise, alpha):
        return sac.soft_target(batch.next_obs, noise, batch.rewards, batch.terminated, alpha)

    return alternating_cpu_ms(sac, batches, blocks, {
        "torch_target": lambda: setattr(sac, "td_target", torch_target),
        "onnxruntime_target": lambda: setattr(sac, "td_target", onnxruntime_target)})


def batch_scaling(sac, blocks: int, factor: int) -> dict[str, float]:
    """CPU milliseconds per update at the configured batch and at `factor` times it: an estimate of what training
    `factor` seeds in one process with seed-batched networks would gain, since such an update does the same ops
    on `factor` times the rows (distinct weights per seed turn mm into bmm, at about the same cost)."""
    batch_size = sac.config.batch_size
    one = [sac.buffer.sample(batch_size, sac.sampler) for _ in range(10)]
    many = [sac.buffer.sample(factor * batch_size, sac.sampler) for _ in range(10)]
    batches = list(one)

    def use(rows: list) -> None:
        # one untimed update at the new batch size: SAC.td_target makes its onnxruntime session anew for each
        # batch size, ~10 ms of every timed update when this ran inside the clock (it did before 2026-11-30)
        batches[:] = rows
        sac.update(rows[0])

    timings = alternating_cpu_ms(sac, batches, blocks, {"batch": lambda: use(one),
                                                         f"batch_x{factor}": lambda: use(many)})
    return {**timings, f"rows_per_cpu_second_x{factor}": factor * timings[f"x_batch_x{factor}"]}


def profile_algorithm(algo: str, args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """One algorithm's update, buffer sample, act + env step and env step alone, after a random warm-up."""
    from diffagent import Agent

    overrides = {"diffusion_steps": args.k} if algo.startswith("diff") else {}
    agent = Agent(algo, args.env, learning_starts=1000, **overrides)
    agent.learn(1001, eval_every=0, progress=False)  # fills the buffer with random steps, then one update
    sac = agent.algorithm
    batch_size = sac.config.batch_size
    parts = {"update (with its buffer sample)":
             profile_ms(lambda: sac.update(sac.buffer.sample(batch_size, sac.sampler)), args.updates),
             "buffer sample": {"wall": wall_ms(lambda: sac.buffer.sample(batch_size, sac.sampler), args.updates)}}
    batches = [sac.buffer.sample(batch_size, sac.sampler) for _ in range(10)]
    for flag, part, compare in (("target", "TD target backend", td_target_backends),
                                ("compile", "torch.compile", compiled_vs_eager)):
        if getattr(args, flag):
            parts[part] = compare(sac, batches, args.blocks)
            print(algo, part, {k: v for k, v in parts[part].items() if k != "blocks"}, flush=True)
    if args.batch_scale:
        parts["batch scaling"] = batch_scaling(sac, args.blocks, args.batch_scale)
        print(algo, "batch scaling", {k: v for k, v in parts["batch scaling"].items() if k != "blocks"}, flush=True)
    sac.config.gradient_steps = 0  # train_iteration now acts with the policy and steps the env, nothing else
    sac.config.calibrate_entropy = False
    parts["act + env step"] = profile_ms(sac.train_iteration, args.acts)
    action = sac.env.action_space.sample()
    parts["env step alone"] = {"wall": wall_ms(lambda: sac.env.step(action), args.acts)}
    return parts


def main() -> None:

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--env", default="Hopper-v4")
    parser.add_argument("--algos", default="sac,diffsac")
    parser.add_argument("--k", type=int, default=8, help="denoising steps of DiffSAC")
    parser.add_argument("--updates", type=int, default=50)
    parser.add_argument("--acts", type=int, default=500)
    parser.add_argument("--target", action="store_true", help="also time the TD target in torch against onnxruntime")
    parser.add_argument("--compile", action="store_true", help="also time torch.compile against eager")
    parser.add_argument("--batch-scale", type=int, default=0, metavar="N",
                        help="also time updates at N times the batch (the case for seed-batched training)")
    parser.add_argument("--blocks", type=int, default=12, help="--target, --compile, --batch-scale: alternating "
                                                               "blocks of 10 updates")
    parser.add_argument("--out", default="benchmarks/results/update_profile.json")
    args = parser.parse_args()
    torch.set_num_threads(1)

    results = {}
    load_before = os.getloadavg()
    for algo in args.algos.split(","):
        results[f"{algo} K={args.k}" if algo.startswith("diff") else algo] = profile_algorithm(algo, args)
    print(f"\n{args.env}, one thread, load average before {load_before[0]:.2f}, after {os.getloadavg()[0]:.2f}\n")
    rows = []
    for name, parts in results.items():
        for part, classes in parts.items():
            if "wall" not in classes:  # a comparison, printed above
                continue
            rows.append({"algorithm": name, "part": part, **classes})
    columns = ["algorithm", "part", "wall"] + sorted({k for r in rows for k in r} - {"algorithm", "part", "wall"})
    for row in rows:
        for c in columns:
            row.setdefault(c, "")
    print(markdown_table(rows, columns))
    write_results(args.out, {"env": args.env, "diffusion_steps": args.k, "load_average_before": load_before,
                             "load_average_after": os.getloadavg(), "ms": results})


if __name__ == "__main__":
    main()
