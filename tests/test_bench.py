"""Benchmark grids: parsing, the resumable runner, run locks, and the statistics of the report."""

import json
import math
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from diffagent import Agent, ConfigError, DiffAgentError
from diffagent.bench import (bootstrap_interval, iqm, load_grid, load_hyperparameters, performance_profile,
                             probability_of_improvement, read_curve, run_grid, runner, score_at, seed_interval,
                             steps_to_reach, summarize, train_sb3, training_time_left, write_report)
from diffagent.bench.grid import archive_run
from diffagent.bench.report import curve_panels, per_seed_table, verdict
from diffagent.bench.stats import iqm_curve
from diffagent.cli import main
from diffagent.io import run_lock

TINY = {"policy_hidden_sizes": [16, 16], "critic_hidden_sizes": [16, 16], "learning_starts": 50, "batch_size": 32}


def write_grid(root, steps, seeds=(0, 1), extra=""):
    (root / "hyperparams").mkdir(exist_ok=True)
    table = "\n".join(f"{k} = {json.dumps(v)}" for k, v in TINY.items())
    (root / "hyperparams" / "Pendulum-v1.toml").write_text(f"[sac]\n{table}\n")
    grid = root / "grids" / "tiny.toml"
    grid.parent.mkdir(exist_ok=True)
    grid.write_text(textwrap.dedent(f"""
        name = "tiny"
        out = "{root / 'runs'}"
        hyperparams = "../hyperparams"
        results = "../results"
        {extra}
        [[experiment]]
        envs = ["Pendulum-v1"]
        algos = ["sac"]
        seeds = {list(seeds)}
        steps = {steps}
        eval_every = 100
        eval_episodes = 1
    """))
    return grid


@pytest.mark.math
def test_iqm_drops_a_quarter_at_each_end():
    assert iqm([1, 2, 3, 4, 100]) == 3.0  # n = 5: one dropped at each end
    assert iqm([1, 2, 3, 4]) == 2.5
    assert iqm([7.0]) == 7.0


@pytest.mark.math
def test_bootstrap_interval_brackets_the_iqm_and_is_reproducible():
    scores = np.random.default_rng(0).normal(100, 20, size=8)
    low, high = bootstrap_interval(scores)
    assert low < iqm(scores) < high
    assert (low, high) == bootstrap_interval(scores)
    assert bootstrap_interval([5.0, 5.0, 5.0]) == (5.0, 5.0)


@pytest.mark.math
def test_fewer_than_five_seeds_get_their_range_not_a_ci():
    assert seed_interval([1.0, 3.0, 2.0, 9.0]) == ("min-max", (1.0, 9.0))
    label, (low, high) = seed_interval([1.0, 3.0, 2.0, 9.0, 4.0])
    assert label == "95% CI" and (low, high) == bootstrap_interval([1.0, 3.0, 2.0, 9.0, 4.0])


@pytest.mark.math
def test_probability_of_improvement_profiles_and_steps_to_reach_a_return():
    better = np.arange(5.0)[:, None]  # (seeds, envs)
    p, interval = probability_of_improvement(better, better - 10)
    assert p == 1.0 and interval == (1.0, 1.0)
    assert probability_of_improvement(better, better)[0] == 0.5  # a tie
    assert probability_of_improvement(better[:4], better - 10) == (1.0, None)  # no interval below 5 seeds
    profile, band = performance_profile({"a": better}, np.array([0.5, 2.5, 4.5]))["a"]
    np.testing.assert_allclose(profile, [0.8, 0.4, 0.0])  # the fraction of runs above each threshold
    assert band.shape == (2, 3) and performance_profile({"a": better[:4]}, np.array([1.0]))["a"][1] is None
    assert steps_to_reach({5: 1.0, 10: 3.0, 15: 2.0}, 2.5) == 10 and steps_to_reach({5: 1.0}, 2.0) == math.inf
    assert iqm([100.0, 200.0, math.inf, 300.0, 400.0]) == 300.0  # a seed that never got there: above every other
    centre, band = iqm_curve(np.array([[1.0, 2.0], [3.0, 4.0]]))
    np.testing.assert_allclose(centre, [2.0, 3.0]) and band is None  # 2 seeds: no bootstrap band


@pytest.mark.math
def test_a_comparison_is_won_lost_or_tied_by_where_its_interval_lies():
    assert verdict((0.55, 0.9)) == "wins" and verdict((0.1, 0.45)) == "loses"
    assert verdict((0.4, 0.7)) == verdict((0.5, 0.8)) == "ties"  # an interval that holds 0.5 resolves nothing
    assert verdict(None) is None  # fewer than 5 seeds: nothing is claimed


