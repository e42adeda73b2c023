"""Baselines of the online protocol (issue 8): where CRPO starts each task, with the fixed step size alpha0.

* ``random``: a fresh random initialization per task, logits ~ N(0, scale^2) (no transfer at all);
* ``pretrained``: one policy trained by CRPO to convergence on a single training task drawn before the
  sequence, reused as every task's start (transfer from one task, no online learning);
* ``fal`` (follow the average leader, Denevi et al. 2019): phi_{t+1} = the mean of the past tasks'
  handed-out parameters theta_hat_tau (softmax logits, each centred per state), i.e. the leader of the
  squared-distance bounds in parameter space;
* ``averaging``: simple averaging of the past handed-out *policies*, pi_phi = (1/t) sum_tau pi_hat_tau, in
  probability space, without visitation weights (``online_dualdice`` with ``phi_update: ftl`` differs
  by weighting each state by the DualDICE-estimated visitation, by the shrinkage simplex, and by
  learning alpha).

"Handed out": the iterate CRPO's output rule picks (`tabular_crpo`, "The output"), ``run.logits`` /
``run.policy``.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from safemeta.algorithms.meta_srl.base import OnlineContext, OnlineLearner, uniform_logits
from safemeta.algorithms.meta_srl.tabular_crpo import CRPORun
from safemeta.config.schema import spec
from safemeta.registry import register_online


@dataclass
class RandomInitConfig:
    scale: float = spec(1.0, ge=0, doc="std of the random initial logits")


@register_online("random", "baseline: a fresh random softmax initialization per task, fixed alpha")
class RandomInit(OnlineLearner):
    Config = RandomInitConfig

    def propose(self) -> tuple[np.ndarray, float]:
        return self.cfg.scale * self.ctx.rng.standard_normal((self.ctx.n_states, self.ctx.n_actions)), self.ctx.alpha0


@dataclass
class PretrainedConfig:
    pass


@register_online("pretrained", "baseline: CRPO trained to convergence on one training task, reused for every task")
class Pretrained(OnlineLearner):
    Config = PretrainedConfig

    def __init__(self, cfg: PretrainedConfig, ctx: OnlineContext):
        super().__init__(cfg, ctx)
        self.phi = ctx.pretrain(ctx.rng)

    def propose(self) -> tuple[np.ndarray, float]:
        return self.phi.copy(), self.ctx.alpha0


@dataclass
class AverageConfig:
    pass


@register_online("fal", "baseline: follow the average leader, phi = mean of past final logits, fixed alpha")
class FollowAverageLeader(OnlineLearner):
    Config = AverageConfig

    def __init__(self, cfg: AverageConfig, ctx: OnlineContext):
        super().__init__(cfg, ctx)
        self.total = uniform_logits(ctx)

    def propose(self) -> tuple[np.ndarray, float]:
        return (self.total / self.t if self.t else uniform_logits(self.ctx)), self.ctx.alpha0

    def observe(self, run: CRPORun, phi: np.ndarray, alpha: float) -> dict[str, float]:
        super().observe(run, phi, alpha)
        self.total += run.logits - run.logits.mean(-1, keepdims=True)
        return {}


@register_online("averaging", "baseline: phi = uniform average of the past final policies, fixed alpha")
class PolicyAveraging(OnlineLearner):
    Config = AverageConfig

    def __init__(self, cfg: AverageConfig, ctx: OnlineContext):
        super().__init__(cfg, ctx)
        self.total = np.zeros((ctx.n_states, ctx.n_actions))

    def propose(self) -> tuple[np.ndarray, float]:
        if not self.t:
            return uniform_logits(self.ctx), self.ctx.alpha0
        return np.log(np.clip(self.total / self.t, 1e-12, None)), self.ctx.alpha0

    def observe(self, run: CRPORun, phi: np.ndarray, alpha: float) -> dict[str, float]:
        super().observe(run, phi, alpha)
        self.total += run.policy
        return {}
