"""Hub round trips against a local Hub (tests/hub_server.py, the `hub` fixture of conftest.py): push -> pull -> same actions, offline loads
from the cache, clear errors for missing repos, revisions and files, and the model card's metadata."""

import json
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from diffagent import Agent, ArtifactError, ConfigError
from diffagent import publish
from diffagent.cli import main

pytestmark = pytest.mark.artifacts

TINY = dict(policy_hidden_sizes=(16, 16), critic_hidden_sizes=(16, 16))
ARTIFACT = {".gitattributes", "config.json", "model.safetensors", "results.json", "README.md"}


def tiny_agent(algo: str = "sac", seed: int = 0) -> Agent:
    return Agent(algo, "Pendulum-v1", seed=seed, **TINY)


def front_matter(readme: Path) -> dict:
    text = readme.read_text()
    assert text.startswith("---\n")
    return yaml.safe_load(text[4:].split("\n---\n", 1)[0])


def load_in_subprocess(tmp_path: Path, repo_id: str, **env: str) -> np.ndarray:
    """Actions of Agent.from_pretrained(repo_id) on tmp_path/obs.npy and noise.npy, from a fresh interpreter."""
    out = tmp_path / "out.npy"
    script = (f"import numpy as np; from diffagent import Agent; a = Agent.from_pretrained({repo_id!r}); "
              f"np.save({str(out)!r}, a.act(np.load({str(tmp_path / 'obs.npy')!r}), "
              f"noise=np.load({str(tmp_path / 'noise.npy')!r})))")
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120, env={**os.environ, **env})
    return np.load(out)


def test_push_then_load_in_a_fresh_process_and_offline_from_the_cache(hub, tmp_path):
    agent = tiny_agent()
    url = publish.push_to_hub(agent, "org/sac-Pendulum-v1", eval_episodes=1)
    assert url.startswith(f"{hub.url}/org/sac-Pendulum-v1/commit/")
    assert set(hub.files("org/sac-Pendulum-v1")) == ARTIFACT | {"policy.onnx"}

    obs = np.random.default_rng(0).normal(size=(4, 3)).astype(np.float32)
    noise = np.random.default_rng(1).normal(size=(4, 2, 1)).astype(np.float32)
    np.save(tmp_path / "obs.npy", obs)
    np.save(tmp_path / "noise.npy", noise)
    expected = agent.act(obs, noise=noise)
    np.testing.assert_array_equal(load_in_subprocess(tmp_path, "org/sac-Pendulum-v1"), expected)

    hub.stop()  # the Hub is gone: the cached snapshot must do
    np.testing.assert_array_equal(load_in_subprocess(tmp_path, "org/sac-Pendulum-v1", HF_HUB_OFFLINE="1"), expected)


def test_revision_pins_a_commit_and_a_missing_one_is_a_clear_error(hub):
    first, second = tiny_agent(seed=0), tiny_agent(seed=1)
    old = publish.push_to_hub(first, "org/pinned", eval_episodes=1, video=False).rsplit("/", 1)[1]
    publish.push_to_hub(second, "org/pinned", eval_episodes=1, video=False)
    obs = np.zeros((1, 3), np.float32)
    assert np.array_equal(Agent.from_pretrained("org/pinned").act(obs, deterministic=True),
                          second.act(obs, deterministic=True))
    assert np.array_equal(Agent.from_pretrained("org/pinned", revision=old).act(obs, deterministic=True),
                          first.act(obs, deterministic=True))
    with pytest.raises(ArtifactError, match="org/pinned exists on the Hub but has no revision 'v9'"):
        Agent.from_pretrained("org/pinned", revision="v9")


def test_a_repo_that_does_not_exist_is_a_clear_error(hub):
    with pytest.raises(ArtifactError, match="no model repository org/nothing-here on the Hub"):
        Agent.from_pretrained("org/nothing-here")


@pytest.mark.parametrize("broken, message", [
    ({"config.json": b"{not json"}, "config.json is not valid JSON"),
    ({"model.safetensors": b"\x08\x00\x00\x00\x00\x00\x00\x00garbage"}, "not a readable safetensors file"),
    ({"model.safetensors": None}, "model.safetensors is missing"),
    ({"config.json": None}, "config.json is missing"),
])
def test_a_repo_with_a_corrupted_or_missing_file_is_a_clear_error(hub, tmp_path, broken, message):
    artifact = tiny_agent().save_pretrained(tmp_path / "artifact")
    hub.create("org/broken")
    hub.commit("org/broken", {p.name: p.read_bytes() for p in artifact.iterdir()})
    hub.commit("org/broken", broken)
    with pytest.raises(ArtifactError, match=message) as info:
        Agent.from_pretrained("org/broken")
    assert str(info.value).startswith("org/broken on the Hub:") and "push the agent again" in str(info.value)


