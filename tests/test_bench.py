"""Benchmark grids: parsing, the resumable runner, run locks, and the statistics of the report."""

import json
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
from click.testing import CliRunner

from diffagent import Agent, ConfigError, DiffAgentError
from diffagent.bench import (bootstrap_interval, iqm, load_grid, load_hyperparameters, read_curve, run_grid, score_at,
                             seed_interval, summarize, write_report)
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
def test_score_is_read_off_the_curve_at_the_budget(tmp_path):
    lines = [{"step": 100, "eval_return": -900.0}, {"step": 200, "eval_return": -500.0},
             {"step": 200, "eval_return": -400.0}, {"step": 300, "loss": 1.0}, {"step": 400, "eval_return": -200.0}]
    (tmp_path / "metrics.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    curve = read_curve(tmp_path)
    assert curve == {100: -900.0, 200: -400.0, 400: -200.0}  # a step logged twice (a resume): the last wins
    assert score_at(curve, 300) == -400.0
    assert score_at(curve, 400) == -200.0
    assert score_at(curve, 500) is None  # the run has not got there


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


@pytest.mark.artifacts
def test_one_run_serving_two_budgets_must_have_one_setting(tmp_path):
    grid = write_grid(tmp_path, 100, seeds=(0,))
    text = grid.read_text()
    grid.write_text(text + text[text.index("[[experiment]]"):].replace("eval_every = 100", "eval_every = 50"))
    with pytest.raises(ConfigError, match="must agree"):
        load_grid(grid)


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
        assert Agent.resume(job.run_dir).num_steps == 300
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
    assert "| Pendulum-v1 | sac | 100 | 0 | not run |" in report.read_text()
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
    assert len(outcome["trained"]) == 1 and Agent.resume(job.run_dir).num_steps == 3000
    steps = [json.loads(line)["step"] for line in (job.run_dir / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no step logged twice across the kill
