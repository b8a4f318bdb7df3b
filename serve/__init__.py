"""Serve exported diffagent policies without PyTorch: numpy and onnxruntime only.

    import serve
    policy = serve.load_policy("runs/hopper")      # in-process: artifact dir, .onnx file or Hub id
    action = policy.act(obs)

    # diffagent serve runs/hopper --port 8870       (another process, or another machine)
    with serve.Client("127.0.0.1", 8870) as client:
        action = client.act(obs)

The wire protocol is documented in serve/PROTOCOL.md.
"""

from serve.client import Client, RemoteError
from serve.contract import ModelLoadError, PolicyMetadata
from serve.protocol import ErrorCode, ProtocolError
from serve.runtime import InputError, OnnxPolicy, load_policy

__all__ = ["load_policy", "OnnxPolicy", "PolicyMetadata", "InputError", "ModelLoadError", "Client", "RemoteError",
           "ProtocolError", "ErrorCode", "PolicyServer"]


def __getattr__(name: str):
    # The server module is imported on demand: a process that only acts in-process or as a client
    # never loads the selector loop (and `python -m serve.server` does not see it imported twice).
    if name == "PolicyServer":
        from serve.server import PolicyServer

        return PolicyServer
    raise AttributeError(f"module 'serve' has no attribute {name!r}")