@pytest.mark.math
def test_score_is_read_off_the_curve_at_the_budget(tmp_path):
    lines = [{"step": 100, "eval_return": -900.0}, {"step": 200, "eval_return": -500.0},
             {"step": 200, "eval_return": -400.0}, {"step": 300, "loss": 1.0}, {"step": 400, "eval_return": -200.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    curve = read_curve(tmp_path)
    assert curve == {100: -900.0, 200: -400.0, 400: -200.0}  # a step logged twice (a resume): the last wins
    assert score_at(curve, 300) == -400.0
    assert score_at(curve, 400) == -200.0
    assert score_at(curve, 500) is None  # the run has not got there


@pytest.mark.math
def test_an_on_policy_run_is_scored_on_its_last_evaluation_though_it_lands_past_the_budget():
    # PPO evaluates at the end of the rollout that crosses each evaluation point: 300,000 steps end at 301,056
    curve = {260_096: 869.0, 280_576: 1088.0, 301_056: 915.0}
    assert score_at(curve, 300_000) == 915.0
    assert score_at(curve, 280_000) == 1088.0
    assert score_at(curve, 302_000) is None


@pytest.mark.artifacts
def test_grid_errors_say_what_is_wrong(tmp_path):
    grid = write_grid(tmp_path, 100)
    text = grid.read_text()
    for old, new, message in [
        ('algos = ["sac"]', 'algos = ["sax"]', "unknown algorithm 'sax'"),
        ('algos = ["sac"]', 'algos = ["sac"]\nset = { batch_size = 0 }', "sac on Pendulum-v1: invalid config: batch_size"),
        ('envs = ["Pendulum-v1"]', 'envs = ["NoSuchEnv-v0"]', "unknown environment id 'NoSuchEnv-v0'"),
        ('envs = ["Pendulum-v1"]', 'envs = "Pendulum-v1"', "envs must be a non-empty list"),
        ("seeds = [0, 1]", "seeds = 3", "seeds must be a non-empty list"),
        ("steps = 100", 'steps = "100"', "steps must be a positive integer"),
        ("eval_episodes = 1", "eval_episode = 1", "unknown key 'eval_episode'; did you mean eval_episodes"),
        ("eval_episodes = 1", "eval_episodes = 1\nenv_kwargs = 3", "env_kwargs must be a table of gym.make's"),
        ('hyperparams = "../hyperparams"', 'hyperparams = "../nowhere"', "hyperparams folder .* does not exist"),
    ]:
        grid.write_text(text.replace(old, new))
        with pytest.raises(ConfigError, match=message):
            load_grid(grid)
    grid.write_text('name = "x"\n')
    with pytest.raises(ConfigError, match=r"no \[\[experiment\]\] tables"):
        load_grid(grid)
    with pytest.raises(ConfigError, match="does not exist"):
        load_grid(tmp_path / "nope.toml")
    with pytest.raises(ConfigError, match=r"has no \[diffsac\] table \(it has: sac\)"):
        load_hyperparameters(tmp_path / "hyperparams" / "Pendulum-v1.toml", "diffsac")
    result = CliRunner().invoke(main, ["bench", "run", str(write_grid(tmp_path, 100)), "--jobs", "0"])
    assert result.exit_code == 2 and "0 is not in the range x>=1" in result.output


@pytest.mark.artifacts
def test_one_run_serving_two_budgets_must_have_one_setting(tmp_path):
    grid = write_grid(tmp_path, 100, seeds=(0,))
    text = grid.read_text()
    grid.write_text(text + text[text.index("[[experiment]]"):].replace("eval_every = 100", "eval_every = 50"))
    with pytest.raises(ConfigError, match="with another eval_every; one run directory serves both budgets"):
        load_grid(grid)
    # the smaller budget must fall on an evaluation, or its score would come from after it
    grid.write_text(text.replace("steps = 100", "steps = 150")
                    + text[text.index("[[experiment]]"):].replace("steps = 100", "steps = 300"))
    with pytest.raises(ConfigError, match="scored at 150 steps on the way to 300, but evaluates every 100"):
        load_grid(grid)


@pytest.mark.artifacts
def test_target_returns_and_references_are_checked(tmp_path):
    grid = write_grid(tmp_path, 100, extra='target_returns = { "Hoper-v4" = 1000 }')
    with pytest.raises(ConfigError, match="target_returns names Hoper-v4, which no experiment runs; the grid's "
                                          "envs: Pendulum-v1"):
        load_grid(grid)
    references = tmp_path / "references.toml"
    references.write_text('[[normalization]]\nenv = "Pendulum-v1"\nrandom = "-1600"\nexpert = 0\nsource = "x"\n')
    grid = write_grid(tmp_path, 100, extra=f'references = "{references}"')
    with pytest.raises(ConfigError, match="normalization 1: random must be a number, got '-1600'"):
        write_report(load_grid(grid), load_grid(grid).references, echo=lambda _: None)


@pytest.mark.artifacts
@pytest.mark.parametrize("order", [(100, 300), (300, 100)])
def test_a_larger_budget_of_the_same_run_replaces_the_smaller(tmp_path, order):
    grid = write_grid(tmp_path, order[0], seeds=(0,))
    text = grid.read_text()
    experiment = text[text.index("[[experiment]]"):]
    grid.write_text(text + experiment.replace(f"steps = {order[0]}", f"steps = {order[1]}"))
    loaded = load_grid(grid)
    assert [job.steps for job in loaded.jobs] == [300]
    assert sorted(loaded.budgets[("Pendulum-v1", "sac")]) == [100, 300]


@pytest.mark.artifacts
def test_seeds_not_asked_for_at_a_budget_are_not_missing_there(tmp_path):
    grid = write_grid(tmp_path, 100, seeds=(0, 1))
    text = grid.read_text()
    grid.write_text(text + text[text.index("[[experiment]]"):].replace("steps = 100", "steps = 300")
                    .replace("seeds = [0, 1]", "seeds = [0]"))
    rows = {row["steps"]: row for row in summarize(load_grid(grid))}
    assert rows[100]["missing_seeds"] == [0, 1] and rows[300]["missing_seeds"] == [0]


@pytest.mark.artifacts
def test_the_runner_trains_skips_finished_runs_and_extends_from_checkpoints(tmp_path):
    grid = load_grid(write_grid(tmp_path, 200))
    messages = []
    outcome = run_grid(grid, parallel=2, echo=messages.append, poll_seconds=0.2)
    assert sorted(outcome["trained"]) == sorted(job.name for job in grid.jobs) and not outcome["failed"], messages
    assert all(job.status() == "done" for job in grid.jobs)
    hyper = json.loads((grid.jobs[0].run_dir / "config.json").read_text())["config"]
    assert hyper["policy_hidden_sizes"] == [16, 16]  # the hyperparameter file was used

    again = run_grid(grid, echo=messages.append, poll_seconds=0.2)
    assert len(again["already_done"]) == 2 and not again["trained"]

    longer = load_grid(write_grid(tmp_path, 300))  # a larger budget continues each run from its checkpoint
    assert {job.status() for job in longer.jobs} == {"resume"}
    outcome = run_grid(longer, parallel=2, echo=messages.append, poll_seconds=0.2)
    assert len(outcome["trained"]) == 2, messages
    for job in longer.jobs:
        assert Agent.resume(job.run_dir).num_timesteps == 300
        assert sorted(read_curve(job.run_dir)) == [100, 200, 300]
    assert "train.log" in {p.name for p in longer.jobs[0].run_dir.iterdir()}

    report = write_report(longer)
    row = summarize(longer)[-1]
    assert row["steps"] == 300 and row["seeds"] == [0, 1]
    assert row["ci"] == (min(row["scores"].values()), max(row["scores"].values())) and row["interval"] == "min-max"
    assert "| Pendulum-v1 | sac | 300 | 2 |" in report.read_text()
    assert "[min-max " in report.read_text() and "95% CI" not in report.read_text()  # 2 seeds: no CI claimed
    assert (report.parent / "tiny.json").is_file()
    pytest.importorskip("matplotlib")
    assert (report.parent / "tiny-Pendulum-v1.png").stat().st_size > 1000


@pytest.mark.artifacts
def test_a_failing_run_is_reported_and_the_rest_go_on(tmp_path):
    grid = load_grid(write_grid(tmp_path, 100))
    broken = grid.jobs[0].run_dir / "checkpoints"  # a checkpoint pointer whose checkpoint is gone
    broken.mkdir(parents=True)
    (broken / "latest.json").write_text('{"checkpoint": "step_0000000050", "step": 50}')
    outcome = run_grid(grid, echo=lambda _: None, poll_seconds=0.2)
    assert outcome["failed"] == [grid.jobs[0].name] and outcome["trained"] == [grid.jobs[1].name]
    assert "cannot resume" in (grid.jobs[0].run_dir / "train.log").read_text()


@pytest.mark.artifacts
def test_a_run_killed_before_its_first_checkpoint_starts_over(tmp_path):
    grid = load_grid(write_grid(tmp_path, 100, seeds=(0,)))
    run_dir = grid.jobs[0].run_dir
    (run_dir / "checkpoints" / ".partial-x").mkdir(parents=True)  # killed mid-write: no latest.json
    (run_dir / "metrics.jsonl").write_text('{"step": 100, "eval_return": 5.0}\n{"step": 2')  # and mid-line
    assert grid.jobs[0].status() == "new" and read_curve(run_dir) == {100: 5.0}
    outcome = run_grid(grid, echo=lambda _: None, poll_seconds=0.2)
    assert len(outcome["trained"]) == 1
    assert 5.0 not in read_curve(run_dir).values()


@pytest.mark.artifacts
def test_report_without_matplotlib_still_writes_the_table(tmp_path, monkeypatch):
    grid = load_grid(write_grid(tmp_path, 100, seeds=(0,)))
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if matplotlib were not installed
    messages = []
    report = write_report(grid, echo=messages.append)
    assert "| Pendulum-v1 | sac | 100 | 0 | none finished yet |" in report.read_text()
    assert any("need matplotlib" in m for m in messages) and any("does not exist" in m for m in messages)


@pytest.mark.artifacts
def test_one_directory_cannot_be_trained_twice_at_once(tmp_path):
    with run_lock(tmp_path):
        with pytest.raises(DiffAgentError, match="being trained by another process"):
            Agent("sac", "Pendulum-v1", **TINY).learn(60, eval_every=0, run_dir=tmp_path, progress=False)
        grid = load_grid(write_grid(tmp_path, 100, seeds=(0,)))
        grid.jobs[0].run_dir.mkdir(parents=True)
        assert not grid.jobs[0].is_running()
        with run_lock(grid.jobs[0].run_dir):
            assert grid.jobs[0].is_running()
            outcome = run_grid(grid, echo=lambda _: None, poll_seconds=0.2)
        assert outcome["skipped"] == [grid.jobs[0].name]


@pytest.mark.artifacts
def test_a_runner_that_loses_a_job_to_another_in_the_same_instant_skips_it(tmp_path, monkeypatch):
    # Both runners' claims passed before either training took the lock: the second training is refused.
    grid = load_grid(write_grid(tmp_path, 100, seeds=(0,)))
    job = grid.jobs[0]
    monkeypatch.setattr(runner, "claim", lambda job: "new")
    messages = []
    with run_lock(job.run_dir):  # the first runner's training
        outcome = run_grid(grid, echo=messages.append, poll_seconds=0.2)
    assert outcome["skipped"] == [job.name] and not outcome["failed"], messages
    assert f"skip {job.name}: another process is training it" in messages
    assert "being trained by another process" in (job.run_dir / "train.log").read_text()


@pytest.mark.artifacts
def test_train_reads_a_hyperparameter_file_and_set_wins(tmp_path):
    hparams = tmp_path / "h.toml"
    hparams.write_text("[sac]\nbatch_size = 32\npolicy_hidden_sizes = [16, 16]\ncritic_hidden_sizes = [16, 16]\n"
                       "learning_starts = 20\n")
    result = CliRunner().invoke(main, ["train", "--algo", "sac", "--steps", "40", "--out", str(tmp_path / "run"),
                                       "--hparams", str(hparams), "--set", "batch_size=16", "--threads", "1"])
    assert result.exit_code == 0, result.output
    config = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert config["batch_size"] == 16 and config["policy_hidden_sizes"] == [16, 16]
    missing = CliRunner().invoke(main, ["train", "--algo", "ppo", "--hparams", str(hparams)])
    assert missing.exit_code != 0 and "has no [ppo] table" in missing.output


@pytest.mark.artifacts
def test_a_killed_runner_stops_its_trainings_and_a_rerun_resumes_them(tmp_path):
    grid_file = write_grid(tmp_path, 3000, seeds=(0,), extra="")
    grid_file.write_text(grid_file.read_text().replace("eval_every = 100", "eval_every = 500\ncheckpoint_every = 200"))
    job = load_grid(grid_file).jobs[0]
    runner = subprocess.Popen([sys.executable, "-m", "diffagent.cli", "bench", "run", str(grid_file)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(600):  # bounded: at most 60 s for the first checkpoint
            if job.has_checkpoint():
                break
            time.sleep(0.1)
        assert job.has_checkpoint(), "the training never wrote a checkpoint"
    finally:
        runner.terminate()
        runner.wait(timeout=60)
    for _ in range(100):  # the child is stopped with the runner, which releases the run's lock
        if not job.is_running():
            break
        time.sleep(0.1)
    assert not job.is_running() and job.status() == "resume"
    outcome = run_grid(load_grid(grid_file), echo=lambda _: None, poll_seconds=0.2)
    assert len(outcome["trained"]) == 1 and Agent.resume(job.run_dir).num_timesteps == 3000
    steps = [json.loads(line)["step"] for line in (job.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no step logged twice across the kill


SB3_TINY = {"learning_starts": 50, "batch_size": 32, "policy_kwargs": {"net_arch": [16, 16]}}


def table_lines(report: Path) -> list[str]:
    """The report's text without its first paragraph's date and versions line."""
    return [line for line in report.read_text().splitlines() if not line.startswith("Grid `")]


@pytest.mark.artifacts
def test_sb3_runs_beside_diffagent_and_the_report_rebuilds_from_the_archive_alone(tmp_path):
    grid_file = write_grid(tmp_path, 200, extra=f'archive = "{tmp_path / "zoo-runs"}"\ntarget_returns = {{ "Pendulum-v1" = -1500 }}')
    grid_file.write_text(grid_file.read_text() + textwrap.dedent("""
        [[experiment]]
        envs = ["Pendulum-v1"]
        algos = ["sb3-sac"]
        seeds = [0, 1]
        steps = 200
        eval_every = 100
        eval_episodes = 1
        set = { learning_starts = 50, batch_size = 32, policy_kwargs = { net_arch = [16, 16] } }
    """))
    grid = load_grid(grid_file)
    messages = []
    outcome = run_grid(grid, parallel=2, echo=messages.append, poll_seconds=0.2)
    assert len(outcome["trained"]) == 4 and not outcome["failed"], messages
    sb3_job = next(job for job in grid.jobs if job.algo == "sb3-sac")
    records = [json.loads(line) for line in (sb3_job.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [100, 200] and "eval_return_stochastic" in records[-1]
    assert json.loads((sb3_job.run_dir / "config.json").read_text())["hyperparameters"]["learning_starts"] == 50
    for job in grid.jobs:  # archived when they finished: the small files only
        assert sorted(p.name for p in job.archive_dir.iterdir()) == ["config.json", "metrics.jsonl", "results.json"]

    report = write_report(grid)
    text = report.read_text()
    assert "| Pendulum-v1 | sb3-sac | 200 | 2 |" in text and "stochastic IQM" in text
    assert "| 200 | sac | sb3-sac | Pendulum-v1 | 2 vs 2 |" in text and "- (needs 5 seeds of both)" in text
    assert "## Sample efficiency" in text and "diffagent bench sb3 --algo sb3-sac" in text
    tables, numbers = table_lines(report), json.loads((report.parent / "tiny.json").read_text())

    shutil.rmtree(tmp_path / "runs")  # a fresh clone: the archive alone
    fresh = load_grid(grid_file)
    assert {job.status() for job in fresh.jobs} == {"done"} and all(job.is_archived_only() for job in fresh.jobs)
    assert not run_grid(fresh, echo=messages.append, poll_seconds=0.2)["trained"]  # nothing to train again
    again = write_report(fresh)
    assert table_lines(again) == tables
    rebuilt = json.loads((again.parent / "tiny.json").read_text())
    assert all(rebuilt[key] == numbers[key] for key in ("rows", "improvements", "sample_efficiency"))
    pytest.importorskip("matplotlib")
    assert (report.parent / "tiny-Pendulum-v1.png").stat().st_size > 1000


@pytest.mark.artifacts
def test_an_sb3_run_continues_from_its_checkpoint_to_a_larger_budget(tmp_path):
    settings = dict(eval_every=100, eval_episodes=1, checkpoint_every=100, overrides=SB3_TINY)
    train_sb3("sb3-sac", "Pendulum-v1", 200, 3, tmp_path, **settings)
    first = json.loads((tmp_path / "results.json").read_text())
    train_sb3("sb3-sac", "Pendulum-v1", 300, 3, tmp_path, **settings)
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["total_steps"] == 300 and results["evaluations"][:2] == first["evaluations"]
    assert sorted(read_curve(tmp_path)) == [100, 200, 300] and results["train_time_s"] > first["train_time_s"]
    assert [p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.startswith("step_")] == ["step_0000000300"]
    with pytest.raises(ConfigError, match="holds another run"):
        train_sb3("sb3-sac", "Pendulum-v1", 300, 4, tmp_path, **settings)


@pytest.mark.artifacts
def test_sb3_settings_and_algorithm_names_are_checked_when_the_grid_is_read(tmp_path):
    grid = write_grid(tmp_path, 100)
    text = grid.read_text()
    grid.write_text(text.replace('algos = ["sac"]', 'algos = ["sb3-sac"]\nset = { learning_start = 5 }'))
    with pytest.raises(ConfigError, match="SAC has no keyword argument 'learning_start'"):
        load_grid(grid)
    grid.write_text(text.replace('algos = ["sac"]', 'algos = ["sb3-sax"]'))
    with pytest.raises(ConfigError, match="unknown algorithm 'sb3-sax'.*sb3-sac, sb3-ppo"):
        load_grid(grid)


def write_archived_run(folder: Path, curve: dict[int, float], stochastic: bool | set[int] = True,
                       entropy: dict[int, float] | None = None) -> None:
    """What archive_run keeps of a finished run, made up: its curve and results; the stochastic return at every
    evaluation, none, or at the steps given; the training's entropy estimate at the steps given."""
    folder.mkdir(parents=True)
    records = [{"step": step, "eval_return": value,
                **({"eval_return_stochastic": value - 50} if stochastic is True or step in (stochastic or ()) else {})}
               for step, value in curve.items()]
    records += [{"step": step, "entropy_estimate": value} for step, value in (entropy or {}).items()]
    (folder / "metrics.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    (folder / "results.json").write_text(json.dumps({"total_steps": max(curve), "train_time_s": 10.0}))
    (folder / "config.json").write_text("{}")


def write_normalised_grid(root: Path, name: str, experts: dict[str, float], experiments: str) -> Path:
    """A grid file whose runs are archived in ROOT/archive and whose envs are normalised from 0 to `experts[env]`
    (a references file beside it); `experiments`: the rest of the grid file."""
    references = root / "references.toml"
    references.write_text("".join(f'[[normalization]]\nenv = "{env}"\nrandom = 0.0\nexpert = {expert}\n'
                                  'source = "test"\n' for env, expert in experts.items()))
    grid_file = root / "grid.toml"
    grid_file.write_text(textwrap.dedent(f"""
        name = "{name}"
        out = "{root / 'runs'}"
        archive = "{root / 'archive'}"
        results = "{root / 'results'}"
        references = "{references}"
    """) + textwrap.dedent(experiments))
    return grid_file


@pytest.mark.artifacts
def test_five_seeds_on_two_envs_get_intervals_comparisons_profiles_and_sample_efficiency(tmp_path):
    archive = tmp_path / "archive"
    for env, scale in (("Hopper-v4", 1.0), ("Walker2d-v4", 2.0)):
        for algo, shift in (("sac", 0.0), ("diffsac", 300.0)):
            for seed in range(5):
                final = scale * (1000 + 100 * seed + shift)
                write_archived_run(archive / env / algo / f"s{seed}", {50: final / 2, 100: final},
                                   # seed 4 recorded before the stochastic return was; seed 3's lacks the last one
                                   stochastic={4: False, 3: {50}}.get(seed, True),
                                   # the entropy over the budget's last tenth (95, 100), not before; sac's seed 4 none
                                   entropy=None if (algo, seed) == ("sac", 4) else {85: 9.0, 95: shift / 100, 100: 0.0})
    write_archived_run(archive / "Hopper-v4" / "sb3-sac" / "s0", {50: 500.0, 100: 900.0})  # one seed, one env
    grid_file = write_normalised_grid(tmp_path, "five", {"Hopper-v4": 2000.0, "Walker2d-v4": 4000.0}, """
        target_returns = { "Hopper-v4" = 1350, "Walker2d-v4" = 100 }
        [[experiment]]
        envs = ["Hopper-v4", "Walker2d-v4"]
        algos = ["sac", "diffsac"]
        seeds = [0, 1, 2, 3, 4]
        steps = 100
        eval_every = 50
        [[experiment]]
        envs = ["Hopper-v4"]
        algos = ["sb3-sac"]
        seeds = [0]
        steps = 100
        eval_every = 50
    """)
    grid = load_grid(grid_file)
    text = write_report(grid, grid.references, echo=lambda _: None).read_text()
    assert "| Hopper-v4 | diffsac | 100 | 5 | 1,500.0 [95% CI " in text
    assert "1,500.0 +/- 158.1 |" in text  # the sample std over seeds
    # the stochastic return of the seeds that recorded it at the budget's evaluation, never an earlier one
    assert "[min-max 1,250.0, 1,450.0] (3 of the 5 seeds) |" in text
    rows = {}  # the results table's rows: the first of each (env, algo)
    for line in text.splitlines():
        if line.startswith("| "):
            rows.setdefault(tuple(line.split(" | ")[:2]), line)
    # per seed: the score, and the mean of its last (here two) evaluations
    assert "| Hopper-v4 | diffsac | 100 | 1,300 (975) | 1,400 (1,050) |" in text
    assert "| 1.50 | " in rows["| Hopper-v4", "diffsac"]  # the mean of the last tenth's logs, over seeds
    assert "| 0.00 (4 of the 5 seeds) | " in rows["| Walker2d-v4", "sac"]
    assert "| - | " in rows["| Hopper-v4", "sb3-sac"]  # Stable-Baselines3's runs log no entropy
    assert "| 100 | diffsac | sb3-sac | Hopper-v4 | 5 vs 1 | - (needs 5 seeds of both) |" in text
    assert "| 100 | diffsac | sac | Hopper-v4 + Walker2d-v4 | 5 vs 5 | 0.92 [95% CI 0.78, 1.00] |" in text
    # the same comparisons in words
    assert ("- **diffsac wins against sac** on Hopper-v4 + Walker2d-v4 at 100 steps: P(diffsac > sac) = 0.92 "
            "[95% CI 0.78, 1.00].") in text
    assert "- **diffsac wins against sac** on Hopper-v4 at 100 steps: P(diffsac > sac) = " in text
    assert "; IQM 1,500 against 1,200." in text
    unjudged = next(line for line in text.splitlines() if line.startswith("- Not judged yet, fewer than 5 seeds"))
    assert "; diffsac against sb3-sac on Hopper-v4 at 100 steps (5 vs 1)" in unjudged
    assert "| 100 | Hopper-v4, Walker2d-v4 | diffsac | 5 | 0.750 [95% CI " in text  # IQM of normalised scores
    # an algorithm missing from an env is named, and the others keep both envs
    assert "| 100 | Hopper-v4, Walker2d-v4 | sb3-sac | - | not on every env: not run on Walker2d-v4 |" in text
    assert ("| Hopper-v4 | 1,350 | 100 | diffsac | 4 of 5 | 100 [95% CI 100, not by 100] | "
            "s0 not by 100, s1 100, s2 100, s3 100, s4 100 |") in text  # seed 0 ended at 1,300
    numbers = json.loads((tmp_path / "results" / "five.json").read_text())
    assert numbers["across_envs"][0]["profiles"]["diffsac"]["band"] is not None
    pytest.importorskip("matplotlib")
    assert (tmp_path / "results" / "five-summary.png").stat().st_size > 1000


def write_hopper_grid(root: Path, name: str, algos: list[str], seeds: int, steps: int, eval_every: int) -> Path:
    """A grid of Hopper-v4 runs in ROOT/runs, its results in ROOT/results (its archive named when it is loaded)."""
    grid_file = root / "grid.toml"
    grid_file.write_text(textwrap.dedent(f"""
        name = "{name}"
        out = "{root / 'runs'}"
        results = "{root / 'results'}"
        [[experiment]]
        envs = ["Hopper-v4"]
        algos = {json.dumps(algos)}
        seeds = {list(range(seeds))}
        steps = {steps}
        eval_every = {eval_every}
    """))
    return grid_file


@pytest.mark.artifacts
def test_each_seed_shows_its_score_its_recent_mean_or_how_far_it_got(tmp_path):
    write_archived_run(tmp_path / "archive" / "Hopper-v4" / "sac" / "s0",
                       {10: 100.0, 20: 200.0, 30: 300.0, 40: 400.0, 50: 500.0, 60: 600.0, 70: 9000.0})
    write_archived_run(tmp_path / "runs" / "Hopper-v4" / "sac" / "s1", {10: 150.0, 20: 250.0})  # still training
    grid_file = write_hopper_grid(tmp_path, "seeds", ["sac"], seeds=3, steps=60, eval_every=10)
    text = write_report(load_grid(grid_file, archive=tmp_path / "archive"), echo=lambda _: None).read_text()
    # seed 0: the evaluation at the budget, and the last five up to it (steps 20-60), not the one after it
    assert "| Hopper-v4 | sac | 60 | 600 (400) | at 20: 250 | - |" in text
    numbers = json.loads((tmp_path / "results" / "seeds.json").read_text())
    assert numbers["rows"][0]["recent_scores"] == {"0": 400.0}


@pytest.mark.artifacts
def test_across_envs_waits_for_an_env_with_nothing_finished_and_curves_keep_the_finished_seeds(tmp_path):
    archive = tmp_path / "archive"
    for algo in ("sac", "diffsac"):
        for seed in (0, 1):
            write_archived_run(archive / "Hopper-v4" / algo / f"s{seed}", {50: 100.0, 100: 200.0 + seed})
    write_archived_run(tmp_path / "runs" / "Hopper-v4" / "sac" / "s2", {50: 90.0})  # just started
    grid_file = write_normalised_grid(tmp_path, "waiting", {"Hopper-v4": 1000.0, "Walker2d-v4": 1000.0}, """
        [[experiment]]
        envs = ["Hopper-v4", "Walker2d-v4"]
        algos = ["sac", "diffsac"]
        seeds = [0, 1, 2]
        steps = 100
        eval_every = 50
    """)
    grid = load_grid(grid_file)
    text = write_report(grid, grid.references, echo=lambda _: None).read_text()
    assert "| 100 | Hopper-v4 | diffsac | 2 | 0.201 [min-max 0.200, 0.201] |" in text  # scored on the env that has runs
    assert "| 100 | Walker2d-v4 | - | - | no run finished yet |" in text
    panels = curve_panels(grid, "Hopper-v4")
    assert [(curve["algo"], curve["seeds"], curve["steps"]) for curve in panels[0]] == [
        ("sac", 2, [50, 100]), ("diffsac", 2, [50, 100])]  # seed 2's one evaluation does not cut the curve short


@pytest.mark.artifacts
def test_a_bandit_grids_modes_table_rebuilds_from_the_archive_alone(tmp_path):
    grid_file = write_normalised_grid(tmp_path, "bandit", {}, """
        [[experiment]]
        envs = ["diffagent/FourPeaks-v0"]
        algos = ["sac", "diffsac"]
        seeds = [0]
        steps = 60
        eval_every = 30
        eval_episodes = 1
        set = { policy_hidden_sizes = [16, 16], critic_hidden_sizes = [16, 16], learning_starts = 30, batch_size = 16 }
    """)
    messages = []
    assert len(run_grid(load_grid(grid_file), echo=messages.append, poll_seconds=0.2)["trained"]) == 2, messages
    tables = table_lines(write_report(load_grid(grid_file)))
    assert sum(line.startswith(("| sac | 60 | 1 |", "| diffsac | 60 | 1 |")) for line in tables) == 2  # modes table

    shutil.rmtree(tmp_path / "runs")  # a fresh clone: the archive, with the bandit runs' weights, alone
    assert table_lines(write_report(load_grid(grid_file))) == tables


@pytest.mark.artifacts
def test_small_scores_keep_their_digits():
    row = {"env": "diffagent/FourPeaks-v0", "algo": "diffsac", "steps": 100, "seeds": [0], "missing_seeds": [1],
           "scores": {0: 0.733}, "recent_scores": {0: 0.71}, "partial": {1: (50, 0.0512)}}
    assert per_seed_table([row]).splitlines()[-1] == (
        "| diffagent/FourPeaks-v0 | diffsac | 100 | 0.733 (0.710) | at 50: 0.0512 |")


@pytest.mark.artifacts
def test_a_run_is_archived_again_only_when_its_files_changed(tmp_path):
    run = tmp_path / "runs" / "Hopper-v4" / "sac" / "s0"
    write_archived_run(run, {50: 1.0, 100: 2.0})
    grid = load_grid(write_hopper_grid(tmp_path, "copies", ["sac"], seeds=1, steps=100, eval_every=50),
                     archive=tmp_path / "archive")
    job = grid.jobs[0]
    assert archive_run(job) and not archive_run(job)
    (run / "metrics.jsonl").write_text((run / "metrics.jsonl").read_text() + '{"step": 100, "eval_return": 3.0}\n')
    assert archive_run(job) and read_curve(job.archive_dir)[100] == 3.0


@pytest.mark.artifacts
def test_status_counts_the_runs_and_the_training_time_left_at_the_finished_runs_pace(tmp_path):
    archive = tmp_path / "elsewhere"  # the checkout that commits the runs, named on the command line
    for seed, seconds in ((0, 10.0), (1, 30.0), (2, 20.0)):  # 100 steps each: 10, 3.3 and 5 steps/s
        write_archived_run(archive / "Hopper-v4" / "sac" / f"s{seed}", {50: 1.0, 100: 2.0})
        results = archive / "Hopper-v4" / "sac" / f"s{seed}" / "results.json"
        results.write_text(json.dumps({"total_steps": 100, "train_time_s": seconds}))
    for seed in (3, 4):  # evaluated at 50 steps, not finished
        write_archived_run(tmp_path / "runs" / "Hopper-v4" / "sac" / f"s{seed}", {50: 1.0})
        (tmp_path / "runs" / "Hopper-v4" / "sac" / f"s{seed}" / "results.json").unlink()
    checkpoints = tmp_path / "runs" / "Hopper-v4" / "sac" / "s3" / "checkpoints"
    checkpoints.mkdir()  # seed 3 resumes from its checkpoint at 40 steps; seed 4, killed before its first, starts over
    (checkpoints / "latest.json").write_text(json.dumps({"checkpoint": "step_0000000040", "step": 40}))
    grid_file = write_hopper_grid(tmp_path, "pace", ["sac", "diffsac"], seeds=5, steps=100, eval_every=50)
    grid = load_grid(grid_file, archive=archive)
    seconds, unknown = training_time_left(grid)
    # at the median pace, 5 steps/s: 60 steps of seed 3 and 100 of seed 4; no diffsac run has finished
    assert seconds == pytest.approx(32.0) and [job.name for job in unknown] == [
        f"diffsac Hopper-v4 seed {seed} (100 steps)" for seed in range(5)]
    result = CliRunner().invoke(main, ["bench", "status", str(grid_file), "--archive", str(archive)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == (
        "10 runs: 3 done, 1 resume, 6 new; about 0.5 core-minutes of training left at the pace of this grid's finished "
        "runs (the median of each env and algorithm's), besides 5 runs with no finished run of their env and algorithm "
        "to go by.")
    # with nothing finished to go by, no time is made up
    grid_file = write_hopper_grid(tmp_path, "pace", ["diffsac"], seeds=2, steps=100, eval_every=50)
    result = CliRunner().invoke(main, ["bench", "status", str(grid_file), "--archive", str(archive)])
    assert result.output.splitlines()[-1] == (
        "2 runs: 2 new; the training time left is not known yet: none of the 2 runs to train has a finished run of its "
        "env and algorithm to go by.")


@pytest.mark.artifacts
def test_the_campaign_grids_run_five_seeds_seed_major_beside_sb3_and_archive_in_the_zoo():
    root = Path(__file__).resolve().parents[1]
    for name in ("campaign-hopper-walker", "campaign-halfcheetah-ant", "campaign-300k"):
        grid = load_grid(root / "zoo" / "grids" / f"{name}.toml")
        assert grid.archive == root / "zoo" / "runs" / "campaign"
        assert {"sb3-sac"} <= {job.algo for job in grid.jobs} and [job.seed for job in grid.jobs] == sorted(
            job.seed for job in grid.jobs)
        for (env_id, algo), budgets in grid.budgets.items():
            assert {job.seed for job in grid.jobs if (job.env_id, job.algo) == (env_id, algo)} == set(range(5))
            assert env_id in grid.target_returns
    part1 = load_grid(root / "zoo" / "grids" / "campaign-hopper-walker.toml")
    assert {(job.algo, job.steps, job.eval_every) for job in part1.jobs} == {
        *((algo, 100_000, 5000) for algo in ("sac", "diffsac", "wpo", "diffwpo", "sb3-sac")),
        *((algo, 1_000_000, 20_000) for algo in ("ppo", "diffppo", "sb3-ppo"))}


@pytest.mark.artifacts
def test_git_keeps_only_an_archived_runs_small_files():
    root = Path(__file__).resolve().parents[1]
    run = "zoo/runs/campaign/Hopper-v4/sac/s0"
    paths = [f"{run}/{name}" for name in ("config.json", "results.json", "metrics.jsonl", "model.safetensors",
                                          "train.log", "checkpoints/latest.json")]
    ignored = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=root, capture_output=True,
                             text=True).stdout.split()
    assert ignored == paths[3:]
