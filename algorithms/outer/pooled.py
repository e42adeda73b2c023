"""``pooled``: no meta-learning; one policy trained by the inner solver on the pooled training tasks.

Each iteration the meta-policy's rollouts on the M sampled tasks are merged into one task's batch
(``Batch.pooled``), annotated by the critics' initialization that the trainer fits on it for every method
(``result.meta_batch``, `safemeta.training.model.fit_meta_critics`), and one inner step updates theta.
This is the ``pretrained`` baseline: a good average policy, adapted at meta-test like the others.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from safemeta.training.adaptation import AdaptationResult
from safemeta.algorithms.outer.base import OuterContext, OuterUpdater
from safemeta.rollout.params import stack
from safemeta.registry import register_outer
from safemeta.rollout.task import Task


@dataclass
class PooledConfig:
    pass


@register_outer("pooled", "no meta-learning: the inner solver trains one policy on all tasks pooled")
class Pooled(OuterUpdater):
    Config = PooledConfig
    adapt = False
    needs_post_rollout = False

    def __init__(self, cfg: PooledConfig, ctx: OuterContext):
        super().__init__(cfg, ctx)
        self.state = ctx.inner.init_state(1, ctx.family.cost_limit_for("train"))

    def inherited_state(self, tasks: list[Task]) -> dict[str, torch.Tensor]:
        """The pooled solver's multiplier after training (TRPOLag's lambda), for the meta-test."""
        return {"lagrange": self.state["lagrange"][0]} if "lagrange" in self.state else {}

    def update(self, result: AdaptationResult, tasks: list[Task]) -> dict[str, float]:
        batch = result.meta_batch
        theta = self.ctx.meta.theta
        new, self.state, info = self.ctx.inner.step(stack({k: v.detach() for k, v in theta.items()}, 1), batch,
                                                    self.state)
        with torch.no_grad():
            for k, p in theta.items():
                p.copy_(new[k][0])
        return {f"pooled_{k}": float(v.mean()) for k, v in info.items()}

    def state_dict(self) -> dict:
        return {"state": self.state}

    def load_state_dict(self, state: dict) -> None:
        # (a checkpoint from before the critics moved to MetaParams also has "critics"); checkpoints load on the CPU
        self.state = {k: v.to(self.ctx.inner.device) for k, v in state["state"].items()}
