"""Compare arms that live in different grids: a fidelity arm against the campaign's runs of its base.

A grid's report compares the algorithms it trains; an ablation (a fidelity grid's DiffWPO at another temperature)
has its base in another grid (the campaign's WPO). Each arm here is a folder of seed runs (s0, s1, ...: a grid's
run folder for one env and algorithm, or its archived copy under zoo/runs); for each this prints the score at the
budget per seed, the mean of the last five evaluations, the entropy estimate over the last tenth of the budget,
and the IQM with its interval, then each arm's probability of improvement over the first, in words from 5 seeds
of both on (diffagent/bench/stats.py, rliable's statistics; the same rules as `diffagent bench report`).

    python benchmarks/compare_arms.py --budget 100000 \
        --arms wpo=zoo/runs/campaign/Hopper-v4/wpo,diffwpo=zoo/runs/campaign/Hopper-v4/diffwpo --out OUT.json
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import numpy as np

from common import markdown_table, write_results

from diffagent.bench.grid import DETERMINISTIC_RETURN, ENTROPY_ESTIMATE, read_curves
from diffagent.bench.report import final_entropy, recent_score, verdict
from diffagent.bench.stats import iqm, probability_of_improvement, score_at, seed_interval


def read_arm(folder: Path, budget: int) -> dict:
    """Per seed (each sN folder that reached the budget): the score at it, the mean of the last evaluations up to
    it, the mean entropy estimate over its last tenth (the report's own measures)."""
    seeds = {}
    runs = [path for path in folder.iterdir() if re.fullmatch(r"s\d+", path.name)]
    for run in sorted(runs, key=lambda path: int(path.name[1:])):
        curves = read_curves(run, (DETERMINISTIC_RETURN, ENTROPY_ESTIMATE))
        score = score_at(curves[DETERMINISTIC_RETURN], budget)
        if score is None:
            print(f"skip {run}: no evaluation at {budget:,} steps")
            continue
        seeds[int(run.name[1:])] = {"score": score, "recent": recent_score(curves[DETERMINISTIC_RETURN], budget),
                                    "entropy": final_entropy(curves[ENTROPY_ESTIMATE], budget)}
    return seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--arms", required=True,
                        help="comma-separated NAME=FOLDER pairs, each folder holding seed runs s0, s1, ...; the "
                             "first is the base the others are compared with")
    parser.add_argument("--budget", type=int, required=True, help="the step budget the scores are read at")
    parser.add_argument("--out", default="benchmarks/results/compare_arms.json")
    args = parser.parse_args()

    arms = {}
    for entry in args.arms.split(","):
        name, sep, folder = entry.partition("=")
        if not sep or not Path(folder).is_dir():
            parser.error(f"--arms: {entry!r} is not NAME=FOLDER with an existing folder")
        arms[name] = read_arm(Path(folder), args.budget)
        if not arms[name]:
            parser.error(f"--arms: {folder} has no seed run (s0, s1, ...) that reached {args.budget:,} steps")

    rows = []
    base_name, base = next(iter(arms.items()))
    for name, seeds in arms.items():
        scores = [seed["score"] for seed in seeds.values()]
        interval_name, (low, high) = seed_interval(scores)
        entropies = [seed["entropy"] for seed in seeds.values() if seed["entropy"] is not None]
        row = {"arm": name, "seeds": len(seeds), "IQM": round(iqm(scores)), "interval": f"{interval_name} {low:,.0f}-{high:,.0f}",
               "last five, mean": round(float(np.mean([seed["recent"] for seed in seeds.values()]))),
               "entropy": round(float(np.mean(entropies)), 2) if entropies else "-",
               "per seed": ", ".join(f"{seed['score']:,.0f}" for seed in seeds.values()),
               "P(arm > base)": "-", "verdict": "-", "seed_results": seeds}
        if name != base_name:
            p, ci = probability_of_improvement(np.array(scores), np.array([seed["score"] for seed in base.values()]))
            row["P(arm > base)"] = f"{p:.2f}" + (f" [95% CI {ci[0]:.2f}, {ci[1]:.2f}]" if ci else " (no interval below 5 seeds)")
            row["verdict"] = verdict(ci) or "not judged"
        rows.append(row)
    print(markdown_table(rows, ["arm", "seeds", "per seed", "IQM", "interval", "last five, mean", "entropy",
                                "P(arm > base)", "verdict"]))
    write_results(args.out, {"budget": args.budget, "base": base_name, "arms": rows})


if __name__ == "__main__":
    main()
