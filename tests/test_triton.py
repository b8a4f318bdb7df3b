"""Triton model repositories: every config.pbtxt the export writes, parsed with Triton's own schema
(tritonclient's model_config_pb2) and checked field by field against the policy and the ONNX graph beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from google.protobuf import text_format

import serve
from diffagent import Agent
from diffagent.cli import main
from diffagent.errors import ConfigError
from diffagent.triton_repository import CONFIG_FILE, MODEL_FILE, PLATFORM, export_triton

model_config = pytest.importorskip("tritonclient.grpc.model_config_pb2",
                                   reason="Triton's schema comes with tritonclient: pip install 'diffagent[triton]'")

pytestmark = pytest.mark.artifacts

ONNX_TO_TRITON = {onnx.TensorProto.FLOAT: model_config.TYPE_FP32}


@pytest.fixture(scope="module")
def agent() -> Agent:
    return Agent("diffsac", "Pendulum-v1", diffusion_steps=3)


def check_repository(repository: Path, agent: Agent, *, noise_input: bool, max_batch_size: int, instances: int,
                     kind: int) -> dict[str, model_config.ModelConfig]:
    """Parse every model's config.pbtxt under `repository` and check it against its graph and `agent`'s policy."""
    configs = {}
    for path in sorted(repository.glob(f"*/{CONFIG_FILE}")):
        config = text_format.Parse(path.read_text(), model_config.ModelConfig())  # Triton's schema: unknown fields fail
        graph = onnx.load(str(path.parent / "1" / MODEL_FILE))
        assert (config.name, config.platform, config.max_batch_size) == (path.parent.name, PLATFORM, max_batch_size)
        for entries, values in ((config.input, graph.graph.input), (config.output, graph.graph.output)):
            assert [entry.name for entry in entries] == [value.name for value in values]
            for entry, value in zip(entries, values):
                tensor = value.type.tensor_type
                assert entry.data_type == ONNX_TO_TRITON[tensor.elem_type]
                assert tensor.shape.dim[0].dim_param == "batch"  # the dimension Triton batches on, left out of dims
                assert list(entry.dims) == [dim.dim_value for dim in tensor.shape.dim[1:]]
        policy = agent.policy
        expected = {"obs": [policy.obs_dim], "noise": [policy.num_steps + 1, policy.act_dim]}
        assert {entry.name: list(entry.dims) for entry in config.input} == \
            {key: dims for key, dims in expected.items() if key == "obs" or noise_input}
        assert [(entry.name, list(entry.dims)) for entry in config.output] == [("action", [policy.act_dim])]
        assert config.HasField("dynamic_batching") and config.dynamic_batching.max_queue_delay_microseconds == 0
        assert [(group.count, group.kind) for group in config.instance_group] == [(instances, kind)]
        assert serve.load_policy(path.parent / "1" / MODEL_FILE).metadata.noise_input is noise_input
        configs[config.name] = config
    return configs


def test_export_writes_a_model_repository_triton_reads(agent, tmp_path):
    model = export_triton(agent, tmp_path)
    assert model == tmp_path / "diffsac-Pendulum-v1"
    assert list(check_repository(tmp_path, agent, noise_input=True, max_batch_size=1024, instances=1,
                                 kind=model_config.ModelInstanceGroup.KIND_AUTO)) == [model.name]
    # The graph in the repository is the exported policy: its actions are the agent's.
    obs = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    runtime = serve.load_policy(model / "1" / MODEL_FILE)
    np.testing.assert_allclose(runtime.act(obs, deterministic=True), agent.act(obs, deterministic=True), atol=1e-5)


def test_the_sample_noise_form_and_the_instance_settings(agent, tmp_path):
    export_triton(agent, tmp_path, name="sampling", sample_noise=True, max_batch_size=64, instances=2, kind="gpu")
    assert list(check_repository(tmp_path, agent, noise_input=False, max_batch_size=64, instances=2,
                                 kind=model_config.ModelInstanceGroup.KIND_GPU)) == ["sampling"]


def test_bad_settings_say_what_to_do(agent, tmp_path):
    with pytest.raises(ConfigError, match="must be a directory name"):
        export_triton(agent, tmp_path, name="../escape")
    with pytest.raises(ConfigError, match="max_batch_size must be an integer >= 1"):
        export_triton(agent, tmp_path, max_batch_size=0)
    with pytest.raises(ConfigError, match="use one of auto, gpu, cpu"):
        export_triton(agent, tmp_path, kind="tpu")
    assert not any(tmp_path.iterdir())  # nothing written


def test_cli_export_triton(agent, tmp_path):
    model_dir = agent.save_pretrained(tmp_path / "run")
    runner = CliRunner()
    result = runner.invoke(main, ["export", str(model_dir), "--triton", str(tmp_path / "repo"), "--triton-name",
                                  "pendulum", "--triton-max-batch", "256", "--triton-kind", "cpu"])
    assert result.exit_code == 0, result.output
    assert "wrote the Triton model" in result.output and "verified: max |onnxruntime - torch|" in result.output
    assert list(check_repository(tmp_path / "repo", agent, noise_input=True, max_batch_size=256, instances=1,
                                 kind=model_config.ModelInstanceGroup.KIND_CPU)) == ["pendulum"]
    for args, words in ((["--triton-instances", "2"], "add --triton REPO"),
                        (["--triton", str(tmp_path / "repo"), "--out", str(tmp_path / "x.onnx")], "give one")):
        result = runner.invoke(main, ["export", str(model_dir), *args])
        assert result.exit_code == 2 and words in result.output, result.output
