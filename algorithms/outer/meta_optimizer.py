"""Applying a meta-gradient to theta: SGD or Adam with the meta learning rate, or a trust-region step
in the meta-policy's Fisher metric (measured on its own rollouts, all tasks pooled)."""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from safemeta.algorithms.inner.base import InnerSolver
from safemeta.algorithms.inner.natural_gradient import conjugate_gradient
from safemeta.rollout.batch import Batch
from safemeta.config.schema import spec
from safemeta.rollout.params import Params


@dataclass
class MetaOptimizerConfig:
    optimizer: Literal["adam", "sgd"] = "adam"
    lr: float = spec(0.01, gt=0, doc="meta learning rate beta")


def make_meta_optimizer(cfg: MetaOptimizerConfig, theta: Params) -> torch.optim.Optimizer:
    cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.SGD
    return cls(list(theta.values()), lr=cfg.lr)


def ascend(opt: torch.optim.Optimizer, theta: Params, grad: Params) -> float:
    """theta <- theta + step along ``grad`` (gradient *ascent* on the meta-objective); returns ||grad||."""
    opt.zero_grad()
    for k, p in theta.items():
        p.grad = -grad[k].detach().clone()
    opt.step()
    return float(torch.sqrt(sum((g.detach() ** 2).sum() for g in grad.values())))


def meta_fisher_solve(inner: InnerSolver, theta1: Params, meta_batch: Batch, damping: float, cg_iters: int
                      ) -> Callable[[Tensor], Tensor]:
    """``v[1,P] -> H^-1 v`` with H the Fisher matrix of pi_theta (``theta1`` stacked ``[1, ...]``) on the
    states of ``meta_batch`` (a one-task batch, e.g. the meta-policy's rollouts pooled), by conjugate gradient."""
    fvp = inner.fisher_product(theta1, meta_batch, damping)
    return lambda v: conjugate_gradient(fvp, v, cg_iters)
