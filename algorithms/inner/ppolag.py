"""PPO-Lagrangian inner solver (Ray, Achiam & Amodei 2019, "Benchmarking Safe Exploration in Deep RL"),
batched over tasks.

The CMDP max J_R s.t. J_C <= d is relaxed to min_{lambda >= 0} max_theta J_R - lambda (J_C - d). Per task and
inner step:
- multiplier: lambda <- clip(lambda + lagrange_lr * (J_C - d), 0, lagrange_max), J_C the batch's constrained
  episode cost (``Batch.ep_constraint_cost``, so cost shaping reaches it): projected gradient ascent on the
  dual, before the policy step, exactly as `trpolag` (same state key ``lagrange``, so C-MAML's meta lambda
  seeds it through ``inner_overrides`` and ``eval.multipliers: inherit`` starts the meta-test from it);
- policy: PPO's step (``ppo.py``: clipped surrogate, minibatch Adam epochs, KL early stop) on the Lagrangian
  advantage (A_R - lambda A_C) / (1 + lambda), A_R standardized and A_C centered per task
  (`trpolag.lagrangian_advantages`, OmniSafe's PPOLag).

OmniSafe's PPOLag moves lambda with Adam at lr 0.035 on the same gradient J_C - d; here it is the plain
projected step of `trpolag` at its rate, 0.001 per unit of J_C - d (chosen on the d = 25 families; a family
with a small d wants a larger one, as ``configs/envs/tiny-nav.yaml`` sets for trpolag).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from safemeta.algorithms.inner.base import State, output_field
from safemeta.algorithms.inner.ppo import PPOConfig, PPOSolver
from safemeta.algorithms.inner.trpolag import LagrangianDualAscent, lagrangian_advantages
from safemeta.config.schema import spec
from safemeta.registry import register_inner
from safemeta.rollout.batch import Batch


@dataclass
class PPOLagConfig(PPOConfig):
    lagrange_init: float = spec(0.0, ge=0, doc="lambda_0")
    lagrange_lr: float = spec(0.001, ge=0, doc="step size of the dual ascent on lambda per unit of J_C - d "
                                               "(trpolag's measured rate)")
    lagrange_max: float = spec(100.0, gt=0, doc="upper clamp of lambda")
    cost_advantage: Literal["centered", "standardized"] = spec(
        "centered", doc="A_C in the Lagrangian advantage: centered (its units kept, as trpolag's) or standardized "
                        "per task (OmniSafe's PPOLag), for the cross-check")
    output: Literal["last", "feasible"] = output_field("last")


@register_inner("ppolag", "PPO-Lagrangian: PPO's clipped surrogate on (A_R - lambda A_C)/(1+lambda), lambda by "
                           "dual ascent")
class PPOLag(LagrangianDualAscent, PPOSolver):
    Config = PPOLagConfig

    def advantages(self, batch: Batch, state: State) -> Tensor:
        return lagrangian_advantages(batch, state["lagrange"], self.cfg.cost_advantage == "standardized")
