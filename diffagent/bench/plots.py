"""The report's figures, drawn with matplotlib's object API (no pyplot: no global state, no display backend).
Each function imports matplotlib when called, so a report without it still writes its tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from diffagent.bench.grid import algo_family
from diffagent.bench.sb3 import is_sb3

# one colour per family: the Gaussian baseline dashed, its diffusion version solid, Stable-Baselines3's dotted
FAMILY_COLOURS = {"sac": "tab:blue", "wpo": "tab:green", "ppo": "tab:purple"}


def algo_style(algo: str) -> dict[str, Any]:
    """Colour and line style of an algorithm in every figure."""
    family = algo_family(algo)
    linestyle = ":" if is_sb3(algo) else "--" if algo == family else "-"
    return {"color": FAMILY_COLOURS.get(family, "tab:gray"), "linestyle": linestyle}


def _seeds_label(algo: str, seeds: int, band: str) -> str:
    return f"{algo} ({seeds} seed{'s' if seeds != 1 else ''}, {band})"


def plot_curves(env_id: str, panels: list[list[dict[str, Any]]], path: Path) -> Path | None:
    """Learning curves on `env_id`, one panel per group of algorithms (off-policy, on-policy: their budgets differ
    tenfold). Each curve is {algo, seeds, steps, iqm, low, high, band}: the IQM over seeds at each evaluation with
    its band (a stratified-bootstrap 95% CI from 5 seeds, the seeds' range below, named by `band`)."""
    from matplotlib.figure import Figure

    panels = [panel for panel in panels if panel]
    if not panels:
        return None
    fig = Figure(figsize=(6.4 * len(panels), 4.2), layout="constrained")
    for ax, curves in zip(fig.subplots(1, len(panels), squeeze=False)[0], panels):
        for curve in curves:
            style = algo_style(curve["algo"])
            ax.plot(curve["steps"], curve["iqm"], **style, label=_seeds_label(curve["algo"], curve["seeds"], curve["band"]))
            ax.fill_between(curve["steps"], curve["low"], curve["high"], color=style["color"], alpha=0.15)
        ax.set(title=f"{env_id}: evaluation return (IQM and its band)", xlabel="environment steps", ylabel="return")
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def plot_summary(groups: list[dict[str, Any]], path: Path) -> Path | None:
    """The summary across envs, one row per step budget: the IQM of normalised scores with its interval per
    algorithm (left), and the performance profile, the fraction of runs above each normalised score (right).
    A group is {steps, envs, algos: [{algo, seeds, iqm, low, high, band}], thresholds, profiles: {algo: (profile,
    band or None)}}."""
    from matplotlib.figure import Figure

    if not groups:
        return None
    fig = Figure(figsize=(12.8, 3.2 + 1.0 * max(len(g["algos"]) for g in groups) * len(groups) / 2),
                 layout="constrained")
    axes = fig.subplots(len(groups), 2, squeeze=False)
    for (bars, profile_ax), group in zip(axes, groups):
        envs = ", ".join(group["envs"])
        algos = group["algos"]
        for y, entry in enumerate(algos):
            style = algo_style(entry["algo"])
            bars.errorbar(entry["iqm"], y, xerr=[[entry["iqm"] - entry["low"]], [entry["high"] - entry["iqm"]]],
                          fmt="o", color=style["color"], capsize=4)
        bars.set_ylim(-0.6, len(algos) - 0.4)
        bars.set_yticks(range(len(algos)),
                        [f"{entry['algo']} ({entry['seeds']} seeds, {entry['band']})" for entry in algos])
        bars.set(title=f"{group['steps']:,} steps on {envs}: IQM of normalised scores",
                 xlabel="normalised score (0: a random policy's return, 1: an expert's)")
        bars.grid(alpha=0.3, axis="x")
        for algo, (profile, band) in group["profiles"].items():
            style = algo_style(algo)
            profile_ax.plot(group["thresholds"], profile, **style, label=algo)
            if band is not None:
                profile_ax.fill_between(group["thresholds"], band[0], band[1], color=style["color"], alpha=0.15)
        profile_ax.set(title=f"{group['steps']:,} steps: performance profile (95% bands from 5 seeds)",
                       xlabel="normalised score tau", ylabel="fraction of runs with score > tau", ylim=(0, 1.02))
        profile_ax.grid(alpha=0.3)
        profile_ax.legend()
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    return path
