"""The zoo: shipped models load and act (torch and ONNX agree), grid and hyperparameter files parse,
and `zoo add` copies a run's artifact whole or not at all."""

import tomllib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

import serve
from diffagent import Agent, ArtifactError
from diffagent.bench import load_grid
from diffagent.bench.grid import load_hyperparameters, split_env_settings
from diffagent.bench.sb3 import is_sb3
from diffagent.cli import main
from diffagent.config import ALGORITHMS, make_config
from diffagent.zoo import add_to_zoo, zoo_models

pytestmark = pytest.mark.artifacts

ZOO = Path(__file__).parent.parent / "zoo"
MODELS = sorted(p for p in (ZOO / "models").glob("*") if (p / "config.json").is_file())


@pytest.mark.parametrize("grid", sorted((ZOO / "grids").rglob("*.toml")), ids=lambda p: str(p.relative_to(ZOO / "grids")))
def test_every_grid_and_its_hyperparameters_parse(grid):
    jobs = load_grid(grid).jobs  # every env, algorithm, hyperparameter file and override checked
    assert jobs
    if grid.parent.name == "fidelity":
        return  # the fidelity sweeps measure the library's defaults too (docs/algorithms.md, section 8)
    # an SB3 run's settings are rl-baselines3-zoo's, named in diffagent/bench/sb3.py
    assert all(job.hyperparams is not None for job in jobs if not is_sb3(job.algo)), "a zoo run must name its settings"


@pytest.mark.parametrize("env_file", sorted((ZOO / "hyperparams").glob("*.toml")), ids=lambda p: p.stem)
def test_each_diffusion_algorithm_in_the_zoo_shares_its_bases_settings(env_file):
    """A fair pair: on every env a Diff* algorithm trains with its Gaussian base's run and algorithm settings,
    so that the policy is all that differs between them."""
    def config(algo):
        return make_config(algo, split_env_settings(load_hyperparameters(env_file, algo), str(env_file))[0])

    tables = tomllib.loads(env_file.read_text())
    for diffusion, spec in ALGORITHMS.items():
        if diffusion != spec.family and diffusion in tables and spec.family in tables:
            ours, theirs = config(diffusion), config(spec.family)
            assert ours.run == theirs.run and ours.algorithm == theirs.algorithm, f"{diffusion} vs {spec.family}"


def test_the_zoo_ships_models():
    assert len(MODELS) >= 2, "zoo/models should hold the headline models (diffagent zoo add)"
    assert {meta["algo"] for _, meta, _ in zoo_models(ZOO / "models")} >= {"sac", "diffsac"}


@pytest.mark.parametrize("model", MODELS, ids=lambda p: p.name)
def test_a_shipped_model_acts_the_same_in_torch_and_onnx(model):
    agent = Agent.from_pretrained(model)
    runtime = serve.load_policy(model)
    obs = np.random.default_rng(0).normal(size=(8, agent.policy.obs_dim)).astype(np.float32)
    np.testing.assert_allclose(runtime.act(obs, deterministic=True), agent.act(obs, deterministic=True), atol=1e-4)
    assert sum(f.stat().st_size for f in model.iterdir()) < 2_000_000, "zoo models must stay small"


def test_zoo_add_copies_the_artifact_and_exports_onnx(tmp_path):
    run = tmp_path / "run"
    Agent("sac", "Pendulum-v1", policy_hidden_sizes=(16, 16)).save_pretrained(run)
    (run / "checkpoints").mkdir()
    result = CliRunner().invoke(main, ["zoo", "add", str(run), "sac-Pendulum-v1", "--models", str(tmp_path / "models")])
    assert result.exit_code == 0, result.output
    added = tmp_path / "models" / "sac-Pendulum-v1"
    assert {p.name for p in added.iterdir()} == {"config.json", "model.safetensors", "policy.onnx"}
    with pytest.raises(ArtifactError, match="exists"):
        add_to_zoo(run, "sac-Pendulum-v1", tmp_path / "models")
    (run / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ArtifactError, match="corrupted"):
        add_to_zoo(run, "broken", tmp_path / "models")
    assert not (tmp_path / "models" / "broken").exists()