def set_offline(monkeypatch, offline: bool) -> None:
    """HF_HUB_OFFLINE in this process, as if set at its start."""
    from huggingface_hub import constants, utils

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", offline)
    if hasattr(utils, "reset_sessions"):  # before huggingface_hub 1.0 a session keeps the mode it was made in
        utils.reset_sessions()


def test_not_cached_while_offline_or_unreachable_is_a_clear_error(hub, monkeypatch):
    set_offline(monkeypatch, True)
    with pytest.raises(ArtifactError, match="not .* in the local Hub cache .* HF_HUB_OFFLINE=1"):
        Agent.from_pretrained("org/never-downloaded")
    set_offline(monkeypatch, False)
    hub.stop()
    with pytest.raises(ArtifactError, match="cannot reach the Hub at http://127.0.0.1"):
        Agent.from_pretrained("org/never-downloaded")


def test_a_missing_local_path_is_never_looked_up_on_the_hub(hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for path in ["./org/name", "runs/pendulum", "/no/such/dir", "~/no-such-diffagent-dir/x", "a/b/c",
                 tmp_path / "org" / "name"]:
        with pytest.raises(ArtifactError, match="does not exist"):
            Agent.from_pretrained(path)
    with pytest.raises(ArtifactError, match="not an existing directory, and 'org/na me' is not a valid"):
        Agent.from_pretrained("org/na me")
    assert not hub.requests
    artifact = tiny_agent().save_pretrained(tmp_path / "runs" / "local")
    with pytest.raises(ConfigError, match="revision='main' applies to Hub repos only"):
        Agent.from_pretrained(artifact, revision="main")


def test_push_uploads_only_artifact_files_and_removes_stale_ones(hub, tmp_path):
    run = tiny_agent().save_pretrained(tmp_path / "run")
    (run / "checkpoints" / "step_0000000100").mkdir(parents=True)
    (run / "checkpoints" / "step_0000000100" / "state.json").write_text("{}")
    (run / "metrics.jsonl").write_text('{"step": 100}\n')
    hub.create("org/run")
    hub.commit("org/run", {"policy.onnx": b"an older policy", "replay.mp4": b"an older video"})
    publish.push(run, "org/run", eval_episodes=2, video=False)
    files = hub.files("org/run")
    assert set(files) == ARTIFACT
    results = json.loads(files["results.json"])
    assert results["eval"]["episodes"] == 2 and results["eval"]["deterministic"] is True
    assert {"mean", "std"} <= set(results["eval"]) and "mean_reward" not in results["eval"]  # the curve's names


def test_model_card_metadata_has_the_model_index_of_huggingface_sb3(tmp_path):
    from huggingface_hub import ModelCard

    agent = Agent("diffsac", "Pendulum-v1", diffusion_steps=2, **TINY)
    directory = agent.save_pretrained(tmp_path / "card")
    results = publish.evaluate_for_card(agent, directory, episodes=1)
    results["latency"] = [{"runtime": "onnxruntime (obs, noise)", "batch": 1, "p50_us": 41.04, "p99_us": 63.5,
                           "calls": 10000}]
    readme = publish.write_model_card(agent, directory, "org/diffsac-Pendulum-v1", results)
    meta = front_matter(readme)
    assert meta["library_name"] == "diffagent"
    assert set(meta["tags"]) == {"reinforcement-learning", "deep-reinforcement-learning", "diffagent", "diffsac",
                                 "Pendulum-v1", "diffusion-policy"}
    value = f"{results['eval']['mean']:.2f} +/- {results['eval']['std']:.2f}"
    assert meta["model-index"] == [{"name": "diffsac", "results": [{
        "task": {"type": "reinforcement-learning", "name": "reinforcement-learning"},
        "dataset": {"name": "Pendulum-v1", "type": "Pendulum-v1"},
        "metrics": [{"type": "mean_reward", "value": value, "name": "mean_reward", "verified": False}]}]}]
    (eval_result,) = ModelCard.load(readme).data.eval_results  # Hub tooling reads it
    assert (eval_result.metric_type, eval_result.metric_value, eval_result.dataset_type) == \
        ("mean_reward", value, "Pendulum-v1")
    body = readme.read_text()
    assert ("diffagent train --algo diffsac --env Pendulum-v1 --seed 0 --set policy_hidden_sizes=16,16 "
            "--set diffusion_steps=2 --set critic_hidden_sizes=16,16\n") in body
    assert "| `prior_std` | `1.0` | Diffusion policy: standard deviation" in body
    assert "| onnxruntime (obs, noise) | 1 | 41.0 | 63.5 | 10000 |" in body
    assert 'Agent.from_pretrained("org/diffsac-Pendulum-v1")' in body and "$" not in body


def test_a_results_json_of_an_earlier_version_still_makes_the_card(tmp_path):
    """Earlier versions wrote results.json's "eval" as mean_reward/std_reward (its curve said mean/std): read both."""
    agent = tiny_agent()
    directory = agent.save_pretrained(tmp_path / "old")
    old = {"eval": {"mean_reward": -151.25, "std_reward": 3.5, "episodes": 2, "deterministic": True,
                    "returns": [-147.75, -154.75], "lengths": [200, 200]},
           "evaluations": [{"step": 1000, "mean": -160.0, "std": 4.0}], "total_steps": 1000}
    readme = publish.write_model_card(agent, directory, "org/old", old)
    assert front_matter(readme)["model-index"][0]["results"][0]["metrics"][0]["value"] == "-151.25 +/- 3.50"
    assert "| mean return (deterministic, 2 episodes) | -151.25 +/- 3.50 |" in readme.read_text()


def test_record_video_is_skipped_with_a_message_when_it_cannot_render(tmp_path, monkeypatch, capsys):
    agent = tiny_agent()
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # the video extra is not installed
    assert publish.record_video(agent, tmp_path / "replay.mp4") is None
    assert "pip install 'diffagent[video]'" in capsys.readouterr().out
    # With the extra but no renderer it is skipped too.
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", types.ModuleType("imageio_ffmpeg"))
    def make_without_display(*args, **kwargs):
        raise RuntimeError("no display")
    monkeypatch.setattr("gymnasium.make", make_without_display)
    assert publish.record_video(agent, tmp_path / "replay.mp4") is None
    assert "cannot render Pendulum-v1 offscreen (RuntimeError: no display)" in capsys.readouterr().out
    assert not list(tmp_path.iterdir())


def test_push_needs_a_valid_repo_id_and_a_token(hub, tmp_path, monkeypatch):
    run = tiny_agent().save_pretrained(tmp_path / "run")
    with pytest.raises(ConfigError, match="not a valid Hugging Face repo id"):
        publish.push(run, "org/bad--name")
    monkeypatch.delenv("HF_TOKEN")
    with pytest.raises(ArtifactError, match="no Hugging Face token: pass --token"):
        publish.push(run, "org/run")
    assert not hub.requests


def test_cli_push_then_eval_by_repo_id(hub, tmp_path):
    run = tiny_agent().save_pretrained(tmp_path / "run")
    runner = CliRunner()
    pushed = runner.invoke(main, ["push", str(run), "org", "--eval-episodes", "1", "--no-video", "--private"])
    assert pushed.exit_code == 0, pushed.output
    assert f"pushed: {hub.url}/org/sac-Pendulum-v1/commit/" in pushed.output
    assert hub.repos["org/sac-Pendulum-v1"].private
    evaluated = runner.invoke(main, ["eval", "org/sac-Pendulum-v1", "--episodes", "1"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "sac on Pendulum-v1" in evaluated.output
    failed = runner.invoke(main, ["push", str(run), "org/a/b"])
    assert failed.exit_code != 0 and "not a valid Hugging Face repo id" in failed.output


def test_zoo_push_publishes_every_model_and_leaves_the_zoo_untouched(hub, tmp_path):
    models = tmp_path / "models"
    for algo in ("sac", "diffsac"):
        tiny_agent(algo).save_pretrained(models / f"{algo}-Pendulum-v1")
    (models / "notes").mkdir()  # not an artifact: ignored
    before = {p: p.read_bytes() for p in models.rglob("*") if p.is_file()}
    listing = CliRunner().invoke(main, ["zoo", "list", "--models", str(models)])
    assert listing.exit_code == 0 and "diffsac-Pendulum-v1: diffsac on Pendulum-v1" in listing.output
    result = CliRunner().invoke(main, ["zoo", "push", "--org", "org", "--models", str(models),
                                       "--eval-episodes", "1", "--no-video"])
    assert result.exit_code == 0, result.output
    for algo in ("sac", "diffsac"):
        assert ARTIFACT <= set(hub.files(f"org/{algo}-Pendulum-v1"))
    assert {p: p.read_bytes() for p in models.rglob("*") if p.is_file()} == before


def test_zoo_push_checks_every_name_before_pushing_and_needs_a_zoo(hub, tmp_path):
    models = tmp_path / "models"
    tiny_agent().save_pretrained(models / "ok")
    tiny_agent().save_pretrained(models / "bad--name")
    result = CliRunner().invoke(main, ["zoo", "push", "--org", "org", "--models", str(models)])
    assert result.exit_code != 0 and "bad--name" in result.output
    assert "org/ok" not in hub.repos
    missing = CliRunner().invoke(main, ["zoo", "push", "--org", "org", "--models", str(tmp_path / "none")])
    assert missing.exit_code != 0 and "pass --models DIR" in missing.output


def test_the_model_card_passes_the_hubs_validation_with_license_and_pipeline_tag(hub, tmp_path):
    from huggingface_hub import ModelCard

    agent = tiny_agent()
    directory = agent.save_pretrained(tmp_path / "card")
    results = publish.evaluate_for_card(agent, directory, episodes=1)
    card = ModelCard.load(publish.write_model_card(agent, directory, "org/sac-Pendulum-v1", results))
    assert (card.data.license, card.data.pipeline_tag) == ("apache-2.0", "reinforcement-learning")
    card.validate()  # the local Hub's validator: metadata schema, license id, task
    bad = ModelCard.load(publish.write_model_card(agent, directory, "org/sac-Pendulum-v1", results, license="apache"))
    with pytest.raises(ValueError, match="not a license id the Hub knows"):
        bad.validate()
    with pytest.raises(ArtifactError, match="the Hub refuses the model card's metadata"):
        publish.push(directory, "org/bad-license", eval_episodes=1, video=False, license="apache", agent=agent)
    assert "org/bad-license" not in hub.repos  # refused before anything was created


def test_push_to_a_branch_or_as_a_pull_request_leaves_main_alone(hub, tmp_path):
    first, second = tiny_agent(seed=0), tiny_agent(seed=1)
    publish.push_to_hub(first, "org/branches", eval_episodes=1, video=False)
    main_files = hub.files("org/branches")
    publish.push_to_hub(second, "org/branches", eval_episodes=1, video=False, branch="experiment")
    assert hub.files("org/branches") == main_files
    obs = np.zeros((1, 3), np.float32)
    on_branch = Agent.from_pretrained("org/branches", revision="experiment")
    np.testing.assert_array_equal(on_branch.act(obs, deterministic=True), second.act(obs, deterministic=True))
    url = publish.push_to_hub(second, "org/branches", eval_episodes=1, video=False, create_pr=True)
    assert url == f"{hub.url}/org/branches/discussions/1"
    assert hub.files("org/branches") == main_files
    assert hub.files("org/branches", "refs/pr/1")["config.json"] != b""


def test_from_pretrained_takes_a_token_a_cache_dir_and_local_files_only(hub, tmp_path):
    agent = tiny_agent()
    publish.push_to_hub(agent, "org/private", eval_episodes=1, video=False, private=True)
    cache = tmp_path / "own-cache"
    with pytest.raises(ArtifactError, match="not .completely. in the local Hub cache .* local_files_only=True"):
        Agent.from_pretrained("org/private", cache_dir=cache, local_files_only=True)
    loaded = Agent.from_pretrained("org/private", token="hf_test_token", cache_dir=cache)
    assert any(cache.rglob("config.json"))  # downloaded into the cache asked for
    hub.stop()
    again = Agent.from_pretrained("org/private", cache_dir=cache, local_files_only=True)
    obs = np.zeros((1, 3), np.float32)
    np.testing.assert_array_equal(again.act(obs, deterministic=True), loaded.act(obs, deterministic=True))
