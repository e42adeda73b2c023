"""Reptile (Nichol, Achiam & Schulman 2018, "On First-Order Meta-Learning Algorithms", Algorithm 2, the batched
version), for RL with any inner solver.

For the M tasks of a meta-iteration the adapter runs K steps of the inner solver from theta, giving phi_p =
U^K_p(theta); then

    theta <- theta + epsilon * 1/M sum_p (phi_p - theta)

(Algorithm 2's update; with ``optimizer: sgd`` and lr = epsilon exactly this, with ``adam`` the same direction
through Adam). Reptile reads only the adapted parameters: no post-adaptation rollout
(``needs_post_rollout = False``), no objective evaluated at phi_p, and no second-order terms. epsilon is
annealed linearly from ``lr`` to 0 over ``trainer.iters`` meta-iterations when ``anneal`` is on (the paper's
schedule, Sec. 6 / Appendix A: "linearly annealed to 0"), the meta-iterations done so far kept in the state
dict so a resumed run continues the schedule.

Over a constrained inner solver the safety lives in the inner loop: ``reptile_p3o`` runs Reptile over P3O, the
combination the C-MAML author's later code runs C-MAML with (issue 22); the code itself is not in this
project's search corpora, so this is Reptile as the paper writes it, over our ``p3o``. With K = 1 and
epsilon = 1 Reptile moves theta to the mean of one inner step per task: for K = 1 it is joint training of the
tasks' surrogate (the paper's Sec. 5 analysis); K > 1 is what makes it meta-learn (the preset's K = 3).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from safemeta.algorithms.outer.base import OuterContext, OuterUpdater
from safemeta.algorithms.outer.meta_optimizer import MetaOptimizerConfig, ascend, make_meta_optimizer
from safemeta.config.schema import spec
from safemeta.registry import register_outer
from safemeta.rollout.params import Params, detach
from safemeta.rollout.task import Task
from safemeta.training.adaptation import AdaptationResult


@dataclass
class ReptileConfig(MetaOptimizerConfig):
    optimizer: Literal["adam", "sgd"] = spec("sgd", doc="sgd: theta += epsilon * mean(phi_p - theta), the paper's update; adam: that "
                                     "direction through Adam")
    lr: float = spec(1.0, gt=0, doc="epsilon, the outer step size (the paper's 1.0, annealed to 0)")
    anneal: bool = spec(True, doc="epsilon falls linearly to 0 over trainer.iters (the paper's schedule)")


def reptile_direction(result: AdaptationResult, theta: Params) -> Params:
    """1/M sum_p (phi_p - theta), shaped like theta, from the adapted (detached) parameters ``[M, ...]``."""
    phi = detach(result.params[-1])
    return {k: (phi[k] - theta[k].detach().unsqueeze(0)).mean(0) for k in theta}


@register_outer("reptile", "Reptile: theta moves toward the mean of the tasks' adapted parameters (no "
                           "post-adaptation rollout)")
class Reptile(OuterUpdater):
    Config = ReptileConfig
    needs_post_rollout = False

    def __init__(self, cfg: ReptileConfig, ctx: OuterContext):
        super().__init__(cfg, ctx)
        self.opt = make_meta_optimizer(cfg, ctx.meta.theta)
        self.done = 0  # meta-iterations done (the anneal schedule's position)

    def epsilon(self) -> float:
        if not self.cfg.anneal:
            return self.cfg.lr
        total = max(self.ctx.cfg.trainer.iters, 1)
        return self.cfg.lr * max(0.0, 1.0 - self.done / total)

    def update(self, result: AdaptationResult, tasks: list[Task]) -> dict[str, float]:
        eps = self.epsilon()
        for group in self.opt.param_groups:
            group["lr"] = eps
        norm = ascend(self.opt, self.ctx.meta.theta, reptile_direction(result, self.ctx.meta.theta))
        self.done += 1
        return {"meta_grad_norm": norm, "meta/epsilon": eps}

    def state_dict(self) -> dict:
        return {"opt": self.opt.state_dict(), "done": self.done}

    def load_state_dict(self, state: dict) -> None:
        self.opt.load_state_dict(state["opt"])
        self.done = int(state["done"])
