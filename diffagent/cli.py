"""The `diffagent` command line: train, resume, eval, export, push, serve, bench and zoo.

The one place with click commands. Each command does its work through the library, and diffagent's
own errors (DiffAgentError: bad input that the message says how to fix) become a one-line message;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import functools
import json
import os
import shlex
import sys
from pathlib import Path

import click

from diffagent.agent import Agent
from diffagent.bench import (load_grid, load_hyperparameters, read_curve, run_grid, run_grid_on_ray,
                             split_env_settings, training_time_left, write_report)
from diffagent.bench.sb3 import SB3_ALGORITHMS, parse_sb3_overrides, train_sb3
from diffagent.config import ALGORITHMS, make_config, parse_overrides
from diffagent.envs import import_packages, parse_env_kwargs, split_env_id
from diffagent.errors import DiffAgentError
from diffagent.export import PARITY_TOLERANCE, export_onnx, format_parity, verify_onnx
from diffagent.io import METRICS_FILE, has_checkpoint, json_safe
from diffagent.publish import DEFAULT_LICENSE, default_repo_id, push
from diffagent.triton_repository import DEFAULT_MAX_BATCH, INSTANCE_KINDS, MODEL_FILE, VERSION, export_triton
from diffagent.zoo import DEFAULT_MODELS_DIR, add_to_zoo, push_zoo, zoo_models
from serve.contract import ONNX_FILE
from serve.server import main as serve_main

DEFAULT_ALGO = "diffsac"
DEFAULT_ENV = "Pendulum-v1"
DEFAULT_STEPS = 6_000
# The embedded default: a short real run that learns Pendulum in a few minutes on 2 CPU cores
# (learning rates 1e-3 as rl-baselines3-zoo's Pendulum settings; 3e-4 needs about twice the steps).
QUICKSTART_OVERRIDES = {"learning_starts": "1000", "actor_lr": "1e-3", "critic_lr": "1e-3", "alpha_lr": "1e-3"}


def friendly_errors(command):
    """Turn diffagent's own errors into a one-line message and exit code 2, no traceback."""
    @functools.wraps(command)
    def wrapper(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except DiffAgentError as err:
            raise click.ClickException(str(err)) from None
    return wrapper


def imports_gym_packages(command):
    """Give a command `--gym-packages MODULE`: the modules named are imported before it runs, to register the
    user's envs and define their wrappers (rl-zoo3's option). Importing is the user's choice, made here on
    the command line; loading an artifact never imports anything."""
    @click.option("--gym-packages", "gym_packages", multiple=True, metavar="MODULE",
                  help="Import MODULE first: it registers your envs or defines your wrappers (repeatable).")
    @functools.wraps(command)
    def wrapper(*args, gym_packages, **kwargs):
        if gym_packages:
            _find_modules_in_working_directory()
            import_packages(gym_packages)
        return command(*args, **kwargs)
    return wrapper


def _find_modules_in_working_directory() -> None:
    """Let the user's modules be found as `python -m` finds them, in the working directory first (the
    `diffagent` script's own folder is on sys.path instead)."""
    if os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


def _set_threads(threads: int | None) -> None:
    if threads:
        import torch

        torch.set_num_threads(threads)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="diffagent")
def main() -> None:
    """Maximum-entropy RL with diffusion policies (DiffSAC, DiffPPO, DiffWPO) and their Gaussian baselines."""


@main.command()
@click.option("--algo", default=DEFAULT_ALGO, show_default=True, help=f"One of: {', '.join(ALGORITHMS)}.")
@click.option("--env", "env_id", default=DEFAULT_ENV, show_default=True,
              help="Gymnasium environment id (Box actions); your own: my_module:MyEnv-v0 imports my_module first.")
@click.option("--env-kwargs", "env_kwargs", multiple=True, metavar="KEY=VALUE",
              help="A keyword argument of gym.make, VALUE read as JSON, e.g. --env-kwargs g=9.81 (repeatable).")
