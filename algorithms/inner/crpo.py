"""CRPO inner solver (Xu, Liang, Lan 2021, "CRPO: A New Approach for Safe RL with Convergence Guarantee",
Algorithm 1), batched over tasks, with a natural-policy-gradient step.

Per task and call, with the batch's cost estimate J_C, limit d and tolerance eta:
- if J_C <= d + eta: theta <- theta + alpha F^-1 grad E[ratio * A_R]       (reward step)
- otherwise:         theta <- theta - alpha F^-1 grad E[ratio * A_C]       (step that decreases the cost)
(Algorithm 1, lines 6-10, with one constraint per task). F is the Fisher matrix (conjugate gradient),
alpha the step size: ``step_size`` in the config or per task in ``state["step_size"]``, which an outer
updater may set (Meta-SRL learns it), hence ``supports_step_size``. Advantages are standardized per task.
A step whose quadratic KL estimate 1/2 x^T F x exceeds ``max_kl`` is scaled down to it (a safeguard the
paper does not need with its small constant step sizes).

Output (Algorithm 1, last line): not the last iterate but one from N_0 = {t : every cost estimate of
w_t is within d + eta}, the iterates the reward steps were taken from, which are the ones the paper's
bounds hold for. The paper draws w_out uniformly from N_0 (its bounds are on that average); with
``output: feasible`` (the default) we hand out the latest member of N_0 per task, the one that has had
the most reward steps, and the last iterate where N_0 is empty; ``output: last`` hands out w_T
(``InnerSolver.output``, ``latest_within_limit``).
The estimate of w_t is the batch w_t collected (the constrained J, shaped if cost shaping is on), so the
final iterate belongs to N_0 only when the adaptation took a rollout after its last step.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from safemeta.algorithms.inner.base import InnerSolver, State, fvp_subsample_field, normalize, output_field
from safemeta.algorithms.inner.natural_gradient import conjugate_gradient, flat_grad
from safemeta.rollout.batch import Batch
from safemeta.config.schema import spec
from safemeta.rollout.params import Params, add, detach, unflat
from safemeta.registry import register_inner


@dataclass
class CRPOConfig:
    step_size: float = spec(2.0, gt=0, doc="alpha, the natural-gradient step size (2.0 by measurement: at 0.5 the "
                                           "steps stayed far inside the KL cap; Meta-SRL's preset keeps 0.5)")
    tolerance: float = spec(0.0, ge=0, doc="eta: the cost step is taken when J_C > d + eta")
    max_kl: float = spec(0.01, gt=0, doc="cap on the step's quadratic KL estimate")
    cg_iters: int = spec(10, ge=1)
    cg_damping: float = spec(0.1, ge=0)
    fvp_subsample: int = fvp_subsample_field()
    output: Literal["feasible", "last"] = output_field("feasible")  # 'feasible': Algorithm 1's N_0


@register_inner("crpo", "CRPO: natural-gradient step on reward if J_C <= d + eta, else on the violated cost")
class CRPO(InnerSolver):
    Config = CRPOConfig
    supports_step_size = True

    def default_state(self, n_tasks: int) -> State:
        return {"step_size": torch.full((n_tasks,), float(self.cfg.step_size))}

    @property
    def tolerance(self) -> float:
        return float(self.cfg.tolerance)

    def cost_step(self, batch: Batch, state: State) -> Tensor:
        """[N] bool: the tasks whose cost estimate exceeds limit + tolerance."""
        return batch.ep_constraint_cost > state["cost_limit"] + self.tolerance

    def advantages(self, batch: Batch, state: State) -> Tensor:
        use_cost = self.cost_step(batch, state).reshape(-1, 1, 1)
        return torch.where(use_cost, -normalize(batch.adv_c), normalize(batch.adv_r))

    def step(self, params: Params, batch: Batch, state: State, differentiable: bool = False
             ) -> tuple[Params, State, dict[str, Tensor]]:
        if differentiable:
            raise NotImplementedError("crpo has no differentiable step")
        cfg = self.cfg
        adv = self.advantages(batch, state).detach()
        old = detach(params)
        p = {k: v.requires_grad_(True) for k, v in detach(params).items()}
        dist = self.policy_on(p, batch)
        direction_grad = flat_grad(self.surrogate(p, batch, adv, dist).sum(), p)
        fisher = self.fisher_batch(batch)
        fvp = self.fisher_product(old, fisher, cfg.cg_damping)
        nat = conjugate_gradient(fvp, direction_grad, cfg.cg_iters)
        x = state["step_size"].unsqueeze(-1) * nat
        # the cap is CRPO's only KL control (no line search), so its quadratic estimate uses the whole batch
        full_fvp = fvp if fisher is batch else self.fisher_product(old, batch, cfg.cg_damping)
        quad_kl = 0.5 * (x * full_fvp(x)).sum(-1)
        scale = torch.where(quad_kl > cfg.max_kl, torch.sqrt(cfg.max_kl / quad_kl.clamp(min=1e-12)), torch.ones_like(quad_kl))
        new = add(old, unflat((scale.unsqueeze(-1) * x).detach(), old))
        with torch.no_grad():
            kl = self.mean_kl(old, new, batch, old_dist=tuple(v.detach() for v in dist))
        info = {"kl": kl, "cost_step": self.cost_step(batch, state).float(), "step_scale": scale.detach(),
                "step_size": state["step_size"]}
        return new, state, info
