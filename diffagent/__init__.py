"""diffagent: maximum-entropy RL with diffusion policies (DiffSAC, DiffPPO, DiffWPO) and their Gaussian baselines."""

__version__ = "0.1.0"

from diffagent.agent import Agent, EvalResult  # noqa: E402
from diffagent.config import ALGORITHMS  # noqa: E402
from diffagent.errors import ArtifactError, ConfigError, DiffAgentError  # noqa: E402
from diffagent.multimodal import ENV_ID as _FOUR_PEAKS_ID  # noqa: E402

import gymnasium as _gym  # noqa: E402

# the benchmark's multimodal bandit, so gym.make and Agent take its id; guarded because a reload
# of this module would otherwise register it twice (gymnasium warns on that)
if _FOUR_PEAKS_ID not in _gym.registry:
    _gym.register(id=_FOUR_PEAKS_ID, entry_point="diffagent.multimodal:FourPeaksBandit")

__all__ = ["Agent", "EvalResult", "ALGORITHMS", "ArtifactError", "ConfigError", "DiffAgentError", "__version__"]
