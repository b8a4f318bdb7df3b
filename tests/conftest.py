"""Suite-wide settings, and the local Hub that tests/test_hub.py pushes to and pulls from."""

import pytest
import torch
from hub_server import HubServer  # pytest puts this folder on sys.path for its conftest.py


@pytest.fixture(autouse=True)
def _one_thread():
    """One intra-op thread in every test: learning results then do not depend on the core count
    (the thresholds were measured this way), and small networks gain nothing from threads; on a
    busy machine each op waits for them (measured here: PPO 23x slower with 2 threads than with 1)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """A local Hub on 127.0.0.1 with huggingface_hub pointed at it, an empty cache and a test token."""
    from huggingface_hub import constants

    server = HubServer().start()
    home = tmp_path / "hf-home"
    settings = {"HF_ENDPOINT": server.url, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
                "HF_TOKEN": "hf_test_token", "HF_HUB_OFFLINE": "0", "HF_HUB_DISABLE_TELEMETRY": "1"}
    for name, value in settings.items():
        monkeypatch.setenv(name, value)  # for subprocesses
    # huggingface_hub reads its settings once, at import: repoint the module this process already holds.
    for name, value in {"ENDPOINT": server.url, "HF_HOME": str(home), "HF_HUB_CACHE": str(home / "hub"),
                        "HUGGINGFACE_CO_URL_TEMPLATE": server.url + "/{repo_id}/resolve/{revision}/{filename}",
                        "HF_TOKEN_PATH": str(home / "token"), "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
                        "HF_HUB_OFFLINE": False}.items():
        monkeypatch.setattr(constants, name, value)
    # Older huggingface_hub releases (the 0.34 floor, .ci/min-versions) hold two more copies fixed at import: a
    # URL template of their own in file_download (before 1.0), and the card validator's huggingface.co address
    # (before 2.2, whatever HF_ENDPOINT says): point both at the local Hub as well.
    from huggingface_hub import file_download, repocard

    monkeypatch.setattr(file_download, "HUGGINGFACE_CO_URL_TEMPLATE", constants.HUGGINGFACE_CO_URL_TEMPLATE,
                        raising=False)
    monkeypatch.setattr(repocard, "get_session", _RedirectedSession.factory(repocard.get_session, server.url))
    yield server
    server.stop()


class _RedirectedSession:
    """huggingface_hub's HTTP session, with requests to https://huggingface.co sent to the local Hub instead."""

    def __init__(self, session, url: str):
        self._session, self._url = session, url

    @classmethod
    def factory(cls, get_session, url: str):
        return lambda: cls(get_session(), url)

    def post(self, url: str, *args, **kwargs):
        return self._session.post(url.replace("https://huggingface.co", self._url, 1), *args, **kwargs)

    def __getattr__(self, name: str):
        return getattr(self._session, name)


TIERS = ("math", "learning", "artifacts", "serve")


def pytest_collection_modifyitems(items):
    """Every test belongs to a tier (pyproject.toml's markers), so `pytest -m TIER` runs the whole tier."""
    untiered = [item.nodeid for item in items if not any(item.get_closest_marker(tier) for tier in TIERS)]
    if untiered:
        raise pytest.UsageError(f"tests without a tier marker ({', '.join(TIERS)}): {', '.join(untiered)}")
