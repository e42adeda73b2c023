"""First-order MAML (Finn et al. 2017, Sec. 5.2 "first-order approximation"), for RL.

For tasks p = 1..M with adapted parameters phi_p = U_K(theta) (K inner steps), FOMAML drops the
Jacobian dphi_p/dtheta and ascends

    g = 1/M sum_p grad_phi L_p(phi_p)                  (MAML eq. 1 with dU/dtheta ~ I)

where L_p is the inner solver's own post-adaptation objective (the surrogate with its advantage,
e.g. the Lagrangian's for ``trpolag``) on a fresh rollout of phi_p. With ``--inner trpo`` this is the
unconstrained meta-RL baseline ``fomaml_trpo``.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from safemeta.training.adaptation import AdaptationResult
from safemeta.algorithms.outer.base import OuterContext, OuterUpdater
from safemeta.algorithms.outer.meta_optimizer import MetaOptimizerConfig, ascend, make_meta_optimizer
from safemeta.rollout.params import Params, detach
from safemeta.registry import register_outer
from safemeta.rollout.task import Task


@dataclass
class FOMAMLConfig(MetaOptimizerConfig):
    pass


def first_order_meta_gradient(result: AdaptationResult, objective: Callable[[Params], Tensor]) -> Params:
    """1/M sum_p grad_phi L_p(phi_p) at the adapted (detached) phi_p, as unstacked tensors shaped like
    theta; ``objective(phi)`` gives the per-task ``[M]`` post-adaptation objectives L_p."""
    phi = {k: v.requires_grad_(True) for k, v in detach(result.params[-1]).items()}
    grads = torch.autograd.grad(objective(phi).mean(), list(phi.values()))
    return {k: g.sum(0) for k, g in zip(phi, grads)}  # the mean's 1/M is already in the objective


@register_outer("fomaml", "first-order MAML: mean post-adaptation gradient applied to theta")
class FOMAML(OuterUpdater):
    Config = FOMAMLConfig

    def __init__(self, cfg: FOMAMLConfig, ctx: OuterContext):
        super().__init__(cfg, ctx)
        self.opt = make_meta_optimizer(cfg, ctx.meta.theta)

    def update(self, result: AdaptationResult, tasks: list[Task]) -> dict[str, float]:
        grad = first_order_meta_gradient(result, lambda phi: self.ctx.inner.objective(phi, result.batches[-1],
                                                                                     result.state))
        return {"meta_grad_norm": ascend(self.opt, self.ctx.meta.theta, grad)}

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
