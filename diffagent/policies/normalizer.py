"""Running observation normalisation that travels with the policy (saved, exported, served)."""

from __future__ import annotations

import torch
from torch import nn


# Raw (unnormalised) inputs are clipped to +-RAW_LIMIT: any finite observation, 3.4e38 included, then
# gives finite features, so acting is total (docs/security.md). An env whose observations reach
# this size needs normalize_obs anyway.
RAW_LIMIT = 1e6


class RunningNorm(nn.Module):
    """Normalises inputs by a running mean and variance, clipped to [-clip, clip].

    The statistics are buffers, so they are saved in the artifact and baked into the ONNX graph.
    When disabled it is never updated and only clips to +-RAW_LIMIT.
    """

    def __init__(self, dim: int, enabled: bool = True, clip: float = 10.0, eps: float = 1e-8):
        super().__init__()
        self.enabled = enabled
        self.clip = clip
        self.eps = eps
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.tensor(0.0, dtype=torch.float64))

    @torch.no_grad()
    def update(self, x: torch.Tensor) -> None:
        """Merge a batch (B, dim) into the running statistics (Chan et al.'s parallel update)."""
        if not self.enabled:
            return
        x = x.reshape(-1, self.mean.shape[0]).to(self.mean)
        batch_mean, batch_var, n = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        total = self.count + n
        delta = batch_mean - self.mean
        new_mean = self.mean + delta * (n / total)
        m2 = self.var * self.count + batch_var * n + delta.square() * (self.count * n / total)
        self.mean.copy_(new_mean)
        self.var.copy_(m2 / total)
        self.count.copy_(total)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x.clamp(-RAW_LIMIT, RAW_LIMIT)
        return ((x - self.mean) * torch.rsqrt(self.var + self.eps)).clamp(-self.clip, self.clip)
