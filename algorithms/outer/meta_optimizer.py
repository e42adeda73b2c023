"""The optimizer that applies a meta-gradient to theta (SGD or Adam with the meta learning rate)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from safemeta.config.schema import spec
from safemeta.params import Params


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
