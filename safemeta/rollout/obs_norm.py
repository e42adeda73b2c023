"""Running observation normalization (``policy.obs_normalize``), as OmniSafe's ``ObsNormalize`` does it.

Actor and critics see clip((o - mean) / sqrt(var + eps), -clip, clip) with mean / var the running moments
of every raw observation collected in meta-training so far. The moments only change *between*
meta-iterations: the collector accumulates an iteration's raw observations as pending (`observe`), and the
trainer folds them in when the iteration ends (`commit`); meta-test rollouts are dropped (`discard`).
So every batch of one iteration, and every replay of it, sees one fixed normalization.
"""
from __future__ import annotations

import torch
from torch import Tensor


def normalize(obs: Tensor, shift: Tensor, scale: Tensor, clip: float) -> Tensor:
    """clip((obs - shift) / scale, -clip, clip): what `RunningObsNorm` applies, with its `constants`."""
    return (obs - shift).div_(scale).clamp_(-clip, clip)


class RunningObsNorm:
    def __init__(self, obs_dim: int, clip: float = 5.0, eps: float = 1e-8, device: str | torch.device = "cpu"):
        self.clip, self.eps = float(clip), float(eps)
        self.mean = torch.zeros(obs_dim, dtype=torch.float64, device=device)
        self.var = torch.ones(obs_dim, dtype=torch.float64, device=device)
        self.count = 0.0
        self._cached: tuple | None = None
        self.discard()

    def __call__(self, obs: Tensor) -> Tensor:
        return normalize(obs, *self.constants(obs), self.clip)

    def constants(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``mean`` and ``sqrt(var + eps)`` in ``obs``' dtype and device, converted once per value of the moments
        (the collector normalizes every step; the moments change only when replaced by `commit` or a load)."""
        c = self._cached
        if c is None or c[0] is not self.mean or c[1] is not self.var or c[2] != obs.dtype or c[3] != obs.device:
            c = self._cached = (self.mean, self.var, obs.dtype, obs.device, self.mean.to(obs.device, obs.dtype),
                                torch.sqrt(self.var + self.eps).to(obs.device, obs.dtype))
        return c[4], c[5]

    def observe(self, obs: Tensor) -> None:
        x = obs.detach().reshape(-1, obs.shape[-1]).to(torch.float64)
        self._n += x.shape[0]
        # out of place: the sums may be inference tensors (the collector observes in inference mode), which
        # cannot be updated in place outside it
        self._sum = self._sum + x.sum(0)
        self._sumsq = self._sumsq + x.pow(2).sum(0)

    def observe_steps(self, obs: Tensor) -> None:
        """`observe` of ``obs[0], obs[1], ...`` in turn (``obs[k, ..., obs_dim]``, k steps of a collection) in a fixed
        number of ops: each step's sums, then the running sums accumulated step by step by one cumulative sum
        (the same additions in the same order as k calls of `observe`: the same numbers, checked in the tests)."""
        x = obs.detach().reshape(obs.shape[0], -1, obs.shape[-1]).to(torch.float64)
        self._n += x.shape[0] * x.shape[1]
        self._sum = torch.cat([self._sum.unsqueeze(0), x.sum(1)]).cumsum(0)[-1]
        self._sumsq = torch.cat([self._sumsq.unsqueeze(0), x.pow(2).sum(1)]).cumsum(0)[-1]

    def commit(self) -> None:
        """Merge the pending moments into the running ones (Chan et al.'s parallel update)."""
        if self._n:
            mean_b = self._sum / self._n
            var_b = (self._sumsq / self._n - mean_b.pow(2)).clamp(min=0.0)
            total = self.count + self._n
            delta = mean_b - self.mean
            m2 = self.var * self.count + var_b * self._n + delta.pow(2) * self.count * self._n / total
            self.mean = self.mean + delta * self._n / total
            self.var = m2 / total
            self.count = total
        self.discard()

    def pending(self) -> tuple[int, Tensor, Tensor]:
        """The not yet committed moments (count, sum, sum of squares), e.g. to send from a Ray worker."""
        return self._n, self._sum.clone(), self._sumsq.clone()

    def add_pending(self, n: int, total: Tensor, total_sq: Tensor) -> None:
        self._n += n
        self._sum = self._sum + total  # out of place, as in `observe`
        self._sumsq = self._sumsq + total_sq

    def discard(self) -> None:
        self._n, self._sum, self._sumsq = 0, torch.zeros_like(self.mean), torch.zeros_like(self.mean)

    def state_dict(self) -> dict:
        return {"mean": self.mean.clone(), "var": self.var.clone(), "count": self.count}

    def load_state_dict(self, state: dict) -> None:
        device = self.mean.device
        self.mean, self.var = state["mean"].to(device, copy=True), state["var"].to(device, copy=True)
        self.count = float(state["count"])
        self.discard()