@click.option("--steps", default=DEFAULT_STEPS, show_default=True, type=int, help="Total environment steps.")
@click.option("--seed", default=None, type=int, help="Seed of torch, numpy and the envs [default: 0].")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory [default: runs/ALGO-ENV-sSEED].")
@click.option("--hparams", "hparams_file", type=click.Path(dir_okay=False),
              help="TOML file of hyperparameters with an [ALGO] table, e.g. zoo/hyperparams/Hopper-v4.toml; its "
                   "env_wrapper and env_kwargs make the env.")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a hyperparameter, e.g. --set batch_size=512 (repeatable; wins over --hparams).")
@click.option("--eval-every", default=None, type=int, help="Evaluate every N steps [default: steps/10].")
@click.option("--eval-episodes", default=5, show_default=True, type=int)
@click.option("--checkpoint-every", default=None, type=int,
              help="Checkpoint every N steps, and once at the start [default: at each evaluation, at most every 10,000].")
@click.option("--tensorboard", is_flag=True, help="Also write TensorBoard event files to the run directory.")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or auto.")
@click.option("--threads", default=None, type=int, help="torch intra-op threads (default: torch's choice).")
@click.option("--list-params", is_flag=True, help="List the algorithm's hyperparameters and exit.")
@friendly_errors
@imports_gym_packages
def train(algo, env_id, env_kwargs, steps, seed, out, hparams_file, overrides, eval_every, eval_episodes,
          checkpoint_every, tensorboard, device, threads, list_params):
    """Train an agent; the run directory gets the artifact, metrics.jsonl and checkpoints.

    With no options: DiffSAC on Pendulum-v1 for 6,000 steps (a few minutes on a laptop CPU).
    """
    if list_params:
        for spec, default in make_config(algo).items():
            click.echo(f"{spec.name} = {default!r}\n    {spec.metadata['help']}")
        return
    _set_threads(threads)
    values = parse_overrides(overrides)
    env_settings = {"env_kwargs": parse_env_kwargs(env_kwargs), "wrappers": []}
    if hparams_file:
        hyperparameters, file_env = split_env_settings(load_hyperparameters(hparams_file, algo), hparams_file)
        values = {**hyperparameters, **values}
        env_settings = {"env_kwargs": {**file_env["env_kwargs"], **env_settings["env_kwargs"]},
                        "wrappers": file_env["wrappers"]}
    elif (algo, env_id) == (DEFAULT_ALGO, DEFAULT_ENV):
        values = {**QUICKSTART_OVERRIDES, **values}
    if seed is not None and "seed" in values:
        raise click.ClickException(f"the seed is given twice (--seed {seed} and seed={values['seed']} in --set or "
                                   "--hparams); give it once")
    values.setdefault("seed", 0 if seed is None else seed)
    module, plain_id = split_env_id(env_id)
    out = Path(out or f"runs/{algo}-{plain_id}-s{values['seed']}")
    if has_checkpoint(out) or (out / METRICS_FILE).exists():
        raise click.ClickException(f"{out} already holds a run; continue it with `diffagent resume {out}`, "
                                   "or delete it, or pass another --out")
    if module:
        _find_modules_in_working_directory()
    agent = Agent(algo, env_id, device=device, **env_settings, **values)
    eval_every = eval_every if eval_every is not None else max(steps // 10, 1)
    click.echo(f"training {algo} on {env_id} for {steps} steps -> {out}")
    agent.learn(steps, eval_every=eval_every, eval_episodes=eval_episodes, run_dir=out, tensorboard=tensorboard,
                checkpoint_every=checkpoint_every if checkpoint_every is not None else min(eval_every or 10_000, 10_000))
    _report(agent, out)


@main.command()
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.option("--steps", default=None, type=int, help="New total step budget [default: the run's own].")
@click.option("--device", default="cpu", show_default=True)
@click.option("--threads", default=None, type=int)
@friendly_errors
@imports_gym_packages
def resume(run_dir, steps, device, threads):
    """Continue a killed or finished run from its last checkpoint."""
    _set_threads(threads)
    agent = Agent.resume(run_dir, device=device)
    total = steps or agent.budget
    if total <= agent.num_timesteps:
        click.echo(f"{run_dir} has trained {agent.num_timesteps:,} of {total:,} steps: nothing to do "
                   "(pass --steps with a larger budget to extend it)")
        return
    click.echo(f"resuming {agent.algo} on {agent.env_id} at step {agent.num_timesteps} of {total}")
    agent.learn(total - agent.num_timesteps)  # in the run directory it was resumed from, on its own schedules
    _report(agent, Path(run_dir))


@main.command("eval")
@click.argument("model")
@click.option("--episodes", default=10, show_default=True, type=int)
@click.option("--stochastic", is_flag=True, help="Sample actions instead of the deterministic (zero-noise) chain.")
@click.option("--seed", default=None, type=int, help="Seed of episode 0 (episode i uses seed + i).")
@click.option("--revision", default=None, help="Hub repos: branch, tag or commit [default: main].")
@click.option("--device", default="cpu", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@friendly_errors
@imports_gym_packages
def evaluate(model, episodes, stochastic, seed, revision, device, as_json):
    """Evaluate a saved agent: a run or artifact directory, or a Hub repo id ORG/NAME."""
    agent = Agent.from_pretrained(model, revision=revision, device=device)
    result = agent.evaluate(episodes, deterministic=not stochastic, seed=seed)
    if as_json:  # strict JSON: a non-finite return (an env's NaN reward) prints as null
        summary = {"model": model, "algo": agent.algo, "env_id": agent.env_id, **result.to_dict()}
        click.echo(json.dumps(json_safe(summary), allow_nan=False))
    else:
        click.echo(f"{agent.algo} on {agent.env_id}: {result.mean:.2f} +/- {result.std:.2f} over {episodes} "
                   f"{'stochastic' if stochastic else 'deterministic'} episodes")


@main.group()
def bench() -> None:
    """Benchmark grids (zoo/grids/*.toml): run them in the background, see where they stand, report."""


@bench.command("run")
@click.argument("grid_file", type=click.Path(dir_okay=False))
@click.option("--jobs", "parallel", default=None, type=click.IntRange(min=1),
              help="Runs at a time, one thread each [default: cores; with Ray, as many as its CPUs take].")
@click.option("--backend", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="Where runs train: processes on this machine, or Ray tasks of one CPU each on a cluster "
                   "(pip install 'diffagent[ray]'; every machine sees the run directories at the same path).")
@click.option("--address", default=None, metavar="HOST:PORT",
              help="The Ray cluster (what `ray start --head` printed) [default: RAY_ADDRESS, else Ray started here].")
@click.option("--archive", type=click.Path(file_okay=False), default=None,
              help="Archive finished runs here instead of the grid's `archive` (e.g. the checkout that commits them).")
@click.option("--dry-run", is_flag=True, help="Print what would run and exit.")
@friendly_errors
def bench_run(grid_file, parallel, backend, address, archive, dry_run):
    """Train every unfinished run of GRID_FILE; a killed grid picks up where it stopped."""
    if address is not None and backend != "ray":
        raise click.UsageError("--address names a Ray cluster: add --backend ray")
    grid = load_grid(grid_file, archive=archive)
    if dry_run:
        for job in grid.jobs:
            click.echo(f"{job.status():6s} {shlex.join(job.process_command())}")
        return
    if backend == "ray":
        outcome = run_grid_on_ray(grid, address, parallel, echo=click.echo)
    else:
        outcome = run_grid(grid, parallel, echo=click.echo)
    click.echo(", ".join(f"{len(names)} {kind}" for kind, names in outcome.items()))
    if outcome["failed"]:
        raise click.ClickException(f"{len(outcome['failed'])} runs failed; their train.log says why")


@bench.command("status")
@click.argument("grid_file", type=click.Path(dir_okay=False))
@click.option("--archive", type=click.Path(file_okay=False), default=None,
              help="Read archived runs here instead of the grid's `archive` (as `bench run --archive`).")
@friendly_errors
def bench_status(grid_file, archive):
    """List the runs of GRID_FILE (done, running, resume, new or stale) and the steps each has reached, a run
    known here only from its archived files saying so; then the count of each and the training time left at the
    pace of the grid's finished runs."""
    grid = load_grid(grid_file, archive=archive)
    counts: dict[str, int] = {}
    for job in grid.jobs:
        curve = read_curve(job.source_dir())
        reached = f"{max(curve):,} steps, last eval {curve[max(curve)]:.1f}" if curve else "no evaluation yet"
        if job.is_archived_only():
            reached += f" (archived in {job.archive_dir})"
        status = "running" if job.is_running() else job.status()
        counts[status] = counts.get(status, 0) + 1
        click.echo(f"{status:7s} {job.name}: {reached}")
    seconds, unknown = training_time_left(grid)
    amount = f"{seconds / 3600:,.1f} core-hours" if seconds >= 3600 else f"{seconds / 60:.1f} core-minutes"
    left = (f"about {amount} of training left at the pace of this grid's finished runs (the median of each env "
            "and algorithm's)")
    if unknown and not seconds:
        left = (f"the training time left is not known yet: none of the {len(unknown)} runs to train has a finished "
                "run of its env and algorithm to go by")
    elif unknown:
        left += f", besides {len(unknown)} runs with no finished run of their env and algorithm to go by"
    order = ("done", "running", "resume", "new", "stale")
    counted = ", ".join(f"{counts[status]} {status}" for status in order if status in counts)
    click.echo(f"{len(grid.jobs)} runs: {counted}; {left}.")


@bench.command("report")
@click.argument("grid_file", type=click.Path(dir_okay=False))
@click.option("--references", type=click.Path(dir_okay=False), default=None,
              help="Reference results TOML [default: the grid file's `references`].")
@click.option("--archive", type=click.Path(file_okay=False), default=None,
              help="Read and archive runs here instead of the grid's `archive` (as `bench run --archive`).")
@friendly_errors
def bench_report(grid_file, references, archive):
    """Aggregate the runs of GRID_FILE, from their run directories or their archived files: IQM tables with
    stratified-bootstrap CIs, probability of improvement, sample efficiency, learning curves and a summary
    figure, raw JSON. Finished runs not archived yet are archived first."""
    grid = load_grid(grid_file, archive=archive)
    write_report(grid, Path(references) if references else grid.references, echo=click.echo)


@bench.command("sb3")
@click.option("--algo", required=True, type=click.Choice(list(SB3_ALGORITHMS)), help="Stable-Baselines3's SAC or PPO.")
@click.option("--env", "env_id", required=True, help="Gymnasium environment id; my_module:MyEnv-v0 imports my_module.")
@click.option("--env-kwargs", "env_kwargs", multiple=True, metavar="KEY=VALUE", help="A keyword argument of gym.make.")
@click.option("--steps", required=True, type=int, help="Total environment steps.")
@click.option("--seed", default=0, show_default=True, type=int)
@click.option("--eval-every", default=None, type=int, help="Evaluate every N steps [default: steps/10].")
@click.option("--eval-episodes", default=10, show_default=True, type=int)
@click.option("--checkpoint-every", default=None, type=int, help="Checkpoint every N steps [default: at each evaluation].")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="A keyword argument of the SB3 class, VALUE read as JSON (repeatable).")
@click.option("--out", type=click.Path(file_okay=False), help="Run directory [default: runs/ALGO-ENV-sSEED].")
@click.option("--threads", default=None, type=int, help="torch intra-op threads (default: torch's choice).")
@friendly_errors
@imports_gym_packages
def bench_sb3(algo, env_id, env_kwargs, steps, seed, eval_every, eval_episodes, checkpoint_every, overrides, out,
              threads):
    """Train Stable-Baselines3's SAC or PPO as a grid's sb3-sac and sb3-ppo runs are trained: rl-baselines3-zoo's
    MuJoCo defaults, evaluated on diffagent's schedule and episode seeds. A run directory with a checkpoint
    is continued (to a larger --steps too)."""
    _set_threads(threads)
    for name, value in (("steps", steps), ("eval-every", eval_every), ("eval-episodes", eval_episodes),
                        ("checkpoint-every", checkpoint_every)):
        if value is not None and value < 1:
            raise click.ClickException(f"--{name} must be a positive integer, got {value}")
    module, plain_id = split_env_id(env_id)
    if module:
        _find_modules_in_working_directory()
        import_packages([module])
    eval_every = eval_every or max(steps // 10, 1)
    train_sb3(algo, env_id, steps, seed, Path(out or f"runs/{algo}-{plain_id}-s{seed}"), eval_every=eval_every,
              eval_episodes=eval_episodes, checkpoint_every=checkpoint_every or eval_every,
              overrides=parse_sb3_overrides(overrides), env_kwargs=parse_env_kwargs(env_kwargs))


@main.group()
def zoo() -> None:
    """The trained models kept in zoo/models: add a run's, list them, push them all to the Hub."""


@zoo.command("add")
@click.argument("run_dir", type=click.Path(file_okay=False))
@click.argument("name")
@click.option("--models", default=str(DEFAULT_MODELS_DIR), show_default=True, type=click.Path(file_okay=False))
@friendly_errors
def zoo_add(run_dir, name, models):
    """Copy the artifact of RUN_DIR into the zoo as NAME, with its verified ONNX graph."""
    click.echo(f"added {add_to_zoo(run_dir, name, models)}")


@zoo.command("list")
@click.option("--models", default=str(DEFAULT_MODELS_DIR), show_default=True, type=click.Path(file_okay=False))
@friendly_errors
def zoo_list(models):
    """Print every model of the zoo with its evaluation."""
    for directory, meta, results in zoo_models(models):
        final = (results or {}).get("final_eval") or {}
        score = (f"{final['mean']:.1f} +/- {final['std']:.1f} at {final['step']:,} steps"
                 if {"mean", "std", "step"} <= set(final) else "no evaluation recorded")
        click.echo(f"{directory.name}: {meta['algo']} on {meta['env_id']}, {score}")


@zoo.command("push")
@click.option("--org", required=True, help="Hub user or organisation; each model goes to ORG/DIRECTORY_NAME.")
@click.option("--models", default=str(DEFAULT_MODELS_DIR), show_default=True, type=click.Path(file_okay=False))
@click.option("--token", default=None, help="Hub token with write access [default: HF_TOKEN, then `hf auth login`].")
@click.option("--eval-episodes", default=10, show_default=True, type=int)
@click.option("--video/--no-video", default=True, show_default=True)
@friendly_errors
def zoo_push(org, models, token, eval_episodes, video):
    """Push every zoo model to the Hub with its model card (evaluated afresh)."""
    push_zoo(models, org, token=token, eval_episodes=eval_episodes, video=video, echo=click.echo)


@main.command("export")
@click.argument("model_dir", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(dir_okay=False), help=f"Output file [default: MODEL_DIR/{ONNX_FILE}].")
@click.option("--sample-noise", is_flag=True, help="Export the form that draws its own noise (input: obs only).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help=f"Compare onnxruntime against PyTorch at batch 1 and 1024 (fails above {PARITY_TOLERANCE:g} of the "
                   "action range).")
@click.option("--triton", "triton_repository", type=click.Path(file_okay=False), default=None,
              help="Write a model of this Triton Inference Server model repository instead: REPO/NAME/config.pbtxt "
                   "and REPO/NAME/1/model.onnx.")
@click.option("--triton-name", default=None, help="The model's name in the repository [default: ALGO-ENV_ID].")
@click.option("--triton-max-batch", type=click.IntRange(min=1), default=None,
              help=f"Triton's max_batch_size, the most rows it batches into one call [default: {DEFAULT_MAX_BATCH}].")
@click.option("--triton-instances", type=click.IntRange(min=1), default=None,
              help="How many instances of the model Triton runs [default: 1].")
@click.option("--triton-kind", type=click.Choice(list(INSTANCE_KINDS)), default=None,
              help="Where the instances run; auto takes a GPU when Triton has one [default: auto].")
@friendly_errors
def export(model_dir, out, sample_noise, verify, triton_repository, triton_name, triton_max_batch, triton_instances,
           triton_kind):
    """Export a saved agent's policy to ONNX: the whole chain, normalisation and action rescaling inside.

    With --triton REPO, as a model of a Triton Inference Server model repository (README, "Triton").
    """
    triton_settings = {key: value for key, value in (("name", triton_name), ("max_batch_size", triton_max_batch),
                                                     ("instances", triton_instances), ("kind", triton_kind))
                       if value is not None}
    if triton_repository is None and triton_settings:
        raise click.UsageError("the --triton-* options set up a Triton model: add --triton REPO")
    if triton_repository is not None and out is not None:
        raise click.UsageError("--out and --triton both say where the graph goes: give one")
    agent = Agent.from_pretrained(model_dir)
    form = "obs -> action, noise drawn inside" if sample_noise else "(obs, noise) -> action"
    if triton_repository is None:
        path = export_onnx(agent, out or Path(model_dir) / ONNX_FILE, sample_noise=sample_noise, verify=False)
        click.echo(f"wrote {path}: {agent.algo} on {agent.env_id}, K = {agent.policy.num_steps}, {form}")
    else:
        model = export_triton(agent, triton_repository, sample_noise=sample_noise, verify=False, **triton_settings)
        path = model / str(VERSION) / MODEL_FILE
        click.echo(f"wrote the Triton model {model}: config.pbtxt and {VERSION}/{MODEL_FILE}, {agent.algo} on "
                   f"{agent.env_id}, K = {agent.policy.num_steps}, {form}")
    if verify:
        click.echo(f"verified: max |onnxruntime - torch| = {format_parity(verify_onnx(agent.policy, path))}")


@main.command("push")
@click.argument("directory", type=click.Path(file_okay=False))
@click.argument("repo_id", metavar="ORG/NAME")
@click.option("--private", is_flag=True, help="Create the repo private (an existing repo keeps its visibility).")
@click.option("--token", default=None, help="Hub token with write access [default: HF_TOKEN, then `hf auth login`].")
@click.option("--eval-episodes", default=10, show_default=True, type=int,
              help="Episodes of the fresh deterministic evaluation reported in the model card.")
@click.option("--video/--no-video", default=True, show_default=True,
              help="Record replay.mp4 (skipped, with a message, without a renderer or the video extra).")
@click.option("--message", "commit_message", default=None, help="Commit message [default: algo, env and reward].")
@click.option("--branch", default=None, help="Commit to this branch (created from main if new) [default: main].")
@click.option("--create-pr", is_flag=True, help="Open a pull request against main instead of committing.")
@click.option("--license", "license_id", default=DEFAULT_LICENSE, show_default=True,
              help="The model card's license, a Hub license id (mit, cc-by-4.0, other, ...).")
@friendly_errors
@imports_gym_packages
def push_command(directory, repo_id, private, token, eval_episodes, video, commit_message, branch, create_pr,
                 license_id):
    """Push an artifact directory to the Hugging Face Hub as ORG/NAME, with a model card.

    ORG alone pushes to ORG/ALGO-ENV_ID. Only the artifact files are uploaded (config.json,
    model.safetensors, policy.onnx, results.json, README.md, replay.mp4), never checkpoints/; the
    directory itself is only read.
    """
    agent = Agent.from_pretrained(Path(directory))
    if "/" not in repo_id:
        repo_id = default_repo_id(repo_id, agent.algo, agent.env_id)
    click.echo(f"evaluating {agent.algo} on {agent.env_id} ({eval_episodes} episodes), then pushing to {repo_id}")
    url = push(directory, repo_id, token=token, private=private, branch=branch, create_pr=create_pr,
               commit_message=commit_message, eval_episodes=eval_episodes, video=video, license=license_id, agent=agent)
    click.echo(f"pushed: {url}")


@main.command("serve", add_help_option=False, context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def serve_command(args):
    """Serve an exported policy over TCP (MODEL [options]; --help lists them).

    The server is serve's own (`python -m serve.server`, numpy and onnxruntime only): its options are
    defined there, once, and this command hands them over.
    """
    sys.exit(serve_main(list(args), prog="diffagent serve"))


def _report(agent: Agent, out: Path) -> None:
    final = agent.results()["final_eval"]
    if final:
        click.echo(f"done: {agent.num_timesteps} steps, eval return {final['mean']:.2f} +/- {final['std']:.2f}; "
                   f"saved to {out}")


if __name__ == "__main__":
    sys.exit(main())
