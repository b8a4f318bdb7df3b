"""Errors a user can act on. Each message says what went wrong and what to do."""


class DiffAgentError(Exception):
    """Base class of every error diffagent raises on purpose."""


class ConfigError(DiffAgentError, ValueError):
    """A bad algorithm name, hyperparameter name or value, or an unsupported environment."""


class ArtifactError(DiffAgentError, RuntimeError):
    """A saved agent or checkpoint that is missing, corrupted, or from an unknown format version."""


class InputError(DiffAgentError, ValueError):
    """An observation or noise array that a policy cannot act on: wrong shape, or NaN/inf values."""


class TrainingError(DiffAgentError, RuntimeError):
    """Training that cannot go on: a loss became NaN or inf, so the weights are no longer finite."""
