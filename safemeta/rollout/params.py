"""Functional parameters stacked per task.

A ``Params`` is a dict name -> tensor whose leading dimension indexes tasks (``[N, ...]``). Inner
solvers return new ``Params`` rather than mutating modules, so the same code runs first-order
(detached) and differentiable (with graph) adaptation.
"""
from __future__ import annotations

import torch
from torch import Tensor

Params = dict[str, Tensor]


def stack(params: Params, n: int) -> Params:
    """Repeat unstacked parameters ``[...]`` for ``n`` tasks -> ``[n, ...]`` (keeps the graph)."""
    return {k: v.unsqueeze(0).expand(n, *v.shape) for k, v in params.items()}


def flat(params: Params) -> Tensor:
    """``[N, ...]`` dict -> one ``[N, P]`` matrix (order of the dict)."""
    return torch.cat([v.reshape(v.shape[0], -1) for v in params.values()], dim=1)


def unflat(vec: Tensor, like: Params) -> Params:
    """Inverse of `flat`: split ``[N, P]`` into tensors shaped like ``like``."""
    out, i = {}, 0
    for k, v in like.items():
        size = v[0].numel()
        out[k] = vec[:, i : i + size].reshape(v.shape)
        i += size
    return out


def add(params: Params, step: Params, scale: Tensor | float = 1.0) -> Params:
    """``params + scale * step``; ``scale`` may be a per-task ``[N]`` tensor."""
    out = {}
    for k, v in params.items():
        s = scale.reshape(-1, *([1] * (v.dim() - 1))) if isinstance(scale, Tensor) else scale
        out[k] = v + s * step[k]
    return out


def select(params: Params, mask: Tensor, if_true: Params) -> Params:
    """Per task: ``if_true`` where ``mask[N]`` else ``params``."""
    return {k: torch.where(mask.reshape(-1, *([1] * (v.dim() - 1))), if_true[k], v) for k, v in params.items()}


def detach(params: Params) -> Params:
    return {k: v.detach() for k, v in params.items()}


def task_slice(params: Params, idx: int | slice) -> Params:
    return {k: v[idx] for k, v in params.items()}


def concat(parts: list[Params]) -> Params:
    """Per-task params of several task groups as one ``[sum N_i, ...]`` group (the inverse of `task_slice`)."""
    return {k: torch.cat([p[k] for p in parts], 0) for k in parts[0]}


def num_params(params: Params) -> int:
    """Parameters of one task."""
    return sum(v[0].numel() for v in params.values())
