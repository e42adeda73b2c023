"""TRPO-Lagrangian inner solver (Ray et al. 2019, "Benchmarking Safe Exploration"), batched over tasks.

The CMDP max J_R s.t. J_C <= d is relaxed to min_{lambda >= 0} max_theta J_R - lambda (J_C - d).
Per task and call:
- multiplier: lambda <- max(0, lambda + lr_lambda * (J_C - d)) with J_C the batch's mean episode
  cost (projected gradient ascent on the dual), done before the policy step as in OmniSafe;
- policy: the TRPO step (see trpo.py) on the advantage A = (A_R - lambda * A_C) / (1 + lambda),
  A_R standardized and A_C centered per task.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from safemeta.algorithms.inner.base import State, normalize, output_field
from safemeta.algorithms.inner.trpo import TRPOConfig, TrustRegionSolver
from safemeta.rollout.batch import Batch
from safemeta.config.schema import spec
from safemeta.registry import register_inner


@dataclass
class TRPOLagConfig(TRPOConfig):
    lagrange_init: float = spec(0.0, ge=0, doc="lambda_0")
    lagrange_lr: float = spec(0.001, ge=0, doc="step size of the dual ascent on lambda (chosen by measurement on "
                                               "point-circle, car-circle-hazard and SafetyPointGoal1-v0: "
                                               "benchmarks/README.md 'Learning signal')")
    lagrange_max: float = spec(100.0, gt=0, doc="upper clamp of lambda")
    output: Literal["last", "feasible"] = output_field("last")


class LagrangianDualAscent:
    """The Lagrangian pieces a solver base (TRPO's, PPO's) takes on: lambda in ``state["lagrange"]`` (so a meta
    multiplier can seed it), one projected dual-ascent step on J_C - d before each policy step, clamped to
    [0, lagrange_max], and the Lagrangian advantage (A_R - lambda A_C) / (1 + lambda). Its config has
    ``lagrange_init``, ``lagrange_lr`` and ``lagrange_max``."""

    def default_state(self, n_tasks: int) -> State:
        return {"lagrange": torch.full((n_tasks,), float(self.cfg.lagrange_init))}

    def update_lagrange(self, lagrange: Tensor, ep_cost: Tensor, cost_limit: Tensor) -> Tensor:
        return (lagrange + self.cfg.lagrange_lr * (ep_cost - cost_limit)).clamp(0.0, self.cfg.lagrange_max)

    def before_step(self, batch: Batch, state: State) -> State:
        lagrange = self.update_lagrange(state["lagrange"], batch.ep_constraint_cost, state["cost_limit"])
        return {**state, "lagrange": lagrange}

    def advantages(self, batch: Batch, state: State) -> Tensor:
        return lagrangian_advantages(batch, state["lagrange"])


@register_inner("trpolag", "TRPO-Lagrangian: TRPO on (A_R - lambda A_C)/(1+lambda), lambda by dual ascent")
class TRPOLag(LagrangianDualAscent, TrustRegionSolver):
    Config = TRPOLagConfig


def lagrangian_advantages(batch: Batch, lagrange: Tensor, standardize_cost: bool = False) -> Tensor:
    """(A_R - lambda A_C) / (1 + lambda) per task, A_R standardized and A_C centered (``standardize_cost``: scaled
    to unit variance too, as OmniSafe's Lagrangian methods do); ``lagrange`` ``[N]``."""
    lam = lagrange.reshape(-1, 1, 1)
    return (normalize(batch.adv_r) - lam * normalize(batch.adv_c, center_only=not standardize_cost)) / (1 + lam)
