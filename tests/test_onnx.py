"""ONNX export: parity with PyTorch, dynamic batch, metadata, the sample-noise form, a torch-free runtime, the CLI."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from diffagent import Agent, ArtifactError
from diffagent.cli import main
from diffagent.envs import space_to_dict
from diffagent.export import ONNX_FILE, PARITY_TOLERANCE, export_onnx, load_onnx_metadata, verify_onnx

pytestmark = pytest.mark.artifacts

ENV = "Pendulum-v1"


def make_agent(algo: str) -> Agent:
    """An untrained agent whose policy is far from its initialisation and whose normaliser has statistics."""
    agent = Agent(algo, ENV, normalize_obs=True, **({"diffusion_steps": 8} if algo == "diffsac" else {}))
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        # The diffusion head starts near zero: perturb so every term counts. 0.1 is ~3x the init scale of a
        # 256-wide layer; at 0.3 the chain is so sensitive that float32 rounding alone (torch32 against
        # float64) reaches 5e-6, and the parity check would measure the conditioning, not the export.
        for param in agent.policy.parameters():
            param.add_(0.1 * torch.randn(param.shape, generator=generator))
        observations = torch.randn(500, 3, generator=generator) * torch.tensor([0.5, 0.5, 4.0])
        agent.policy.obs_normalizer.update(observations + torch.tensor([0.3, -0.2, 1.0]))
    return agent


def random_inputs(agent: Agent, batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    obs = (rng.standard_normal((batch, 3)) * [0.7, 0.7, 5.0]).astype(np.float32)
    return obs, rng.standard_normal(agent.policy.noise_shape(batch)).astype(np.float32)


@pytest.fixture(scope="module", params=["sac", "diffsac"])
def exported(request, tmp_path_factory):
    agent = make_agent(request.param)
    return agent, export_onnx(agent, tmp_path_factory.mktemp(request.param) / ONNX_FILE, verify=False)


def test_parity_at_batch_1_and_1024(exported):
    agent, path = exported
    errors = verify_onnx(agent.policy, path, batch_sizes=(1, 1024), tolerance=None)
    assert set(errors) == {1, 1024}
    assert max(errors.values()) < PARITY_TOLERANCE, errors


def test_dynamic_batch_and_zero_noise_is_the_deterministic_action(exported):
    agent, path = exported
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for batch in (3, 17):
        obs, noise = random_inputs(agent, batch, seed=batch)
        (action,) = session.run(None, {"obs": obs, "noise": noise})
        assert action.shape == (batch, 1)
        np.testing.assert_allclose(action, agent.act(obs, noise=noise), atol=PARITY_TOLERANCE, rtol=0)
        (deterministic,) = session.run(None, {"obs": obs, "noise": np.zeros_like(noise)})
        np.testing.assert_allclose(deterministic, agent.act(obs, deterministic=True), atol=PARITY_TOLERANCE, rtol=0)


def test_metadata_round_trip_and_checker(exported):
    agent, path = exported
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)
    meta = load_onnx_metadata(path).to_dict()
    k = agent.policy.num_steps
    assert meta == {"format_version": 1, "algo": agent.algo, "policy": agent.spec.policy.family, "env_id": ENV,
                    "num_steps": k, "obs_dim": 3, "act_dim": 1,
                    "observation_space": space_to_dict(agent.observation_space),
                    "action_space": space_to_dict(agent.action_space),
                    "library_version": meta["library_version"], "noise_input": True}
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [(i.name, i.shape) for i in session.get_inputs()] == [("obs", ["batch", 3]), ("noise", ["batch", k + 1, 1])]
    assert [(o.name, o.shape) for o in session.get_outputs()] == [("action", ["batch", 1])]


def test_verification_catches_a_policy_that_differs(exported):
    agent, path = exported
    changed = copy.deepcopy(agent.policy)
    with torch.no_grad():
        changed.obs_normalizer.mean.add_(1.0)
    with pytest.raises(ArtifactError, match="disagrees with PyTorch"):
        verify_onnx(changed, path, batch_sizes=(8,))


@pytest.mark.parametrize("algo", ["sac", "diffsac"])
def test_sample_noise_form_matches_torchs_distribution(algo, tmp_path):
    agent = make_agent(algo)
    path = export_onnx(agent, tmp_path / ONNX_FILE, sample_noise=True)  # verifies the (obs, noise) graph inside
    assert load_onnx_metadata(path).noise_input is False
    ort.set_seed(0)  # the in-graph generator takes onnxruntime's process-wide seed when the session is made
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["obs"]
    obs = np.repeat(np.array([[0.6, -0.8, 2.0]], np.float32), 4096, axis=0)
    (ours,) = session.run(None, {"obs": obs})
    (again,) = session.run(None, {"obs": obs[:16]})
    assert not np.allclose(again, ours[:16]), "the graph must draw fresh noise on every call"
    assert np.all((ours >= -2.0) & (ours <= 2.0))
    torch.manual_seed(0)
    reference = agent.act(obs)
    assert reference.std() > 0.1  # a real distribution, not a point mass
    assert abs(ours.mean() - reference.mean()) < 4 * reference.std() * np.sqrt(2 / len(obs))
    assert abs(ours.std() / reference.std() - 1) < 0.1


def test_runs_with_numpy_and_onnxruntime_alone(exported, tmp_path):
    agent, path = exported
    obs, noise = random_inputs(agent, 5, seed=3)
    np.save(tmp_path / "obs.npy", obs)
    np.save(tmp_path / "noise.npy", noise)
    script = textwrap.dedent(f"""
        import sys
        import numpy as np
        import onnxruntime as ort

        session = ort.InferenceSession({str(path)!r}, providers=["CPUExecutionProvider"])
        feed = {{"obs": np.load({str(tmp_path / "obs.npy")!r}), "noise": np.load({str(tmp_path / "noise.npy")!r})}}
        np.save({str(tmp_path / "action.npy")!r}, session.run(None, feed)[0])
        assert "torch" not in sys.modules, "torch was imported"
    """)
    subprocess.run([sys.executable, "-c", script], check=True, timeout=60)
    np.testing.assert_allclose(np.load(tmp_path / "action.npy"), agent.act(obs, noise=noise),
                               atol=PARITY_TOLERANCE, rtol=0)


def test_cli_export(tmp_path):
    agent = make_agent("diffsac")
    model_dir = agent.save_pretrained(tmp_path / "model")
    runner = CliRunner()

    result = runner.invoke(main, ["export", str(model_dir)])
    assert result.exit_code == 0, result.output
    assert "verified: max |onnxruntime - torch|" in result.output
    obs, noise = random_inputs(agent, 4)
    session = ort.InferenceSession(str(model_dir / ONNX_FILE), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"obs": obs, "noise": noise})[0], agent.act(obs, noise=noise),
                               atol=PARITY_TOLERANCE, rtol=0)

    out = tmp_path / "elsewhere" / "sampling.onnx"
    result = runner.invoke(main, ["export", str(model_dir), "--out", str(out), "--sample-noise", "--no-verify"])
    assert result.exit_code == 0, result.output
    assert "verified" not in result.output and load_onnx_metadata(out).noise_input is False

    result = runner.invoke(main, ["export", str(tmp_path / "missing")])
    assert result.exit_code != 0
    assert "does not exist" in result.output and "Traceback" not in result.output


def test_unreadable_models_give_clear_errors(tmp_path):
    with pytest.raises(ArtifactError, match="no ONNX model"):
        load_onnx_metadata(tmp_path / "missing.onnx")
    (tmp_path / "garbage.onnx").write_bytes(b"\x00not a model\xff" * 10)
    with pytest.raises(ArtifactError, match="not a readable ONNX model"):
        load_onnx_metadata(tmp_path / "garbage.onnx")
