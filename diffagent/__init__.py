"""diffagent: maximum-entropy RL with diffusion policies (DiffSAC, DiffPPO, DiffWPO) and their Gaussian baselines."""

__version__ = "0.1.0"

from diffagent.agent import Agent, EvalResult  # noqa: E402
from diffagent.config import ALGORITHMS  # noqa: E402
from diffagent.errors import ArtifactError, ConfigError, DiffAgentError, TrainingError  # noqa: E402
import diffagent.multimodal  # noqa: E402, F401  (registers the benchmark's bandits, so gym.make and Agent take their ids)

__all__ = ["Agent", "EvalResult", "ALGORITHMS", "ArtifactError", "ConfigError", "DiffAgentError", "TrainingError",
           "__version__"]
